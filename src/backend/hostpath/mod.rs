//! The hostpath backend: a volume is a sparse image file under the state
//! directory, attached on the node as a loop device. Controller and node
//! share the state directory, so it serves single-node clusters; volumes
//! carry their node in the topology, which keeps the design open to
//! node-local volumes on many nodes.

mod extents;
mod files;
mod group;
pub(crate) mod image;
mod journal;
mod metadata;
pub mod owner;
mod recover;
mod thin;

pub use recover::{RecoverArgs, recover_main};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::files::ImageDir;
use self::journal::{Journal, OpenError, Replay};
use self::owner::StateLock;
use super::blocks::ExtentStream;
use super::size::{self, GIB, MIB, SizeRules};
use super::{
    Backend, Capacity, ContentSource, CreateVolume, Features, GroupSnapshot, Map, NodeBackend,
    Recorded, Snapshot, Volume, VolumeStatus,
};
use crate::csi::made_as::{MadeAs, without_made_as};
use crate::error::{CsiError, CsiResult};
use crate::locks::InFlight;
use crate::node::{freeze, loopdev};

/// Topology key: the node a hostpath volume lives on.
pub const TOPOLOGY_KEY: &str = "topology.multicsi.io/node";
/// Volume IDs start with this.
const VOLUME_PREFIX: &str = "hp-";
/// Snapshot IDs start with this.
const SNAPSHOT_PREFIX: &str = "hps-";
/// Default number of volumes a node accepts.
const DEFAULT_MAX_VOLUMES: u64 = 256;
/// The directory of the state where a freeze for a copy is recorded while
/// it lasts (see [`freeze`]).
const FREEZE_RECORDS: &str = "frozen";
/// The state journal's file name.
const JOURNAL: &str = "journal";
/// The directory of the state where images and records the journal does
/// not name are moved to (never deleted).
pub const KEPT_ASIDE: &str = "kept-aside";

/// StorageClass parameter: `thick` (the default: a volume's space is
/// reserved when it is made, so writes to it never fail for lack of space)
/// or `thin` (allocated as written; its size still counts against the
/// capacity).
pub const PROVISIONING: &str = "multicsi.io/provisioning";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provisioning {
    Thick,
    Thin,
}

fn provisioning(parameters: &Map) -> CsiResult<Provisioning> {
    match parameters.get(PROVISIONING).map(String::as_str) {
        None | Some("thick") => Ok(Provisioning::Thick),
        Some("thin") => Ok(Provisioning::Thin),
        Some(other) => Err(CsiError::InvalidArgument(format!(
            "parameter {PROVISIONING}={other:?}: use thick or thin"
        ))),
    }
}

/// Space of the state filesystem.
struct Space {
    free: u64,
    /// Bytes thin volumes may still take as they are written.
    promised: u64,
}

impl Space {
    /// What a new volume may have.
    fn available(&self) -> u64 {
        self.free.saturating_sub(self.promised)
    }
}

/// An I/O error as a CSI error: a full filesystem is RESOURCE_EXHAUSTED.
fn space_error(what: String, e: std::io::Error) -> CsiError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) {
        CsiError::ResourceExhausted(format!(
            "{what}: the state filesystem is full ({e}); free space or ask for less"
        ))
    } else {
        CsiError::io(what, e)
    }
}

/// Makes a new image at `target` with `make`, off the async workers, after
/// `check` (the space check) in the same trip. `make` creates the file
/// exclusively (`create_new`), so a file already there is never touched: it
/// fails with AlreadyExists, an error here. When `make` fails otherwise,
/// what it left at `target` goes: it is this call's own, never
/// acknowledged. A full filesystem is RESOURCE_EXHAUSTED.
async fn make_image(
    target: PathBuf,
    what: String,
    check: impl FnOnce() -> CsiResult<()> + Send + 'static,
    make: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> CsiResult<()> {
    crate::blocking::run(move || {
        check()?;
        make().map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return CsiError::Internal(format!(
                    "{what}: a file the state does not name is in the way at {}; it is kept as it is: restart the driver to move it aside (see Troubleshooting)",
                    target.display()
                ));
            }
            let _ = files::remove_if_present(&target);
            space_error(what, e)
        })
    })
    .await
}

