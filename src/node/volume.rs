//! Node-side volume operations built on the host primitives: stage (device,
//! filesystem, mount), publish (bind mount), unpublish, unstage, expand
//! and stats. Every step checks what is already there first, so a repeat,
//! or a call after a driver or kubelet restart, finds its own work and
//! returns OK; anything unexpected is refused, never overwritten.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::fs::{self as nodefs, MkfsOptions, Signature};
use super::luks::{self, LuksError, Pbkdf};
use super::mount::{self, MountEntry};
use super::{HostError, loopdev};
use crate::backend::Map;
use crate::blocking;
use crate::csi::params;
use crate::csi::validate::{Access, Capability};
use crate::error::{CsiError, CsiResult};

impl From<HostError> for CsiError {
    fn from(e: HostError) -> Self {
        CsiError::Internal(e.to_string())
    }
}

impl From<LuksError> for CsiError {
    fn from(e: LuksError) -> Self {
        match e {
            LuksError::WrongKey { .. } => CsiError::InvalidArgument(e.to_string()),
            LuksError::Unavailable { .. }
            | LuksError::NotLuks { .. }
            | LuksError::StaleMapping { .. }
            | LuksError::Busy { .. } => CsiError::FailedPrecondition(e.to_string()),
            LuksError::Crypt { .. } | LuksError::Host(_) => CsiError::Internal(e.to_string()),
        }
    }
}

