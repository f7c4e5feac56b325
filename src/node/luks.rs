//! LUKS (dm-crypt) on the node: format a blank device, open it as a
//! device-mapper mapping, close, grow, and find what is open. The work with
//! libcryptsetup runs in the `multicsi-luks` helper process
//! ([`super::luks_helper`], [`super::luks_ops`]); this module is the node's
//! side of it, and what needs no libcryptsetup (names, device numbers).
//!
//! The key is handed over as bytes in memory: it never goes through a file,
//! a command line or a log.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::luks_helper::{self, Reply, Request};
use super::luks_keys::VolumeKeys;
use crate::csi::params::Luks;

/// Where device-mapper mappings appear.
pub const MAPPER_DIR: &str = "/dev/mapper";
const CONTROL: &str = "/dev/mapper/control";

/// Cost of the argon2id key derivation of new volumes. Opening a volume
/// costs the same memory, so it must fit the node plugin's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pbkdf {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Pbkdf {
    pub const DEFAULT: Pbkdf = Pbkdf {
        memory_kib: 64 * 1024,
        iterations: 4,
    };
    /// libcryptsetup's bounds for argon2 (memory up to 4 GiB, at least 4
    /// iterations); 1 MiB is this driver's floor.
    const MEMORY_KIB: std::ops::RangeInclusive<u32> = 1024..=4 * 1024 * 1024;
    const ITERATIONS: std::ops::RangeInclusive<u32> = 4..=1000;

    pub fn validate(&self) -> Result<(), String> {
        if !Self::MEMORY_KIB.contains(&self.memory_kib) {
            return Err(format!(
                "luks-pbkdf-memory-kib {} is out of range: use {} to {} (KiB)",
                self.memory_kib,
                Self::MEMORY_KIB.start(),
                Self::MEMORY_KIB.end()
            ));
        }
        if !Self::ITERATIONS.contains(&self.iterations) {
            return Err(format!(
                "luks-pbkdf-iterations {} is out of range: use {} to {}",
                self.iterations,
                Self::ITERATIONS.start(),
                Self::ITERATIONS.end()
            ));
        }
        Ok(())
    }
}

/// What can go wrong with LUKS. Messages name the device or mapping and
/// never contain the key. The helper process sends them back as they are.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LuksError {
    /// The kernel offers no device-mapper (or the plugin may not use it).
    #[error(
        "dm-crypt is unavailable on this node: {CONTROL}: {reason}; encrypted volumes need a kernel with device-mapper and dm-crypt (modules dm_mod, dm_crypt) and a privileged node plugin; nothing was written"
    )]
    Unavailable { reason: String },
    /// Neither the current nor the previous key of a rotation opens it.
    #[error(
        "neither the current key nor the previous key of the node-stage secret opens a key slot of the LUKS header on {device}; nothing was changed: check the secret", device = device.display()
    )]
    NoKeyOpens { device: PathBuf },
    /// No key slot opens with the given key.
    #[error(
        "the luksKey of the node-stage secret opens no key slot of the LUKS header on {device}; nothing was changed: check the secret", device = device.display()
    )]
    WrongKey { device: PathBuf },
    /// The device holds no LUKS header.
    #[error("{device} holds no LUKS header: {detail}", device = device.display())]
    NotLuks { device: PathBuf, detail: String },
    /// A mapping of this name exists over another device and is in use.
    #[error(
        "device-mapper name {name} is taken by a mapping over device {found} (not {device}) that is in use; unmount it and run `cryptsetup close {name}`", device = device.display()
    )]
    StaleMapping {
        name: String,
        found: String,
        device: PathBuf,
    },
    /// The mapping is still open by someone (mounted, bind-mounted).
    #[error("LUKS mapping {name} is in use and cannot be closed; unpublish and unmount it first")]
    Busy { name: String },
    /// libcryptsetup failed.
    #[error("{op} {target}: {error}{messages}")]
    Crypt {
        op: String,
        target: String,
        error: String,
        messages: String,
    },
    /// The helper process that does the LUKS work is missing or failed.
    #[error(
        "the LUKS helper {path} failed: {reason}; it ships beside multicsi in the driver's image (see docs/install.md)", path = path.display()
    )]
    Helper { path: PathBuf, reason: String },
    /// A system call failed.
    #[error(transparent)]
    #[serde(skip)]
    Host(#[from] super::HostError),
}

/// The device-mapper name of a volume's mapping: readable when the volume
/// ID is made of safe characters, else derived from its hash.
pub fn mapping_name(volume_id: &str) -> String {
    let safe = volume_id.len() <= 100
        && volume_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if safe {
        format!("luks-{volume_id}")
    } else {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(volume_id.as_bytes());
        let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("luks-{hex}")
    }
}

/// `/dev/mapper/<name>`.
pub fn mapping_path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

/// Fails with [`LuksError::Unavailable`] when device-mapper cannot be used
/// (opening the control node also loads dm_mod when it is a module).
pub fn check_available() -> Result<(), LuksError> {
    check_device_mapper()
}

fn check_device_mapper() -> Result<(), LuksError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map(drop)
        .map_err(|e| LuksError::Unavailable {
            reason: e.to_string(),
        })
}

/// An open mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub path: PathBuf,
    /// Major and minor number of the device under it.
    pub backing: (u32, u32),
    /// Held open (mounted, or a device stacked on it).
    pub busy: bool,
}

/// The open mapping called `name`, if any. Without device-mapper nothing
/// can be open: `None`.
pub fn active(name: &str) -> Result<Option<Active>, LuksError> {
    if check_device_mapper().is_err() {
        return Ok(None);
    }
    let path = mapping_path(name);
    let busy = match luks_helper::call(&Request::Status {
        name: name.to_string(),
    })? {
        Reply::Status(Some(busy)) => busy,
        _ => return Ok(None),
    };
    let backing = backing_device(&path)?;
    Ok(Some(Active {
        path,
        backing,
        busy,
    }))
}