/// Sizes: MiB steps, 1 GiB by default, xfs needs 300 MiB.
fn size_rules(fs_type: Option<&str>, maximum: u64) -> SizeRules {
    SizeRules {
        step: MIB,
        minimum: if fs_type == Some("xfs") {
            300 * MIB
        } else {
            MIB
        },
        maximum,
        default: GIB,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct VolumeRecord {
    id: String,
    name: String,
    capacity_bytes: u64,
    parameters: Map,
    node_context: Map,
    fs_type: Option<String>,
    source: Option<ContentSource>,
    node_id: String,
    /// Nodes the volume is published to, with their read-only flag.
    published: BTreeMap<String, bool>,
    created_unix: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SnapshotRecord {
    id: String,
    name: String,
    source_volume_id: String,
    size_bytes: u64,
    created_unix_nanos: u128,
    /// The group snapshot this one is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
}

#[derive(Default)]
struct State {
    volumes: BTreeMap<String, VolumeRecord>,
    snapshots: BTreeMap<String, SnapshotRecord>,
    groups: BTreeMap<String, group::GroupRecord>,
    /// The thin volumes and what they may still take (kept with `volumes`).
    thin: thin::ThinVolumes,
}

/// One change of the state, as the journal keeps it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Volume(VolumeRecord),
    VolumeDeleted(String),
    Snapshot(SnapshotRecord),
    SnapshotDeleted(String),
    /// A group snapshot with its member snapshots, in one entry: a replay
    /// has all of it or none.
    Group {
        group: group::GroupRecord,
        members: Vec<SnapshotRecord>,
    },
    /// A group snapshot and its members are gone.
    GroupDeleted(String),
}

impl Replay for State {
    type Entry = Change;

    fn apply(&mut self, change: Change) {
        match change {
            Change::Volume(record) => {
                if record.is_thin() {
                    self.thin.set(&record.id, record.capacity_bytes);
                } else {
                    self.thin.remove(&record.id);
                }
                self.volumes.insert(record.id.clone(), record);
            }
            Change::VolumeDeleted(id) => {
                self.thin.remove(&id);
                self.volumes.remove(&id);
            }
            Change::Snapshot(record) => {
                self.snapshots.insert(record.id.clone(), record);
            }
            Change::SnapshotDeleted(id) => {
                self.snapshots.remove(&id);
            }
            Change::Group { group, members } => {
                for member in members {
                    self.snapshots.insert(member.id.clone(), member);
                }
                self.groups.insert(group.id.clone(), group);
            }
            Change::GroupDeleted(id) => {
                if let Some(group) = self.groups.remove(&id) {
                    for member in &group.snapshot_ids {
                        self.snapshots.remove(member);
                    }
                }
            }
        }
    }

    fn frees_space(change: &Change) -> bool {
        matches!(
            change,
            Change::VolumeDeleted(_) | Change::SnapshotDeleted(_) | Change::GroupDeleted(_)
        )
    }

    fn entries(&self) -> Vec<Change> {
        let volumes = self.volumes.values().cloned().map(Change::Volume);
        let snapshots = self
            .snapshots
            .values()
            .filter(|s| {
                s.group_id
                    .as_ref()
                    .is_none_or(|g| !self.groups.contains_key(g))
            })
            .cloned()
            .map(Change::Snapshot);
        let groups = self.groups.values().map(|group| Change::Group {
            group: group.clone(),
            members: group
                .snapshot_ids
                .iter()
                .filter_map(|id| self.snapshots.get(id).cloned())
                .collect(),
        });
        volumes.chain(snapshots).chain(groups).collect()
    }
}

/// The hostpath backend.
pub struct HostPath {
    node_id: String,
    root: PathBuf,
    volumes: ImageDir,
    snapshots: ImageDir,
    store: Journal<State>,
    busy: InFlight,
    thin: thin::Schedule,
    max_volume_bytes: u64,
    max_volumes: u64,
    _lock: StateLock,
}

/// Runs blocking file work off the async workers; an I/O error becomes
/// INTERNAL prefixed with `what`.
async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> CsiResult<T> {
    crate::blocking::run(move || f().map_err(|e| CsiError::io(what, e))).await
}

fn id_for(prefix: &str, name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

fn now_unix() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl HostPath {
    /// Opens the state directory: takes its lock (see [`owner`]), replays
    /// the journal (moving the records of earlier versions into it),
    /// finishes deletions the journal committed, keeps aside what the
    /// journal does not name, and repairs images that a crash left short.
    /// Nothing is ever deleted because the journal does not name it; a
    /// journal that cannot be trusted stops the start.
    pub fn open(root: &Path, node_id: &str, max_volumes: u64) -> Result<Self, String> {
        let lock = StateLock::acquire(root).map_err(|e| e.to_string())?;
        let cannot_open = |e| format!("cannot open state directory {}: {e}", root.display());
        let volumes = ImageDir::open(root.join("volumes")).map_err(cannot_open)?;
        let snapshots = ImageDir::open(root.join("snapshots")).map_err(cannot_open)?;
        let cannot_read = |dir: &ImageDir| {
            let path = dir.path().display().to_string();
            move |e| format!("cannot read {path}: {e}")
        };
        let (old_volumes, broken) = volumes
            .legacy_records::<VolumeRecord>()
            .map_err(cannot_read(&volumes))?;
        report_broken(&broken)?;
        let (old_snapshots, broken) = snapshots
            .legacy_records::<SnapshotRecord>()
            .map_err(cannot_read(&snapshots))?;
        report_broken(&broken)?;
        let mut legacy_files = Vec::new();
        let mut legacy = Vec::new();
        for (path, record) in old_volumes {
            legacy_files.push(path);
            legacy.push(Change::Volume(record));
        }
        for (path, record) in old_snapshots {
            legacy_files.push(path);
            legacy.push(Change::Snapshot(record));
        }
        let journal_path = root.join(JOURNAL);
        if legacy.is_empty() && !journal_path.exists() {
            let (ids, _) = volumes.ids().map_err(cannot_read(&volumes))?;
            let (snapshot_ids, _) = snapshots.ids().map_err(cannot_read(&snapshots))?;
            if !ids.is_empty() || !snapshot_ids.is_empty() {
                return Err(format!(
                    "the state journal {} is missing, but the state directory holds {} volume(s) and {} snapshot(s); refusing to start as an empty state, which would forget them. {}",
                    journal_path.display(),
                    ids.len(),
                    snapshot_ids.len(),
                    recovery_hint(root)
                ));
            }
        }
        let (store, recovered) =
            Journal::<State>::open(&journal_path, legacy).map_err(|e| match e {
                OpenError::Damaged { .. } => format!(
                    "{e}; refusing to start, so that no volume is forgotten. Keep a copy of the file. {}",
                    recovery_hint(root)
                ),
                OpenError::Io { .. } => e.to_string(),
            })?;
        if recovered.torn_bytes > 0 {
            tracing::warn!(bytes = recovered.torn_bytes, path = %journal_path.display(), "dropped the torn last batch of the state journal (a change cut off by a crash, never acknowledged)");
        }
        if let Some(why) = &recovered.not_compacted {
            tracing::warn!(path = %journal_path.display(), error = %why, "the state journal could not be compacted (no space); appending to it as it is");
        }
        if !legacy_files.is_empty() {
            for path in &legacy_files {
                files::remove_if_present(path)
                    .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            }
            volumes.sync().map_err(cannot_open)?;
            snapshots.sync().map_err(cannot_open)?;
            tracing::info!(
                records = legacy_files.len(),
                "moved the state records into the journal"
            );
        }
        group::clean_cut_creates(root, &snapshots, &store.state())?;
        let repairs = {
            let state = store.state();
            let aside = root.join(KEPT_ASIDE);
            let stamp = now_unix().as_secs();
            settle(&volumes, &aside.join("volumes"), stamp, |id| {
                state.volumes.get(id).map(VolumeRecord::own_record)
            })?;
            settle(&snapshots, &aside.join("snapshots"), stamp, |id| {
                state.snapshots.get(id).cloned()
            })?;
            state
                .volumes
                .values()
                .map(|r| (volumes.image_path(&r.id), r.capacity_bytes, r.is_thin()))
                .collect::<Vec<(PathBuf, u64, bool)>>()
        };
        report_kept_aside(root);
        for (image, capacity, thin) in repairs {
            repair_image(&image, capacity)?;
            if !thin {
                reserve_again(&image, capacity);
            }
        }
        let records = root.join(FREEZE_RECORDS);
        for mount_point in freeze::thaw_recorded(&records)
            .map_err(|e| format!("cannot thaw what an interrupted snapshot left frozen: {e}"))?
        {
            tracing::warn!(mount_point = %mount_point.display(), "thawed a filesystem frozen by a copy that was cut off");
        }
        {
            let state = store.state();
            tracing::info!(
                volumes = state.volumes.len(),
                snapshots = state.snapshots.len(),
                dir = %root.display(),
                "hostpath state loaded"
            );
        }
        Ok(HostPath {
            node_id: node_id.to_string(),
            root: root.to_path_buf(),
            volumes,
            snapshots,
            store,
            busy: InFlight::default(),
            thin: thin::Schedule::default(),
            max_volume_bytes: 1 << 40,
            max_volumes: if max_volumes == 0 {
                DEFAULT_MAX_VOLUMES
            } else {
                max_volumes
            },
            _lock: lock,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.store.state()
    }

    /// Records a change durably (and applies it to the state).
    async fn commit(&self, change: Change) -> CsiResult<()> {
        self.store
            .commit(change)
            .await
            .map_err(|e| CsiError::io("cannot write the state journal".to_string(), e))
    }

    fn volume(&self, id: &str) -> CsiResult<VolumeRecord> {
        self.state()
            .volumes
            .get(id)
            .cloned()
            .ok_or_else(|| CsiError::NotFound(format!("volume {id} does not exist")))
    }

    fn status(&self, record: &VolumeRecord) -> VolumeStatus {
        VolumeStatus {
            volume: self.to_volume(record),
            published_nodes: record.published.keys().cloned().collect(),
            abnormal: self.abnormal(record),
        }
    }

    /// What is wrong with a volume's image, if anything: unreadable (an I/O
    /// error of the backing store), shorter than the volume, or thin on a
    /// full filesystem (writes to its unallocated parts fail).
    fn abnormal(&self, record: &VolumeRecord) -> Option<String> {
        let image = self.volumes.image_path(&record.id);
        let len = match image::size(&image).and_then(|len| {
            image::check_readable(&image)?;
            Ok(len)
        }) {
            Ok(len) => len,
            Err(e) => return Some(format!("image {} is unreadable: {e}", image.display())),
        };
        if len < record.capacity_bytes {
            return Some(format!(
                "image {} is {len} bytes, smaller than the volume's {}",
                image.display(),
                record.capacity_bytes
            ));
        }
        let thin = record.is_thin();
        let allocated = image::allocated(&image).unwrap_or(len);
        if thin && allocated < record.capacity_bytes {
            let free = crate::node::fs::stats(&self.root).map_or(u64::MAX, |s| s.available_bytes);
            if free == 0 {
                return Some(format!(
                    "the filesystem of {} is full and this thin volume has {} bytes not yet allocated: writes there fail",
                    self.root.display(),
                    record.capacity_bytes - allocated
                ));
            }
        }
        None
    }

    /// The condition of volume `id` (for NodeGetVolumeStats): what is wrong
    /// with its backing store, `None` when healthy.
    pub fn condition(&self, id: &str) -> CsiResult<Option<String>> {
        let record = self.volume(id)?;
        Ok(self.abnormal(&record))
    }

    /// Free space of the state filesystem and what thin volumes may still
    /// take of it.
    async fn space(&self) -> CsiResult<Space> {
        crate::blocking::run(self.space_reader().await?).await
    }

    /// Measures the thin images again when the last measurement is over a
    /// second old.
    async fn measure_thin(&self) -> CsiResult<()> {
        if !self.thin.due() {
            return Ok(());
        }
        let volumes = self.state().thin.to_measure();
        if volumes.is_empty() {
            return Ok(());
        }
        let dir = self.volumes.clone();
        let measured = crate::blocking::run(move || Ok(thin::measure(&dir, volumes))).await?;
        self.state().thin.measured(measured);
        Ok(())
    }

    /// Reads the space of the state filesystem when called (blocking): its
    /// free bytes, and what thin volumes may still take.
    async fn space_reader(
        &self,
    ) -> CsiResult<impl FnOnce() -> CsiResult<Space> + Send + 'static + use<>> {
        self.measure_thin().await?;
        let root = self.root.clone();
        let promised = self.state().thin.promised();
        Ok(move || {
            let free = crate::node::fs::stats(&root)?.available_bytes;
            Ok(Space { free, promised })
        })
    }

    /// RESOURCE_EXHAUSTED, with the free space, when `bytes` do not fit.
    async fn check_space(&self, bytes: u64) -> CsiResult<()> {
        crate::blocking::run(self.space_check(bytes).await?).await
    }

    /// [`Self::check_space`] to run off the async workers (blocking).
    async fn space_check(
        &self,
        bytes: u64,
    ) -> CsiResult<impl FnOnce() -> CsiResult<()> + Send + 'static + use<>> {
        let read = self.space_reader().await?;
        let root = self.root.clone();
        Ok(move || {
            let space = read()?;
            if bytes > space.available() {
                return Err(CsiError::ResourceExhausted(format!(
                    "{bytes} bytes do not fit: the state filesystem of {} has {} bytes available ({} free, {} of it promised to thin volumes); free space or ask for less",
                    root.display(),
                    space.available(),
                    space.free,
                    space.promised
                )));
            }
            Ok(())
        })
    }

    fn to_volume(&self, record: &VolumeRecord) -> Volume {
        Volume {
            id: record.id.clone(),
            capacity_bytes: record.capacity_bytes,
            context: record.node_context.clone(),
            source: record.source.clone(),
            topology: vec![Map::from([(
                TOPOLOGY_KEY.to_string(),
                record.node_id.clone(),
            )])],
        }
    }

    fn check_topology(&self, request: &CreateVolume) -> CsiResult<()> {
        let ours = |segments: &Map| {
            segments
                .get(TOPOLOGY_KEY)
                .is_none_or(|node| *node == self.node_id)
        };
        if request.requisite.is_empty() || request.requisite.iter().any(ours) {
            Ok(())
        } else {
            Err(CsiError::ResourceExhausted(format!(
                "no requisite topology includes this node ({TOPOLOGY_KEY}={}); hostpath volumes live on the node that serves the controller",
                self.node_id
            )))
        }
    }

    async fn write_volume(&self, record: VolumeRecord) -> CsiResult<()> {
        self.commit(Change::Volume(record)).await
    }

    /// Writes the own record kept beside an object's image.
    async fn write_own_record<T: Serialize + Send + 'static>(
        &self,
        dir: &ImageDir,
        id: &str,
        record: T,
    ) -> CsiResult<()> {
        let (dir, id) = (dir.clone(), id.to_string());
        blocking(
            format!("cannot write the record of {id} beside its image"),
            move || dir.write_record(&id, &record),
        )
        .await
    }

    /// Removes the files of an object whose deletion the journal has
    /// committed: first its record becomes a deletion mark, so that a
    /// start after a crash here finishes the deletion rather than keeping
    /// the image aside.
    async fn remove_files(&self, dir: &ImageDir, id: &str) -> CsiResult<()> {
        let (dir, id) = (dir.clone(), id.to_string());
        blocking(format!("cannot remove the files of {id}"), move || {
            dir.mark_deleted(&id)?;
            dir.finish_deletion(&id)
        })
        .await
    }
}

impl VolumeRecord {
    /// The record kept beside the image: the journal's, without what
    /// changes with every publish.
    fn own_record(&self) -> VolumeRecord {
        VolumeRecord {
            published: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// Whether the volume is thin (a record with a provisioning this
    /// version does not know counts as thick).
    fn is_thin(&self) -> bool {
        provisioning(&self.parameters).ok() == Some(Provisioning::Thin)
    }
}

/// What a look at a state directory finds, without taking it over.
#[derive(Debug, Default)]
pub struct Inspection {
    /// The process serving it, as its lock file names it.
    pub holder: Option<String>,
    pub journal: bool,
    /// Images of volumes and snapshots.
    pub images: usize,
    /// Files start-up kept aside.
    pub kept_aside: Vec<PathBuf>,
}

/// Looks at a state directory (read only; it may be served meanwhile).
pub fn inspect(root: &Path) -> Inspection {
    let count = |name: &str| {
        std::fs::read_dir(root.join(name)).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "img"))
                .count()
        })
    };
    Inspection {
        holder: owner::holder(root).ok().flatten(),
        journal: root.join(JOURNAL).exists(),
        images: count("volumes") + count("snapshots"),
        kept_aside: files::kept_aside(&root.join(KEPT_ASIDE)).unwrap_or_default(),
    }
}