/// Major and minor number of a block device node.
fn device_numbers(device: &Path) -> Result<(u32, u32), HostError> {
    let meta = std::fs::metadata(device)
        .map_err(|e| HostError::os("stat", device, e, "is the device present?"))?;
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

/// Whether `entry` mounts `device`. btrfs shows an anonymous device number
/// in mountinfo, so the mount source is compared as well.
fn same_device(entry: &MountEntry, device: &Path, numbers: (u32, u32)) -> bool {
    (entry.major, entry.minor) == numbers
        || std::fs::canonicalize(&entry.source)
            .is_ok_and(|source| std::fs::canonicalize(device).is_ok_and(|d| d == source))
}

/// A device to format, mount or bind must be a block device: a regular
/// file or a character device is refused before anything touches it.
fn require_block_device(device: &Path) -> CsiResult<()> {
    match std::fs::metadata(device) {
        Ok(meta) if meta.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(CsiError::FailedPrecondition(format!(
            "{} is not a block device; nothing was formatted or mounted: check the volume's device path on the node",
            device.display()
        ))),
        Err(e) => Err(CsiError::FailedPrecondition(format!(
            "device {} cannot be read: {e}; is the volume attached to this node?",
            device.display()
        ))),
    }
}

/// mkfs settings from the volume context.
pub fn mkfs_options(context: &Map) -> CsiResult<MkfsOptions> {
    let number = |key: &str| -> CsiResult<Option<u32>> {
        context
            .get(key)
            .map(|v| {
                v.parse::<u32>().map_err(|_| {
                    CsiError::InvalidArgument(format!("volume context {key}={v:?} is not a number"))
                })
            })
            .transpose()
    };
    let reserved = number(params::MKFS_RESERVED_PERCENT)?
        .map(|v| {
            u8::try_from(v).map_err(|_| {
                CsiError::InvalidArgument(format!(
                    "{} must be 0..=50",
                    params::MKFS_RESERVED_PERCENT
                ))
            })
        })
        .transpose()?;
    Ok(MkfsOptions {
        inode_size: number(params::MKFS_INODE_SIZE)?,
        block_size: number(params::MKFS_BLOCK_SIZE)?,
        reserved_percent: reserved,
    })
}

/// Makes the filesystem on `device` (only if blank) and mounts it at
/// `staging`; a staging path that already has this device mounted is done.
///
/// `mkfs_marker` is a file that exists (durably) only while mkfs runs: a
/// filesystem found with its marker still there was cut off half made (a
/// killed mkfs.xfs leaves a signature that does not mount) and holds no
/// data, so it is made again.
pub async fn stage_filesystem(
    device: PathBuf,
    staging: PathBuf,
    capability: &Capability,
    context: &Map,
    mkfs_marker: PathBuf,
) -> CsiResult<()> {
    require_block_device(&device)?;
    let Access::Mount { fs_type, flags } = &capability.access else {
        return Ok(());
    };
    let options = mkfs_options(context)?;
    options
        .validate(fs_type)
        .map_err(|e| CsiError::InvalidArgument(e.to_string()))?;
    let (fs_type, flags) = (fs_type.clone(), flags.clone());
    let read_only = capability.read_only_mode();
    let staged = staging.clone();
    let existing = blocking::run(move || Ok(mount::mount_at(&staged)?)).await?;
    let dev = device.clone();
    let numbers = blocking::run(move || Ok(device_numbers(&dev)?)).await?;
    if let Some(entry) = existing {
        if !same_device(&entry, &device, numbers) {
            return Err(CsiError::AlreadyExists(format!(
                "staging_target_path {} already has {} mounted, not this volume's device {}",
                staging.display(),
                entry.source,
                device.display()
            )));
        }
        if entry.fs_type != fs_type {
            return Err(CsiError::AlreadyExists(format!(
                "volume is already staged at {} with {}, not {fs_type}",
                staging.display(),
                entry.fs_type
            )));
        }
        // A repeat after a failed growth retries it.
        return grow_to_device(device, staging, fs_type, read_only).await;
    }
    let dev = device.clone();
    let marker = mkfs_marker.clone();
    let (signature, interrupted) =
        blocking::run(move || Ok((nodefs::probe(&dev)?, marker.exists()))).await?;
    if interrupted && signature != Signature::Blank {
        tracing::warn!(device = %device.display(), ?signature, "an earlier mkfs was cut off; making the filesystem again");
    }
    let signature = if interrupted {
        Signature::Blank
    } else {
        signature
    };
    let existed = signature != Signature::Blank;
    match signature {
        Signature::Blank => {
            let (dev, fs) = (device.clone(), fs_type.clone());
            blocking::run(move || {
                set_marker(&mkfs_marker, true)?;
                nodefs::mkfs(&dev, &fs, &options)?;
                Ok(set_marker(&mkfs_marker, false)?)
            })
            .await?;
            tracing::info!(device = %device.display(), fs_type = %fs_type, "filesystem created");
        }
        Signature::Filesystem(found) if found == fs_type => {}
        Signature::Filesystem(found) => {
            return Err(CsiError::FailedPrecondition(format!(
                "device {} holds a {found} filesystem but {fs_type} was requested; it is not reformatted (its data is kept)",
                device.display()
            )));
        }
        other => {
            return Err(CsiError::FailedPrecondition(format!(
                "device {} holds {other:?}; refusing to format or mount it",
                device.display()
            )));
        }
    }
    // A restored or cloned xfs carries its origin's UUID; xfs refuses to
    // mount a second filesystem with the same UUID unless told not to check.
    let mut flags = flags;
    if fs_type == "xfs" && !flags.iter().any(|f| f == "nouuid") {
        flags.push("nouuid".to_string());
    }
    let (dev, at, fs) = (device.clone(), staging.clone(), fs_type.clone());
    blocking::run(move || {
        if !at.exists() {
            std::fs::create_dir(&at)
                .map_err(|e| HostError::os("mkdir", &at, e, "does the parent directory exist?"))?;
        }
        Ok(mount::mount_fs(&dev, &at, &fs, &flags, read_only)?)
    })
    .await?;
    if !existed {
        return Ok(());
    }
    // A volume restored or cloned into a larger size must offer that size
    // (CSI CreateVolume): grow the filesystem to the device. On failure the
    // mount is undone so that a retry starts over.
    if let Err(e) = grow_to_device(device, staging.clone(), fs_type, read_only).await {
        let _ = unstage_filesystem(staging).await;
        return Err(e);
    }
    Ok(())
}

/// The LUKS key of a volume, from the node-stage secret's `luksKey`.
pub type LuksKey = zeroize::Zeroizing<Vec<u8>>;

/// The secret entry that holds a volume's LUKS key.
pub const LUKS_KEY_SECRET: &str = "luksKey";

/// Takes the LUKS key out of the node-stage secrets: an encrypted volume
/// without one is refused before anything is touched.
pub fn luks_key(secrets: &std::collections::HashMap<String, String>) -> CsiResult<LuksKey> {
    match secrets.get(LUKS_KEY_SECRET) {
        Some(key) if !key.is_empty() => Ok(zeroize::Zeroizing::new(key.as_bytes().to_vec())),
        _ => Err(CsiError::InvalidArgument(format!(
            "the volume is LUKS-encrypted but the node-stage secret has no {LUKS_KEY_SECRET} entry: set csi.storage.k8s.io/node-stage-secret-name and -namespace in the StorageClass to a Secret with a non-empty {LUKS_KEY_SECRET}"
        ))),
    }
}

/// Opens the LUKS volume on `device` as `name` and returns the mapping,
/// formatting the device first only if it is blank. A mapping of that name
/// already open over this device is reused once the key is checked; one
/// over another device is replaced when unused, else refused.
///
/// `marker` exists (durably) while the header is being written, so that a
/// format cut off half way is done again rather than taken for a volume.
pub async fn open_encrypted(
    device: PathBuf,
    name: String,
    key: LuksKey,
    settings: params::Luks,
    pbkdf: Pbkdf,
    marker: PathBuf,
) -> CsiResult<PathBuf> {
    blocking::run(move || {
        luks::check_available()?;
        let numbers = luks::device_numbers(&device)?;
        if let Some(active) = luks::active(&name)? {
            if active.backing == numbers {
                crate::metrics::node_op("luks_open", || luks::check_key(&device, &key))?;
                return Ok(active.path);
            }
            let found = format!("{}:{}", active.backing.0, active.backing.1);
            if active.busy {
                return Err(LuksError::StaleMapping {
                    name,
                    found,
                    device,
                }
                .into());
            }
            tracing::warn!(mapping = %name, stale_device = %found, device = %device.display(), "closing a stale LUKS mapping of the same name over another device");
            crate::metrics::node_op("luks_close", || luks::close(&name))?;
        }
        let signature = nodefs::probe(&device)?;
        let interrupted = marker.exists();
        match signature {
            Signature::Blank => {}
            Signature::Luks if !interrupted => {}
            Signature::Luks => {
                tracing::warn!(device = %device.display(), "an earlier LUKS format was cut off; formatting again");
            }
            other => {
                return Err(CsiError::FailedPrecondition(format!(
                    "device {} holds {}, not a LUKS header; an encrypted volume is never formatted over existing data",
                    device.display(),
                    describe(&other)
                )));
            }
        }
        if signature == Signature::Blank || interrupted {
            set_marker(&marker, true)?;
            crate::metrics::node_op("luks_format", || {
                luks::format(&device, &key, &settings, &pbkdf)
            })?;
            set_marker(&marker, false)?;
            tracing::info!(device = %device.display(), cipher = %settings.cipher, key_size = settings.key_size_bits, "LUKS2 header written");
        }
        Ok(crate::metrics::node_op("luks_open", || {
            luks::open(&device, &name, &key)
        })?)
    })
    .await
}

/// What a probe found, for a message.
fn describe(signature: &Signature) -> String {
    match signature {
        Signature::Blank => "nothing".into(),
        Signature::Filesystem(fs) => format!("a {fs} filesystem"),
        Signature::Luks => "a LUKS header".into(),
        Signature::PartitionTable(pt) => format!("a {pt} partition table"),
        Signature::Other(what) => format!("a {what} signature"),
    }
}

/// Closes the LUKS mapping `name` if it is open.
pub async fn close_encrypted(name: String) -> CsiResult<()> {
    blocking::run(move || {
        if luks::active(&name)?.is_none() {
            return Ok(());
        }
        Ok(crate::metrics::node_op("luks_close", || {
            luks::close(&name)
        })?)
    })
    .await
}

/// The open LUKS mapping `name`, if any.
pub async fn encrypted_device(name: String) -> CsiResult<Option<PathBuf>> {
    blocking::run(move || Ok(luks::active(&name)?.map(|a| a.path))).await
}

/// Grows the LUKS mapping `name` to its device's new size.
pub async fn grow_encrypted(name: String) -> CsiResult<()> {
    blocking::run(move || {
        Ok(crate::metrics::node_op("luks_resize", || {
            luks::resize(&name)
        })?)
    })
    .await
}

/// Creates (durably) or removes (durably) the mkfs marker.
fn set_marker(marker: &Path, present: bool) -> Result<(), HostError> {
    let fail = |op, e| HostError::os(op, marker, e, "the node's state directory must be writable");
    let dir = marker.parent().unwrap_or(Path::new("/"));
    if present {
        std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
        std::fs::File::create(marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail("create", e))?;
    } else {
        match std::fs::remove_file(marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail("remove", e)),
            _ => {}
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync the directory of", e))
}

/// Grows the filesystem mounted at `staging` to the size of `device`; a
/// no-op when it already has that size.
async fn grow_to_device(
    device: PathBuf,
    staging: PathBuf,
    fs_type: String,
    read_only: bool,
) -> CsiResult<()> {
    if read_only {
        return Ok(());
    }
    blocking::run(move || Ok(nodefs::grow(&device, &staging, &fs_type)?)).await
}

/// Unmounts the staging path if something is mounted there.
pub async fn unstage_filesystem(staging: PathBuf) -> CsiResult<()> {
    blocking::run(move || {
        if mount::mount_at(&staging)?.is_some() {
            mount::unmount(&staging)?;
        }
        Ok(())
    })
    .await
}

/// Bind-mounts a staged filesystem (`source` = staging path) or a block
/// device (`source` = device) at `target`.
pub async fn publish(
    source: PathBuf,
    target: PathBuf,
    block: bool,
    read_only: bool,
    flags: Vec<String>,
) -> CsiResult<()> {
    if block {
        require_block_device(&source)?;
    }
    blocking::run(move || {
        let table = mount::mounts()?;
        let wanted = if block {
            device_numbers(&source)?
        } else {
            let staged = mount::lookup(&table, &source)?.ok_or_else(|| {
                CsiError::FailedPrecondition(format!(
                    "the volume is not staged at {}: call NodeStageVolume first",
                    source.display()
                ))
            })?;
            (staged.major, staged.minor)
        };
        if let Some(entry) = mount::lookup(&table, &target)? {
            let ours =
                (entry.major, entry.minor) == wanted || (block && entry_is_device(&entry, &source));
            if !ours {
                return Err(CsiError::AlreadyExists(format!(
                    "target_path {} already has {} mounted; unpublish it first",
                    target.display(),
                    entry.source
                )));
            }
            if entry.is_read_only() != read_only {
                return Err(CsiError::AlreadyExists(format!(
                    "target_path {} is already published with readonly={}",
                    target.display(),
                    entry.is_read_only()
                )));
            }
            return Ok(());
        }
        create_target(&target, block)?;
        Ok(mount::bind(&source, &target, read_only, &flags)?)
    })
    .await
}

/// A bind mount of a device node shows the devtmpfs's numbers, not the
/// device's: match it by the device's name instead.
fn entry_is_device(entry: &MountEntry, device: &Path) -> bool {
    device
        .file_name()
        .is_some_and(|name| entry.root.file_name() == Some(name))
}

fn create_target(target: &Path, block: bool) -> Result<(), HostError> {
    let result = if block {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map(|_| ())
    } else if target.is_dir() {
        Ok(())
    } else {
        std::fs::create_dir(target)
    };
    result.map_err(|e| {
        HostError::os(
            "create",
            target,
            e,
            "the parent directory must exist and be writable",
        )
    })
}

/// Unmounts `target` and removes the directory or file the publish made.
pub async fn unpublish(target: PathBuf) -> CsiResult<()> {
    blocking::run(move || {
        while mount::mount_at(&target)?.is_some() {
            mount::unmount(&target)?;
        }
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                let _ = std::fs::remove_dir(&target);
            }
            Ok(meta) if meta.file_type().is_file() && meta.len() == 0 => {
                let _ = std::fs::remove_file(&target);
            }
            _ => {}
        }
        Ok(())
    })
    .await
}

