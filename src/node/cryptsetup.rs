//! libcryptsetup through `libcryptsetup-rs`, its maintained Rust binding.
//!
//! Only the calls the driver makes are wrapped, with `io::Error`s that keep
//! libcryptsetup's errno (EPERM: no key slot opens; EBUSY: held open).
//! libcryptsetup is not thread-safe: the binding serialises each call (its
//! `mutex` feature), and every operation goes through a
//! [`Session`], which holds one process-wide lock.

use std::ffi::{c_char, c_int, c_void};
use std::io;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptDeactivate, CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, CryptLogLevel, CryptStatusInfo, EncryptionFormat};
use libcryptsetup_rs::{
    CryptDevice, CryptInit, CryptParamsLuks2, CryptParamsLuks2Ref, CryptPbkdfType, Either,
    LibcryptErr,
};

/// `CRYPT_LOG_ERROR`: the level of the messages worth keeping.
pub const LOG_ERROR: c_int = CryptLogLevel::Error as c_int;

/// The log callback: `void (*log)(int level, const char *msg, void *usrptr)`.
pub type LogCallback = unsafe extern "C" fn(c_int, *const c_char, *mut c_void);

static LOCK: Mutex<()> = Mutex::new(());

/// libcryptsetup's errno as an `io::Error`; other binding errors as text.
fn io_error(error: LibcryptErr) -> io::Error {
    match error {
        LibcryptErr::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// What `crypt_status` says of a mapping name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Invalid,
    Inactive,
    Active,
    /// Active and held open.
    Busy,
}

/// Exclusive use of libcryptsetup for one whole operation.
pub struct Session {
    _lock: MutexGuard<'static, ()>,
}

impl Session {
    /// Takes the process-wide lock.
    pub fn begin() -> Session {
        Session {
            _lock: LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }

    /// Sends libcryptsetup's messages to `callback` (for every device).
    pub fn set_log_callback(&self, callback: LogCallback) {
        libcryptsetup_rs::set_log_callback::<()>(Some(callback), None);
    }

    /// The state of mapping `name`.
    pub fn status(&self, name: &str) -> io::Result<Status> {
        Ok(match libcryptsetup_rs::status(None, name) {
            Ok(CryptStatusInfo::Inactive) => Status::Inactive,
            Ok(CryptStatusInfo::Active) => Status::Active,
            Ok(CryptStatusInfo::Busy) => Status::Busy,
            Ok(CryptStatusInfo::Invalid) => Status::Invalid,
            Err(LibcryptErr::NullError(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NUL in a mapping name",
                ));
            }
            Err(_) => Status::Invalid,
        })
    }

    /// A context for the device at `path` (nothing is read yet).
    pub fn device(&self, path: &Path) -> io::Result<Device<'_>> {
        Ok(Device {
            cd: CryptInit::init(path).map_err(io_error)?,
            _session: PhantomData,
        })
    }

    /// A context for the open mapping `name`, with its header loaded.
    pub fn mapping(&self, name: &str) -> io::Result<Device<'_>> {
        Ok(Device {
            cd: CryptInit::init_by_name_and_header(name, None).map_err(io_error)?,
            _session: PhantomData,
        })
    }
}

/// One `struct crypt_device`. It lives within its session.
pub struct Device<'s> {
    cd: CryptDevice,
    _session: PhantomData<&'s Session>,
}

/// The argon2id cost of a new key slot.
pub struct Argon2id {
    pub iterations: u32,
    pub memory_kib: u32,
}

/// argon2id with the given cost and no benchmark.
fn argon2id(kdf: &Argon2id) -> CryptPbkdfType {
    CryptPbkdfType {
        type_: CryptKdf::Argon2Id,
        hash: Some("sha256".into()),
        time_ms: 0,
        iterations: kdf.iterations,
        max_memory_kb: kdf.memory_kib,
        parallel_threads: 1,
        flags: CryptPbkdf::NO_BENCHMARK,
    }
}