/// How to rebuild a journal that cannot be used.
fn recovery_hint(root: &Path) -> String {
    format!(
        "Rebuild the journal from the images' own records with `multicsi recover --state-dir {}` (it keeps the old journal beside the new one), then start again; see Troubleshooting in the README",
        root.display()
    )
}

/// Brings one directory of images in line with the journal: removes
/// temporary files, finishes deletions the journal committed (their own
/// mark says so), writes the own record of every object the journal names
/// where it is missing or stale, and keeps aside (moves into `aside`) every
/// image and record the journal does not name.
fn settle<T>(
    dir: &ImageDir,
    aside: &Path,
    stamp: u64,
    known: impl Fn(&str) -> Option<T>,
) -> Result<(), String>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq,
{
    let at = |e: std::io::Error| format!("cannot settle {}: {e}", dir.path().display());
    for path in dir.remove_temps().map_err(at)? {
        tracing::info!(path = %path.display(), "removed a temporary file of an interrupted operation");
    }
    let (ids, deleted) = dir.ids().map_err(at)?;
    // Failures below only leave things where they are (nothing is lost, and
    // an image in place is never overwritten): warned, and the start goes
    // on, so that a full disk does not keep the driver down.
    let warn = |what: &str, id: &str, e: std::io::Error| {
        tracing::warn!(id = %id, dir = %dir.path().display(), error = %e, "cannot {what}");
    };
    for id in ids {
        match known(&id) {
            Some(record) => {
                let current = matches!(dir.read_record::<T>(&id), Ok(Some(r)) if r == record);
                if (deleted.contains(&id) || !current)
                    && let Err(e) = dir.write_record(&id, &record)
                {
                    warn("write the record beside the image", &id, e);
                }
            }
            None if deleted.contains(&id) => match dir.finish_deletion(&id) {
                Ok(()) => {
                    tracing::info!(id = %id, dir = %dir.path().display(), "finished a deletion the journal had committed")
                }
                Err(e) => warn("finish a committed deletion", &id, e),
            },
            None => match dir.keep_aside(&id, aside, stamp) {
                Ok(moved) => {
                    let moved: Vec<String> =
                        moved.iter().map(|p| p.display().to_string()).collect();
                    tracing::warn!(id = %id, moved_to = ?moved, "kept aside: the state journal does not name this image; it was not deleted (see Troubleshooting in the README)");
                }
                Err(e) => warn(
                    "keep aside an image the journal does not name (left in place)",
                    &id,
                    e,
                ),
            },
        }
    }
    Ok(())
}

