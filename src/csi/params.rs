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
/// LUKS encryption; the csi-cloudscale spellings mean the same (see [`luks`]).
pub const LUKS_ENCRYPTED: &str = "multicsi.io/luks-encrypted";
pub const LUKS_CIPHER: &str = "multicsi.io/luks-cipher";
pub const LUKS_KEY_SIZE: &str = "multicsi.io/luks-key-size";
const CLOUDSCALE_LUKS_KEYS: [(&str, &str); 3] = [
    ("csi.cloudscale.ch/luks-encrypted", LUKS_ENCRYPTED),
    ("csi.cloudscale.ch/luks-cipher", LUKS_CIPHER),
    ("csi.cloudscale.ch/luks-key-size", LUKS_KEY_SIZE),
];

/// Prefix of the keys Kubernetes' sidecars add (PVC name, namespace, ...).
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";
/// The provisioner's keys (`--extra-create-metadata`) a backend keeps on the
/// cloud volume, so the cloud console tells which PVC a volume is.
pub const METADATA_KEYS: &[&str] = &[
    "csi.storage.k8s.io/pvc/name",
    "csi.storage.k8s.io/pvc/namespace",
    "csi.storage.k8s.io/pv/name",
];

/// The provisioner's metadata among CreateVolume parameters.
pub fn metadata(parameters: &HashMap<String, String>) -> Map {
    parameters
        .iter()
        .filter(|(key, _)| METADATA_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Parameters after the split.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parameters {
    pub backend: Map,
    pub node_context: Map,
}

/// A VolumeSnapshotClass that names a backend (`multicsi.io/backend`)
/// takes snapshots of that backend's volumes only: a snapshot always stays
/// in its volume's backend, so a class naming another one is a mistake.
pub fn check_snapshot_class(
    parameters: &HashMap<String, String>,
    source_volume_id: &str,
    source_backend: &str,
) -> CsiResult<()> {
    match parameters.get(BACKEND) {
        Some(chosen) if chosen != source_backend => Err(CsiError::InvalidArgument(format!(
            "the snapshot class selects {BACKEND}={chosen:?}, but volume {source_volume_id} is a \
             {source_backend} volume: take its snapshot with the {source_backend} backend's \
             VolumeSnapshotClass"
        ))),
        _ => Ok(()),
    }
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
        } else if luks_key(key).is_some() {
            // Checked and normalised below, with the other LUKS keys.
        } else if backend_keys.contains(&key.as_str()) {
            result.backend.insert(key.clone(), value.clone());
        } else {
            let mut known: Vec<&str> = vec![BACKEND];
            known.extend(NODE_KEYS);
            known.extend([LUKS_ENCRYPTED, LUKS_CIPHER, LUKS_KEY_SIZE]);
            known.extend(backend_keys);
            return Err(CsiError::InvalidArgument(format!(
                "unknown parameter {key:?}; the {backend_name} backend accepts {} and csi.storage.k8s.io/*",
                known.join(", ")
            )));
        }
    }
    if let Some(luks) = luks(parameters)? {
        result.node_context.extend(luks.to_context());
    }
    Ok(result)
}

/// LUKS settings of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks {
    /// Cipher and mode as cryptsetup names them, e.g. `aes-xts-plain64`.
    pub cipher: String,
    /// Volume key size in bits: 256 or 512.
    pub key_size_bits: u32,
}

impl Luks {
    pub const DEFAULT_CIPHER: &str = "aes-xts-plain64";
    pub const DEFAULT_KEY_SIZE: u32 = 512;

    /// The volume-context entries the node reads back with [`luks`].
    pub fn to_context(&self) -> Map {
        Map::from([
            (LUKS_ENCRYPTED.to_string(), "true".to_string()),
            (LUKS_CIPHER.to_string(), self.cipher.clone()),
            (LUKS_KEY_SIZE.to_string(), self.key_size_bits.to_string()),
        ])
    }
}

/// The multicsi.io name of a LUKS key in either spelling.
fn luks_key(key: &str) -> Option<&'static str> {
    CLOUDSCALE_LUKS_KEYS
        .iter()
        .find(|(cloudscale, ours)| key == *cloudscale || key == *ours)
        .map(|(_, ours)| *ours)
}

