//! LUKS (dm-crypt) through libcryptsetup: format a blank device, open it as
//! a device-mapper mapping, close, grow, and find what is open.
//!
//! The key is handed to libcryptsetup as bytes in memory: it never goes
//! through a file, a command line or a log. Each function is one whole
//! operation within one [`Session`] (the library is not thread-safe);
//! callers run it inside one blocking closure.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use super::cryptsetup::{self, Argon2id, Device, Session, Status};
use super::luks_keys::VolumeKeys;
use crate::csi::params::Luks;

/// Where device-mapper mappings appear.
pub const MAPPER_DIR: &str = "/dev/mapper";
const CONTROL: &str = "/dev/mapper/control";

/// Cost of the argon2id key derivation of new volumes. Opening a volume
/// costs the same memory, so it must fit the node plugin's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// never contain the key.
#[derive(Debug, thiserror::Error)]
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
    #[error("{op} {target}: {source}{messages}")]
    Crypt {
        op: &'static str,
        target: String,
        source: std::io::Error,
        messages: String,
    },
    /// A system call failed.
    #[error(transparent)]
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

/// Starts an operation: libcryptsetup's messages go to this thread's
/// collection, emptied first.
fn begin() -> Session {
    let session = Session::begin();
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| session.set_log_callback(collect_message));
    MESSAGES.with(|m| m.borrow_mut().clear());
    session
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
    let session = begin();
    let busy = match session.status(name) {
        Ok(Status::Active) => false,
        Ok(Status::Busy) => true,
        Ok(_) => return Ok(None),
        Err(source) => return Err(crypt_error("status of mapping", name, source)),
    };
    drop(session);
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
        libc::major(rdev),
        libc::minor(rdev)
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
    let target = device.display().to_string();
    let fail = |op, source| crypt_error(op, &target, source);
    let (cipher, mode) = luks
        .cipher
        .split_once('-')
        .ok_or_else(|| LuksError::Crypt {
            op: "format",
            target: target.clone(),
            source: std::io::Error::other(format!("cipher {:?} is not CIPHER-MODE", luks.cipher)),
            messages: String::new(),
        })?;
    let session = begin();
    let mut cd = session.device(device).map_err(|e| fail("open device", e))?;
    let kdf = Argon2id {
        iterations: pbkdf.iterations,
        memory_kib: pbkdf.memory_kib,
    };
    cd.format_luks2(cipher, mode, luks.key_size_bits as usize / 8, &kdf)
        .map_err(|e| fail("write a LUKS2 header on", e))?;
    cd.add_keyslot(key)
        .map_err(|e| fail("add a key slot on", e))
}

/// Loads the LUKS header (LUKS1 or LUKS2) of `device`.
fn load<'s>(session: &'s Session, device: &Path) -> Result<Device<'s>, LuksError> {
    let target = device.display().to_string();
    let mut cd = session
        .device(device)
        .map_err(|e| crypt_error("open device", &target, e))?;
    cd.load_luks().map_err(|e| LuksError::NotLuks {
        device: device.to_path_buf(),
        detail: format!("{e}{}", take_messages()),
    })?;
    Ok(cd)
}

/// Tries `key` against the key slots of `device`; returns the slot it opens.
fn unlock(
    cd: &mut Device,
    device: &Path,
    name: Option<&str>,
    key: &[u8],
) -> Result<u32, LuksError> {
    match cd.activate(name, key) {
        Ok(slot) => Ok(slot),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(LuksError::WrongKey {
            device: device.to_path_buf(),
        }),
        Err(e) => Err(crypt_error(
            if name.is_some() {
                "open"
            } else {
                "check the key of"
            },
            &device.display().to_string(),
            e,
        )),
    }
}

/// Checks that `key` opens `device` without opening it.
pub fn check_key(device: &Path, key: &[u8]) -> Result<(), LuksError> {
    let session = begin();
    let mut cd = load(&session, device)?;
    unlock(&mut cd, device, None, key).map(drop)
}

/// Which key a volume opens with after [`settle_keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// `keys.previous`. A rotation takes three steps, each written to the
/// header before the next: add a slot for the current key (unlocked by the
/// previous one), check that the current key opens it, wipe the previous
/// key's slot. Cut off anywhere, one of the two keys still opens the
/// volume, and the next stage finishes the rotation: when both keys open
/// it, the previous key's slot is wiped.
pub fn settle_keys(device: &Path, keys: &VolumeKeys, pbkdf: &Pbkdf) -> Result<KeyState, LuksError> {
    let session = begin();
    let mut cd = load(&session, device)?;
    let current = unlock(&mut cd, device, None, &keys.current);
    let Some(previous) = keys.previous.as_deref() else {
        return current.map(|_| KeyState::Current);
    };
    match current {
        Ok(current_slot) => match unlock(&mut cd, device, None, previous) {
            Ok(old) if old != current_slot => {
                wipe_slot(&mut cd, device, old)?;
                tracing::info!(device = %device.display(), slot = old, "LUKS key rotation finished: the previous key's slot is wiped");
                Ok(KeyState::Rotated)
            }
            Ok(_) | Err(LuksError::WrongKey { .. }) => Ok(KeyState::Current),
            Err(e) => Err(e),
        },
        Err(LuksError::WrongKey { .. }) => {
            let old = match unlock(&mut cd, device, None, previous) {
                Ok(slot) => slot,
                Err(LuksError::WrongKey { .. }) => {
                    return Err(LuksError::NoKeyOpens {
                        device: device.to_path_buf(),
                    });
                }
                Err(e) => return Err(e),
            };
            if !cd.is_luks1() {
                let cost = Argon2id {
                    iterations: pbkdf.iterations,
                    memory_kib: pbkdf.memory_kib,
                };
                cd.set_argon2id(&cost).map_err(|e| {
                    crypt_error("set the key slot cost of", &device.display().to_string(), e)
                })?;
            }
            if let Err(e) = cd.add_keyslot_by_passphrase(previous, &keys.current) {
                let error = crypt_error("add a key slot on", &device.display().to_string(), e);
                tracing::warn!(device = %device.display(), %error, "LUKS key rotation not possible: the volume opens with the previous key");
                return Ok(KeyState::Previous);
            }
            crate::failpoint::crash_point("luks-rotate-added");
            unlock(&mut cd, device, None, &keys.current)?;
            crate::failpoint::crash_point("luks-rotate-checked");
            wipe_slot(&mut cd, device, old)?;
            tracing::info!(device = %device.display(), slot = old, "LUKS key rotated: a slot for the current key added, the previous key's slot wiped");
            Ok(KeyState::Rotated)
        }
        Err(e) => Err(e),
    }
}

