//! libcryptsetup, bound at run time. The library, and the crypto and
//! device-mapper libraries it pulls in, is loaded by the first LUKS
//! operation: a driver that never opens an encrypted volume neither needs it
//! installed nor carries it in memory.
//!
//! Only the calls the driver makes are bound, with the C types of
//! `libcryptsetup.h` (soname `libcryptsetup.so.12`). libcryptsetup is not
//! thread-safe, so every use goes through a [`Session`], which holds one
//! process-wide lock.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

const SONAME: &CStr = c"libcryptsetup.so.12";

/// `CRYPT_LOG_ERROR`: the level of the messages worth keeping.
pub const LOG_ERROR: c_int = 1;
/// `CRYPT_ANY_SLOT`.
const ANY_SLOT: c_int = -1;
/// `CRYPT_PBKDF_NO_BENCHMARK`.
const PBKDF_NO_BENCHMARK: u32 = 1 << 1;

/// `struct crypt_pbkdf_type`.
#[repr(C)]
struct PbkdfType {
    kind: *const c_char,
    hash: *const c_char,
    time_ms: u32,
    iterations: u32,
    max_memory_kb: u32,
    parallel_threads: u32,
    flags: u32,
}

/// `struct crypt_params_luks2`.
#[repr(C)]
struct ParamsLuks2 {
    pbkdf: *const PbkdfType,
    integrity: *const c_char,
    integrity_params: *const c_void,
    data_alignment: usize,
    data_device: *const c_char,
    sector_size: u32,
    label: *const c_char,
    subsystem: *const c_char,
}

/// The log callback: `void (*log)(int level, const char *msg, void *usrptr)`.
pub type LogCallback = unsafe extern "C" fn(c_int, *const c_char, *mut c_void);

type Handle = *mut c_void;

/// The bound entry points.
struct Library {
    init: unsafe extern "C" fn(*mut Handle, *const c_char) -> c_int,
    init_by_name_and_header:
        unsafe extern "C" fn(*mut Handle, *const c_char, *const c_char) -> c_int,
    free: unsafe extern "C" fn(Handle),
    set_log_callback: unsafe extern "C" fn(Handle, Option<LogCallback>, *mut c_void),
    set_pbkdf_type: unsafe extern "C" fn(Handle, *const PbkdfType) -> c_int,
    #[allow(clippy::type_complexity)]
    format: unsafe extern "C" fn(
        Handle,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
        usize,
        *mut c_void,
    ) -> c_int,
    keyslot_add_by_volume_key:
        unsafe extern "C" fn(Handle, c_int, *const c_char, usize, *const c_char, usize) -> c_int,
    load: unsafe extern "C" fn(Handle, *const c_char, *mut c_void) -> c_int,
    volume_key_keyring: unsafe extern "C" fn(Handle, c_int) -> c_int,
    activate_by_passphrase:
        unsafe extern "C" fn(Handle, *const c_char, c_int, *const c_char, usize, u32) -> c_int,
    deactivate: unsafe extern "C" fn(Handle, *const c_char) -> c_int,
    resize: unsafe extern "C" fn(Handle, *const c_char, u64) -> c_int,
    status: unsafe extern "C" fn(Handle, *const c_char) -> c_int,
}

// SAFETY: the library holds plain function pointers; calls are serialised by
// `LOCK`.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

/// The last `dlerror()` message, or `fallback`.
fn dl_error(fallback: &str) -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        fallback.to_string()
    } else {
        // SAFETY: checked non-null above.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Looks up `name` in `handle` as a function pointer of type `F`.
///
/// # Safety
/// `F` must be the C signature of `name`.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &CStr) -> Result<F, String> {
    assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    // SAFETY: `handle` came from dlopen; `name` is NUL-terminated.
    let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if address.is_null() {
        return Err(dl_error(&format!(
            "{} has no symbol {}",
            SONAME.to_string_lossy(),
            name.to_string_lossy()
        )));
    }
    // SAFETY: a non-null function address, reinterpreted as the caller's
    // function pointer type of the same size.
    Ok(unsafe { std::mem::transmute_copy(&address) })
}

