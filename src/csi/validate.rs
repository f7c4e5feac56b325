//! Checks on request fields, shared by every RPC: required fields, hostile
//! names and paths, capacity ranges and volume capabilities. Each failure is
//! INVALID_ARGUMENT with a message naming the field.

use std::path::{Component, Path, PathBuf};

use crate::csi::{
    VolumeCapability, volume_capability::AccessType, volume_capability::access_mode::Mode,
};
use crate::error::{CsiError, CsiResult};

/// The CSI general size limit for strings.
pub const MAX_STRING: usize = 128;
/// Longest staging or target path accepted.
pub const MAX_PATH: usize = 4096;

fn invalid(msg: String) -> CsiError {
    CsiError::InvalidArgument(msg)
}

/// A required identifier (volume ID, snapshot ID, name, node ID): 1 to 128
/// bytes of letters, digits and `-_.:@+=`, and never a path (`/`, `..`, NUL).
pub fn identifier<'a>(field: &str, value: &'a str) -> CsiResult<&'a str> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if value.len() > MAX_STRING {
        return Err(invalid(format!(
            "{field} is {} bytes long; at most {MAX_STRING} are allowed",
            value.len()
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@+=".contains(*c)))
    {
        return Err(invalid(format!(
            "{field} contains {bad:?}; only letters, digits and -_.:@+= are allowed"
        )));
    }
    if value.contains("..") || value.starts_with('.') {
        return Err(invalid(format!(
            "{field} {value:?} must not start with '.' or contain '..'"
        )));
    }
    Ok(value)
}

/// A required absolute path for a staging or target directory.
pub fn target_path(field: &str, value: &str) -> CsiResult<PathBuf> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if value.len() > MAX_PATH {
        return Err(invalid(format!("{field} is longer than {MAX_PATH} bytes")));
    }
    if value.contains('\0') {
        return Err(invalid(format!("{field} contains a NUL byte")));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{field} {value:?} must be an absolute path"
        )));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(format!("{field} {value:?} must not contain '..'")));
    }
    if path.parent().is_none() {
        return Err(invalid(format!("{field} must not be the root directory")));
    }
    Ok(path.components().collect())
}

/// Sizes of a capacity range; (0, 0) when absent.
pub fn capacity_range(range: Option<&crate::csi::CapacityRange>) -> CsiResult<(u64, u64)> {
    let Some(range) = range else {
        return Ok((0, 0));
    };
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(invalid(
            "capacity_range: required_bytes and limit_bytes must not be negative".into(),
        ));
    }
    let (required, limit) = (range.required_bytes as u64, range.limit_bytes as u64);
    if limit > 0 && required > limit {
        return Err(invalid(format!(
            "capacity_range: required_bytes {required} is larger than limit_bytes {limit}"
        )));
    }
    Ok((required, limit))
}

/// Filesystems the node can make.
pub const FILESYSTEMS: &[&str] = &["ext4", "xfs", "btrfs"];

/// Access modes this driver serves: every single-node mode, and
/// multi-node read-only (all readers share one node's read-only mounts).
pub fn access_mode_supported(mode: Mode) -> bool {
    matches!(
        mode,
        Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter
            | Mode::MultiNodeReaderOnly
    )
}

/// What a capability asks for, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount { fs_type: String, flags: Vec<String> },
}

/// A checked volume capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    pub access: Access,
    pub mode: Mode,
}

impl Capability {
    pub fn read_only_mode(&self) -> bool {
        matches!(
            self.mode,
            Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
        )
    }
}

/// Checks one capability; `field` names it in messages.
pub fn capability(field: &str, cap: Option<&VolumeCapability>) -> CsiResult<Capability> {
    let cap = cap.ok_or_else(|| invalid(format!("{field} is required")))?;
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| invalid(format!("{field}.access_mode is required")))?;
    let mode = Mode::try_from(mode.mode).unwrap_or(Mode::Unknown);
    if mode == Mode::Unknown {
        return Err(invalid(format!("{field}.access_mode.mode is unknown")));
    }
    if !access_mode_supported(mode) {
        return Err(invalid(format!(
            "{field}: access mode {} is not supported; use a single-node mode or MULTI_NODE_READER_ONLY",
            mode.as_str_name()
        )));
    }
    let access = match cap.access_type.as_ref() {
        None => {
            return Err(invalid(format!(
                "{field}.access_type (block or mount) is required"
            )));
        }
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(mount)) => {
            let fs_type = if mount.fs_type.is_empty() {
                "ext4".to_string()
            } else {
                mount.fs_type.clone()
            };
            if !FILESYSTEMS.contains(&fs_type.as_str()) {
                return Err(invalid(format!(
                    "{field}.mount.fs_type {fs_type:?} is not supported; use one of {}",
                    FILESYSTEMS.join(", ")
                )));
            }
            for flag in &mount.mount_flags {
                if flag.is_empty() || flag.chars().any(|c| c.is_control()) {
                    return Err(invalid(format!(
                        "{field}.mount.mount_flags has an invalid entry {flag:?}"
                    )));
                }
            }
            Access::Mount {
                fs_type,
                flags: mount.mount_flags.clone(),
            }
        }
    };
    Ok(Capability { access, mode })
}

/// Checks a non-empty list of capabilities.
pub fn capabilities(field: &str, caps: &[VolumeCapability]) -> CsiResult<Vec<Capability>> {
    if caps.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    caps.iter()
        .enumerate()
        .map(|(i, c)| capability(&format!("{field}[{i}]"), Some(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_identifiers_are_rejected() {
        for bad in [
            "", "../etc", "/abs", "a/b", "a\0b", "..", ".hidden", "x..y", "a b",
        ] {
            assert!(identifier("volume_id", bad).is_err(), "{bad:?} passed");
        }
        assert!(identifier("volume_id", &"a".repeat(129)).is_err());
        for good in [
            "pvc-1234-abcd",
            "hp-0123abcd",
            "a.b_c:d@e+f=g",
            &"a".repeat(128),
        ] {
            assert!(identifier("volume_id", good).is_ok(), "{good:?} failed");
        }
    }

    #[test]
    fn messages_name_the_field() {
        let err = identifier("snapshot_id", "../x").unwrap_err().to_string();
        assert!(err.contains("snapshot_id"), "{err}");
    }

    #[test]
    fn target_paths_must_be_absolute_and_clean() {
        assert!(target_path("target_path", "relative/dir").is_err());
        assert!(target_path("target_path", "/a/../b").is_err());
        assert!(target_path("target_path", "/a\0b").is_err());
        assert!(target_path("target_path", "/").is_err());
        assert!(target_path("target_path", "").is_err());
        assert_eq!(
            target_path("target_path", "/var/lib/kubelet//pods/x/").unwrap(),
            PathBuf::from("/var/lib/kubelet/pods/x")
        );
    }

    #[test]
    fn capacity_ranges_are_checked() {
        use crate::csi::CapacityRange;
        assert_eq!(capacity_range(None).unwrap(), (0, 0));
        let r = CapacityRange {
            required_bytes: 10,
            limit_bytes: 5,
        };
        assert!(capacity_range(Some(&r)).is_err());
        let r = CapacityRange {
            required_bytes: -1,
            limit_bytes: 0,
        };
        assert!(capacity_range(Some(&r)).is_err());
    }
}
