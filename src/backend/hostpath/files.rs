//! The files of one directory of the state: an image per object
//! (`<id>.img`) with its own record beside it (`<id>.record`, the object's
//! journal record, written atomically, from which a lost journal can be
//! rebuilt), the mark of a deletion that the journal has committed
//! (`<id>.deleted`), temporary files of unfinished work, and the JSON
//! records (`<id>.json`) that earlier versions kept, which are read once
//! and moved into the journal.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

const LEGACY_EXT: &str = "json";
const IMAGE_EXT: &str = "img";
const RECORD_EXT: &str = "record";
const DELETED_EXT: &str = "deleted";
const TEMP_MARK: &str = ".tmp-";

/// Records read from files: each with its path, and the files that could
/// not be read.
pub type Legacy<T> = (Vec<(PathBuf, T)>, Vec<String>);

/// One directory of images.
#[derive(Debug, Clone)]
pub struct ImageDir {
    dir: PathBuf,
    counter: Arc<AtomicU64>,
}

impl ImageDir {
    /// Opens (creating) the directory.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(ImageDir {
            dir,
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn image_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{IMAGE_EXT}"))
    }

    /// A fresh temporary path in this directory.
    pub fn temp_path(&self, id: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{id}{TEMP_MARK}{}-{n}", std::process::id()))
    }

    /// Makes renames and unlinks in the directory durable.
    pub fn sync(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Reads the records of earlier versions; returns them with their
    /// paths, and the files that could not be read (corrupt records are
    /// reported, never silently dropped).
    pub fn legacy_records<T: DeserializeOwned>(&self) -> io::Result<Legacy<T>> {
        let mut records = Vec::new();
        let mut broken = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(LEGACY_EXT) {
                continue;
            }
            match fs::read(&path).map(|b| serde_json::from_slice::<T>(&b)) {
                Ok(Ok(record)) => records.push((path, record)),
                Ok(Err(e)) => broken.push(format!("{}: {e}", path.display())),
                Err(e) => broken.push(format!("{}: {e}", path.display())),
            }
        }
        Ok((records, broken))
    }

    /// The path of an object's own record.
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{RECORD_EXT}"))
    }

    fn deleted_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{DELETED_EXT}"))
    }

    /// Writes an object's own record atomically (temporary file, rename),
    /// without waiting for the disk: the journal is what makes an object
    /// durable; the own record is its second copy, made durable by the
    /// kernel's write-back within seconds and rewritten from the journal at
    /// every start. A record a crash cut short is rewritten then, and
    /// `recover` keeps an image whose record it cannot read (under its ID).
    /// A mark of an earlier deletion of the same ID is removed first.
    pub fn write_record<T: Serialize>(&self, id: &str, record: &T) -> io::Result<()> {
        remove_if_present(&self.deleted_path(id))?;
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let temp = self.temp_path(id);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| fs::rename(&temp, self.record_path(id)));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        Ok(())
    }

    /// Reads an object's own record; `None` when it has none.
    pub fn read_record<T: DeserializeOwned>(&self, id: &str) -> io::Result<Option<T>> {
        match fs::read(self.record_path(id)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Marks an object deleted (its deletion is committed in the journal)
    /// before its files are removed: its record becomes the mark. Nothing
    /// here waits for the disk: the journal holds the deletion, and what a
    /// crash leaves of these steps is either finished at the next start (the
    /// mark is there) or kept aside (an image or record the journal no
    /// longer names), never lost data.
    pub fn mark_deleted(&self, id: &str) -> io::Result<()> {
        match fs::rename(self.record_path(id), self.deleted_path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                File::create(self.deleted_path(id)).map(drop)
            }
            other => other,
        }
    }

    /// Removes an object marked deleted: its image, then its mark.
    pub fn finish_deletion(&self, id: &str) -> io::Result<()> {
        remove_if_present(&self.image_path(id))?;
        remove_if_present(&self.record_path(id))?;
        remove_if_present(&self.deleted_path(id))
    }

    /// The IDs that have an image, a record or a deletion mark here, and
    /// which of them are marked deleted.
    pub fn ids(&self) -> io::Result<(BTreeSet<String>, BTreeSet<String>)> {
        let mut ids = BTreeSet::new();
        let mut deleted = BTreeSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|e| e.to_str()),
            ) else {
                continue;
            };
            if stem.contains(TEMP_MARK) {
                continue;
            }
            match ext {
                IMAGE_EXT | RECORD_EXT => {
                    ids.insert(stem.to_string());
                }
                DELETED_EXT => {
                    ids.insert(stem.to_string());
                    deleted.insert(stem.to_string());
                }
                _ => {}
            }
        }
        Ok((ids, deleted))
    }

    /// Removes the temporary files of unfinished work (never an image or a
    /// record: those are only ever renamed into place complete).
    pub fn remove_temps(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(TEMP_MARK))
            {
                remove_if_present(&path)?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            self.sync()?;
        }
        Ok(removed)
    }

    /// Moves an object's image and record into `aside` (created if needed),
    /// named `<id>-<stamp>.<ext>`; returns the new paths.
    pub fn keep_aside(&self, id: &str, aside: &Path, stamp: u64) -> io::Result<Vec<PathBuf>> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(aside)?;
        // A name nothing has there yet: a rename would replace a file.
        let base = (0u32..)
            .map(|n| match n {
                0 => format!("{id}-{stamp}"),
                n => format!("{id}-{stamp}-{n}"),
            })
            .find(|base| {
                [IMAGE_EXT, RECORD_EXT]
                    .iter()
                    .all(|ext| !aside.join(format!("{base}.{ext}")).exists())
            })
            .unwrap_or_default();
        let mut moved = Vec::new();
        for (from, ext) in [
            (self.image_path(id), IMAGE_EXT),
            (self.record_path(id), RECORD_EXT),
        ] {
            let to = aside.join(format!("{base}.{ext}"));
            match fs::rename(&from, &to) {
                Ok(()) => moved.push(to),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        File::open(aside)?.sync_all()?;
        self.sync()?;
        Ok(moved)
    }
}

