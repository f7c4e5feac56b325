//! Quiescing a mounted filesystem for a consistent copy of its device:
//! `FIFREEZE` flushes it and blocks new writes until `FITHAW`; filesystems
//! that cannot freeze are at least flushed with `syncfs`.
//!
//! A freeze outlives the process that made it: a driver killed during the
//! copy would leave the volume's writers blocked. So each freeze is first
//! recorded durably in a directory of the driver's state (one file per
//! mount point, holding its path), removed after the thaw; at start
//! [`thaw_recorded`] thaws whatever a killed driver left frozen.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::{HostError, Result, errno, loopdev, mount};

/// `FIFREEZE` and `FITHAW` of `<linux/fs.h>` (`_IOWR('X', 119, int)` and
/// `_IOWR('X', 120, int)`), typed by nix's ioctl macros: nix has no safe
/// wrapper for them, so the generated functions are `unsafe` and each has
/// one safe wrapper below. The kernel ignores their argument.
mod sys {
    nix::ioctl_write_int_bad!(
        fifreeze,
        nix::request_code_readwrite!(b'X', 119, std::mem::size_of::<std::ffi::c_int>())
    );
    nix::ioctl_write_int_bad!(
        fithaw,
        nix::request_code_readwrite!(b'X', 120, std::mem::size_of::<std::ffi::c_int>())
    );
}

/// `FIFREEZE` on the open mount point.
fn freeze(dir: &File) -> io::Result<()> {
    // SAFETY: FIFREEZE takes an int by value (ignored) and reads no memory.
    unsafe { sys::fifreeze(dir.as_raw_fd(), 0) }?;
    Ok(())
}

/// A filesystem held frozen (or only flushed); thawed when dropped.
#[derive(Debug)]
pub struct Quiesced {
    mount_point: PathBuf,
    frozen: Option<Frozen>,
}

/// The open mount point of a frozen filesystem and the record of the freeze.
#[derive(Debug)]
struct Frozen {
    dir: File,
    record: PathBuf,
}

impl Quiesced {
    /// Whether the filesystem is frozen (not only flushed).
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// The mount point frozen or flushed (the device, for a raw block volume).
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for Quiesced {
    fn drop(&mut self) {
        if let Some(frozen) = &self.frozen {
            match thaw(&frozen.dir) {
                // The record goes once the thaw is done; should that fail, the
                // next start thaws again (thawing a thawed one is harmless).
                Ok(_) => {
                    let _ = fs::remove_file(&frozen.record);
                }
                Err(e) => {
                    tracing::error!(mount_point = %self.mount_point.display(), error = %e, "cannot thaw the filesystem (FITHAW); thaw it with fsfreeze -u");
                }
            }
        }
    }
}

/// `FITHAW`: `Ok(true)` when it was frozen, `Ok(false)` when it was not.
fn thaw(dir: &File) -> io::Result<bool> {
    // SAFETY: FITHAW takes an int by value (ignored) and reads no memory.
    match unsafe { sys::fithaw(dir.as_raw_fd(), 0) } {
        Ok(_) => Ok(true),
        Err(Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The record of a freeze of `mount_point` in `records`: named after a hash
/// of the path, holding the path.
fn record_path(records: &Path, mount_point: &Path) -> PathBuf {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(mount_point.as_os_str().as_bytes());
    let hex: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
    records.join(format!("{hex}.frozen"))
}

/// Writes the record durably before the freeze it announces.
fn write_record(records: &Path, mount_point: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(records)?;
    let path = record_path(records, mount_point);
    let mut file = File::create(&path)?;
    file.write_all(mount_point.as_os_str().as_bytes())?;
    file.sync_all()?;
    File::open(records)?.sync_all()?;
    Ok(path)
}

/// Thaws every filesystem whose freeze is recorded in `records` (left by a
/// driver killed during a copy) and removes the records. Returns the mount
/// points that were frozen. A mount point that is gone has nothing to thaw.
pub fn thaw_recorded(records: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(records) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut thawed = Vec::new();
    for entry in entries {
        let record = entry?.path();
        let mount_point = PathBuf::from(std::ffi::OsStr::from_bytes(&fs::read(&record)?));
        match File::open(&mount_point) {
            Ok(dir) => {
                if thaw(&dir).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot thaw {} (FITHAW): {e}; thaw it with fsfreeze -u",
                            mount_point.display()
                        ),
                    )
                })? {
                    thawed.push(mount_point);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot open {} to thaw it: {e}", mount_point.display()),
                ));
            }
        }
        fs::remove_file(&record)?;
    }
    Ok(thawed)
}

/// What the loop device of an image is used as.
enum Use {
    /// A filesystem mounted at this path.
    Mounted(PathBuf),
    /// Not mounted (a raw block volume): the device itself.
    Device(PathBuf),
}

