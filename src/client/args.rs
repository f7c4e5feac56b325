//! Command-line values shared by every client command: sizes, `KEY=VALUE`
//! pairs, secrets, access modes and volume capabilities. Each is parsed in
//! exactly one place; the parsers are clap value parsers, so a bad value is a
//! usage error (exit code 2).

use std::collections::HashMap;

use clap::Args;

use super::ClientError;
use crate::csi::{
    VolumeCapability,
    volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode},
};

/// A size in bytes: a plain number, or a number with a binary suffix
/// (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`) or a decimal one (`k`, `M`, `G`, `T`, `P`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    let text = text.trim();
    let (number, factor) = UNITS
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((text, 1));
    let expected = || {
        format!(
            "{text:?} is not a size; give bytes (1073741824) or a number with Ki, Mi, Gi, Ti (1Gi)"
        )
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    Ok(bytes)
}

/// A `KEY=VALUE` pair; the key must not be empty, the value may be.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Collects pairs into a map; a key given twice is a usage error.
pub fn to_map(
    flag: &str,
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<HashMap<String, String>, ClientError> {
    let mut map = HashMap::new();
    for (key, value) in pairs {
        if map.insert(key.clone(), value).is_some() {
            return Err(ClientError::Usage(format!("{flag} {key} is given twice")));
        }
    }
    Ok(map)
}

/// A secret for the driver. Its value never appears in Debug output.
#[derive(Clone)]
pub struct Secret {
    key: String,
    value: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}=<redacted>)", self.key)
    }
}

/// `--secret KEY=VALUE`. A clap value parser would echo a bad value in its
/// error, and a bad value may be a secret with a typo: this one does not.
#[derive(Clone, Copy, Debug)]
pub struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        parse_secret(value.to_str().unwrap_or_default()).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
                .with_cmd(cmd)
        })
    }
}

/// Splits `KEY=VALUE` into a secret; the error does not show the text.
pub fn parse_secret(text: &str) -> Result<Secret, String> {
    parse_key_value(text)
        .map(|(key, value)| Secret { key, value })
        .map_err(|_| "--secret needs KEY=VALUE (the value given is not shown)".to_string())
}

/// `--secret-file KEY=PATH`: the value is the file's content without its
/// final newline.
pub fn parse_secret_file(text: &str) -> Result<Secret, String> {
    let (key, path) = parse_key_value(text)
        .ok()
        .filter(|(_, path)| !path.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=PATH"))?;
    let mut value = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read secret file {path}: {e}"))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(Secret { key, value })
}

/// Secrets passed to the driver; never printed.
#[derive(Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// A secret for the driver, KEY=VALUE (repeatable). It is visible in the
    /// process list: prefer --secret-file.
    #[arg(long = "secret", value_name = "KEY=VALUE", value_parser = SecretParser)]
    pub secrets: Vec<Secret>,
    /// A secret for the driver read from a file, KEY=PATH (repeatable).
    #[arg(long = "secret-file", value_name = "KEY=PATH", value_parser = parse_secret_file)]
    pub secret_files: Vec<Secret>,
}

impl SecretArgs {
    pub fn map(&self) -> Result<HashMap<String, String>, ClientError> {
        to_map(
            "secret",
            self.secrets
                .iter()
                .chain(&self.secret_files)
                .map(|s| (s.key.clone(), s.value.clone())),
        )
    }
}

/// An access mode written in kebab case, e.g. `single-node-writer`.
pub fn parse_mode(text: &str) -> Result<Mode, String> {
    Mode::from_str_name(&text.to_ascii_uppercase().replace('-', "_"))
        .filter(|m| *m != Mode::Unknown)
        .ok_or_else(|| {
            format!(
                "{text:?} is not an access mode; use single-node-writer, single-node-reader-only, \
                 single-node-single-writer, single-node-multi-writer, multi-node-reader-only, \
                 multi-node-single-writer or multi-node-multi-writer"
            )
        })
}

/// How a volume is accessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Block,
    /// A filesystem; an empty type leaves the choice to the driver.
    Mount {
        fs_type: String,
        flags: Vec<String>,
    },
}

/// Builds a CSI volume capability.
pub fn capability(access: &Access, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(match access {
            Access::Block => AccessType::Block(BlockVolume {}),
            Access::Mount { fs_type, flags } => AccessType::Mount(MountVolume {
                fs_type: fs_type.clone(),
                mount_flags: flags.clone(),
                volume_mount_group: String::new(),
            }),
        }),
    }
}

/// The flags that describe a volume capability.
#[derive(Args, Debug, Clone, Default)]
pub struct CapabilityArgs {
    /// Raw block access instead of a filesystem.
    #[arg(long, conflicts_with_all = ["fs", "mount_flags"])]
    pub block: bool,
    /// Filesystem type, e.g. ext4, xfs, btrfs (default: the driver's choice).
    #[arg(long, value_name = "FS")]
    pub fs: Option<String>,
    /// Access mode, e.g. single-node-writer (the default) or multi-node-reader-only.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// A mount flag (repeatable).
    #[arg(long = "mount-flag", value_name = "FLAG")]
    pub mount_flags: Vec<String>,
}