/// The files kept aside under `aside` (for reports).
pub fn kept_aside(aside: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo = vec![aside.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Removes a file; absent is fine.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct R {
        n: u32,
    }

    #[test]
    fn unknown_objects_are_kept_aside_and_corrupt_legacy_records_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::open(tmp.path().join("v")).unwrap();
        fs::write(dir.image_path("kept"), b"").unwrap();
        fs::write(dir.image_path("orphan"), b"data").unwrap();
        dir.write_record("orphan", &serde_json::json!({"n": 2}))
            .unwrap();
        fs::write(dir.temp_path("x"), b"{").unwrap();
        fs::write(dir.path().join("old.json"), br#"{"n":1}"#).unwrap();
        fs::write(dir.path().join("torn.json"), br#"{"n":"#).unwrap();
        assert_eq!(dir.remove_temps().unwrap().len(), 1);
        let (ids, deleted) = dir.ids().unwrap();
        assert_eq!(ids, BTreeSet::from(["kept".into(), "orphan".into()]));
        assert!(deleted.is_empty());
        let aside = tmp.path().join("aside");
        let moved = dir.keep_aside("orphan", &aside, 7).unwrap();
        assert_eq!(moved.len(), 2);
        assert_eq!(fs::read(aside.join("orphan-7.img")).unwrap(), b"data");
        assert_eq!(kept_aside(&aside).unwrap().len(), 2);
        // The same ID kept aside again in the same second replaces nothing.
        fs::write(dir.image_path("orphan"), b"later").unwrap();
        dir.keep_aside("orphan", &aside, 7).unwrap();
        assert_eq!(fs::read(aside.join("orphan-7.img")).unwrap(), b"data");
        assert_eq!(fs::read(aside.join("orphan-7-1.img")).unwrap(), b"later");
        assert!(dir.image_path("kept").exists());
        let (records, broken) = dir.legacy_records::<R>().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1, R { n: 1 });
        assert_eq!(broken.len(), 1);
        assert!(broken[0].contains("torn.json"), "{broken:?}");
    }

    #[test]
    fn a_deletion_is_marked_then_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::open(tmp.path().join("v")).unwrap();
        fs::write(dir.image_path("a"), b"").unwrap();
        dir.write_record("a", &R { n: 1 }).unwrap();
        assert_eq!(dir.read_record::<R>("a").unwrap(), Some(R { n: 1 }));
        dir.mark_deleted("a").unwrap();
        let (_, deleted) = dir.ids().unwrap();
        assert_eq!(deleted, BTreeSet::from(["a".to_string()]));
        assert_eq!(dir.read_record::<R>("a").unwrap(), None);
        dir.finish_deletion("a").unwrap();
        assert_eq!(dir.ids().unwrap().0.len(), 0);
    }
}
