//! StorageClass parameters: split once into what the backend reads and what
//! the node needs later (carried in the volume context). Unknown keys are
//! refused so that a typo never silently changes what a user gets.

use std::collections::HashMap;

use crate::backend::Map;
use crate::error::{CsiError, CsiResult};

/// Chooses the backend when several are configured.
pub const BACKEND: &str = "multicsi.io/backend";
/// mkfs settings, read by the node when it formats a blank volume.
pub const MKFS_INODE_SIZE: &str = "multicsi.io/mkfs-inode-size";
pub const MKFS_BLOCK_SIZE: &str = "multicsi.io/mkfs-block-size";
pub const MKFS_RESERVED_PERCENT: &str = "multicsi.io/mkfs-reserved-percent";

/// Keys the node reads from the volume context.
pub const NODE_KEYS: &[&str] = &[MKFS_INODE_SIZE, MKFS_BLOCK_SIZE, MKFS_RESERVED_PERCENT];

/// Prefix of the keys Kubernetes' sidecars add (PVC name, namespace, ...).
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

/// Parameters after the split.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parameters {
    pub backend: Map,
    pub node_context: Map,
}

/// Splits and checks CreateVolume parameters.
/// `backends` are the backends served, the default first; choosing another
/// one leaves `BACKEND` in the backend parameters (for the router).
pub fn parse(
    parameters: &HashMap<String, String>,
    backends: &[&str],
    backend_keys: &[&str],
) -> CsiResult<Parameters> {
    let backend_name = backends.first().copied().unwrap_or_default();
    let mut result = Parameters::default();
    for (key, value) in parameters {
        if key.starts_with(KUBERNETES_PREFIX) {
            continue;
        }
        if key == BACKEND {
            if !backends.contains(&value.as_str()) {
                return Err(CsiError::InvalidArgument(format!(
                    "parameter {BACKEND}={value:?}: this driver serves {}",
                    backends.join(", ")
                )));
            }
            if value != backend_name {
                result.backend.insert(key.clone(), value.clone());
            }
        } else if NODE_KEYS.contains(&key.as_str()) {
            check_number(key, value)?;
            result.node_context.insert(key.clone(), value.clone());
        } else if backend_keys.contains(&key.as_str()) {
            result.backend.insert(key.clone(), value.clone());
        } else {
            let mut known: Vec<&str> = vec![BACKEND];
            known.extend(NODE_KEYS);
            known.extend(backend_keys);
            return Err(CsiError::InvalidArgument(format!(
                "unknown parameter {key:?}; the {backend_name} backend accepts {} and csi.storage.k8s.io/*",
                known.join(", ")
            )));
        }
    }
    Ok(result)
}

fn check_number(key: &str, value: &str) -> CsiResult<()> {
    value.parse::<u32>().map(|_| ()).map_err(|_| {
        CsiError::InvalidArgument(format!("parameter {key}={value:?} must be a whole number"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_are_split_and_kubernetes_keys_ignored() {
        let p = parse(
            &map(&[
                ("csi.storage.k8s.io/pvc/name", "data"),
                (MKFS_INODE_SIZE, "512"),
                ("multicsi.io/volume-type", "ssd"),
            ]),
            &["cloudscale"],
            &["multicsi.io/volume-type"],
        )
        .unwrap();
        assert_eq!(p.node_context.get(MKFS_INODE_SIZE).unwrap(), "512");
        assert_eq!(p.backend.get("multicsi.io/volume-type").unwrap(), "ssd");
    }

    #[test]
    fn unknown_keys_are_named_in_the_error() {
        let err = parse(&map(&[("fstyp", "ext4")]), &["hostpath"], &[]).unwrap_err();
        assert!(matches!(err, CsiError::InvalidArgument(ref m) if m.contains("fstyp")));
    }

    #[test]
    fn wrong_backend_and_bad_numbers_are_refused() {
        assert!(parse(&map(&[(BACKEND, "civo")]), &["hostpath"], &[]).is_err());
        let chosen = parse(&map(&[(BACKEND, "hostpath")]), &["hostpath"], &[]).unwrap();
        assert!(
            chosen.backend.is_empty(),
            "the default backend sees no choice"
        );
        assert!(parse(&map(&[(MKFS_BLOCK_SIZE, "4k")]), &["hostpath"], &[]).is_err());
        let other = parse(
            &map(&[(BACKEND, "hostpath")]),
            &["cloudscale", "hostpath"],
            &[],
        )
        .unwrap();
        assert_eq!(
            other.backend.get(BACKEND).map(String::as_str),
            Some("hostpath")
        );
    }
}
