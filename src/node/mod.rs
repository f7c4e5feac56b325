//! Host primitives of the node plugin: loop devices, mounts and filesystems.
//!
//! These are thin, synchronous wrappers over system calls and the standard filesystem tools.
//! Callers on an async runtime run them inside `spawn_blocking`. They depend on nothing else in
//! the crate, so the node logic above them can put them behind traits and fake them in tests.

use std::io;
use std::path::{Path, PathBuf};

pub mod cryptsetup;
pub mod discovery;
pub mod freeze;
pub mod fs;
pub mod iscsi;
pub mod iscsi_cmd;
pub mod loopdev;
pub mod luks;
pub mod luks_helper;
pub mod luks_keys;
mod luks_ops;
pub mod mount;
pub mod ownership;
pub mod readonly;
pub mod trusted_path;
pub mod volume;

/// What can go wrong while touching the host. Every message names the operation and the path,
/// and says what to check or do next.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A system call on `path` failed.
    #[error("{op} {path}: {source}; {hint}", path = path.display())]
    Os {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
        hint: String,
    },
    /// A mount option that cannot be passed to mount(2) safely.
    #[error("invalid mount option {option:?}: {reason}")]
    InvalidMountOption {
        option: String,
        reason: &'static str,
    },
    /// A filesystem type this driver does not create, grow or mount.
    #[error("unsupported filesystem type {fs_type:?}; supported are {}", fs::SUPPORTED_FS.join(", "))]
    UnsupportedFs { fs_type: String },
    /// An mkfs option out of range for the filesystem.
    #[error("invalid {option} {value} for {fs_type}: {reason}")]
    InvalidMkfsOption {
        fs_type: String,
        option: &'static str,
        value: u64,
        reason: String,
    },
    /// An external tool could not be started at all.
    #[error(
        "cannot run {tool}: {source}; install {package} on the node (in the node plugin image)"
    )]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        #[source]
        source: io::Error,
    },
    /// An external tool ran and failed.
    #[error("{tool} on {path} failed ({status}): {output}; {hint}", path = path.display())]
    ToolFailed {
        tool: &'static str,
        path: PathBuf,
        status: String,
        output: String,
        hint: String,
    },
    /// Every free loop device was taken by someone else before we could configure it.
    #[error(
        "no loop device could be configured for {image} after {attempts} attempts: other processes kept taking the free devices; retry, or check `losetup -a` for leaked devices",
        image = image.display()
    )]
    NoFreeLoop { image: PathBuf, attempts: u32 },
}

impl HostError {
    pub(crate) fn os(
        op: &'static str,
        path: &Path,
        source: io::Error,
        hint: impl Into<String>,
    ) -> Self {
        HostError::Os {
            op,
            path: path.to_path_buf(),
            source,
            hint: hint.into(),
        }
    }

    /// The errno behind this error, when it came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            HostError::Os { source, .. } | HostError::ToolMissing { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// Result of the host primitives.
pub type Result<T, E = HostError> = std::result::Result<T, E>;

/// A path as a C string for a system call; a path with a NUL byte is rejected.
pub(crate) fn c_path(op: &'static str, path: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        HostError::os(
            op,
            path,
            io::Error::from_raw_os_error(libc::EINVAL),
            "the path contains a NUL byte",
        )
    })
}