impl Library {
    fn open() -> Result<Library, String> {
        // SAFETY: the soname is NUL-terminated; the handle is never closed,
        // so the symbols stay valid for the life of the process.
        let handle = unsafe { libc::dlopen(SONAME.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error("dlopen failed"));
        }
        // SAFETY: each type below is the signature in libcryptsetup.h.
        unsafe {
            Ok(Library {
                init: symbol(handle, c"crypt_init")?,
                init_by_name_and_header: symbol(handle, c"crypt_init_by_name_and_header")?,
                free: symbol(handle, c"crypt_free")?,
                set_log_callback: symbol(handle, c"crypt_set_log_callback")?,
                set_pbkdf_type: symbol(handle, c"crypt_set_pbkdf_type")?,
                format: symbol(handle, c"crypt_format")?,
                keyslot_add_by_volume_key: symbol(handle, c"crypt_keyslot_add_by_volume_key")?,
                load: symbol(handle, c"crypt_load")?,
                volume_key_keyring: symbol(handle, c"crypt_volume_key_keyring")?,
                activate_by_passphrase: symbol(handle, c"crypt_activate_by_passphrase")?,
                deactivate: symbol(handle, c"crypt_deactivate")?,
                resize: symbol(handle, c"crypt_resize")?,
                status: symbol(handle, c"crypt_status")?,
            })
        }
    }
}

/// Why libcryptsetup cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} cannot be loaded: {reason}", SONAME.to_string_lossy())]
pub struct LoadError {
    pub reason: String,
}

static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();
static LOCK: Mutex<()> = Mutex::new(());

/// Loads the library (once) and fails when it cannot be.
fn library() -> Result<&'static Library, LoadError> {
    LIBRARY
        .get_or_init(Library::open)
        .as_ref()
        .map_err(|reason| LoadError {
            reason: reason.clone(),
        })
}

/// Fails when libcryptsetup cannot be loaded.
pub fn check_loadable() -> Result<(), LoadError> {
    library().map(drop)
}

/// A libcryptsetup return code: negative errno on failure.
fn check(rc: c_int) -> io::Result<c_int> {
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(rc)
    }
}

fn c_string(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
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
    library: &'static Library,
    _lock: MutexGuard<'static, ()>,
}

impl Session {
    /// Loads the library if needed and takes the process-wide lock.
    pub fn begin() -> Result<Session, LoadError> {
        let library = library()?;
        let lock = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(Session {
            library,
            _lock: lock,
        })
    }

    /// Sends libcryptsetup's messages to `callback` (for every device).
    pub fn set_log_callback(&self, callback: LogCallback) {
        // SAFETY: a NULL device sets the default callback; the function is
        // 'static.
        unsafe {
            (self.library.set_log_callback)(
                std::ptr::null_mut(),
                Some(callback),
                std::ptr::null_mut(),
            )
        }
    }

    /// The state of mapping `name`.
    pub fn status(&self, name: &str) -> io::Result<Status> {
        let name = c_string(name)?;
        // SAFETY: a NULL device asks about the name alone.
        let rc = unsafe { (self.library.status)(std::ptr::null_mut(), name.as_ptr()) };
        Ok(match rc {
            1 => Status::Inactive,
            2 => Status::Active,
            3 => Status::Busy,
            _ => Status::Invalid,
        })
    }

    /// A context for the device at `path` (nothing is read yet).
    pub fn device(&self, path: &Path) -> io::Result<Device<'_>> {
        let path = c_path(path)?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: `handle` is written on success; `path` is NUL-terminated.
        check(unsafe { (self.library.init)(&mut handle, path.as_ptr()) })?;
        Ok(Device {
            library: self.library,
            handle,
            _session: std::marker::PhantomData,
        })
    }

    /// A context for the open mapping `name`, with its header loaded.
    pub fn mapping(&self, name: &str) -> io::Result<Device<'_>> {
        let name = c_string(name)?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: as in `device`; a NULL header device means the data device.
        check(unsafe {
            (self.library.init_by_name_and_header)(&mut handle, name.as_ptr(), std::ptr::null())
        })?;
        Ok(Device {
            library: self.library,
            handle,
            _session: std::marker::PhantomData,
        })
    }
}