/// Usage of a published or staged volume.
pub enum Usage {
    Filesystem(nodefs::FsStats),
    Block(u64),
    /// The path is there but the volume is not mounted on it.
    NotMounted(String),
}

/// Reads the usage at `path`; `device` is the volume's device, if attached.
pub async fn usage(path: PathBuf, device: Option<PathBuf>) -> CsiResult<Usage> {
    if !path.exists() {
        return Err(CsiError::NotFound(format!(
            "volume_path {} does not exist",
            path.display()
        )));
    }
    blocking::run(move || {
        let meta = std::fs::metadata(&path)
            .map_err(|e| HostError::os("stat", &path, e, "is the volume published?"))?;
        if meta.file_type().is_block_device() {
            return Ok(Usage::Block(loopdev::device_size(&path)?));
        }
        let Some(entry) = mount::mount_at(&path)? else {
            return Ok(Usage::NotMounted(format!(
                "{} is not a mount point: the volume is not mounted there",
                path.display()
            )));
        };
        if let Some(device) = device {
            let numbers = device_numbers(&device)?;
            if !same_device(&entry, &device, numbers) && !entry_is_device(&entry, &device) {
                return Ok(Usage::NotMounted(format!(
                    "{} has {} mounted, not the volume's device {}",
                    path.display(),
                    entry.source,
                    device.display()
                )));
            }
        }
        if meta.is_file() {
            return Ok(Usage::Block(loopdev::device_size(&path)?));
        }
        Ok(Usage::Filesystem(nodefs::stats(&path)?))
    })
    .await
}

