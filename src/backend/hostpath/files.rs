//! The files of one directory of the state: an image per object
//! (`<id>.img`), temporary files of unfinished work, and the JSON records
//! (`<id>.json`) that earlier versions kept, which are read once and moved
//! into the journal.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;

const RECORD_EXT: &str = "json";
const IMAGE_EXT: &str = "img";
const TEMP_MARK: &str = ".tmp-";

/// Records read from files: each with its path, and the files that could
/// not be read.
pub type Legacy<T> = (Vec<(PathBuf, T)>, Vec<String>);

/// One directory of images.
#[derive(Debug)]
pub struct ImageDir {
    dir: PathBuf,
    counter: AtomicU64,
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
            counter: AtomicU64::new(0),
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
            if path.extension().and_then(|e| e.to_str()) != Some(RECORD_EXT) {
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

    /// Removes what an interrupted operation left: temporary files, and
    /// images of objects that `known` does not know (an unfinished create,
    /// or a delete that did not get to the image). Returns the removed paths.
    pub fn clean_leftovers(&self, known: impl Fn(&str) -> bool) -> io::Result<Vec<PathBuf>> {
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
                    .is_some_and(|id| !known(id));
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

    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct R {
        n: u32,
    }

    #[test]
    fn leftovers_are_cleaned_and_corrupt_legacy_records_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::open(tmp.path().join("v")).unwrap();
        fs::write(dir.image_path("kept"), b"").unwrap();
        fs::write(dir.image_path("orphan"), b"").unwrap();
        fs::write(dir.temp_path("x"), b"{").unwrap();
        fs::write(dir.path().join("old.json"), br#"{"n":1}"#).unwrap();
        fs::write(dir.path().join("torn.json"), br#"{"n":"#).unwrap();
        let removed = dir.clean_leftovers(|id| id == "kept").unwrap();
        assert_eq!(removed.len(), 2);
        assert!(dir.image_path("kept").exists());
        assert!(!dir.image_path("orphan").exists());
        let (records, broken) = dir.legacy_records::<R>().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1, R { n: 1 });
        assert_eq!(broken.len(), 1);
        assert!(broken[0].contains("torn.json"), "{broken:?}");
    }
}