/// Counts what lies kept aside, for the log and the metric.
fn report_kept_aside(root: &Path) {
    let aside = root.join(KEPT_ASIDE);
    match files::kept_aside(&aside) {
        Ok(found) => {
            crate::metrics::set_kept_aside(found.len() as u64);
            if !found.is_empty() {
                tracing::warn!(files = found.len(), dir = %aside.display(), "files kept aside wait for an operator: move them back and run `multicsi recover`, or delete them");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, dir = %aside.display(), "cannot list the files kept aside")
        }
    }
}

fn report_broken(broken: &[String]) -> Result<(), String> {
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "unreadable state records (move them away after checking them): {}",
            broken.join("; ")
        ))
    }
}

/// A record whose image is missing or short (its create or expand was cut
/// off before the image became durable) gets a sparse image of its size.
fn repair_image(path: &Path, capacity: u64) -> Result<(), String> {
    let result = match image::size(path) {
        Ok(len) if len >= capacity => return Ok(()),
        Ok(_) => image::grow(path, capacity),
        Err(_) => image::create(path, capacity),
    };
    tracing::warn!(path = %path.display(), "image missing or short; restored to the recorded size");
    result.map_err(|e| format!("cannot repair image {}: {e}", path.display()))
}

/// Reserves the space of a thick volume again at start: a create or
/// expand is acknowledged once its journal entry is durable, before its
/// reservation is, so a crash may have lost the latter. Where the space is
/// gone, the volume still serves (as thin) and the log says so.
fn reserve_again(path: &Path, capacity: u64) {
    // Always: the allocated size counts the block of the record the image
    // carries, and allocating what is allocated changes nothing.
    if let Err(e) = image::reserve(path, capacity) {
        tracing::warn!(path = %path.display(), error = %e, "cannot reserve the space of this thick volume again; writes to its unallocated parts may fail until space is freed and the driver restarts");
    }
}

