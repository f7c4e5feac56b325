//! Which mounts are a volume's own: the filesystem on its device and every
//! bind mount of it, bind mounts of the device node, and bind mounts of the
//! device's read-only views. Node calls unmount only these, and count only
//! these as the volume's publications.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::mount::MountEntry;
use super::{HostError, Result, readonly};

/// A volume's device, as mounts show it.
#[derive(Clone, Debug)]
pub struct Owner {
    device: PathBuf,
    canonical: PathBuf,
    numbers: (u32, u32),
}

impl Owner {
    /// The device at `device` (a block device node or a link to one).
    pub fn of(device: &Path) -> Result<Self> {
        let meta = std::fs::metadata(device)
            .map_err(|e| HostError::os("stat", device, e, "is the device present?"))?;
        let rdev = meta.rdev();
        Ok(Owner {
            device: device.to_path_buf(),
            canonical: std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf()),
            numbers: super::device_numbers(rdev),
        })
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Major and minor number of the device.
    pub fn numbers(&self) -> (u32, u32) {
        self.numbers
    }

    /// Whether `entry` mounts the device's filesystem. btrfs shows an
    /// anonymous device number in mountinfo, so the source counts as well.
    pub fn holds_filesystem(&self, entry: &MountEntry) -> bool {
        (entry.major, entry.minor) == self.numbers
            || std::fs::canonicalize(&entry.source).is_ok_and(|source| source == self.canonical)
    }

    /// Whether `entry` is a bind mount of the device node itself (it shows
    /// the numbers of the filesystem /dev lives in, and the node's name as
    /// its root).
    pub fn is_bound_device(&self, entry: &MountEntry) -> bool {
        entry.root.parent() == Some(Path::new("/"))
            && self
                .canonical
                .file_name()
                .is_some_and(|name| entry.root.file_name() == Some(name))
    }

    /// Whether `entry` is one of the volume's mounts.
    pub fn owns(&self, entry: &MountEntry) -> bool {
        self.holds_filesystem(entry)
            || self.is_bound_device(entry)
            || readonly::is_view_of(entry, &self.device)
    }

    /// Mount points of the volume inside `root`, except `staging`.
    pub fn targets(&self, table: &[MountEntry], root: &Path, staging: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = table
            .iter()
            .filter(|e| e.mount_point.starts_with(root) && e.mount_point != staging)
            .filter(|e| self.owns(e))
            .map(|e| e.mount_point.clone())
            .collect();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(major: u32, minor: u32, root: &str, at: &str, source: &str) -> MountEntry {
        MountEntry {
            mount_id: 1,
            parent_id: 0,
            major,
            minor,
            root: root.into(),
            mount_point: at.into(),
            options: vec![],
            optional_fields: vec![],
            fs_type: "ext4".into(),
            source: source.into(),
            super_options: vec![],
        }
    }

    #[test]
    fn only_the_devices_own_mounts_count() {
        let owner = Owner {
            device: "/dev/loop7".into(),
            canonical: "/dev/loop7".into(),
            numbers: (7, 7),
        };
        assert!(owner.owns(&entry(7, 7, "/", "/k/staging", "/dev/loop7")));
        assert!(owner.owns(&entry(0, 5, "/loop7", "/k/pods/t", "devtmpfs")));
        assert!(!owner.owns(&entry(7, 8, "/", "/k/other", "/dev/loop8")));
        assert!(!owner.owns(&entry(0, 5, "/x/loop7", "/k/pods/t", "tmpfs")));
        let table = vec![
            entry(7, 7, "/", "/k/staging", "/dev/loop7"),
            entry(7, 7, "/", "/k/pods/a", "/dev/loop7"),
            entry(7, 7, "/", "/elsewhere", "/dev/loop7"),
            entry(7, 8, "/", "/k/pods/b", "/dev/loop8"),
        ];
        assert_eq!(
            owner.targets(&table, Path::new("/k"), Path::new("/k/staging")),
            vec![PathBuf::from("/k/pods/a")]
        );
    }
}
