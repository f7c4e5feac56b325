//! The LUKS work runs in its own short-lived process, `multicsi-luks`
//! (installed beside `multicsi`): one request in on its standard input, one
//! reply out on its standard output, as JSON. The serving process thereby
//! never loads libcryptsetup and the libraries it pulls in (OpenSSL,
//! device-mapper, json-c, blkid, udev, selinux), which would otherwise stay
//! resident in it for good.
//!
//! Keys go over the pipe only: never a command line, a file or a log. The
//! buffers that held them are wiped after use, and the helper exits after
//! one operation.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::luks::{KeyState, LuksError, Pbkdf};
use super::luks_keys::{LuksKey, VolumeKeys};
use super::luks_ops;
use crate::csi::params::Luks;

/// The helper's file name; it is looked up beside the running executable.
pub const HELPER: &str = "multicsi-luks";
/// Names another path of the helper (tests, unusual layouts).
pub const HELPER_ENV: &str = "MULTICSI_LUKS_HELPER";

/// One LUKS operation.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Request {
    Status {
        name: String,
    },
    Format {
        device: PathBuf,
        key: Vec<u8>,
        cipher: String,
        key_size_bits: u32,
        pbkdf: Pbkdf,
    },
    CheckKey {
        device: PathBuf,
        key: Vec<u8>,
    },
    SettleKeys {
        device: PathBuf,
        current: Vec<u8>,
        previous: Option<Vec<u8>>,
        pbkdf: Pbkdf,
    },
    Open {
        device: PathBuf,
        name: String,
        key: Vec<u8>,
    },
    Close {
        name: String,
    },
    Resize {
        name: String,
    },
}

impl Drop for Request {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        match self {
            Request::Format { key, .. }
            | Request::CheckKey { key, .. }
            | Request::Open { key, .. } => key.zeroize(),
            Request::SettleKeys {
                current, previous, ..
            } => {
                current.zeroize();
                previous.zeroize();
            }
            Request::Status { .. } | Request::Close { .. } | Request::Resize { .. } => {}
        }
    }
}

/// What an operation gives back.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Done,
    /// Of `Status`: `None` when not open, else whether it is held open.
    Status(Option<bool>),
    Keys(KeyState),
}

impl Request {
    pub fn format(device: &Path, key: &[u8], luks: &Luks, pbkdf: &Pbkdf) -> Request {
        Request::Format {
            device: device.to_path_buf(),
            key: key.to_vec(),
            cipher: luks.cipher.clone(),
            key_size_bits: luks.key_size_bits,
            pbkdf: *pbkdf,
        }
    }

    pub fn settle_keys(device: &Path, keys: &VolumeKeys, pbkdf: &Pbkdf) -> Request {
        Request::SettleKeys {
            device: device.to_path_buf(),
            current: keys.current.to_vec(),
            previous: keys.previous.as_ref().map(|k| k.to_vec()),
            pbkdf: *pbkdf,
        }
    }

    /// Carries the operation out in this process (the helper's side).
    fn run(&self) -> Result<Reply, LuksError> {
        let done = |r: Result<(), LuksError>| r.map(|()| Reply::Done);
        match self {
            Request::Status { name } => luks_ops::status(name).map(Reply::Status),
            Request::Format {
                device,
                key,
                cipher,
                key_size_bits,
                pbkdf,
            } => {
                let luks = Luks {
                    cipher: cipher.clone(),
                    key_size_bits: *key_size_bits,
                };
                done(luks_ops::format(device, key, &luks, pbkdf))
            }
            Request::CheckKey { device, key } => done(luks_ops::check_key(device, key)),
            Request::SettleKeys {
                device,
                current,
                previous,
                pbkdf,
            } => {
                let keys = VolumeKeys {
                    current: LuksKey::new(current.clone()),
                    previous: previous.clone().map(LuksKey::new),
                };
                luks_ops::settle_keys(device, &keys, pbkdf).map(Reply::Keys)
            }
            Request::Open { device, name, key } => {
                luks_ops::open(device, name, key).map(|_| Reply::Done)
            }
            Request::Close { name } => done(luks_ops::deactivate(name)),
            Request::Resize { name } => done(luks_ops::resize(name)),
        }
    }
}

/// Where the helper is: `MULTICSI_LUKS_HELPER`, else beside this executable.
fn helper_path() -> PathBuf {
    if let Some(path) = std::env::var_os(HELPER_ENV) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(HELPER)))
        .unwrap_or_else(|| PathBuf::from(HELPER))
}

/// Runs `request` in the helper and returns its reply.
pub fn call(request: &Request) -> Result<Reply, LuksError> {
    call_with(&helper_path(), request)
}

/// Runs `request` in the helper at `path` and returns its reply.
pub fn call_with(path: &Path, request: &Request) -> Result<Reply, LuksError> {
    let helper_error = |reason: String| LuksError::Helper {
        path: path.to_path_buf(),
        reason,
    };
    let input = Zeroizing::new(
        serde_json::to_vec(request).map_err(|e| helper_error(format!("cannot encode: {e}")))?,
    );
    let mut child = Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| helper_error(format!("cannot start it: {e}")))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&input))
        .unwrap_or(Ok(()));
    let output = child
        .wait_with_output()
        .map_err(|e| helper_error(format!("cannot read its reply: {e}")))?;
    if !output.status.success() {
        return Err(helper_error(format!(
            "it ended with {} before replying; its messages are in this log",
            output.status
        )));
    }
    written.map_err(|e| helper_error(format!("cannot send the request: {e}")))?;
    let reply: Result<Reply, LuksError> = serde_json::from_slice(&output.stdout)
        .map_err(|e| helper_error(format!("unreadable reply: {e}")))?;
    reply
}

/// The helper's `main`: reads one request, carries it out, writes the
/// reply. The exit code is 0 whenever a reply was written, an error included.
pub fn serve() -> ExitCode {
    let format = std::env::var("MULTICSI_LOG_FORMAT")
        .ok()
        .and_then(|f| <crate::config::LogFormat as clap::ValueEnum>::from_str(&f, true).ok());
    let level = std::env::var("MULTICSI_LOG_LEVEL").unwrap_or_else(|_| "info".to_string());
    crate::telemetry::init(format, &level);
    if std::env::args_os().nth(1).is_some() {
        eprintln!(
            "{HELPER}: the LUKS helper of multicsi takes no arguments: it reads one JSON request on its standard input (the node plugin runs it)"
        );
        return ExitCode::from(2);
    }
    let mut input = Zeroizing::new(Vec::new());
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("{HELPER}: cannot read the request: {e}");
        return ExitCode::FAILURE;
    }
    let request: Request = match serde_json::from_slice(&input) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("{HELPER}: unreadable request: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reply = request.run();
    drop(request);
    match serde_json::to_writer(std::io::stdout().lock(), &reply) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{HELPER}: cannot write the reply: {e}");
            ExitCode::FAILURE
        }
    }
}