/// Copies a volume's image; when the volume is mounted on this host its
/// filesystem is frozen (or at least flushed) for the copy, so the copy
/// holds everything written before the call, consistently.
fn copy_live(source: &Path, target: &Path, size: u64, records: &Path) -> std::io::Result<()> {
    let quiesced = freeze::quiesce_image(source, records).map_err(std::io::Error::other)?;
    if let Some(q) = &quiesced {
        tracing::debug!(mount_point = %q.mount_point().display(), frozen = q.is_frozen(), "filesystem quiesced for the copy");
    }
    let copied = image::copy(source, target, size);
    drop(quiesced);
    copied
}

fn same_request(record: &VolumeRecord, request: &CreateVolume) -> Result<(), String> {
    if record.source != request.source {
        return Err("a different content source".into());
    }
    let wanted = MadeAs::from_context(&request.node_context)
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| made_as_from_fs(request.fs_type.as_deref()));
    let made = record.made_as();
    if made != wanted {
        return Err(format!("{wanted}, but it is {made}"));
    }
    if record.parameters != request.parameters
        || without_made_as(&record.node_context) != without_made_as(&request.node_context)
    {
        return Err("different parameters".into());
    }
    if record.capacity_bytes < request.required_bytes
        || (request.limit_bytes > 0 && record.capacity_bytes > request.limit_bytes)
    {
        return Err(format!(
            "a capacity range that excludes its size of {} bytes",
            record.capacity_bytes
        ));
    }
    Ok(())
}

/// What a volume with this filesystem (none: raw block) was made as.
fn made_as_from_fs(fs_type: Option<&str>) -> MadeAs {
    match fs_type {
        Some(fs) => MadeAs::Filesystem(fs.to_string()),
        None => MadeAs::Block,
    }
}

impl VolumeRecord {
    /// What the volume was made as: recorded in its context; a volume of an
    /// earlier version has only its filesystem, none for a block volume.
    fn made_as(&self) -> MadeAs {
        MadeAs::from_context(&self.node_context)
            .ok()
            .flatten()
            .unwrap_or_else(|| made_as_from_fs(self.fs_type.as_deref()))
    }
}

impl HostPath {
    /// What volume `id` was made as, from its record (NOT_FOUND when there
    /// is none).
    pub fn recorded(&self, id: &str) -> CsiResult<Recorded> {
        let record = self.volume(id)?;
        Ok(Recorded {
            made_as: record.made_as(),
            encrypted: crate::csi::params::luks(&record.node_context)?.is_some(),
            context: record.node_context,
        })
    }
}

