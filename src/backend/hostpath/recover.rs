//! `multicsi recover`: rebuilds the hostpath state journal from the own
//! records kept beside the images, for a journal that is lost or damaged.
//!
//! It takes the state directory's lock (so it never runs beside a server),
//! keeps the old journal under a new name and writes a fresh one naming
//! every image of the state: with its own record where it has one, else
//! with what the image itself tells (its ID and size). No image is moved,
//! changed or deleted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use clap::Args;

use super::files::ImageDir;
use super::journal::Journal;
use super::owner::StateLock;
use super::{Change, JOURNAL, SnapshotRecord, State, VolumeRecord, image, now_unix};

/// The flags of `multicsi recover`.
#[derive(Args, Debug, Clone)]
pub struct RecoverArgs {
    /// The hostpath state directory whose journal is rebuilt.
    #[arg(long, env = "MULTICSI_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The node of volumes whose image has no own record (default: the
    /// node the other records name).
    #[arg(long)]
    pub node_id: Option<String>,
}

/// What a recovery did.
#[derive(Debug, Default)]
pub struct Recovery {
    pub volumes: Vec<String>,
    pub snapshots: Vec<String>,
    /// Objects recovered from their image alone (no own record): their
    /// name and parameters are unknown.
    pub without_record: Vec<String>,
    /// Objects not recovered, and why.
    pub skipped: Vec<String>,
    /// Where the old journal was kept, if there was one.
    pub old_journal: Option<PathBuf>,
}