/// How the read-write loop device of `image` is used; `None` when the image
/// is not attached.
fn image_use(image: &Path) -> Result<Option<Use>> {
    let Some(device) = loopdev::find(image)? else {
        return Ok(None);
    };
    let rdev = std::fs::metadata(&device)
        .map_err(|e| HostError::os("stat", &device, e, "is the device present?"))?;
    let numbers = {
        use std::os::unix::fs::MetadataExt;
        super::device_numbers(rdev.rdev())
    };
    let canonical = std::fs::canonicalize(&device).unwrap_or(device);
    let table = mount::mounts()?;
    Ok(Some(
        match table.iter().find(|e| {
            e.root == Path::new("/")
                && ((e.major, e.minor) == numbers || Path::new(&e.source) == canonical)
        }) {
            Some(entry) => Use::Mounted(entry.mount_point.clone()),
            None => Use::Device(canonical),
        },
    ))
}

/// Raw block: what was written through the device may still sit in its page
/// cache; fsync of a block device writes it to the image.
fn flush_device(device: &Path) -> Result<()> {
    File::open(device)
        .and_then(|d| d.sync_all())
        .map_err(|e| HostError::os("flush (fsync)", device, e, "is the device present?"))
}

/// Writes what the volume of `image` holds in memory into the image
/// (`syncfs` of its mounted filesystem, fsync of its device), without
/// freezing it: a freeze that follows has little left to flush. Nothing to
/// do when the image is not attached.
pub fn flush_image(image: &Path) -> Result<()> {
    match image_use(image)? {
        None => Ok(()),
        Some(Use::Device(device)) => flush_device(&device),
        Some(Use::Mounted(mount_point)) => {
            let dir = File::open(&mount_point).map_err(|e| {
                HostError::os("open", &mount_point, e, "is the volume still mounted?")
            })?;
            sync_filesystem(&dir, &mount_point)
        }
    }
}

/// Freezes (or flushes) the filesystem that is mounted from the read-write
/// loop device of `image`; a device that is attached but not mounted (a raw
/// block volume) has its page cache flushed into the image. `None` when the
/// image is not attached. A freeze is recorded in `records` while it lasts.
pub fn quiesce_image(image: &Path, records: &Path) -> Result<Option<Quiesced>> {
    match image_use(image)? {
        None => Ok(None),
        Some(Use::Device(device)) => {
            flush_device(&device)?;
            Ok(Some(Quiesced {
                mount_point: device,
                frozen: None,
            }))
        }
        Some(Use::Mounted(mount_point)) => quiesce(&mount_point, records).map(Some),
    }
}

/// Freezes the filesystem mounted at `mount_point`; one that cannot be
/// frozen (or is frozen already by someone else) is flushed instead. The
/// freeze is recorded in `records` first and until the thaw.
pub fn quiesce(mount_point: &Path, records: &Path) -> Result<Quiesced> {
    let dir = File::open(mount_point)
        .map_err(|e| HostError::os("open", mount_point, e, "is the volume still mounted?"))?;
    let record = write_record(records, mount_point).map_err(|e| {
        HostError::os(
            "record the freeze of",
            mount_point,
            e,
            "check the state directory",
        )
    })?;
    let Err(e) = freeze(&dir) else {
        return Ok(Quiesced {
            mount_point: mount_point.to_path_buf(),
            frozen: Some(Frozen { dir, record }),
        });
    };
    let _ = fs::remove_file(&record);
    if !matches!(
        errno(&e),
        Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::EINVAL | Errno::EBUSY
    ) {
        return Err(HostError::os(
            "freeze (FIFREEZE)",
            mount_point,
            e,
            "the node plugin needs CAP_SYS_ADMIN",
        ));
    }
    sync_filesystem(&dir, mount_point)?;
    Ok(Quiesced {
        mount_point: mount_point.to_path_buf(),
        frozen: None,
    })
}

/// `syncfs` of the filesystem mounted at `mount_point` (`dir` is open on it).
fn sync_filesystem(dir: &File, mount_point: &Path) -> Result<()> {
    nix::unistd::syncfs(dir).map_err(|e| {
        HostError::os(
            "flush (syncfs)",
            mount_point,
            e.into(),
            "check the filesystem",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_named_per_mount_point_and_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("frozen");
        let a = write_record(&records, Path::new("/var/lib/kubelet/a")).unwrap();
        let b = write_record(&records, Path::new("/var/lib/kubelet/b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read(&a).unwrap(), b"/var/lib/kubelet/a");
        assert_eq!(
            write_record(&records, Path::new("/var/lib/kubelet/a")).unwrap(),
            a
        );
    }

    #[test]
    fn a_record_of_a_mount_point_that_is_gone_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("frozen");
        assert!(thaw_recorded(&records).unwrap().is_empty());
        write_record(&records, &dir.path().join("unmounted-and-removed")).unwrap();
        assert!(thaw_recorded(&records).unwrap().is_empty());
        assert_eq!(fs::read_dir(&records).unwrap().count(), 0);
    }
}