/// One `struct crypt_device`, freed on drop. It lives within its session.
pub struct Device<'s> {
    library: &'static Library,
    handle: Handle,
    _session: std::marker::PhantomData<&'s Session>,
}

impl Drop for Device<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from crypt_init* and is freed once.
        unsafe { (self.library.free)(self.handle) }
    }
}

/// The argon2id cost of a new key slot.
pub struct Argon2id {
    pub iterations: u32,
    pub memory_kib: u32,
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
        let (cipher, mode) = (c_string(cipher)?, c_string(mode)?);
        let pbkdf = PbkdfType {
            kind: c"argon2id".as_ptr(),
            hash: c"sha256".as_ptr(),
            time_ms: 0,
            iterations: kdf.iterations,
            max_memory_kb: kdf.memory_kib,
            parallel_threads: 1,
            flags: PBKDF_NO_BENCHMARK,
        };
        let mut params = ParamsLuks2 {
            pbkdf: &pbkdf,
            integrity: std::ptr::null(),
            integrity_params: std::ptr::null(),
            data_alignment: 0,
            data_device: std::ptr::null(),
            sector_size: 512,
            label: std::ptr::null(),
            subsystem: std::ptr::null(),
        };
        // SAFETY: every pointer outlives the calls; a NULL volume key asks
        // libcryptsetup to generate one of `key_bytes`.
        unsafe {
            check((self.library.set_pbkdf_type)(self.handle, &pbkdf))?;
            check((self.library.format)(
                self.handle,
                c"LUKS2".as_ptr(),
                cipher.as_ptr(),
                mode.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                key_bytes,
                (&raw mut params).cast(),
            ))?;
        }
        Ok(())
    }

    /// Adds a key slot opened by `passphrase` for the volume key of a
    /// header formatted by this context.
    pub fn add_keyslot(&mut self, passphrase: &[u8]) -> io::Result<()> {
        // SAFETY: the passphrase is read for its length only; NULL volume
        // key means the one held since format.
        check(unsafe {
            (self.library.keyslot_add_by_volume_key)(
                self.handle,
                ANY_SLOT,
                std::ptr::null(),
                0,
                passphrase.as_ptr().cast(),
                passphrase.len(),
            )
        })
        .map(drop)
    }

    /// Reads the LUKS1 or LUKS2 header.
    pub fn load_luks(&mut self) -> io::Result<()> {
        // SAFETY: a NULL type (CRYPT_LUKS) means any LUKS version; no
        // parameters.
        check(unsafe { (self.library.load)(self.handle, std::ptr::null(), std::ptr::null_mut()) })
            .map(drop)
    }

    /// Whether the volume key goes to the kernel keyring on activation.
    pub fn use_keyring(&mut self, enable: bool) -> io::Result<()> {
        // SAFETY: plain flag on a valid context.
        check(unsafe { (self.library.volume_key_keyring)(self.handle, c_int::from(enable)) })
            .map(drop)
    }

    /// Opens a key slot with `passphrase`: activates mapping `name`, or
    /// with `None` only checks the passphrase. EPERM: no slot opens.
    pub fn activate(&mut self, name: Option<&str>, passphrase: &[u8]) -> io::Result<()> {
        let name = name.map(c_string).transpose()?;
        // SAFETY: the passphrase is read for its length only.
        check(unsafe {
            (self.library.activate_by_passphrase)(
                self.handle,
                name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()),
                ANY_SLOT,
                passphrase.as_ptr().cast(),
                passphrase.len(),
                0,
            )
        })
        .map(drop)
    }

    /// Removes mapping `name`. EBUSY: it is held open.
    pub fn deactivate(&mut self, name: &str) -> io::Result<()> {
        let name = c_string(name)?;
        // SAFETY: valid context and name.
        check(unsafe { (self.library.deactivate)(self.handle, name.as_ptr()) }).map(drop)
    }

    /// Grows mapping `name` to the size of the device under it.
    pub fn resize(&mut self, name: &str) -> io::Result<()> {
        let name = c_string(name)?;
        // SAFETY: valid context and name; size 0 means the whole device.
        check(unsafe { (self.library.resize)(self.handle, name.as_ptr(), 0) }).map(drop)
    }
}
