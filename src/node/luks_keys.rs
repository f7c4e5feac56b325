//! The keys a LUKS volume opens with, from the node-stage secret.
//!
//! A secret gives either one key for every volume (`luksKey`) or a master
//! secret (`luksMasterKey`) from which each volume's passphrase is derived
//! with HKDF-SHA256 and the volume's ID: no two volumes share a passphrase
//! and nothing per volume is stored. For a rotation the secret also names
//! the key being replaced (`luksPreviousKey` or `luksPreviousMasterKey`):
//! a volume that opens only with it gets a key slot for the new key, then
//! loses the old one (see `luks::settle_keys`).

use std::collections::HashMap;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{CsiError, CsiResult};

/// One key for every volume of the StorageClass.
pub const LUKS_KEY: &str = "luksKey";
/// A master secret: each volume's passphrase is derived from it.
pub const LUKS_MASTER_KEY: &str = "luksMasterKey";
/// During a rotation: the `luksKey` being replaced.
pub const LUKS_PREVIOUS_KEY: &str = "luksPreviousKey";
/// During a rotation: the `luksMasterKey` being replaced.
pub const LUKS_PREVIOUS_MASTER_KEY: &str = "luksPreviousMasterKey";
/// Every secret entry that carries key material.
pub const KEY_ENTRIES: &[&str] = &[
    LUKS_KEY,
    LUKS_MASTER_KEY,
    LUKS_PREVIOUS_KEY,
    LUKS_PREVIOUS_MASTER_KEY,
];

/// A master secret shorter than this is refused: the derived passphrases
/// are only as strong as it.
pub const MIN_MASTER_BYTES: usize = 32;

/// The HKDF salt: fixed, so that the same master and volume ID always give
/// the same passphrase (on any node, after any restart).
const DERIVATION_SALT: &[u8] = b"multicsi.io/luks-volume-passphrase/v1";

/// A passphrase in memory, wiped when dropped.
pub type LuksKey = Zeroizing<Vec<u8>>;

/// The keys one volume is staged with.
pub struct VolumeKeys {
    /// The key the volume must open with from now on.
    pub current: LuksKey,
    /// The key being replaced, while a rotation is under way.
    pub previous: Option<LuksKey>,
}