#[async_trait]
impl Backend for HostPath {
    fn name(&self) -> &'static str {
        "hostpath"
    }

    fn features(&self) -> Features {
        Features {
            snapshots: true,
            clone: true,
            expand: true,
            capacity: true,
            attach: true,
            volume_condition: true,
        }
    }

    fn parameter_keys(&self) -> &'static [&'static str] {
        &[PROVISIONING]
    }

    async fn ready(&self) -> CsiResult<()> {
        if let Some(why) = self.store.trouble() {
            return Err(CsiError::Unavailable(why));
        }
        let space = self.space().await?;
        let journal = std::fs::metadata(self.root.join(JOURNAL)).map_or(0, |m| m.len());
        if space.free < journal {
            return Err(CsiError::Unavailable(format!(
                "the state filesystem of {} has {} bytes free, less than the {journal} the state journal needs to compact: free space there (deleting volumes works meanwhile)",
                self.root.display(),
                space.free
            )));
        }
        let probe = self.volumes.temp_path("probe");
        blocking(
            format!("state directory {} is not writable", self.root.display()),
            move || {
                std::fs::write(&probe, b"")?;
                std::fs::remove_file(&probe)
            },
        )
        .await
    }

    async fn create_volume(&self, request: &CreateVolume) -> CsiResult<Volume> {
        let id = id_for(VOLUME_PREFIX, &request.name);
        let _guard = self.busy.acquire(&[&id])?;
        if let Some(existing) = self.state().volumes.get(&id).cloned() {
            return match same_request(&existing, request) {
                Ok(()) => Ok(self.to_volume(&existing)),
                Err(why) => Err(CsiError::AlreadyExists(format!(
                    "volume {:?} exists already ({id}) and this request asks for {why}",
                    request.name
                ))),
            };
        }
        self.check_topology(request)?;
        let rules = size_rules(request.fs_type.as_deref(), self.max_volume_bytes);
        let target = self.volumes.image_path(&id);
        let (source_image, floor, _source_guard) = match &request.source {
            None => (None, 0, None),
            Some(ContentSource::Snapshot(sid)) => {
                let snapshot = self.state().snapshots.get(sid).cloned().ok_or_else(|| {
                    CsiError::NotFound(format!("source snapshot {sid} does not exist"))
                })?;
                let guard = self.busy.acquire(&[sid])?;
                (
                    Some(self.snapshots.image_path(sid)),
                    snapshot.size_bytes,
                    Some(guard),
                )
            }
            Some(ContentSource::Volume(vid)) => {
                let source = self.volume(vid).map_err(|_| {
                    CsiError::NotFound(format!("source volume {vid} does not exist"))
                })?;
                let guard = self.busy.acquire(&[vid])?;
                (
                    Some(self.volumes.image_path(vid)),
                    source.capacity_bytes,
                    Some(guard),
                )
            }
        };
        let size = size::choose(rules, request.required_bytes, request.limit_bytes, floor)?;
        let thin = provisioning(&request.parameters)? == Provisioning::Thin;
        let record = VolumeRecord {
            id: id.clone(),
            name: request.name.clone(),
            capacity_bytes: size,
            parameters: request.parameters.clone(),
            node_context: request.node_context.clone(),
            fs_type: request.fs_type.clone(),
            source: request.source.clone(),
            node_id: self.node_id.clone(),
            published: BTreeMap::new(),
            created_unix: now_unix().as_secs(),
        };
        let volume = self.to_volume(&record);
        // One trip off the async workers: the space check, the image and
        // its own record.
        let what = format!("cannot create image {} and its record", target.display());
        let records = self.root.join(FREEZE_RECORDS);
        let (dir, own, own_id) = (self.volumes.clone(), record.own_record(), id.clone());
        make_image(
            target.clone(),
            what,
            self.space_check(size).await?,
            move || match source_image {
                None => image::make(&target, size, !thin)
                    .and_then(|file| dir.write_new_record(&file, &own_id, &own)),
                Some(source) => copy_live(&source, &target, size, &records)
                    .and_then(|()| {
                        if thin {
                            Ok(())
                        } else {
                            image::reserve(&target, size)
                        }
                    })
                    .and_then(|()| dir.write_record(&own_id, &own)),
            },
        )
        .await?;
        if let Err(e) = self.write_volume(record).await {
            // Never acknowledged: this call's own image and record go.
            let _ = files::remove_if_present(&self.volumes.image_path(&id));
            let _ = files::remove_if_present(&self.volumes.record_path(&id));
            return Err(e);
        }
        tracing::info!(volume_id = %id, name = %request.name, bytes = size, "volume created");
        Ok(volume)
    }

    async fn delete_volume(&self, id: &str) -> CsiResult<()> {
        let _guard = self.busy.acquire(&[id])?;
        let Some(record) = self.state().volumes.get(id).cloned() else {
            return Ok(());
        };
        if !record.published.is_empty() {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {id} is still published to {}; unpublish it first",
                record
                    .published
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let image = self.volumes.image_path(id);
        // A controller that cannot see the node's loop devices skips the check.
        let attached = crate::blocking::run(move || Ok(loopdev::find(&image))).await?;
        if let Ok(Some(device)) = attached {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {id} is still attached on this node as {}; unstage it first",
                device.display()
            )));
        }
        self.commit(Change::VolumeDeleted(id.to_string())).await?;
        self.remove_files(&self.volumes, id).await?;
        tracing::info!(volume_id = %id, "volume deleted");
        Ok(())
    }

    async fn get_volume(&self, id: &str) -> CsiResult<VolumeStatus> {
        let record = self.volume(id)?;
        Ok(self.status(&record))
    }

    async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>> {
        let records: Vec<VolumeRecord> = self.state().volumes.values().cloned().collect();
        Ok(records.iter().map(|r| self.status(r)).collect())
    }

    async fn publish(&self, id: &str, node_id: &str, read_only: bool) -> CsiResult<Map> {
        let _guard = self.busy.acquire(&[id])?;
        let mut record = self.volume(id)?;
        if node_id != self.node_id {
            return Err(CsiError::NotFound(format!(
                "node {node_id} is unknown: hostpath volumes live on node {}",
                self.node_id
            )));
        }
        match record.published.get(node_id) {
            Some(&ro) if ro == read_only => return Ok(Map::new()),
            Some(_) => {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {id} is already published to {node_id} with readonly={}",
                    !read_only
                )));
            }
            None => {}
        }
        let on_node = self
            .state()
            .volumes
            .values()
            .filter(|r| r.published.contains_key(node_id))
            .count() as u64;
        if on_node >= self.max_volumes {
            return Err(CsiError::ResourceExhausted(format!(
                "node {node_id} has {on_node} volumes published, its limit (--max-volumes-per-node); unpublish one first"
            )));
        }
        record.published.insert(node_id.to_string(), read_only);
        self.write_volume(record).await?;
        Ok(Map::new())
    }

    async fn unpublish(&self, id: &str, node_id: Option<&str>) -> CsiResult<()> {
        let _guard = self.busy.acquire(&[id])?;
        let Ok(mut record) = self.volume(id) else {
            return Ok(());
        };
        let before = record.published.len();
        match node_id {
            Some(node) => {
                record.published.remove(node);
            }
            None => record.published.clear(),
        }
        if record.published.len() != before {
            self.write_volume(record).await?;
        }
        Ok(())
    }

    async fn expand(&self, id: &str, required_bytes: u64, limit_bytes: u64) -> CsiResult<u64> {
        let _guard = self.busy.acquire(&[id])?;
        let mut record = self.volume(id)?;
        if required_bytes <= record.capacity_bytes
            && (limit_bytes == 0 || record.capacity_bytes <= limit_bytes)
        {
            return Ok(record.capacity_bytes);
        }
        let rules = size_rules(record.fs_type.as_deref(), self.max_volume_bytes);
        let size = size::choose(rules, required_bytes, limit_bytes, record.capacity_bytes)?;
        let thin = provisioning(&record.parameters)? == Provisioning::Thin;
        self.check_space(size - record.capacity_bytes).await?;
        let image = self.volumes.image_path(id);
        let what = format!("cannot grow {}", image.display());
        crate::blocking::run(move || {
            if thin {
                image::grow(&image, size)
            } else {
                image::reserve(&image, size)
            }
            .map_err(|e| space_error(what, e))
        })
        .await?;
        record.capacity_bytes = size;
        let own = record.own_record();
        self.write_volume(record).await?;
        self.write_own_record(&self.volumes, id, own).await?;
        tracing::info!(volume_id = %id, bytes = size, "volume expanded");
        Ok(size)
    }

    async fn capacity(&self) -> CsiResult<Capacity> {
        let available = self.space().await?.available();
        Ok(Capacity {
            available_bytes: available,
            maximum_volume_bytes: available.min(self.max_volume_bytes),
            minimum_volume_bytes: MIB,
        })
    }

    async fn create_snapshot(&self, source_volume_id: &str, name: &str) -> CsiResult<Snapshot> {
        let id = id_for(SNAPSHOT_PREFIX, name);
        let _guard = self.busy.acquire(&[&id])?;
        if let Some(existing) = self.state().snapshots.get(&id).cloned() {
            if existing.source_volume_id == source_volume_id {
                return Ok(to_snapshot(&existing));
            }
            return Err(CsiError::AlreadyExists(format!(
                "snapshot {name:?} exists already ({id}) for volume {}, not {source_volume_id}",
                existing.source_volume_id
            )));
        }
        let source = self.volume(source_volume_id)?;
        let _source_guard = self.busy.acquire(&[source_volume_id])?;
        let from = self.volumes.image_path(source_volume_id);
        let to = self.snapshots.image_path(&id);
        let size = source.capacity_bytes;
        let records = self.root.join(FREEZE_RECORDS);
        let what = format!("cannot copy {} to {}", from.display(), to.display());
        make_image(
            to.clone(),
            what,
            || Ok(()),
            move || copy_live(&from, &to, size, &records),
        )
        .await?;
        let record = SnapshotRecord {
            id: id.clone(),
            name: name.to_string(),
            source_volume_id: source_volume_id.to_string(),
            size_bytes: size,
            created_unix_nanos: now_unix().as_nanos(),
            group_id: None,
        };
        let written = self
            .write_own_record(&self.snapshots, &id, record.clone())
            .await;
        if let Err(e) = match written {
            Ok(()) => self.commit(Change::Snapshot(record.clone())).await,
            Err(e) => Err(e),
        } {
            let _ = files::remove_if_present(&self.snapshots.image_path(&id));
            let _ = files::remove_if_present(&self.snapshots.record_path(&id));
            return Err(e);
        }
        tracing::info!(snapshot_id = %id, volume_id = %source_volume_id, "snapshot created");
        Ok(to_snapshot(&record))
    }

    async fn delete_snapshot(&self, id: &str) -> CsiResult<()> {
        let _guard = self.busy.acquire(&[id])?;
        let Some(record) = self.state().snapshots.get(id).cloned() else {
            return Ok(());
        };
        if let Some(group) = &record.group_id
            && self.state().groups.contains_key(group)
        {
            return Err(CsiError::InvalidArgument(format!(
                "snapshot {id} is a member of group snapshot {group} and cannot be deleted alone; delete the group snapshot (DeleteVolumeGroupSnapshot)"
            )));
        }
        self.commit(Change::SnapshotDeleted(id.to_string())).await?;
        self.remove_files(&self.snapshots, id).await
    }

    async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>> {
        Ok(self.state().snapshots.values().map(to_snapshot).collect())
    }

    fn group_snapshots(&self) -> bool {
        true
    }

    async fn create_group_snapshot(
        &self,
        name: &str,
        source_volume_ids: &[String],
    ) -> CsiResult<GroupSnapshot> {
        self.create_group(name, source_volume_ids).await
    }

    async fn delete_group_snapshot(&self, id: &str, snapshot_ids: &[String]) -> CsiResult<()> {
        self.delete_group(id, snapshot_ids).await
    }

    async fn get_group_snapshot(
        &self,
        id: &str,
        snapshot_ids: &[String],
    ) -> CsiResult<GroupSnapshot> {
        self.get_group(id, snapshot_ids)
    }

    fn snapshot_metadata(&self) -> bool {
        true
    }

    async fn allocated_extents(&self, snapshot_id: &str, from: u64) -> CsiResult<ExtentStream> {
        self.snapshot_allocated(snapshot_id, from).await
    }

    async fn changed_extents(
        &self,
        base_snapshot_id: &str,
        target_snapshot_id: &str,
        from: u64,
    ) -> CsiResult<ExtentStream> {
        self.snapshot_delta(base_snapshot_id, target_snapshot_id, from)
            .await
    }
}

