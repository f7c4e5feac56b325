//! The LUKS work itself, through libcryptsetup: format a blank device,
//! check and rotate its keys, open it as a device-mapper mapping, close and
//! grow a mapping. It runs in the short-lived `multicsi-luks` process (see
//! [`super::luks_helper`]), so the serving process never loads
//! libcryptsetup and its libraries.
//!
//! The key is handed to libcryptsetup as bytes in memory: it never goes
//! through a file, a command line or a log. Each function is one whole
//! operation within one [`Session`] (the library is not thread-safe).

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::Once;

use nix::errno::Errno;

use super::cryptsetup::{self, Argon2id, Device, Session, Status};
use super::errno;
use super::luks::{KeyState, LuksError, Pbkdf};
use super::luks_keys::VolumeKeys;
use crate::csi::params::Luks;

/// Starts an operation: libcryptsetup's messages go to this thread's
/// collection, emptied first.
fn begin() -> Session {
    let session = Session::begin();
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| session.set_log_callback(collect_message));
    MESSAGES.with(|m| m.borrow_mut().clear());
    session
}

/// What libcryptsetup says of mapping `name`: `None` when it is not open,
/// else whether it is held open (mounted, or a device stacked on it).
pub fn status(name: &str) -> Result<Option<bool>, LuksError> {
    match begin().status(name) {
        Ok(Status::Active) => Ok(Some(false)),
        Ok(Status::Busy) => Ok(Some(true)),
        Ok(_) => Ok(None),
        Err(source) => Err(crypt_error("status of mapping", name, source)),
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
            op: "format".to_string(),
            target: target.clone(),
            error: format!("cipher {:?} is not CIPHER-MODE", luks.cipher),
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
        Err(e) if errno(&e) == Errno::EPERM => Err(LuksError::WrongKey {
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
    Ok(super::luks::mapping_path(name))
}

/// Closes mapping `name`; one that is not open is done.
pub fn deactivate(name: &str) -> Result<(), LuksError> {
    if status(name)?.is_none() {
        return Ok(());
    }
    let session = begin();
    let mut cd = session
        .mapping(name)
        .map_err(|e| crypt_error("find mapping", name, e))?;
    match cd.deactivate(name) {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Errno::EBUSY => Err(LuksError::Busy {
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

fn crypt_error(op: &str, target: &str, source: std::io::Error) -> LuksError {
    LuksError::Crypt {
        op: op.to_string(),
        target: target.to_string(),
        error: source.to_string(),
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
