//! Volume group snapshots on hostpath: the images of several volumes copied
//! at one point in time.
//!
//! Every mounted member is frozen first (each freeze recorded durably, see
//! [`freeze`]), then every image is copied (reflink where the filesystem
//! allows), then all are thawed: the copies hold the same instant of every
//! member. The group and its members reach the journal in one entry, so a
//! replay has all of them or none.
//!
//! Crash safety: before the first copy, an intent naming the member
//! snapshot IDs is written durably under `group-intents/`. Member IDs are
//! derived from the group's ID and a volume ID (a `/` no CSI name holds),
//! so no other call makes a file of that name. A start that finds an intent
//! whose group the journal does not name removes the images and records of
//! the members the journal does not name: copies of a create that was cut
//! off and never acknowledged. The intent goes once the group is committed.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::files::{self, ImageDir};
use super::{
    Change, FREEZE_RECORDS, HostPath, SNAPSHOT_PREFIX, SnapshotRecord, State, id_for, image,
    now_unix, to_snapshot,
};
use crate::backend::GroupSnapshot;
use crate::error::{CsiError, CsiResult};
use crate::failpoint::crash_point;
use crate::node::freeze;

/// Group snapshot IDs start with this.
const GROUP_PREFIX: &str = "hpg-";
/// The most volumes one group snapshot takes (each is frozen and copied by
/// a thread of its own; the group is one journal entry).
const MAX_MEMBERS: usize = 256;
/// The directory of the state where a group create's intent lies while
/// its copies are made.
const INTENTS: &str = "group-intents";

/// A group snapshot as the journal keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct GroupRecord {
    pub id: String,
    pub name: String,
    /// The member snapshots, in the order of the source volumes.
    pub snapshot_ids: Vec<String>,
    pub created_unix_nanos: u128,
}

/// What a group create is about to copy: written before the first copy.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    group_id: String,
    snapshot_ids: Vec<String>,
}

/// The ID of the member snapshot of `volume_id` in group `group_id`.
fn member_id(group_id: &str, volume_id: &str) -> String {
    id_for(SNAPSHOT_PREFIX, &format!("{group_id}/{volume_id}"))
}

fn intent_path(root: &Path, group_id: &str) -> PathBuf {
    root.join(INTENTS).join(format!("{group_id}.json"))
}

/// Writes the intent durably (a temporary file renamed into place, both
/// synced with their directory).
fn write_intent(root: &Path, intent: &Intent) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = root.join(INTENTS);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let path = intent_path(root, &intent.group_id);
    let temp = path.with_extension("json.tmp");
    let mut file = File::create(&temp)?;
    file.write_all(&serde_json::to_vec(intent).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&temp, &path)?;
    File::open(&dir)?.sync_all()
}

fn remove_intent(root: &Path, group_id: &str) -> std::io::Result<()> {
    files::remove_if_present(&intent_path(root, group_id))?;
    File::open(root.join(INTENTS))?.sync_all()
}

/// At start, before the images are settled: removes the copies of group
/// creates that were cut off before their commit (named by an intent, not
/// by the journal) and the intents themselves.
pub(super) fn clean_cut_creates(
    root: &Path,
    snapshots: &ImageDir,
    state: &State,
) -> Result<(), String> {
    let dir = root.join(INTENTS);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let fail = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    for entry in entries {
        let path = entry.map_err(|e| fail(&dir, e))?.path();
        if path.extension().is_some_and(|x| x == "tmp") {
            // An intent never completed: no copy was made after it.
            files::remove_if_present(&path).map_err(|e| fail(&path, e))?;
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| fail(&path, e))?;
        let intent: Intent = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "the group snapshot intent {} is unreadable ({e}); move it away after checking which snapshot images it names, then start again",
                path.display()
            )
        })?;
        if !state.groups.contains_key(&intent.group_id) {
            for id in &intent.snapshot_ids {
                if state.snapshots.contains_key(id) {
                    continue;
                }
                for file in [snapshots.image_path(id), snapshots.record_path(id)] {
                    if file.exists() {
                        files::remove_if_present(&file).map_err(|e| fail(&file, e))?;
                        tracing::warn!(path = %file.display(), group_snapshot_id = %intent.group_id, "removed a copy of a group snapshot whose create was cut off before its commit (never acknowledged)");
                    }
                }
            }
            snapshots.sync().map_err(|e| fail(snapshots.path(), e))?;
        }
        files::remove_if_present(&path).map_err(|e| fail(&path, e))?;
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(&dir, e))
}

