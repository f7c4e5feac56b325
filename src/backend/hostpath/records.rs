//! A directory of durable JSON records, one file per object, each with an
//! optional image file beside it. Writes are atomic (temporary file, fsync,
//! rename, fsync of the directory), so a process killed at any point leaves
//! either the old record or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

const RECORD_EXT: &str = "json";
const IMAGE_EXT: &str = "img";
const TEMP_MARK: &str = ".tmp-";

/// One directory of records.
#[derive(Debug)]
pub struct RecordDir {
    dir: PathBuf,
    counter: AtomicU64,
}

impl RecordDir {
    /// Opens (creating) the directory.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(RecordDir {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{RECORD_EXT}"))
    }

    pub fn image_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{IMAGE_EXT}"))
    }

    /// A fresh temporary path in this directory (same filesystem as the
    /// final name, so a rename is atomic).
    pub fn temp_path(&self, id: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{id}{TEMP_MARK}{}-{n}", std::process::id()))
    }

    /// Writes a record atomically and durably.
    pub fn write<T: Serialize>(&self, id: &str, record: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        let temp = self.temp_path(id);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temp, self.record_path(id))?;
            self.sync()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Removes a record (and its image) durably; absent is fine.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        remove_if_present(&self.record_path(id))?;
        self.sync()?;
        remove_if_present(&self.image_path(id))
    }

    /// Makes renames and unlinks in the directory durable.
    pub fn sync(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Loads every record; returns them with the names of files that could
    /// not be read (corrupt records are reported, never silently dropped).
    pub fn load_all<T: DeserializeOwned>(&self) -> io::Result<(Vec<T>, Vec<String>)> {
        let mut records = Vec::new();
        let mut broken = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(RECORD_EXT) {
                continue;
            }
            match fs::read(&path).map(|b| serde_json::from_slice::<T>(&b)) {
                Ok(Ok(record)) => records.push(record),
                Ok(Err(e)) => broken.push(format!("{}: {e}", path.display())),
                Err(e) => broken.push(format!("{}: {e}", path.display())),
            }
        }
        Ok((records, broken))
    }

    /// Removes what an interrupted operation left: temporary files, and
    /// images whose record was never written (an unfinished create) or was
    /// removed (an unfinished delete). Returns the removed paths.
    pub fn clean_leftovers(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let orphan_image = path.extension().and_then(|e| e.to_str()) == Some(IMAGE_EXT)
                && path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|id| !self.record_path(id).exists());
            if name.contains(TEMP_MARK) || orphan_image {
                remove_if_present(&path)?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            self.sync()?;
        }
        Ok(removed)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
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
    fn write_load_remove_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RecordDir::open(tmp.path().join("v")).unwrap();
        dir.write("a", &R { n: 1 }).unwrap();
        dir.write("a", &R { n: 2 }).unwrap();
        dir.write("b", &R { n: 3 }).unwrap();
        let (mut all, broken) = dir.load_all::<R>().unwrap();
        all.sort_by_key(|r| r.n);
        assert_eq!(all, vec![R { n: 2 }, R { n: 3 }]);
        assert!(broken.is_empty());
        dir.remove("a").unwrap();
        dir.remove("a").unwrap();
        assert_eq!(dir.load_all::<R>().unwrap().0, vec![R { n: 3 }]);
    }

    #[test]
    fn leftovers_are_cleaned_and_corrupt_records_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RecordDir::open(tmp.path().to_path_buf()).unwrap();
        dir.write("kept", &R { n: 1 }).unwrap();
        fs::write(dir.image_path("kept"), b"").unwrap();
        fs::write(dir.image_path("orphan"), b"").unwrap();
        fs::write(dir.temp_path("x"), b"{").unwrap();
        fs::write(dir.record_path("torn"), b"{\"n\":").unwrap();
        let removed = dir.clean_leftovers().unwrap();
        assert_eq!(removed.len(), 2);
        assert!(dir.image_path("kept").exists());
        assert!(!dir.image_path("orphan").exists());
        let (records, broken) = dir.load_all::<R>().unwrap();
        assert_eq!(records, vec![R { n: 1 }]);
        assert_eq!(broken.len(), 1);
    }
}