/// Entry point of `multicsi recover`.
pub fn recover_main(args: RecoverArgs) -> ExitCode {
    match recover(&args.state_dir, args.node_id.as_deref()) {
        Ok(done) => {
            println!("{}", describe(&done));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("multicsi recover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn describe(done: &Recovery) -> String {
    let mut out = format!(
        "rebuilt the state journal: {} volume(s), {} snapshot(s)\n",
        done.volumes.len(),
        done.snapshots.len()
    );
    for id in done.volumes.iter().chain(&done.snapshots) {
        out.push_str(&format!("  recovered {id}\n"));
    }
    for id in &done.without_record {
        out.push_str(&format!(
            "  {id} had no record beside its image: recovered with its size only (name and parameters unknown)\n"
        ));
    }
    for why in &done.skipped {
        out.push_str(&format!("  not recovered: {why}\n"));
    }
    if let Some(old) = &done.old_journal {
        out.push_str(&format!("the old journal is kept as {}\n", old.display()));
    }
    out
}

/// Rebuilds the journal of the state directory `root`.
pub fn recover(root: &Path, node_id: Option<&str>) -> Result<Recovery, String> {
    if !root.join("volumes").is_dir() {
        return Err(format!(
            "{} is not a hostpath state directory (it has no volumes directory)",
            root.display()
        ));
    }
    let _lock = StateLock::acquire(root).map_err(|e| e.to_string())?;
    let open = |name: &str| {
        ImageDir::open(root.join(name)).map_err(|e| format!("cannot open {name}: {e}"))
    };
    let (volumes, snapshots) = (open("volumes")?, open("snapshots")?);
    let mut done = Recovery::default();
    let mut entries = Vec::new();
    let mut bare_volumes = Vec::new();
    let (ids, deleted) = volumes
        .ids()
        .map_err(|e| format!("cannot read {}: {e}", volumes.path().display()))?;
    for id in ids {
        let Some(size) = usable(&volumes, &id, &deleted, &mut done) else {
            continue;
        };
        match volumes.read_record::<VolumeRecord>(&id) {
            Ok(Some(record)) => {
                let capacity_bytes = record.capacity_bytes.max(size);
                entries.push(Change::Volume(VolumeRecord {
                    capacity_bytes,
                    ..record.own_record()
                }));
                done.volumes.push(id);
            }
            Ok(None) | Err(_) => bare_volumes.push((id, size)),
        }
    }
    let node = match node_id {
        Some(node) => Some(node.to_string()),
        None => entries.iter().find_map(|c| match c {
            Change::Volume(r) => Some(r.node_id.clone()),
            _ => None,
        }),
    };
    if !bare_volumes.is_empty() && node.is_none() {
        return Err(format!(
            "volume(s) {} have no record beside their image and no other record names their node: pass --node-id with the node's ID",
            bare_volumes
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (id, size) in bare_volumes {
        entries.push(Change::Volume(VolumeRecord {
            id: id.clone(),
            name: id.clone(),
            capacity_bytes: size,
            parameters: Default::default(),
            node_context: Default::default(),
            fs_type: None,
            source: None,
            node_id: node.clone().unwrap_or_default(),
            published: Default::default(),
            created_unix: (modified(&volumes.image_path(&id)) / 1_000_000_000) as u64,
        }));
        done.without_record.push(id.clone());
        done.volumes.push(id);
    }
    let (ids, deleted) = snapshots
        .ids()
        .map_err(|e| format!("cannot read {}: {e}", snapshots.path().display()))?;
    for id in ids {
        let Some(size) = usable(&snapshots, &id, &deleted, &mut done) else {
            continue;
        };
        let record = match snapshots.read_record::<SnapshotRecord>(&id) {
            Ok(Some(record)) => record,
            Ok(None) | Err(_) => {
                done.without_record.push(id.clone());
                SnapshotRecord {
                    id: id.clone(),
                    name: id.clone(),
                    source_volume_id: String::new(),
                    size_bytes: size,
                    created_unix_nanos: modified(&snapshots.image_path(&id)),
                    group_id: None,
                }
            }
        };
        entries.push(Change::Snapshot(record));
        done.snapshots.push(id);
    }
    let journal = root.join(JOURNAL);
    if journal.exists() {
        let stamp = now_unix().as_secs();
        let kept = (0u32..)
            .map(|n| root.join(format!("{JOURNAL}.replaced-{stamp}-{n}")))
            .find(|path| !path.exists())
            .unwrap_or_else(|| root.join(format!("{JOURNAL}.replaced-{stamp}")));
        std::fs::rename(&journal, &kept)
            .map_err(|e| format!("cannot move the old journal aside: {e}"))?;
        done.old_journal = Some(kept);
    }
    Journal::<State>::write_fresh(&journal, &entries)
        .map_err(|e| format!("cannot write the journal {}: {e}", journal.display()))?;
    Ok(done)
}

/// The size of an object's image, when it is one to recover.
fn usable(
    dir: &ImageDir,
    id: &str,
    deleted: &std::collections::BTreeSet<String>,
    done: &mut Recovery,
) -> Option<u64> {
    if deleted.contains(id) {
        done.skipped.push(format!(
            "{id}: its deletion was committed (it is finished at the next start)"
        ));
        return None;
    }
    match image::size(&dir.image_path(id)) {
        Ok(size) => Some(size),
        Err(_) => {
            done.skipped.push(format!(
                "{id}: it has a record but no image (left where it is)"
            ));
            None
        }
    }
}

/// A file's modification time in nanoseconds since the epoch (0 unknown).
fn modified(path: &Path) -> u128 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::hostpath::HostPath;

    #[test]
    fn the_journal_is_rebuilt_from_the_images_and_their_records() {
        let tmp = tempfile::tempdir().unwrap();
        drop(HostPath::open(tmp.path(), "n", 0).unwrap());
        let volumes = ImageDir::open(tmp.path().join("volumes")).unwrap();
        let with_record = VolumeRecord {
            id: "hp-a".into(),
            name: "pvc-a".into(),
            capacity_bytes: 1 << 20,
            parameters: Default::default(),
            node_context: Default::default(),
            fs_type: Some("ext4".into()),
            source: None,
            node_id: "node-1".into(),
            published: Default::default(),
            created_unix: 1,
        };
        image::create(&volumes.image_path("hp-a"), 2 << 20).unwrap();
        volumes.write_record("hp-a", &with_record).unwrap();
        image::create(&volumes.image_path("hp-bare"), 1 << 20).unwrap();
        image::create(&volumes.image_path("hp-gone"), 1 << 20).unwrap();
        volumes.mark_deleted("hp-gone").unwrap();
        std::fs::write(tmp.path().join(JOURNAL), b"damaged").unwrap();

        let done = recover(tmp.path(), None).unwrap();
        assert_eq!(done.volumes, vec!["hp-a", "hp-bare"]);
        assert_eq!(done.without_record, vec!["hp-bare"]);
        assert_eq!(done.skipped.len(), 1, "{:?}", done.skipped);
        let old = done.old_journal.unwrap();
        assert_eq!(std::fs::read(old).unwrap(), b"damaged");

        let backend = HostPath::open(tmp.path(), "n", 0).unwrap();
        let state = backend.state();
        assert_eq!(state.volumes["hp-a"].name, "pvc-a");
        assert_eq!(state.volumes["hp-a"].capacity_bytes, 2 << 20);
        assert_eq!(state.volumes["hp-bare"].node_id, "node-1");
        assert!(!state.volumes.contains_key("hp-gone"));
        assert!(!volumes.image_path("hp-gone").exists());
    }
}
