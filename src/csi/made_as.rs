//! What a volume was made as: raw block, or a filesystem of one type. It is
//! chosen once, at CreateVolume, from the capabilities, and carried in the
//! volume context (and so in every backend's record of it) under
//! [`ACCESS_TYPE`] and [`FS_TYPE`]; later calls check against it.

use crate::backend::Map;
use crate::csi::validate::{Access, Capability};
use crate::error::{CsiError, CsiResult};

/// Volume-context key: `block` or `mount`.
pub const ACCESS_TYPE: &str = "multicsi.io/access-type";
/// Volume-context key: the filesystem of a `mount` volume.
pub const FS_TYPE: &str = "multicsi.io/fs-type";

/// What a volume was made as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MadeAs {
    /// A raw block device; never formatted by the driver.
    Block,
    /// A filesystem of this type.
    Filesystem(String),
}

impl std::fmt::Display for MadeAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MadeAs::Block => write!(f, "a raw block volume"),
            MadeAs::Filesystem(fs) => write!(f, "a {fs} filesystem volume"),
        }
    }
}

impl MadeAs {
    /// What CreateVolume's capabilities ask the volume to be: all of them
    /// must agree, since a volume is one or the other.
    pub fn from_capabilities(caps: &[Capability]) -> CsiResult<MadeAs> {
        let mut wanted: Option<MadeAs> = None;
        for (i, cap) in caps.iter().enumerate() {
            let this = match &cap.access {
                Access::Block => MadeAs::Block,
                Access::Mount { fs_type, .. } => MadeAs::Filesystem(fs_type.clone()),
            };
            match &wanted {
                Some(earlier) if *earlier != this => {
                    return Err(CsiError::InvalidArgument(format!(
                        "volume_capabilities[{i}] asks for {this}, an earlier one for {earlier}: a volume is made as one of them; ask for one"
                    )));
                }
                _ => wanted = Some(this),
            }
        }
        wanted.ok_or_else(|| CsiError::InvalidArgument("volume_capabilities is required".into()))
    }

    /// The volume-context entries that record it.
    pub fn to_context(&self) -> Map {
        match self {
            MadeAs::Block => Map::from([(ACCESS_TYPE.to_string(), "block".to_string())]),
            MadeAs::Filesystem(fs) => Map::from([
                (ACCESS_TYPE.to_string(), "mount".to_string()),
                (FS_TYPE.to_string(), fs.clone()),
            ]),
        }
    }

    /// Reads it back from a volume context; `None` when the context does
    /// not record it (a volume made by an earlier version).
    pub fn from_context<'a, I>(context: I) -> CsiResult<Option<MadeAs>>
    where
        I: IntoIterator<Item = (&'a String, &'a String)>,
    {
        let mut access = None;
        let mut fs = None;
        for (key, value) in context {
            match key.as_str() {
                ACCESS_TYPE => access = Some(value.as_str()),
                FS_TYPE => fs = Some(value.as_str()),
                _ => {}
            }
        }
        match (access, fs) {
            (None, _) => Ok(None),
            (Some("block"), None) => Ok(Some(MadeAs::Block)),
            (Some("mount"), Some(fs)) if !fs.is_empty() => {
                Ok(Some(MadeAs::Filesystem(fs.to_string())))
            }
            (Some(access), fs) => Err(CsiError::InvalidArgument(format!(
                "volume context {ACCESS_TYPE}={access:?} with {FS_TYPE}={:?} names no volume this driver makes (block, or mount with a filesystem)",
                fs.unwrap_or("")
            ))),
        }
    }

    /// Whether a capability asks for what the volume is; the reason when not.
    pub fn admits(&self, cap: &Capability) -> Result<(), String> {
        match (self, &cap.access) {
            (MadeAs::Block, Access::Block) => Ok(()),
            (MadeAs::Filesystem(made), Access::Mount { fs_type, .. }) if made == fs_type => Ok(()),
            (made, Access::Block) => Err(format!("the volume is {made}, not a raw block volume")),
            (made, Access::Mount { fs_type, .. }) => Err(format!(
                "the volume is {made}, not a {fs_type} filesystem volume"
            )),
        }
    }
}

/// Removes the entries [`MadeAs`] keeps from a context (to compare the rest).
pub fn without_made_as(context: &Map) -> Map {
    context
        .iter()
        .filter(|(k, _)| k.as_str() != ACCESS_TYPE && k.as_str() != FS_TYPE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume_capability::access_mode::Mode;

    fn cap(access: Access) -> Capability {
        Capability {
            access,
            mode: Mode::SingleNodeWriter,
        }
    }

    fn mount(fs: &str) -> Access {
        Access::Mount {
            fs_type: fs.into(),
            flags: vec![],
        }
    }

    #[test]
    fn made_as_round_trips_through_the_context_and_admits_only_itself() {
        for made in [MadeAs::Block, MadeAs::Filesystem("xfs".into())] {
            let context = made.to_context();
            assert_eq!(MadeAs::from_context(&context).unwrap(), Some(made.clone()));
        }
        assert_eq!(MadeAs::from_context(&Map::new()).unwrap(), None);
        let bad = Map::from([(ACCESS_TYPE.to_string(), "mount".to_string())]);
        assert!(MadeAs::from_context(&bad).is_err());
        let xfs = MadeAs::Filesystem("xfs".into());
        assert!(xfs.admits(&cap(mount("xfs"))).is_ok());
        assert!(xfs.admits(&cap(mount("ext4"))).is_err());
        assert!(xfs.admits(&cap(Access::Block)).is_err());
        assert!(MadeAs::Block.admits(&cap(mount("xfs"))).is_err());
        assert!(MadeAs::Block.admits(&cap(Access::Block)).is_ok());
    }

    #[test]
    fn capabilities_must_agree() {
        let err = MadeAs::from_capabilities(&[cap(mount("ext4")), cap(Access::Block)]);
        assert!(matches!(err, Err(CsiError::InvalidArgument(_))));
        assert!(MadeAs::from_capabilities(&[cap(mount("ext4")), cap(mount("xfs"))]).is_err());
        assert_eq!(
            MadeAs::from_capabilities(&[cap(mount("ext4")), cap(mount("ext4"))]).unwrap(),
            MadeAs::Filesystem("ext4".into())
        );
    }
}
