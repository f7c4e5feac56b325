//! Node-side volume operations built on the host primitives: stage (device,
//! filesystem, mount), publish (bind mount), unpublish, unstage, expand
//! and stats. Every step checks what is already there first, so a repeat,
//! or a call after a driver or kubelet restart, finds its own work and
//! returns OK; anything unexpected is refused, never overwritten.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::fs::{self as nodefs, MkfsOptions, Signature};
use super::luks::{self, KeyState, LuksError, Pbkdf};
use super::luks_keys::VolumeKeys;
use super::mount::{self, MountEntry};
use super::ownership::Owner;
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
            LuksError::WrongKey { .. } | LuksError::NoKeyOpens { .. } => {
                CsiError::InvalidArgument(e.to_string())
            }
            LuksError::Unavailable { .. }
            | LuksError::NotLuks { .. }
            | LuksError::StaleMapping { .. }
            | LuksError::Busy { .. }
            | LuksError::Helper { .. } => CsiError::FailedPrecondition(e.to_string()),
            LuksError::Crypt { .. } | LuksError::Host(_) => CsiError::Internal(e.to_string()),
        }
    }
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
        // Handed out as a raw device: from now on it may hold data.
        return blocking::run(move || {
            if mkfs_marker.exists() {
                set_marker(&mkfs_marker, false)?;
            }
            Ok(())
        })
        .await;
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
    let owner = blocking::run(move || Ok(Owner::of(&dev)?)).await?;
    if let Some(entry) = existing {
        if !owner.holds_filesystem(&entry) {
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
    // Only a filesystem (or nothing) is taken for what an mkfs cut off
    // left: a LUKS header or anything else is never formatted over.
    let interrupted =
        interrupted && matches!(signature, Signature::Blank | Signature::Filesystem(_));
    if interrupted && signature != Signature::Blank {
        tracing::warn!(device = %device.display(), ?signature, "an earlier mkfs was cut off; making the filesystem again");
    }
    let signature = if interrupted {
        Signature::Blank
    } else {
        signature
    };
    if signature == Signature::Blank && !interrupted {
        require_blank(&device).await?;
    }
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
        Signature::Luks => {
            return Err(CsiError::FailedPrecondition(format!(
                "device {} carries a LUKS header but the volume context has no encryption settings; an encrypted volume is never formatted or mounted in plaintext: stage it with the volume context of its StorageClass (multicsi.io/luks-encrypted)",
                device.display()
            )));
        }
        other => {
            return Err(CsiError::FailedPrecondition(format!(
                "device {} holds {}; refusing to format or mount it",
                device.display(),
                describe(&other)
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
    let requested_flags = !capability_flags(capability).is_empty();
    blocking::run(move || {
        let made = !at.exists();
        if made {
            std::fs::create_dir(&at)
                .map_err(|e| HostError::os("mkdir", &at, e, "does the parent directory exist?"))?;
        }
        mount::mount_fs(&dev, &at, &fs, &flags, read_only).map_err(|e| {
            if made {
                let _ = std::fs::remove_dir(&at);
            }
            match e.raw_os_error() {
                Some(libc::EINVAL) if requested_flags => CsiError::InvalidArgument(format!(
                    "volume_capability.mount.mount_flags: {fs} refused the mount ({e}); remove or correct the flags the filesystem does not know"
                )),
                _ => e.into(),
            }
        })
    })
    .await?;
    if !existed {
        return Ok(());
    }
    // A volume restored or cloned into a larger size must offer that size
    // (CSI CreateVolume): grow the filesystem to the device. On failure the
    // mount is undone so that a retry starts over.
    if let Err(e) = grow_to_device(device, staging.clone(), fs_type, read_only).await {
        let _ = unstage_filesystem(staging, Some(owner)).await;
        return Err(e);
    }
    Ok(())
}

/// The mount flags a capability asks for.
fn capability_flags(capability: &Capability) -> &[String] {
    match &capability.access {
        Access::Mount { flags, .. } => flags,
        Access::Block => &[],
    }
}

/// Refuses a device that shows data in its first or last MiB: no
/// signature recognised is not blank (a raw block volume's data has none).
async fn require_blank(device: &Path) -> CsiResult<()> {
    let dev = device.to_path_buf();
    match blocking::run(move || Ok(nodefs::data_at_ends(&dev)?)).await? {
        None => Ok(()),
        Some(offset) => Err(CsiError::FailedPrecondition(format!(
            "device {} has no filesystem signature but holds data (a byte at offset {offset} is not zero); it is not formatted, to keep that data: if it was used as a raw block volume, stage it as one, or copy its data off and zero it",
            device.display()
        ))),
    }
}

/// Where a mount will be made: an existing directory (a file for a raw
/// block publish), or a missing one whose parent directory exists. Wrong
/// kinds are the caller's mistake: INVALID_ARGUMENT naming `field`.
pub fn check_mount_point(field: &str, path: &Path, file: bool) -> CsiResult<()> {
    let (want, hint) = if file {
        ("a file", "a raw block volume is published on a file")
    } else {
        ("a directory", "a filesystem is mounted on a directory")
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() == file => Err(CsiError::InvalidArgument(format!(
            "{field} {} exists and is not {want}: {hint}; pass a path that does not exist or is {want}",
            path.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            if parent.is_dir() {
                Ok(())
            } else {
                Err(CsiError::InvalidArgument(format!(
                    "{field} {}: its parent directory {} does not exist; create it first",
                    path.display(),
                    parent.display()
                )))
            }
        }
        Err(e) => Err(CsiError::InvalidArgument(format!(
            "{field} {} cannot be inspected: {e}",
            path.display()
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
/// `mkfs_marker` (see [`stage_filesystem`]) is set before a new header is
/// written: the mapping of a new volume reads as noise, not zeros, and this
/// marker is what says it is blank until the filesystem is made on it (or
/// it is handed out as a raw block device).
pub async fn open_encrypted(
    device: PathBuf,
    name: String,
    keys: VolumeKeys,
    settings: params::Luks,
    pbkdf: Pbkdf,
    marker: PathBuf,
    mkfs_marker: PathBuf,
) -> CsiResult<PathBuf> {
    blocking::run(move || {
        luks::check_available()?;
        let numbers = luks::device_numbers(&device)?;
        if let Some(active) = luks::active(&name)? {
            if active.backing == numbers {
                settle_keys(&device, &name, &keys, &pbkdf)?;
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
        if signature == Signature::Blank
            && !interrupted
            && let Some(offset) = nodefs::data_at_ends(&device)?
        {
            return Err(CsiError::FailedPrecondition(format!(
                "device {} has no signature but holds data (a byte at offset {offset} is not zero); an encrypted volume is never formatted over existing data",
                device.display()
            )));
        }
        if signature == Signature::Blank || interrupted {
            set_marker(&mkfs_marker, true)?;
            set_marker(&marker, true)?;
            crate::metrics::node_op("luks_format", || {
                luks::format(&device, &keys.current, &settings, &pbkdf)
            })?;
            set_marker(&marker, false)?;
            tracing::info!(device = %device.display(), cipher = %settings.cipher, key_size = settings.key_size_bits, "LUKS2 header written");
        }
        let key = match settle_keys(&device, &name, &keys, &pbkdf)? {
            KeyState::Previous => keys.previous.as_ref().unwrap_or(&keys.current),
            KeyState::Current | KeyState::Rotated => &keys.current,
        };
        Ok(crate::metrics::node_op("luks_open", || {
            luks::open(&device, &name, key)
        })?)
    })
    .await
}

/// Makes the volume open with the current key (rotating from the previous
/// one if needed) and records whether it still needs the previous key.
fn settle_keys(
    device: &Path,
    name: &str,
    keys: &VolumeKeys,
    pbkdf: &Pbkdf,
) -> Result<KeyState, LuksError> {
    let operation = if keys.previous.is_some() {
        "luks_rotate"
    } else {
        "luks_check_key"
    };
    let state = crate::metrics::node_op(operation, || luks::settle_keys(device, keys, pbkdf))?;
    crate::metrics::luks_on_previous_key(name, state == KeyState::Previous);
    Ok(state)
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
        crate::metrics::node_op("luks_close", || luks::close(&name))?;
        crate::metrics::luks_on_previous_key(&name, false);
        Ok(())
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

/// Unmounts the staging path if the volume's filesystem is mounted there;
/// anything else mounted there is refused and left alone.
pub async fn unstage_filesystem(staging: PathBuf, owner: Option<Owner>) -> CsiResult<()> {
    blocking::run(move || {
        if let Some(entry) = mount::mount_at(&staging)? {
            require_own("staging_target_path", &staging, &entry, owner.as_ref())?;
            mount::unmount(&staging)?;
        }
        Ok(())
    })
    .await
}

/// Refuses to act on a mount that is not the volume's own.
fn require_own(field: &str, at: &Path, entry: &MountEntry, owner: Option<&Owner>) -> CsiResult<()> {
    match owner {
        Some(owner) if owner.owns(entry) => Ok(()),
        Some(owner) => Err(CsiError::FailedPrecondition(format!(
            "{field} {} has {} mounted, not this volume's device {}; nothing was unmounted: check the volume_id, or unmount it yourself if it is stale",
            at.display(),
            entry.source,
            owner.device().display()
        ))),
        None => Err(CsiError::FailedPrecondition(format!(
            "{field} {} has {} mounted but this volume's device is not on this node, so it cannot be told as the volume's; nothing was unmounted: check the volume_id, or unmount it yourself if it is stale",
            at.display(),
            entry.source
        ))),
    }
}

/// Bind-mounts a staged filesystem (`source` = staging path) or a block
/// device (`source` = device) at `target`.
///
/// `owner` is the volume's device: a staging path that holds anything
/// else is refused.
pub async fn publish(
    source: PathBuf,
    target: PathBuf,
    block: bool,
    read_only: bool,
    flags: Vec<String>,
    owner: Owner,
) -> CsiResult<()> {
    if block {
        require_block_device(&source)?;
    }
    blocking::run(move || {
        let table = mount::mounts()?;
        let bound = if block {
            Some(Owner::of(&source)?)
        } else {
            None
        };
        let wanted = if let Some(bound) = &bound {
            bound.numbers()
        } else {
            let staged = staged_at(&table, &source, &owner)?;
            (staged.major, staged.minor)
        };
        if let Some(entry) = mount::lookup(&table, &target)? {
            let ours = (entry.major, entry.minor) == wanted
                || bound.is_some_and(|b| b.is_bound_device(&entry));
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
        let made = !target.exists();
        create_target(&target, block)?;
        mount::bind(&source, &target, read_only, &flags).map_err(|e| {
            // Undo the target this call made, so a failed publish leaves nothing.
            if made {
                let _ = std::fs::remove_dir(&target).or_else(|_| std::fs::remove_file(&target));
            }
            CsiError::from(e)
        })
    })
    .await
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

/// The mount of the volume's filesystem at `staging`; anything else there
/// (or nothing) is FAILED_PRECONDITION.
fn staged_at(table: &[MountEntry], staging: &Path, owner: &Owner) -> CsiResult<MountEntry> {
    let staged = mount::lookup(table, staging)?.ok_or_else(|| {
        CsiError::FailedPrecondition(format!(
            "the volume is not staged at {}: call NodeStageVolume first",
            staging.display()
        ))
    })?;
    if !owner.holds_filesystem(&staged) {
        return Err(CsiError::FailedPrecondition(format!(
            "staging_target_path {} holds {}, not this volume's device {}; nothing was published: pass the staging path this volume was staged at",
            staging.display(),
            staged.source,
            owner.device().display()
        )));
    }
    Ok(staged)
}

/// Checks that `staging` holds the volume's filesystem.
pub async fn require_staged(staging: PathBuf, owner: Owner) -> CsiResult<()> {
    blocking::run(move || staged_at(&mount::mounts()?, &staging, &owner).map(|_| ())).await
}

/// Unmounts the volume's mounts at `target` and removes the directory or
/// file the publish made; a mount that is not the volume's is refused and
/// left alone.
pub async fn unpublish(target: PathBuf, owner: Option<Owner>) -> CsiResult<()> {
    blocking::run(move || {
        while let Some(entry) = mount::mount_at(&target)? {
            require_own("target_path", &target, &entry, owner.as_ref())?;
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
        if let Some(device) = device
            && !Owner::of(&device)?.owns(&entry)
        {
            return Ok(Usage::NotMounted(format!(
                "{} has {} mounted, not the volume's device {}",
                path.display(),
                entry.source,
                device.display()
            )));
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