/// One member to copy: the source image, the copy and its size.
struct Copy {
    from: PathBuf,
    to: PathBuf,
    size: u64,
}

/// How long the group was frozen, and how many members were.
struct Copied {
    frozen: usize,
    window: Duration,
}

/// Flushes every member, freezes every mounted one, copies every image,
/// thaws all, then makes
/// the copies durable (their content is fixed once copied: syncing them
/// needs no member frozen). On an error, the copies made so far are removed
/// (never acknowledged) and all are thawed. `crash_point`s let tests cut the
/// process off while frozen.
fn freeze_and_copy(copies: &[Copy], records: &Path) -> std::io::Result<Copied> {
    // Dirty data written out first, unfrozen: the freezes then have little
    // left to flush, and the window stays the copies' own.
    each(copies, |c| {
        freeze::flush_image(&c.from).map_err(std::io::Error::other)
    })
    .into_iter()
    .collect::<std::io::Result<Vec<()>>>()?;
    let started = Instant::now();
    // Each member is its own filesystem: frozen side by side. Should one
    // fail, the ones held are thawed as `held` drops.
    let held = each(copies, |c| {
        freeze::quiesce_image(&c.from, records).map_err(std::io::Error::other)
    })
    .into_iter()
    .collect::<std::io::Result<Vec<_>>>()?;
    let frozen = held.iter().flatten().filter(|q| q.is_frozen()).count();
    crash_point("group-snapshot-frozen");
    let copied = each(copies, |c| image::copy_unsynced(&c.from, &c.to, c.size));
    crash_point("group-snapshot-copied");
    drop(held);
    let window = started.elapsed();
    let mut result = Ok(());
    let mut made = Vec::with_capacity(copies.len());
    for (copy, outcome) in copies.iter().zip(copied) {
        match outcome.and_then(|file| file.sync_all()) {
            Ok(()) => made.push(&copy.to),
            Err(e) => {
                // A failed copy may have left a partial file: it is ours
                // (a file found in place is never taken for one).
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    made.push(&copy.to);
                }
                result = Err(e);
            }
        }
    }
    if let Err(e) = result {
        for path in made {
            let _ = files::remove_if_present(path);
        }
        return Err(e);
    }
    Ok(Copied { frozen, window })
}

/// Runs `work` for every member at once, one thread each; the results in
/// the members' order.
fn each<T: Send>(
    copies: &[Copy],
    work: impl Fn(&Copy) -> std::io::Result<T> + Sync,
) -> Vec<std::io::Result<T>> {
    std::thread::scope(|scope| {
        let work = &work;
        let running: Vec<_> = copies
            .iter()
            .map(|copy| scope.spawn(move || work(copy)))
            .collect();
        running
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a member's worker panicked")))
            })
            .collect()
    })
}

/// The same IDs, whatever the order.
fn same_set(record: &[String], request: &[String]) -> bool {
    record.iter().collect::<BTreeSet<_>>() == request.iter().collect::<BTreeSet<_>>()
}

impl HostPath {
    fn to_group(&self, record: &GroupRecord) -> GroupSnapshot {
        let state = self.state();
        GroupSnapshot {
            id: record.id.clone(),
            snapshots: record
                .snapshot_ids
                .iter()
                .filter_map(|id| state.snapshots.get(id).map(to_snapshot))
                .collect(),
            created: UNIX_EPOCH + Duration::from_nanos(record.created_unix_nanos as u64),
            ready: true,
        }
    }