fn to_snapshot(record: &SnapshotRecord) -> Snapshot {
    Snapshot {
        id: record.id.clone(),
        source_volume_id: record.source_volume_id.clone(),
        size_bytes: record.size_bytes,
        created: UNIX_EPOCH + Duration::from_nanos(record.created_unix_nanos as u64),
        ready: true,
        group_snapshot_id: record.group_id.clone(),
    }
}

#[async_trait]
impl NodeBackend for HostPath {
    fn topology(&self) -> Map {
        Map::from([(TOPOLOGY_KEY.to_string(), self.node_id.clone())])
    }

    fn max_volumes(&self) -> u64 {
        self.max_volumes
    }

    async fn ready(&self) -> CsiResult<()> {
        if Path::new("/dev/loop-control").exists() {
            Ok(())
        } else {
            Err(CsiError::Unavailable(
                "/dev/loop-control is missing: load the loop module (modprobe loop)".into(),
            ))
        }
    }

    async fn attach_device(&self, volume_id: &str, _publish_context: &Map) -> CsiResult<PathBuf> {
        let image = self.volumes.image_path(volume_id);
        if !image.exists() {
            return Err(CsiError::NotFound(format!(
                "volume {volume_id} does not exist on this node (no image {})",
                image.display()
            )));
        }
        crate::blocking::run(move || Ok(loopdev::attach(&image)?)).await
    }

    async fn find_device(&self, volume_id: &str) -> CsiResult<Option<PathBuf>> {
        let image = self.volumes.image_path(volume_id);
        crate::blocking::run(move || Ok(loopdev::find(&image)?)).await
    }

    async fn detach_device(&self, volume_id: &str) -> CsiResult<()> {
        let image = self.volumes.image_path(volume_id);
        crate::blocking::run(move || {
            if let Some(device) = loopdev::find(&image)? {
                loopdev::detach(&device)?;
            }
            Ok(())
        })
        .await
    }

    async fn recorded(&self, volume_id: &str) -> CsiResult<Option<Recorded>> {
        HostPath::recorded(self, volume_id).map(Some)
    }

    async fn backing_condition(&self, volume_id: &str) -> CsiResult<Option<String>> {
        self.condition(volume_id)
    }