/// Reads the LUKS settings from StorageClass parameters or a volume
/// context; `None` unless `luks-encrypted` is `true`. Both spellings are
/// accepted; given twice with different values they are refused.
pub fn luks<'a, I>(map: I) -> CsiResult<Option<Luks>>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    let mut found: std::collections::BTreeMap<&str, (&str, &str)> = Default::default();
    for (key, value) in map {
        let Some(ours) = luks_key(key) else { continue };
        if let Some((other_key, other)) = found.insert(ours, (key, value))
            && other != value
        {
            return Err(CsiError::InvalidArgument(format!(
                "parameters {other_key}={other:?} and {key}={value:?} contradict each other; give one"
            )));
        }
    }
    let encrypted = match found.get(LUKS_ENCRYPTED) {
        None => false,
        Some((_, "true")) => true,
        Some((_, "false")) => false,
        Some((key, value)) => {
            return Err(CsiError::InvalidArgument(format!(
                "parameter {key}={value:?} must be \"true\" or \"false\""
            )));
        }
    };
    if !encrypted {
        if let Some((key, _)) = found
            .iter()
            .find(|(ours, _)| **ours != LUKS_ENCRYPTED)
            .map(|(_, v)| v)
        {
            return Err(CsiError::InvalidArgument(format!(
                "parameter {key} is set but {LUKS_ENCRYPTED} is not \"true\"; set it or remove {key}"
            )));
        }
        return Ok(None);
    }
    let cipher = match found.get(LUKS_CIPHER) {
        None => Luks::DEFAULT_CIPHER.to_string(),
        Some((key, value)) => {
            if !valid_cipher(value) {
                return Err(CsiError::InvalidArgument(format!(
                    "parameter {key}={value:?} is not a cipher specification: use CIPHER-MODE as cryptsetup names it, e.g. {}",
                    Luks::DEFAULT_CIPHER
                )));
            }
            value.to_string()
        }
    };
    let key_size_bits = match found.get(LUKS_KEY_SIZE) {
        None => Luks::DEFAULT_KEY_SIZE,
        Some((_, "256")) => 256,
        Some((_, "512")) => 512,
        Some((key, value)) => {
            return Err(CsiError::InvalidArgument(format!(
                "parameter {key}={value:?}: the key size must be 256 or 512 (bits)"
            )));
        }
    };
    Ok(Some(Luks {
        cipher,
        key_size_bits,
    }))
}

/// `CIPHER-MODE`: a cipher name, then a mode of letters, digits, `-`, `:`
/// and `_` (`aes-xts-plain64`, `aes-cbc-essiv:sha256`).
fn valid_cipher(text: &str) -> bool {
    let Some((cipher, mode)) = text.split_once('-') else {
        return false;
    };
    text.len() <= 64
        && !cipher.is_empty()
        && cipher.chars().all(|c| c.is_ascii_alphanumeric())
        && !mode.is_empty()
        && mode.starts_with(|c: char| c.is_ascii_alphanumeric())
        && mode
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '_'))
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
    fn luks_settings_are_checked_and_carried_to_the_node_with_defaults() {
        let p = parse(&map(&[(LUKS_ENCRYPTED, "true")]), &["hostpath"], &[]).unwrap();
        assert_eq!(p.node_context.get(LUKS_ENCRYPTED).unwrap(), "true");
        assert_eq!(p.node_context.get(LUKS_CIPHER).unwrap(), "aes-xts-plain64");
        assert_eq!(p.node_context.get(LUKS_KEY_SIZE).unwrap(), "512");
        let luks = luks(&p.node_context).unwrap().unwrap();
        assert_eq!(luks.key_size_bits, 512);

        let p = parse(
            &map(&[
                ("csi.cloudscale.ch/luks-encrypted", "true"),
                ("csi.cloudscale.ch/luks-cipher", "aes-cbc-essiv:sha256"),
                ("csi.cloudscale.ch/luks-key-size", "256"),
            ]),
            &["hostpath"],
            &[],
        )
        .unwrap();
        assert_eq!(
            p.node_context.get(LUKS_CIPHER).unwrap(),
            "aes-cbc-essiv:sha256"
        );
        assert_eq!(p.node_context.get(LUKS_KEY_SIZE).unwrap(), "256");
        assert!(!p.node_context.contains_key("csi.cloudscale.ch/luks-cipher"));

        let p = parse(&map(&[(LUKS_ENCRYPTED, "false")]), &["hostpath"], &[]).unwrap();
        assert!(p.node_context.is_empty());
    }

    #[test]
    fn bad_luks_settings_name_their_key() {
        let refused = |pairs: &[(&str, &str)], named: &str| {
            let err = parse(&map(pairs), &["hostpath"], &[]).unwrap_err();
            assert!(
                matches!(err, CsiError::InvalidArgument(ref m) if m.contains(named)),
                "{pairs:?}: {err}"
            );
        };
        refused(&[(LUKS_ENCRYPTED, "yes")], LUKS_ENCRYPTED);
        refused(
            &[(LUKS_ENCRYPTED, "true"), (LUKS_KEY_SIZE, "128")],
            LUKS_KEY_SIZE,
        );
        refused(
            &[(LUKS_ENCRYPTED, "true"), (LUKS_KEY_SIZE, "x")],
            LUKS_KEY_SIZE,
        );
        for cipher in ["aes", "-xts", "aes-", "aes xts", "aes-xts;rm"] {
            refused(
                &[(LUKS_ENCRYPTED, "true"), (LUKS_CIPHER, cipher)],
                LUKS_CIPHER,
            );
        }
        refused(&[(LUKS_CIPHER, "aes-xts-plain64")], LUKS_CIPHER);
        refused(
            &[
                (LUKS_ENCRYPTED, "true"),
                ("csi.cloudscale.ch/luks-encrypted", "false"),
            ],
            "contradict",
        );
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