    fn group(&self, id: &str) -> CsiResult<GroupRecord> {
        self.state()
            .groups
            .get(id)
            .cloned()
            .ok_or_else(|| CsiError::NotFound(format!("group snapshot {id} does not exist")))
    }

    /// INVALID_ARGUMENT when `snapshot_ids` is given and is not the group's
    /// members.
    fn check_members(group: &GroupRecord, snapshot_ids: &[String]) -> CsiResult<()> {
        if snapshot_ids.is_empty() || same_set(&group.snapshot_ids, snapshot_ids) {
            return Ok(());
        }
        Err(CsiError::InvalidArgument(format!(
            "snapshot_ids do not match the members of group snapshot {}: it holds {}",
            group.id,
            group.snapshot_ids.join(", ")
        )))
    }

    pub(super) async fn create_group(
        &self,
        name: &str,
        sources: &[String],
    ) -> CsiResult<GroupSnapshot> {
        if sources.len() > MAX_MEMBERS {
            return Err(CsiError::InvalidArgument(format!(
                "source_volume_ids names {} volumes; a group snapshot takes at most {MAX_MEMBERS}: split the group",
                sources.len()
            )));
        }
        let id = id_for(GROUP_PREFIX, name);
        let _guard = self.busy.acquire(&[&id])?;
        let existing = self.state().groups.get(&id).cloned();
        if let Some(existing) = existing {
            let recorded: Vec<String> = {
                let state = self.state();
                existing
                    .snapshot_ids
                    .iter()
                    .filter_map(|s| state.snapshots.get(s))
                    .map(|s| s.source_volume_id.clone())
                    .collect()
            };
            if same_set(&recorded, sources) {
                return Ok(self.to_group(&existing));
            }
            return Err(CsiError::AlreadyExists(format!(
                "group snapshot {name:?} exists already ({id}) of volumes {}; this request names other volumes: use another name",
                recorded.join(", ")
            )));
        }
        let mut copies = Vec::with_capacity(sources.len());
        let mut members = Vec::with_capacity(sources.len());
        for volume_id in sources {
            let volume = self.volume(volume_id)?;
            let member = member_id(&id, volume_id);
            copies.push(Copy {
                from: self.volumes.image_path(volume_id),
                to: self.snapshots.image_path(&member),
                size: volume.capacity_bytes,
            });
            members.push(SnapshotRecord {
                id: member,
                name: format!("{name}/{volume_id}"),
                source_volume_id: volume_id.clone(),
                size_bytes: volume.capacity_bytes,
                created_unix_nanos: 0,
                group_id: Some(id.clone()),
            });
        }
        let locked: Vec<&str> = sources
            .iter()
            .map(String::as_str)
            .chain(members.iter().map(|m| m.id.as_str()))
            .collect();
        let _members_guard = self.busy.acquire(&locked)?;
        if let Some(copy) = copies.iter().find(|c| c.to.exists()) {
            return Err(CsiError::Internal(format!(
                "a file the state does not name is in the way at {}; it is kept as it is: restart the driver to move it aside (see Troubleshooting)",
                copy.to.display()
            )));
        }
        let intent = Intent {
            group_id: id.clone(),
            snapshot_ids: members.iter().map(|m| m.id.clone()).collect(),
        };
        let root = self.root.clone();
        let records = self.root.join(FREEZE_RECORDS);
        let what = format!("cannot take group snapshot {name:?}");
        let copied = crate::blocking::run(move || {
            Ok(write_intent(&root, &intent).and_then(|()| {
                crash_point("group-snapshot-intent");
                freeze_and_copy(&copies, &records)
            }))
        })
        .await?;
        let copied = match copied {
            Ok(copied) => copied,
            Err(e) => {
                let _ = remove_intent(&self.root, &id);
                return Err(super::space_error(what, e));
            }
        };
        let created = now_unix().as_nanos();
        for member in &mut members {
            member.created_unix_nanos = created;
        }
        let group = GroupRecord {
            id: id.clone(),
            name: name.to_string(),
            snapshot_ids: members.iter().map(|m| m.id.clone()).collect(),
            created_unix_nanos: created,
        };
        let mut stored = Ok(());
        for member in &members {
            stored = self
                .write_own_record(&self.snapshots, &member.id, member.clone())
                .await;
            if stored.is_err() {
                break;
            }
        }
        if stored.is_ok() {
            stored = self
                .commit(Change::Group {
                    group: group.clone(),
                    members: members.clone(),
                })
                .await;
        }
        if let Err(e) = stored {
            // Never acknowledged: this call's own copies and records go.
            for member in &members {
                let _ = files::remove_if_present(&self.snapshots.image_path(&member.id));
                let _ = files::remove_if_present(&self.snapshots.record_path(&member.id));
            }
            let _ = remove_intent(&self.root, &id);
            return Err(e);
        }
        crash_point("group-snapshot-committed");
        if let Err(e) = remove_intent(&self.root, &id) {
            // Harmless: the next start finds the group committed and only
            // removes the intent.
            tracing::warn!(group_snapshot_id = %id, error = %e, "cannot remove the intent of a committed group snapshot");
        }
        crate::metrics::group_snapshot_frozen(copied.window.as_secs_f64());
        tracing::info!(
            group_snapshot_id = %id,
            name = %name,
            members = members.len(),
            frozen = copied.frozen,
            freeze_window_ms = copied.window.as_secs_f64() * 1000.0,
            "group snapshot created"
        );
        Ok(self.to_group(&group))
    }