/// Grows the filesystem mounted at `path` (or nothing for a raw device).
pub async fn grow_filesystem(device: PathBuf, path: PathBuf) -> CsiResult<()> {
    blocking::run(move || {
        let meta = std::fs::metadata(&path)
            .map_err(|e| HostError::os("stat", &path, e, "is the volume published?"))?;
        if meta.file_type().is_block_device() || meta.is_file() {
            return Ok(());
        }
        let entry = mount::mount_at(&path)?.ok_or_else(|| {
            CsiError::FailedPrecondition(format!(
                "volume_path {} is not a mount point: the volume is not mounted there",
                path.display()
            ))
        })?;
        Ok(nodefs::grow(&device, &entry.mount_point, &entry.fs_type)?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luks_key_comes_from_the_secret_and_is_required() {
        let secrets =
            std::collections::HashMap::from([(LUKS_KEY_SECRET.to_string(), "s3cret".to_string())]);
        assert_eq!(luks_key(&secrets).unwrap().as_slice(), b"s3cret");
        for secrets in [
            Default::default(),
            std::collections::HashMap::from([(LUKS_KEY_SECRET.to_string(), String::new())]),
        ] {
            let err = luks_key(&secrets).unwrap_err();
            assert!(matches!(err, CsiError::InvalidArgument(ref m) if m.contains("luksKey")));
        }
    }

    #[test]
    fn luks_errors_get_their_codes_and_never_the_key() {
        let wrong: CsiError = LuksError::WrongKey {
            device: "/dev/loop3".into(),
        }
        .into();
        assert!(matches!(wrong, CsiError::InvalidArgument(ref m) if m.contains("/dev/loop3")));
        let unavailable: CsiError = LuksError::Unavailable {
            reason: "No such device".into(),
        }
        .into();
        assert!(
            matches!(unavailable, CsiError::FailedPrecondition(ref m) if m.contains("dm-crypt is unavailable"))
        );
        let busy: CsiError = LuksError::Busy {
            name: "luks-v".into(),
        }
        .into();
        assert!(matches!(busy, CsiError::FailedPrecondition(_)));
    }
}
