//! Read-only views of a block device for read-only raw block publishes.
//!
//! A bind mount of a device node does not stop writes: `MS_RDONLY` on the
//! mount covers the filesystem the node lives in, not the device behind it.
//! A read-only publish therefore hands out a separate loop device that the
//! kernel keeps read-only (`LO_FLAGS_READ_ONLY`), over the same image (when
//! the volume's device is itself a loop device) or over the device. One view
//! serves every read-only target of a volume; it is detached when its last
//! target is unpublished, and any left over at unstage.

use std::path::{Path, PathBuf};

use super::{Result, loopdev, mount};

/// What a view of `device` is backed by: the image of a loop device, else
/// the device itself.
fn view_source(device: &Path) -> PathBuf {
    loopdev::backing_file(device).unwrap_or_else(|| device.to_path_buf())
}

/// The read-only view of `device`, attached if it is not yet.
pub fn view(device: &Path) -> Result<PathBuf> {
    loopdev::attach_read_only(&view_source(device))
}

/// The device node a bind mount of a device node shows as its root.
fn bound_device(entry: &mount::MountEntry) -> Option<PathBuf> {
    let name = entry.root.file_name()?;
    (entry.root.parent() == Some(Path::new("/"))).then(|| Path::new("/dev").join(name))
}

/// The read-only view published at `target`, if a read-only loop device is
/// bound there.
pub fn view_at(target: &Path) -> Result<Option<PathBuf>> {
    Ok(mount::mount_at(target)?
        .as_ref()
        .and_then(bound_device)
        .filter(|device| loopdev::is_read_only_loop(device)))
}

/// Whether `entry` binds a read-only view of `device`.
pub fn is_view_of(entry: &mount::MountEntry, device: &Path) -> bool {
    // A device given by a link (/dev/disk/by-id/...) shows as its target.
    let real = |path: PathBuf| std::fs::canonicalize(&path).unwrap_or(path);
    bound_device(entry).is_some_and(|view| {
        loopdev::is_read_only_loop(&view)
            && loopdev::backing_file(&view).is_some_and(|b| real(b) == real(view_source(device)))
    })
}

/// Detaches `view` unless another target still has it bound.
pub fn release_if_unused(view: &Path) -> Result<()> {
    let in_use = mount::mounts()?
        .iter()
        .any(|entry| bound_device(entry).as_deref() == Some(view));
    if in_use {
        return Ok(());
    }
    loopdev::detach(view)
}

/// Detaches every read-only view of `device` (before the device itself is
/// detached at unstage: a view over it would keep it busy).
pub fn release_all(device: &Path) -> Result<()> {
    for view in loopdev::find_read_only(&view_source(device))? {
        loopdev::detach(&view)?;
    }
    Ok(())
}

/// Makes the read-only views of `device` take its new size after growth.
pub fn refresh_all(device: &Path) -> Result<()> {
    for view in loopdev::find_read_only(&view_source(device))? {
        loopdev::refresh_capacity(&view)?;
    }
    Ok(())
}
