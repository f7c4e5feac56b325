//! Quiescing a mounted filesystem for a consistent copy of its device:
//! `FIFREEZE` flushes it and blocks new writes until `FITHAW`; filesystems
//! that cannot freeze are at least flushed with `syncfs`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{HostError, Result, loopdev, mount};

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)`.
const FIFREEZE: libc::Ioctl = 0xC004_5877u32 as libc::Ioctl;
const FITHAW: libc::Ioctl = 0xC004_5878u32 as libc::Ioctl;

/// A filesystem held frozen (or only flushed); thawed when dropped.
#[derive(Debug)]
pub struct Quiesced {
    mount_point: PathBuf,
    frozen: Option<File>,
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
        if let Some(dir) = &self.frozen {
            // SAFETY: FITHAW takes an int argument and reads no memory.
            if unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW, 0) } != 0 {
                let e = io::Error::last_os_error();
                tracing::error!(mount_point = %self.mount_point.display(), error = %e, "cannot thaw the filesystem (FITHAW); thaw it with fsfreeze -u");
            }
        }
    }
}

/// Freezes (or flushes) the filesystem that is mounted from the read-write
/// loop device of `image`; a device that is attached but not mounted (a raw
/// block volume) has its page cache flushed into the image. `None` when the
/// image is not attached.
pub fn quiesce_image(image: &Path) -> Result<Option<Quiesced>> {
    let Some(device) = loopdev::find(image)? else {
        return Ok(None);
    };
    let rdev = std::fs::metadata(&device)
        .map_err(|e| HostError::os("stat", &device, e, "is the device present?"))?;
    let numbers = {
        use std::os::unix::fs::MetadataExt;
        (libc::major(rdev.rdev()), libc::minor(rdev.rdev()))
    };
    let canonical = std::fs::canonicalize(&device).unwrap_or(device);
    let table = mount::mounts()?;
    let Some(entry) = table.iter().find(|e| {
        e.root == Path::new("/")
            && ((e.major, e.minor) == numbers || Path::new(&e.source) == canonical)
    }) else {
        // Raw block: what was written through the device may still sit in
        // its page cache; fsync of a block device writes it to the image.
        File::open(&canonical)
            .and_then(|d| d.sync_all())
            .map_err(|e| HostError::os("flush (fsync)", &canonical, e, "is the device present?"))?;
        return Ok(Some(Quiesced {
            mount_point: canonical,
            frozen: None,
        }));
    };
    quiesce(&entry.mount_point).map(Some)
}

/// Freezes the filesystem mounted at `mount_point`; one that cannot be
/// frozen (or is frozen already by someone else) is flushed instead.
pub fn quiesce(mount_point: &Path) -> Result<Quiesced> {
    let dir = File::open(mount_point)
        .map_err(|e| HostError::os("open", mount_point, e, "is the volume still mounted?"))?;
    // SAFETY: FIFREEZE takes an int argument and reads no memory.
    if unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, 0) } == 0 {
        return Ok(Quiesced {
            mount_point: mount_point.to_path_buf(),
            frozen: Some(dir),
        });
    }
    let e = io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::EBUSY)
    ) {
        return Err(HostError::os(
            "freeze (FIFREEZE)",
            mount_point,
            e,
            "the node plugin needs CAP_SYS_ADMIN",
        ));
    }
    // SAFETY: a valid open file descriptor.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(HostError::os(
            "flush (syncfs)",
            mount_point,
            io::Error::last_os_error(),
            "check the filesystem",
        ));
    }
    Ok(Quiesced {
        mount_point: mount_point.to_path_buf(),
        frozen: None,
    })
}