    async fn refresh_device(&self, volume_id: &str) -> CsiResult<u64> {
        let image = self.volumes.image_path(volume_id);
        let id = volume_id.to_string();
        crate::blocking::run(move || {
            let device = loopdev::find(&image)?.ok_or_else(|| {
                CsiError::NotFound(format!("volume {id} is not attached on this node"))
            })?;
            loopdev::refresh_capacity(&device)?;
            Ok(loopdev::device_size(&device)?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(
            id_for(VOLUME_PREFIX, "pvc-1"),
            id_for(VOLUME_PREFIX, "pvc-1")
        );
        assert_ne!(
            id_for(VOLUME_PREFIX, "pvc-1"),
            id_for(VOLUME_PREFIX, "pvc-2")
        );
        assert_eq!(id_for(VOLUME_PREFIX, "x").len(), 3 + 32);
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn record(id: &str, capacity_bytes: u64) -> VolumeRecord {
        VolumeRecord {
            id: id.into(),
            name: format!("name-{id}"),
            capacity_bytes,
            parameters: Map::new(),
            node_context: Map::new(),
            fs_type: None,
            source: None,
            node_id: "n".into(),
            published: BTreeMap::new(),
            created_unix: 1,
        }
    }

    #[test]
    fn records_of_earlier_versions_move_into_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("volumes");
        std::fs::create_dir_all(&dir).unwrap();
        let old = record("hp-old", 4 * MIB);
        std::fs::write(dir.join("hp-old.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        image::create(&dir.join("hp-old.img"), 4 * MIB).unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        assert_eq!(backend.state().volumes.get("hp-old"), Some(&old));
        assert!(!dir.join("hp-old.json").exists());
        drop(backend);
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        assert_eq!(backend.state().volumes.get("hp-old"), Some(&old));
    }

    #[test]
    fn start_keeps_orphans_aside_and_repairs_short_images() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let rt = runtime();
        rt.block_on(backend.commit(Change::Volume(record("hp-a", 8 * MIB))))
            .unwrap();
        drop(backend);
        let volumes = tmp.path().join("volumes");
        image::create(&volumes.join("hp-a.img"), MIB).unwrap();
        std::fs::write(volumes.join("hp-orphan.img"), b"data").unwrap();
        std::fs::write(volumes.join("hp-b.tmp-1-1"), b"x").unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        assert_eq!(image::size(&volumes.join("hp-a.img")).unwrap(), 8 * MIB);
        assert!(!volumes.join("hp-orphan.img").exists());
        let aside = files::kept_aside(&tmp.path().join(KEPT_ASIDE)).unwrap();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), b"data");
        assert!(!volumes.join("hp-b.tmp-1-1").exists());
        assert_eq!(backend.state().volumes.len(), 1);
        // The known volume got its own record beside its image.
        let own: VolumeRecord = backend.volumes.read_record("hp-a").unwrap().unwrap();
        assert_eq!(own, record("hp-a", 8 * MIB));
    }

    #[test]
    fn start_reserves_the_space_of_thick_volumes_a_crash_left_sparse() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let rt = runtime();
        let mut thin = record("hp-thin", 8 * MIB);
        thin.parameters
            .insert(PROVISIONING.to_string(), "thin".to_string());
        for r in [record("hp-thick", 8 * MIB), thin] {
            // Acknowledged with its journal entry; the image's reservation
            // did not reach the disk.
            image::create(&backend.volumes.image_path(&r.id), 8 * MIB).unwrap();
            rt.block_on(backend.commit(Change::Volume(r))).unwrap();
        }
        drop(backend);
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let allocated = |id| image::allocated(&backend.volumes.image_path(id)).unwrap();
        assert!(
            allocated("hp-thick") >= 8 * MIB,
            "{}",
            allocated("hp-thick")
        );
        // Nothing reserved: at most the block of the record it carries.
        assert!(allocated("hp-thin") <= 4096, "{}", allocated("hp-thin"));
    }

    #[test]
    fn a_deletion_cut_off_by_a_crash_is_finished_only_when_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let rt = runtime();
        for id in ["hp-marked", "hp-unmarked"] {
            rt.block_on(backend.commit(Change::Volume(record(id, MIB))))
                .unwrap();
            image::create(&backend.volumes.image_path(id), MIB).unwrap();
            backend.volumes.write_record(id, &record(id, MIB)).unwrap();
            rt.block_on(backend.commit(Change::VolumeDeleted(id.into())))
                .unwrap();
        }
        // Cut off after the mark, and before it.
        backend.volumes.mark_deleted("hp-marked").unwrap();
        drop(backend);
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let (ids, _) = backend.volumes.ids().unwrap();
        assert!(ids.is_empty(), "{ids:?}");
        let aside = files::kept_aside(&tmp.path().join(KEPT_ASIDE)).unwrap();
        let names: Vec<String> = aside
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("hp-unmarked-")),
            "{names:?}"
        );
        // The image kept aside keeps its record (on it, or beside it).
        let image = aside
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "img"));
        let image = image.expect("the image is kept aside");
        let kept = ImageDir::open(image.parent().unwrap().to_path_buf()).unwrap();
        let stem = image.file_stem().unwrap().to_str().unwrap();
        let own: VolumeRecord = kept.read_record(stem).unwrap().unwrap();
        assert_eq!(own, record("hp-unmarked", MIB));
    }

    #[test]
    fn the_node_reads_what_a_volume_was_made_as_and_its_condition() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let rt = runtime();
        let mut block = CreateVolume::sized("pvc-block", MIB, 0);
        block.node_context = MadeAs::Block.to_context();
        block
            .node_context
            .insert(crate::csi::params::LUKS_ENCRYPTED.into(), "true".into());
        let mut fs = CreateVolume::sized("pvc-fs", MIB, 0);
        fs.fs_type = Some("xfs".into());
        fs.node_context = MadeAs::Filesystem("xfs".into()).to_context();
        let node: &dyn NodeBackend = &backend;
        rt.block_on(async {
            let block = backend.create_volume(&block).await.unwrap();
            let fs = backend.create_volume(&fs).await.unwrap();
            let recorded = node.recorded(&block.id).await.unwrap().unwrap();
            assert_eq!(recorded.made_as, MadeAs::Block);
            assert!(recorded.encrypted);
            let recorded = node.recorded(&fs.id).await.unwrap().unwrap();
            assert_eq!(recorded.made_as, MadeAs::Filesystem("xfs".into()));
            assert!(!recorded.encrypted);
            assert!(matches!(
                node.recorded("hp-unknown").await,
                Err(CsiError::NotFound(_))
            ));
            assert_eq!(node.backing_condition(&fs.id).await.unwrap(), None);
            std::fs::remove_file(backend.volumes.image_path(&fs.id)).unwrap();
            let condition = node.backing_condition(&fs.id).await.unwrap().unwrap();
            assert!(condition.contains("unreadable"), "{condition}");
        });
    }

    #[test]
    fn a_create_never_overwrites_a_file_in_its_way() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let rt = runtime();
        let target = backend
            .volumes
            .image_path(&id_for(VOLUME_PREFIX, "pvc-in-the-way"));
        std::fs::write(&target, b"someone's data").unwrap();
        let request = CreateVolume::sized("pvc-in-the-way", MIB, 0);
        let err = rt.block_on(backend.create_volume(&request)).unwrap_err();
        assert!(err.to_string().contains("in the way"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"someone's data");
    }

    #[test]
    fn a_second_open_of_the_state_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = HostPath::open(tmp.path(), "n", 0).unwrap();
        let err = HostPath::open(tmp.path(), "n", 0).err().unwrap();
        assert!(err.contains("in use by another multicsi process"), "{err}");
    }

    #[test]
    fn a_damaged_journal_stops_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let rt = runtime();
        for id in ["hp-a", "hp-b"] {
            rt.block_on(backend.commit(Change::Volume(record(id, MIB))))
                .unwrap();
        }
        drop(backend);
        let path = tmp.path().join("journal");
        let mut data = std::fs::read(&path).unwrap();
        let at = data.windows(4).position(|w| w == b"hp-a").unwrap();
        data[at] = b'H';
        std::fs::write(&path, &data).unwrap();
        let err = HostPath::open(tmp.path(), "n", 0).err().unwrap();
        assert!(err.contains("refusing to start"), "{err}");
    }
}