    pub(super) async fn delete_group(&self, id: &str, snapshot_ids: &[String]) -> CsiResult<()> {
        let _guard = self.busy.acquire(&[id])?;
        let Some(group) = self.state().groups.get(id).cloned() else {
            return Ok(());
        };
        Self::check_members(&group, snapshot_ids)?;
        let members: Vec<&str> = group.snapshot_ids.iter().map(String::as_str).collect();
        let _members_guard = self.busy.acquire(&members)?;
        // The members are marked first: a crash after the commit finishes
        // their deletion at start; one before it restores their records.
        let dir = self.snapshots.clone();
        let ids = group.snapshot_ids.clone();
        super::blocking(
            format!("cannot mark the members of {id} deleted"),
            move || ids.iter().try_for_each(|member| dir.mark_deleted(member)),
        )
        .await?;
        if let Err(e) = self.commit(Change::GroupDeleted(id.to_string())).await {
            let records: Vec<SnapshotRecord> = {
                let state = self.state();
                group
                    .snapshot_ids
                    .iter()
                    .filter_map(|m| state.snapshots.get(m).cloned())
                    .collect()
            };
            for record in records {
                let member = record.id.clone();
                let _ = self
                    .write_own_record(&self.snapshots, &member, record)
                    .await;
            }
            return Err(e);
        }
        for member in &group.snapshot_ids {
            self.remove_files(&self.snapshots, member).await?;
        }
        tracing::info!(group_snapshot_id = %id, members = group.snapshot_ids.len(), "group snapshot deleted");
        Ok(())
    }

    pub(super) fn get_group(&self, id: &str, snapshot_ids: &[String]) -> CsiResult<GroupSnapshot> {
        let group = self.group(id)?;
        Self::check_members(&group, snapshot_ids)?;
        Ok(self.to_group(&group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_differ_per_group_and_volume_and_from_plain_snapshots() {
        let a = member_id("hpg-1", "hp-a");
        assert_ne!(a, member_id("hpg-1", "hp-b"));
        assert_ne!(a, member_id("hpg-2", "hp-a"));
        assert!(a.starts_with(SNAPSHOT_PREFIX));
        // A plain snapshot's name never holds '/', so no name maps here.
        assert_ne!(a, id_for(SNAPSHOT_PREFIX, "hpg-1hp-a"));
    }

    #[test]
    fn sources_compare_as_sets() {
        let ab = ["a".to_string(), "b".to_string()];
        let ba = ["b".to_string(), "a".to_string()];
        assert!(same_set(&ab, &ba));
        assert!(!same_set(&ab, &ab[..1]));
    }
}