fn wipe_slot(cd: &mut Device, device: &Path, slot: u32) -> Result<(), LuksError> {
    cd.destroy_keyslot(slot).map_err(|e| {
        crypt_error(
            "wipe the previous key's slot on",
            &device.display().to_string(),
            e,
        )
    })
}

/// Opens `device` as mapping `name` and returns the mapping's path. The
/// volume key is kept in the device-mapper table rather than the kernel
/// keyring, so that the mapping can be grown without the key.
pub fn open(device: &Path, name: &str, key: &[u8]) -> Result<PathBuf, LuksError> {
    let session = begin();
    let mut cd = load(&session, device)?;
    cd.use_keyring(false)
        .map_err(|e| crypt_error("turn off the kernel keyring for", name, e))?;
    unlock(&mut cd, device, Some(name), key)?;
    Ok(mapping_path(name))
}

/// Closes mapping `name`; closing one that is not open is done.
pub fn close(name: &str) -> Result<(), LuksError> {
    if active(name)?.is_none() {
        return Ok(());
    }
    let session = begin();
    let mut cd = session
        .mapping(name)
        .map_err(|e| crypt_error("find mapping", name, e))?;
    match cd.deactivate(name) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(LuksError::Busy {
            name: name.to_string(),
        }),
        Err(e) => Err(crypt_error("close mapping", name, e)),
    }
}

/// Grows mapping `name` to the current size of the device under it.
pub fn resize(name: &str) -> Result<(), LuksError> {
    let session = begin();
    let mut cd = session
        .mapping(name)
        .map_err(|e| crypt_error("find mapping", name, e))?;
    cd.resize(name)
        .map_err(|e| crypt_error("resize mapping", name, e))
}

/// Major and minor number of `device`.
pub fn device_numbers(device: &Path) -> Result<(u32, u32), LuksError> {
    let rdev = std::fs::metadata(device)
        .map_err(|e| super::HostError::os("stat", device, e, "is the device present?"))?
        .rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

fn crypt_error(op: &'static str, target: &str, source: std::io::Error) -> LuksError {
    LuksError::Crypt {
        op,
        target: target.to_string(),
        source,
        messages: take_messages(),
    }
}

// libcryptsetup's own error messages (never the key) are collected per
// thread while an operation runs, and go into the error it ends with.
thread_local! {
    static MESSAGES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn collect_message(level: c_int, msg: *const c_char, _: *mut c_void) {
    if msg.is_null() || level != cryptsetup::LOG_ERROR {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .trim()
        .to_string();
    if !text.is_empty() {
        MESSAGES.with(|m| m.borrow_mut().push(text));
    }
}

/// The collected messages as `" (libcryptsetup: a; b)"`, or nothing.
fn take_messages() -> String {
    let messages = MESSAGES.with(|m| std::mem::take(&mut *m.borrow_mut()));
    if messages.is_empty() {
        String::new()
    } else {
        format!(" (libcryptsetup: {})", messages.join("; "))
    }
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

    /// Formats a LUKS2 header on a plain file (no device-mapper needed)
    /// and checks keys against it through the run-time binding.
    #[test]
    fn format_and_check_key_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("volume.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let luks = Luks {
            cipher: "aes-xts-plain64".to_string(),
            key_size_bits: 512,
        };
        let cheap = Pbkdf {
            memory_kib: 1024,
            iterations: 4,
        };
        format(&image, b"right key", &luks, &cheap).unwrap();
        check_key(&image, b"right key").unwrap();
        match check_key(&image, b"wrong key") {
            Err(LuksError::WrongKey { device }) => assert_eq!(device, image),
            other => panic!("a wrong key must be refused: {other:?}"),
        }
        let header = std::process::Command::new("cryptsetup")
            .arg("luksDump")
            .arg(&image)
            .output()
            .expect("cryptsetup (cryptsetup-bin) is installed by scripts/test.sh");
        let dump = String::from_utf8_lossy(&header.stdout);
        assert!(dump.contains("Version:       \t2"), "{dump}");
        assert!(dump.contains("aes-xts-plain64"), "{dump}");
        assert!(dump.contains("argon2id"), "{dump}");
        assert!(dump.contains("Memory:     1024"), "{dump}");
    }

    #[test]
    fn a_blank_file_holds_no_luks_header() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("blank.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        match check_key(&image, b"key") {
            Err(LuksError::NotLuks { device, .. }) => assert_eq!(device, image),
            other => panic!("a blank device has no header: {other:?}"),
        }
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
