//! The files of one directory of the state: an image per object
//! (`<id>.img`) carrying its own record (the object's journal record, from
//! which a lost journal can be rebuilt) and, once the journal has committed
//! its deletion, the mark of that deletion, temporary files of unfinished
//! work, and the JSON records (`<id>.json`) that earlier versions kept,
//! which are read once and moved into the journal.
//!
//! The own record and the deletion mark are the image's extended attribute
//! `user.multicsi.record`: written in one call, renamed and removed with the
//! image, and no second file per object to allocate. On a filesystem
//! without user attributes (tmpfs before Linux 6.6), or for an object whose
//! image is missing, they are files beside the image instead:
//! `<id>.record`, written atomically, and `<id>.deleted`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::XattrFlags;
use rustix::io::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;

const LEGACY_EXT: &str = "json";
const IMAGE_EXT: &str = "img";
const RECORD_EXT: &str = "record";
const DELETED_EXT: &str = "deleted";
const TEMP_MARK: &str = ".tmp-";
/// The extended attribute of an image that holds its own record.
const RECORD_ATTR: &str = "user.multicsi.record";
/// The value of that attribute once the object is marked deleted.
const DELETED_MARK: &[u8] = b"deleted";
/// The largest value of an extended attribute Linux takes.
const ATTR_MAX: usize = 65536;

/// Records read from files: each with its path, and the files that could
/// not be read.
pub type Legacy<T> = (Vec<(PathBuf, T)>, Vec<String>);

/// One directory of images.
#[derive(Debug, Clone)]
pub struct ImageDir {
    dir: PathBuf,
    counter: Arc<AtomicU64>,
    /// Whether record or mark files may be here (from an earlier version,
    /// or written where the attribute could not be). Only the process that
    /// holds the state writes here, so while this is false none is looked
    /// for: a lookup of an absent name searches the directory.
    files_here: Arc<AtomicBool>,
}