/// The major:minor of the one device under the device-mapper device `path`
/// (from sysfs: `/sys/dev/block/M:m/slaves/*/dev`).
fn backing_device(path: &Path) -> Result<(u32, u32), LuksError> {
    let os = |op, p: &Path, e| super::HostError::os(op, p, e, "is the mapping still open?");
    let rdev = std::fs::metadata(path)
        .map_err(|e| os("stat", path, e))?
        .rdev();
    let slaves = PathBuf::from(format!(
        "/sys/dev/block/{}:{}/slaves",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    ));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&slaves).map_err(|e| os("list", &slaves, e))? {
        let dev_file = entry
            .map_err(|e| os("list", &slaves, e))?
            .path()
            .join("dev");
        let text = std::fs::read_to_string(&dev_file).map_err(|e| os("read", &dev_file, e))?;
        if let Some((major, minor)) = text.trim().split_once(':')
            && let (Ok(major), Ok(minor)) = (major.parse(), minor.parse())
        {
            found.push((major, minor));
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        _ => Err(super::HostError::os(
            "find the one device under",
            path,
            std::io::Error::other(format!(
                "{} devices found in {}",
                found.len(),
                slaves.display()
            )),
            "a LUKS mapping sits on exactly one device",
        )
        .into()),
    }
}

/// Writes a new LUKS2 header on `device` with one key slot for `key`. The
/// caller makes sure the device is blank.
pub fn format(device: &Path, key: &[u8], luks: &Luks, pbkdf: &Pbkdf) -> Result<(), LuksError> {
    luks_helper::call(&Request::format(device, key, luks, pbkdf)).map(drop)
}

/// Checks that `key` opens `device` without opening it.
pub fn check_key(device: &Path, key: &[u8]) -> Result<(), LuksError> {
    luks_helper::call(&Request::CheckKey {
        device: device.to_path_buf(),
        key: key.to_vec(),
    })
    .map(drop)
}

/// Which key a volume opens with after [`settle_keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// The current key (and the previous one, if any, no longer).
    Current,
    /// It opened only with the previous key; it now opens with the current
    /// key alone.
    Rotated,
    /// Only the previous key opens it: a slot for the current key could not
    /// be added (the error was logged).
    Previous,
}

/// Makes `device` open with `keys.current`, and no longer with
/// `keys.previous` (see [`super::luks_ops::settle_keys`] for the steps and
/// why a cut between them loses no key).
pub fn settle_keys(device: &Path, keys: &VolumeKeys, pbkdf: &Pbkdf) -> Result<KeyState, LuksError> {
    match luks_helper::call(&Request::settle_keys(device, keys, pbkdf))? {
        Reply::Keys(state) => Ok(state),
        other => Err(unexpected(other)),
    }
}

/// Opens `device` as mapping `name` and returns the mapping's path. The
/// volume key is kept in the device-mapper table rather than the kernel
/// keyring, so that the mapping can be grown without the key.
pub fn open(device: &Path, name: &str, key: &[u8]) -> Result<PathBuf, LuksError> {
    luks_helper::call(&Request::Open {
        device: device.to_path_buf(),
        name: name.to_string(),
        key: key.to_vec(),
    })?;
    Ok(mapping_path(name))
}

/// Closes mapping `name`; closing one that is not open is done (the
/// helper looks first, in the same run). Without device-mapper nothing can
/// be open.
pub fn close(name: &str) -> Result<(), LuksError> {
    if check_device_mapper().is_err() {
        return Ok(());
    }
    luks_helper::call(&Request::Close {
        name: name.to_string(),
    })
    .map(drop)
}

/// Grows mapping `name` to the current size of the device under it.
pub fn resize(name: &str) -> Result<(), LuksError> {
    luks_helper::call(&Request::Resize {
        name: name.to_string(),
    })
    .map(drop)
}

fn unexpected(reply: Reply) -> LuksError {
    LuksError::Crypt {
        op: "understand the reply".to_string(),
        target: luks_helper::HELPER.to_string(),
        error: format!("{reply:?} answers another operation"),
        messages: String::new(),
    }
}

/// Major and minor number of `device`.
pub fn device_numbers(device: &Path) -> Result<(u32, u32), LuksError> {
    let rdev = std::fs::metadata(device)
        .map_err(|e| super::HostError::os("stat", device, e, "is the device present?"))?
        .rdev();
    Ok(super::device_numbers(rdev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_names_are_readable_or_hashed() {
        assert_eq!(mapping_name("hp-0123abcd"), "luks-hp-0123abcd");
        let odd = mapping_name("vol/with spaces");
        assert!(odd.starts_with("luks-") && odd.len() == 5 + 32, "{odd}");
        assert_ne!(odd, mapping_name("vol/with spaces2"));
        let long = "a".repeat(128);
        assert_eq!(mapping_name(&long).len(), 37);
    }

    #[test]
    fn pbkdf_bounds() {
        assert!(Pbkdf::DEFAULT.validate().is_ok());
        assert!(
            Pbkdf {
                memory_kib: 512,
                iterations: 4
            }
            .validate()
            .is_err()
        );
        assert!(
            Pbkdf {
                memory_kib: 8192,
                iterations: 3
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn without_device_mapper_nothing_is_open() {
        if check_available().is_ok() {
            eprintln!("device-mapper present: the VM suite covers this host");
            return;
        }
        let err = check_available().unwrap_err().to_string();
        assert!(err.contains("dm-crypt is unavailable"), "{err}");
        assert_eq!(active("luks-anything").unwrap(), None);
        close("luks-anything").unwrap();
    }
}