impl Device<'_> {
    /// Writes a LUKS2 header (sector size 512, argon2id key slots with the
    /// given cost, no benchmark) with a random volume key of `key_bytes`.
    pub fn format_luks2(
        &mut self,
        cipher: &str,
        mode: &str,
        key_bytes: usize,
        kdf: &Argon2id,
    ) -> io::Result<()> {
        let params = CryptParamsLuks2 {
            pbkdf: Some(argon2id(kdf)),
            integrity: None,
            integrity_params: None,
            data_alignment: 0,
            data_device: None,
            sector_size: 512,
            label: None,
            subsystem: None,
        };
        let mut params: CryptParamsLuks2Ref<'_> = (&params).try_into().map_err(io_error)?;
        self.cd
            .settings_handle()
            .set_pbkdf_type(&argon2id(kdf))
            .map_err(io_error)?;
        self.cd
            .context_handle()
            .format(
                EncryptionFormat::Luks2,
                (cipher, mode),
                None,
                Either::Right(key_bytes),
                Some(&mut params),
            )
            .map_err(io_error)
    }

    /// Adds a key slot opened by `passphrase` for the volume key of a
    /// header formatted by this context.
    pub fn add_keyslot(&mut self, passphrase: &[u8]) -> io::Result<()> {
        self.cd
            .keyslot_handle()
            .add_by_key(None, None, passphrase, CryptVolumeKey::empty())
            .map(drop)
            .map_err(io_error)
    }

    /// Reads the LUKS1 or LUKS2 header.
    pub fn load_luks(&mut self) -> io::Result<()> {
        self.cd
            .context_handle()
            .load::<()>(None, None)
            .map_err(io_error)
    }

    /// Whether the volume key goes to the kernel keyring on activation.
    pub fn use_keyring(&mut self, enable: bool) -> io::Result<()> {
        self.cd
            .context_handle()
            .volume_key_keyring(enable)
            .map_err(io_error)
    }

    /// Opens a key slot with `passphrase`: activates mapping `name`, or
    /// with `None` only checks the passphrase. Returns the key slot that
    /// opened. EPERM: no slot opens.
    pub fn activate(&mut self, name: Option<&str>, passphrase: &[u8]) -> io::Result<u32> {
        self.cd
            .activate_handle()
            .activate_by_passphrase(name, None, passphrase, CryptActivate::empty())
            .map_err(io_error)
    }

    /// Whether the loaded header is LUKS1 (else LUKS2).
    pub fn is_luks1(&mut self) -> bool {
        matches!(
            self.cd.format_handle().get_type(),
            Ok(EncryptionFormat::Luks1)
        )
    }

    /// The cost of the key slots added from now on: argon2id as given
    /// (LUKS2 only; LUKS1 slots use PBKDF2 at libcryptsetup's default).
    pub fn set_argon2id(&mut self, kdf: &Argon2id) -> io::Result<()> {
        self.cd
            .settings_handle()
            .set_pbkdf_type(&argon2id(kdf))
            .map_err(io_error)
    }

    /// Adds a key slot for `new_passphrase`, unlocked by `passphrase`;
    /// returns the new slot.
    pub fn add_keyslot_by_passphrase(
        &mut self,
        passphrase: &[u8],
        new_passphrase: &[u8],
    ) -> io::Result<u32> {
        self.cd
            .keyslot_handle()
            .add_by_passphrase(None, passphrase, new_passphrase)
            .map_err(io_error)
    }

    /// Wipes key slot `slot`.
    pub fn destroy_keyslot(&mut self, slot: u32) -> io::Result<()> {
        self.cd.keyslot_handle().destroy(slot).map_err(io_error)
    }

    /// Removes mapping `name`. EBUSY: it is held open.
    pub fn deactivate(&mut self, name: &str) -> io::Result<()> {
        self.cd
            .activate_handle()
            .deactivate(name, CryptDeactivate::empty())
            .map_err(io_error)
    }

    /// Grows mapping `name` to the size of the device under it.
    pub fn resize(&mut self, name: &str) -> io::Result<()> {
        self.cd.context_handle().resize(name, 0).map_err(io_error)
    }
}