impl ImageDir {
    /// Opens (creating) the directory.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let mut files_here = false;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let ext = path.extension().and_then(|e| e.to_str());
            files_here |= matches!(ext, Some(RECORD_EXT | DELETED_EXT));
        }
        Ok(ImageDir {
            dir,
            counter: Arc::new(AtomicU64::new(0)),
            files_here: Arc::new(AtomicBool::new(files_here)),
        })
    }

    /// Removes a record or mark file of `id`, where there may be one.
    fn remove_files_of(&self, id: &str, exts: &[&str]) -> io::Result<()> {
        if !self.files_here.load(Ordering::Relaxed) {
            return Ok(());
        }
        exts.iter()
            .try_for_each(|ext| remove_stale(&self.dir.join(format!("{id}.{ext}"))))
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

    /// Writes an object's own record without waiting for the disk: the
    /// journal is what makes an object durable; the own record is its
    /// second copy, made durable by the kernel's write-back within seconds
    /// and rewritten from the journal at every start. A record a crash cut
    /// short is rewritten then, and `recover` keeps an image whose record it
    /// cannot read (under its ID). A mark of an earlier deletion of the same
    /// ID goes.
    pub fn write_record<T: Serialize>(&self, id: &str, record: &T) -> io::Result<()> {
        let image = self.image_path(id);
        self.put_record(id, record, |value| set_attr(&image, value))
    }

    /// Writes the own record of an image just made, through its open file.
    pub fn write_new_record<T: Serialize>(
        &self,
        image: &File,
        id: &str,
        record: &T,
    ) -> io::Result<()> {
        self.put_record(id, record, |value| set_file_attr(image, value))
    }

    /// Writes a record with `set` (the attribute), else as a file.
    fn put_record<T: Serialize>(
        &self,
        id: &str,
        record: &T,
        set: impl FnOnce(&[u8]) -> io::Result<bool>,
    ) -> io::Result<()> {
        self.remove_files_of(id, &[DELETED_EXT])?;
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        if set(&bytes)? {
            return self.remove_files_of(id, &[RECORD_EXT]);
        }
        self.files_here.store(true, Ordering::Relaxed);
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
        // An attribute of an earlier write would hide the file.
        remove_attr(&self.image_path(id))
    }

    /// Reads an object's own record; `None` when it has none (or is marked
    /// deleted).
    pub fn read_record<T: DeserializeOwned>(&self, id: &str) -> io::Result<Option<T>> {
        let parse = |bytes: &[u8]| {
            serde_json::from_slice(bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        match get_attr(&self.image_path(id))? {
            Some(value) if value == DELETED_MARK => return Ok(None),
            Some(value) => return parse(&value),
            None => {}
        }
        match fs::read(self.record_path(id)) {
            Ok(bytes) => parse(&bytes),
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
        if set_attr(&self.image_path(id), DELETED_MARK)? {
            return self.remove_files_of(id, &[RECORD_EXT]);
        }
        self.files_here.store(true, Ordering::Relaxed);
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
        self.remove_files_of(id, &[RECORD_EXT, DELETED_EXT])
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
                IMAGE_EXT => {
                    if get_attr(&path)?.is_some_and(|value| value == DELETED_MARK) {
                        deleted.insert(stem.to_string());
                    }
                    ids.insert(stem.to_string());
                }
                RECORD_EXT => {
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

/// Sets the record attribute of an image; `false` (nothing written) where
/// the attribute cannot be: the filesystem has no user attributes, the image
/// is missing, or the value is too large for the filesystem.
fn set_attr(image: &Path, value: &[u8]) -> io::Result<bool> {
    attr_written(rustix::fs::setxattr(
        image,
        RECORD_ATTR,
        value,
        XattrFlags::empty(),
    ))
}

/// `set_attr` through the open file of an image.
fn set_file_attr(image: &File, value: &[u8]) -> io::Result<bool> {
    attr_written(rustix::fs::fsetxattr(
        image,
        RECORD_ATTR,
        value,
        XattrFlags::empty(),
    ))
}

fn attr_written(set: Result<(), Errno>) -> io::Result<bool> {
    match set {
        Ok(()) => Ok(true),
        Err(Errno::NOTSUP | Errno::NOENT | Errno::TOOBIG | Errno::RANGE | Errno::NOSPC) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the record attribute of an image; none there is fine.
fn remove_attr(image: &Path) -> io::Result<()> {
    match rustix::fs::removexattr(image, RECORD_ATTR) {
        Ok(()) | Err(Errno::NODATA | Errno::NOTSUP | Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The record attribute of an image; `None` where it has none (or the
/// filesystem has no user attributes, or there is no image).
fn get_attr(image: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; 4096];
    loop {
        match rustix::fs::getxattr(image, RECORD_ATTR, &mut value[..]) {
            Ok(len) => {
                value.truncate(len);
                return Ok(Some(value));
            }
            Err(Errno::RANGE) if value.len() < ATTR_MAX => value.resize(ATTR_MAX, 0),
            Err(Errno::NODATA | Errno::NOTSUP | Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes a file that is usually absent (a record file beside an image
/// that carries its record, a deletion mark): looked up first, since a
/// lookup shares the directory while an unlink, even of nothing, takes it
/// for itself and waits behind every create there. One object's files are
/// only changed by the call that holds the object, so nothing comes
/// between the look and the unlink.
fn remove_stale(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => remove_if_present(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
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

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct R {
        n: u32,
    }

    /// Whether the filesystem of `dir` takes user attributes.
    fn has_attrs(dir: &Path) -> bool {
        let probe = dir.join("probe");
        fs::write(&probe, b"").unwrap();
        let has = set_attr(&probe, b"{}").unwrap();
        fs::remove_file(probe).unwrap();
        has
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
        dir.keep_aside("orphan", &aside, 7).unwrap();
        assert_eq!(fs::read(aside.join("orphan-7.img")).unwrap(), b"data");
        // The record went with the image, whichever way it is kept.
        let aside_dir = ImageDir::open(aside.clone()).unwrap();
        assert_eq!(
            aside_dir.read_record::<R>("orphan-7").unwrap(),
            Some(R { n: 2 })
        );
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

    /// Marks and finishes a deletion of `id`, checking what is seen between.
    fn mark_then_finish(dir: &ImageDir, id: &str) {
        dir.write_record(id, &R { n: 1 }).unwrap();
        assert_eq!(dir.read_record::<R>(id).unwrap(), Some(R { n: 1 }));
        dir.mark_deleted(id).unwrap();
        let (ids, deleted) = dir.ids().unwrap();
        assert_eq!(ids, BTreeSet::from([id.to_string()]));
        assert_eq!(deleted, BTreeSet::from([id.to_string()]));
        assert_eq!(dir.read_record::<R>(id).unwrap(), None);
        // A new record of the same ID takes the mark away.
        dir.write_record(id, &R { n: 2 }).unwrap();
        assert!(dir.ids().unwrap().1.is_empty());
        dir.mark_deleted(id).unwrap();
        dir.finish_deletion(id).unwrap();
        assert_eq!(dir.ids().unwrap().0.len(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_deletion_is_marked_then_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::open(tmp.path().join("v")).unwrap();
        fs::write(dir.image_path("a"), b"").unwrap();
        mark_then_finish(&dir, "a");
        // Without an image, record and mark are files.
        mark_then_finish(&dir, "no-image");
    }

    #[test]
    fn the_record_is_the_images_attribute_where_the_filesystem_has_them() {
        let tmp = tempfile::tempdir().unwrap();
        if !has_attrs(tmp.path()) {
            eprintln!(
                "{} has no user attributes: nothing to check",
                tmp.path().display()
            );
            return;
        }
        // A record file of an earlier version is replaced by the attribute.
        let path = tmp.path().join("v");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("a.record"), br#"{"n":0}"#).unwrap();
        let dir = ImageDir::open(path).unwrap();
        fs::write(dir.image_path("a"), b"").unwrap();
        assert_eq!(dir.read_record::<R>("a").unwrap(), Some(R { n: 0 }));
        dir.write_record("a", &R { n: 1 }).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.img"], "one file per object");
        assert_eq!(
            get_attr(&dir.image_path("a")).unwrap().unwrap(),
            br#"{"n":1}"#
        );
        // A damaged attribute is an error, not a missing record.
        set_attr(&dir.image_path("a"), b"{").unwrap();
        let e = dir.read_record::<R>("a").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A record larger than the filesystem takes as an attribute is a file.
        let big = serde_json::json!({"n": 3, "pad": "x".repeat(70_000)});
        dir.write_record("a", &big).unwrap();
        assert!(dir.record_path("a").exists());
        assert_eq!(dir.read_record::<R>("a").unwrap(), Some(R { n: 3 }));
    }
}