impl std::fmt::Debug for VolumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeKeys")
            .field("current", &"<redacted>")
            .field("previous", &self.previous.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Whether the secret carries any LUKS key material.
pub fn has_key_material(secrets: &HashMap<String, String>) -> bool {
    KEY_ENTRIES.iter().any(|k| secrets.contains_key(*k))
}

/// The passphrase of volume `volume_id` under `master`: HKDF-SHA256 (salt
/// fixed, info the volume ID), 32 bytes, as 64 lowercase hex digits so that
/// an operator can type it into `cryptsetup open` if ever needed.
pub fn derive(master: &[u8], volume_id: &str) -> LuksKey {
    let mut okm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(DERIVATION_SALT), master)
        .expand(volume_id.as_bytes(), okm.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    let mut hex = Zeroizing::new(Vec::with_capacity(64));
    for byte in okm.iter() {
        hex.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    hex
}

/// One of a plain key and a master entry, or none; both is a mistake.
fn one_key(
    secrets: &HashMap<String, String>,
    plain: &str,
    master: &str,
    volume_id: &str,
) -> CsiResult<Option<LuksKey>> {
    let get = |name: &str| secrets.get(name).filter(|v| !v.is_empty());
    match (get(plain), get(master)) {
        (Some(_), Some(_)) => Err(CsiError::InvalidArgument(format!(
            "the node-stage secret has both {plain} and {master}: give one of them"
        ))),
        (Some(key), None) => Ok(Some(Zeroizing::new(key.as_bytes().to_vec()))),
        (None, Some(secret)) if secret.len() < MIN_MASTER_BYTES => {
            Err(CsiError::InvalidArgument(format!(
                "{master} in the node-stage secret is shorter than {MIN_MASTER_BYTES} bytes: use a long random value, e.g. `head -c 48 /dev/urandom | base64`"
            )))
        }
        (None, Some(secret)) => Ok(Some(derive(secret.as_bytes(), volume_id))),
        (None, None) => Ok(None),
    }
}

/// The keys of volume `volume_id` from the node-stage secret. An encrypted
/// volume without a key is refused before anything is touched.
pub fn volume_keys(secrets: &HashMap<String, String>, volume_id: &str) -> CsiResult<VolumeKeys> {
    let current = one_key(secrets, LUKS_KEY, LUKS_MASTER_KEY, volume_id)?.ok_or_else(|| {
        CsiError::InvalidArgument(format!(
            "the volume is LUKS-encrypted but the node-stage secret has no {LUKS_KEY} or {LUKS_MASTER_KEY} entry: set csi.storage.k8s.io/node-stage-secret-name and -namespace in the StorageClass to a Secret with a non-empty {LUKS_KEY} (one key for all volumes) or {LUKS_MASTER_KEY} (a key per volume)"
        ))
    })?;
    let previous = one_key(
        secrets,
        LUKS_PREVIOUS_KEY,
        LUKS_PREVIOUS_MASTER_KEY,
        volume_id,
    )?
    .filter(|previous| previous.as_slice() != current.as_slice());
    Ok(VolumeKeys { current, previous })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "correct horse battery staple, 32+ bytes long!";

    fn secrets(entries: &[(&str, &str)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn derivation_matches_fixed_vectors() {
        // HKDF-SHA256, salt "multicsi.io/luks-volume-passphrase/v1", info the
        // volume ID, 32 bytes, hex: computed independently of this code.
        assert_eq!(
            derive(MASTER.as_bytes(), "hp-0123456789abcdef").as_slice(),
            b"bd9a5af15427c7facb647f1843606a7a52d84845523c447eb05f6ddcc236d0dc"
        );
        assert_eq!(
            derive(MASTER.as_bytes(), "hp-fedcba9876543210").as_slice(),
            b"30b357839eb1deea871644ef8e9fc9598a94920528b7135d530836286b646708"
        );
    }

    #[test]
    fn each_volume_of_a_master_gets_its_own_passphrase() {
        let s = secrets(&[(LUKS_MASTER_KEY, MASTER)]);
        let a = volume_keys(&s, "vol-a").unwrap();
        let b = volume_keys(&s, "vol-b").unwrap();
        assert_ne!(a.current.as_slice(), b.current.as_slice());
        assert_eq!(
            a.current.as_slice(),
            volume_keys(&s, "vol-a").unwrap().current.as_slice()
        );
        assert!(a.previous.is_none());
    }

    #[test]
    fn a_plain_key_is_used_as_it_is() {
        let s = secrets(&[(LUKS_KEY, "s3cret")]);
        assert_eq!(volume_keys(&s, "v").unwrap().current.as_slice(), b"s3cret");
    }

    #[test]
    fn rotation_keys_come_from_either_kind_and_an_unchanged_key_is_no_rotation() {
        let s = secrets(&[(LUKS_MASTER_KEY, MASTER), (LUKS_PREVIOUS_KEY, "old")]);
        let keys = volume_keys(&s, "v").unwrap();
        assert_eq!(
            keys.previous.as_deref().map(Vec::as_slice),
            Some(&b"old"[..])
        );
        let other = "another master secret of 32 or more bytes";
        let s = secrets(&[(LUKS_KEY, "new"), (LUKS_PREVIOUS_MASTER_KEY, other)]);
        let keys = volume_keys(&s, "v").unwrap();
        assert_eq!(
            keys.previous.as_deref().map(Vec::as_slice),
            Some(derive(other.as_bytes(), "v").as_slice())
        );
        let s = secrets(&[(LUKS_KEY, "same"), (LUKS_PREVIOUS_KEY, "same")]);
        assert!(volume_keys(&s, "v").unwrap().previous.is_none());
    }

    #[test]
    fn missing_ambiguous_and_short_keys_are_refused_without_showing_them() {
        let cases = [
            (secrets(&[]), "no luksKey or luksMasterKey"),
            (
                secrets(&[(LUKS_KEY, "k1-secret"), (LUKS_MASTER_KEY, MASTER)]),
                "both luksKey and luksMasterKey",
            ),
            (
                secrets(&[(LUKS_MASTER_KEY, "short-secret")]),
                "shorter than 32 bytes",
            ),
            (
                secrets(&[
                    (LUKS_KEY, "k1-secret"),
                    (LUKS_PREVIOUS_KEY, "k0-secret"),
                    (LUKS_PREVIOUS_MASTER_KEY, MASTER),
                ]),
                "both luksPreviousKey and luksPreviousMasterKey",
            ),
        ];
        for (s, expected) in cases {
            let err = volume_keys(&s, "v").unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, CsiError::InvalidArgument(_)), "{text}");
            assert!(text.contains(expected), "{text}");
            for secret in ["k1-secret", "k0-secret", "short-secret", MASTER] {
                assert!(!text.contains(secret), "{text}");
            }
        }
        let keys = volume_keys(&secrets(&[(LUKS_KEY, "k1-secret")]), "v").unwrap();
        assert!(!format!("{keys:?}").contains("k1-secret"));
    }
}
