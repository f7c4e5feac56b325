//! One owner per state directory: the process that serves (or repairs) a
//! state directory holds an exclusive `flock` on its `lock` file for as long
//! as it runs. The lock is taken before anything else in the directory is
//! read or written; a second process finds it held, reads the holder's pid
//! from the file and refuses without touching anything.
//!
//! The kernel drops the lock when the holder exits, however it exits, so a
//! crash never leaves a stale lock behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// Why the state directory could not be owned.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "state directory {dir} is in use by another multicsi process ({holder}); stop that process first, or give this one its own --state-dir (two processes on one state directory would overwrite each other's records)"
    )]
    Held { dir: String, holder: String },
    #[error(
        "cannot lock state directory {dir}: {source}; check that it exists and is writable by this process"
    )]
    Io { dir: String, source: io::Error },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock of `root` (creating the directory when it does not
    /// exist yet) and records this process as its holder.
    pub fn acquire(root: &Path) -> Result<StateLock, OwnerError> {
        let io_error = |source| OwnerError::Io {
            dir: root.display().to_string(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_error)?;
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(OwnerError::Held {
                    dir: root.display().to_string(),
                    holder: describe_holder(&mut file),
                });
            }
            Err((_, e)) => return Err(io_error(e.into())),
        };
        let me = format!("pid {}\n", std::process::id());
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        file.write_all(me.as_bytes()).map_err(io_error)?;
        file.sync_data().map_err(io_error)?;
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The holder as its lock file names it.
fn describe_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.take(256).read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "holder unknown".to_string()
    } else {
        text.chars().filter(|c| !c.is_control()).collect()
    }
}

/// Who holds the lock of `root` right now, if anyone (for `doctor`). It
/// reads the kernel's table of locks rather than trying the lock, so that
/// it never stands in a starting server's way.
pub fn holder(root: &Path) -> io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let path = root.join(LOCK_FILE);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let table = fs::read_to_string("/proc/locks")?;
    let held = table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str())
    });
    if !held {
        return Ok(None);
    }
    Ok(Some(describe_holder(&mut File::open(&path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_and_named_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(tmp.path()).unwrap();
        let err = StateLock::acquire(tmp.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert_eq!(
            holder(tmp.path()).unwrap(),
            Some(format!("pid {}", std::process::id()))
        );
        drop(first);
        assert_eq!(holder(tmp.path()).unwrap(), None);
        StateLock::acquire(tmp.path()).unwrap();
    }
}