impl CapabilityArgs {
    fn access(&self) -> Access {
        if self.block {
            Access::Block
        } else {
            Access::Mount {
                fs_type: self.fs.clone().unwrap_or_default(),
                flags: self.mount_flags.clone(),
            }
        }
    }

    /// The capability; a filesystem of the driver's choice, written by a
    /// single node, unless the flags say otherwise.
    pub fn capability(&self) -> VolumeCapability {
        capability(&self.access(), self.mode.unwrap_or(Mode::SingleNodeWriter))
    }

    /// The capability only when a flag describes one (for RPCs where it is
    /// optional).
    pub fn optional(&self) -> Option<VolumeCapability> {
        let given =
            self.block || self.fs.is_some() || self.mode.is_some() || !self.mount_flags.is_empty();
        given.then(|| self.capability())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_bytes_and_suffixes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1073741824").unwrap(), 1 << 30);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_size("4Ki").unwrap(), 4096);
        assert_eq!(parse_size("2Ti").unwrap(), 2 << 40);
        assert_eq!(parse_size("1Pi").unwrap(), 1 << 50);
        assert_eq!(parse_size("5G").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("10k").unwrap(), 10_000);
        assert_eq!(parse_size(" 3Mi ").unwrap(), 3 << 20);
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "Gi", "1.5Gi", "-1", "1GB", "1 Gi", "abc", "1gi", "0x10"] {
            assert!(parse_size(bad).is_err(), "{bad:?} passed");
        }
        assert!(parse_size("8192Pi").unwrap_err().contains("too large"));
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_size("8191Pi").unwrap(), 8191 << 50);
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("a=b").unwrap(),
            ("a".to_string(), "b".to_string())
        );
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert_eq!(
            parse_key_value("csi.storage.k8s.io/pvc/name=").unwrap(),
            ("csi.storage.k8s.io/pvc/name".to_string(), String::new())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn maps_refuse_repeated_keys() {
        let pairs = vec![("a".to_string(), "1".to_string())];
        assert_eq!(to_map("--param", pairs).unwrap()["a"], "1");
        let twice = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        let err = to_map("--param", twice).unwrap_err().to_string();
        assert!(err.contains("--param a is given twice"), "{err}");
    }

    #[test]
    fn secrets_never_show_their_values() {
        let secret = parse_secret("luks-key=hunter2").unwrap();
        let shown = format!("{secret:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("luks-key"), "{shown}");
        let err = parse_secret("hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let cmd = clap::Command::new("x");
        let err = clap::builder::TypedValueParser::parse_ref(
            &SecretParser,
            &cmd,
            None,
            std::ffi::OsStr::new("hunter2"),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let args = SecretArgs {
            secrets: vec![secret],
            secret_files: Vec::new(),
        };
        assert!(!format!("{args:?}").contains("hunter2"));
        assert_eq!(args.map().unwrap()["luks-key"], "hunter2");
    }

    #[test]
    fn secret_files_lose_their_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = parse_secret_file(&format!("key={}", path.display())).unwrap();
        assert_eq!(secret.value, "s3cret");
        assert!(parse_secret_file("key=").is_err());
        assert!(parse_secret_file("key=/nonexistent/file").is_err());
        let both = SecretArgs {
            secrets: vec![parse_secret("key=x").unwrap()],
            secret_files: vec![secret],
        };
        assert!(both.map().is_err());
    }

    #[test]
    fn modes_in_kebab_case() {
        assert_eq!(
            parse_mode("single-node-writer").unwrap(),
            Mode::SingleNodeWriter
        );
        assert_eq!(
            parse_mode("MULTI_NODE_READER_ONLY").unwrap(),
            Mode::MultiNodeReaderOnly
        );
        assert!(parse_mode("unknown").is_err());
        assert!(parse_mode("writer").is_err());
    }

    #[test]
    fn capabilities_from_flags() {
        let default = CapabilityArgs::default();
        assert_eq!(default.optional(), None);
        assert_eq!(
            default.capability(),
            VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32
                }),
                access_type: Some(AccessType::Mount(MountVolume::default())),
            }
        );
        let block = CapabilityArgs {
            block: true,
            mode: Some(Mode::SingleNodeReaderOnly),
            ..Default::default()
        };
        let cap = block.optional().unwrap();
        assert_eq!(cap.access_type, Some(AccessType::Block(BlockVolume {})));
        assert_eq!(
            cap.access_mode.unwrap().mode,
            Mode::SingleNodeReaderOnly as i32
        );
        let xfs = CapabilityArgs {
            fs: Some("xfs".into()),
            mount_flags: vec!["noatime".into()],
            ..Default::default()
        };
        match xfs.optional().unwrap().access_type {
            Some(AccessType::Mount(m)) => {
                assert_eq!(m.fs_type, "xfs");
                assert_eq!(m.mount_flags, vec!["noatime".to_string()]);
            }
            other => panic!("expected a mount capability, got {other:?}"),
        }
    }
}
