//! The storage backends behind the controller and the node.
//!
//! A backend speaks in the driver's own types; the CSI adapters translate
//! requests into them and errors into status codes (see `crate::error`).

pub mod blocks;
pub mod civo;
pub mod cloudscale;
pub mod elsewhere;
pub mod hostpath;
pub mod packet;
pub mod router;
pub mod size;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;

use self::blocks::ExtentStream;
use crate::error::{CsiError, CsiResult};

/// Key/value map in a stable order (parameters, contexts, topology segments).
pub type Map = BTreeMap<String, String>;

/// Where the content of a new volume comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

/// A create request after validation.
#[derive(Clone, Debug)]
pub struct CreateVolume {
    pub name: String,
    /// Smallest acceptable size in bytes, as requested (not rounded).
    pub required_bytes: u64,
    /// Largest acceptable size in bytes; 0 = no limit.
    pub limit_bytes: u64,
    pub source: Option<ContentSource>,
    /// Backend-specific StorageClass parameters (already checked against
    /// `Backend::parameter_keys`).
    pub parameters: Map,
    /// Context the node needs later (filesystem, encryption settings).
    pub node_context: Map,
    /// The filesystem the volume will carry, if it is a mounted volume.
    pub fs_type: Option<String>,
    /// Requested topology (requisite, preferred), empty = anywhere.
    pub requisite: Vec<Map>,
    pub preferred: Vec<Map>,
    /// What the provisioner says the volume is for (`csi.storage.k8s.io/`
    /// `pvc/name`, `pvc/namespace`, `pv/name`), kept on the cloud volume
    /// where the provider has tags.
    pub metadata: Map,
}

#[cfg(test)]
impl CreateVolume {
    /// A plain request for unit tests: no source, parameters or topology.
    pub(crate) fn sized(name: &str, required_bytes: u64, limit_bytes: u64) -> Self {
        CreateVolume {
            name: name.into(),
            required_bytes,
            limit_bytes,
            source: None,
            parameters: Map::new(),
            node_context: Map::new(),
            fs_type: None,
            requisite: vec![],
            preferred: vec![],
            metadata: Map::new(),
        }
    }
}

/// A volume as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    pub capacity_bytes: u64,
    pub context: Map,
    pub source: Option<ContentSource>,
    pub topology: Vec<Map>,
}

/// A volume with its publications and health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeStatus {
    pub volume: Volume,
    pub published_nodes: Vec<String>,
    /// `Some(message)` when the volume is unhealthy.
    pub abnormal: Option<String>,
}

/// A snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub source_volume_id: String,
    pub size_bytes: u64,
    pub created: SystemTime,
    pub ready: bool,
    /// The group snapshot this snapshot is a member of, if any.
    pub group_snapshot_id: Option<String>,
}

/// A volume group snapshot: snapshots of several volumes taken at one
/// point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub id: String,
    /// One member snapshot per source volume.
    pub snapshots: Vec<Snapshot>,
    pub created: SystemTime,
    pub ready: bool,
}

/// Free space a backend can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub available_bytes: u64,
    pub maximum_volume_bytes: u64,
    pub minimum_volume_bytes: u64,
}

/// What a backend can do; the CSI capabilities are derived from it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub snapshots: bool,
    pub clone: bool,
    pub expand: bool,
    pub capacity: bool,
    pub attach: bool,
    pub volume_condition: bool,
}

/// The controller side of a storage provider.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name, e.g. `hostpath`.
    fn name(&self) -> &'static str;
    fn features(&self) -> Features;
    /// StorageClass parameter keys this backend understands itself.
    fn parameter_keys(&self) -> &'static [&'static str];
    /// Whether a volume can grow while it is in use (false: only while it
    /// is not attached anywhere).
    fn online_expansion(&self) -> bool {
        true
    }
    /// Whether the controller can attach a volume read-only
    /// (PUBLISH_READONLY).
    fn publish_readonly(&self) -> bool {
        true
    }
    /// The backends served, the default first (several behind a router).
    fn backend_names(&self) -> Vec<&'static str> {
        vec![self.name()]
    }
    /// The backend that holds the volume or snapshot `id`.
    fn backend_of(&self, _id: &str) -> &'static str {
        self.name()
    }
    /// Ok when the backend can serve requests.
    async fn ready(&self) -> CsiResult<()>;

    async fn create_volume(&self, request: &CreateVolume) -> CsiResult<Volume>;
    /// Deleting a volume that does not exist is Ok.
    async fn delete_volume(&self, id: &str) -> CsiResult<()>;
    async fn get_volume(&self, id: &str) -> CsiResult<VolumeStatus>;
    /// All volumes, ordered by ID.
    async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>>;
    async fn publish(&self, id: &str, node_id: &str, read_only: bool) -> CsiResult<Map>;
    /// Unpublishing what is not published is Ok.
    async fn unpublish(&self, id: &str, node_id: Option<&str>) -> CsiResult<()>;
    /// Grows a volume to at least `required_bytes`; returns its new size.
    async fn expand(&self, id: &str, required_bytes: u64, limit_bytes: u64) -> CsiResult<u64>;
    async fn capacity(&self) -> CsiResult<Capacity>;
    /// The capacity of the backend a request's StorageClass parameters
    /// select (GetCapacity); one backend answers for itself.
    async fn capacity_for(&self, _parameters: &Map) -> CsiResult<Capacity> {
        self.capacity().await
    }

    async fn create_snapshot(&self, source_volume_id: &str, name: &str) -> CsiResult<Snapshot>;
    /// Deleting a snapshot that does not exist is Ok.
    async fn delete_snapshot(&self, id: &str) -> CsiResult<()>;
    /// All snapshots, ordered by ID.
    async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>>;

    /// Whether the backend takes volume group snapshots (one point in time
    /// across several volumes).
    fn group_snapshots(&self) -> bool {
        false
    }
    /// Snapshots `source_volume_ids` together, at one point in time;
    /// idempotent by `name`.
    async fn create_group_snapshot(
        &self,
        _name: &str,
        _source_volume_ids: &[String],
    ) -> CsiResult<GroupSnapshot> {
        Err(self.no_group_snapshots())
    }
    /// Deletes a group snapshot with its members; one that does not exist
    /// is Ok. `snapshot_ids`, when given, must be its members.
    async fn delete_group_snapshot(&self, _id: &str, _snapshot_ids: &[String]) -> CsiResult<()> {
        Err(self.no_group_snapshots())
    }
    /// A group snapshot; `snapshot_ids`, when given, must be its members.
    async fn get_group_snapshot(
        &self,
        _id: &str,
        _snapshot_ids: &[String],
    ) -> CsiResult<GroupSnapshot> {
        Err(self.no_group_snapshots())
    }
    /// The error of a group snapshot call to a backend without them.
    fn no_group_snapshots(&self) -> crate::error::CsiError {
        crate::error::CsiError::Unimplemented(format!(
            "the {} backend takes no volume group snapshots: its provider offers no point in time across volumes",
            self.name()
        ))
    }
    /// Whether the backend computes the block metadata of its snapshots
    /// (the SnapshotMetadata service) from the storage itself.
    fn snapshot_metadata(&self) -> bool {
        false
    }
    /// The allocated extents of a snapshot, from `from` on.
    async fn allocated_extents(&self, _snapshot_id: &str, _from: u64) -> CsiResult<ExtentStream> {
        Err(no_block_metadata(self.name()))
    }
    /// The extents that differ between two snapshots of one volume, from
    /// `from` on.
    async fn changed_extents(
        &self,
        _base_snapshot_id: &str,
        _target_snapshot_id: &str,
        _from: u64,
    ) -> CsiResult<ExtentStream> {
        Err(no_block_metadata(self.name()))
    }
}

/// What a backend without block metadata answers (the CSI spec's code for
/// "changed block tracking is not enabled").
fn no_block_metadata(backend: &str) -> CsiError {
    CsiError::FailedPrecondition(format!(
        "the {backend} backend cannot tell which blocks of a snapshot are allocated or changed; take a full backup of its snapshots instead"
    ))
}

/// The node side of a storage provider: how a volume becomes a block device.
#[async_trait]
pub trait NodeBackend: Send + Sync + 'static {
    /// This node's id when the backend knows it better than the settings
    /// (a cloud server's id from the metadata service).
    fn node_id(&self) -> Option<String> {
        None
    }
    /// Topology segments of this node.
    fn topology(&self) -> Map;
    /// Default maximum number of volumes on this node (0 = unlimited).
    fn max_volumes(&self) -> u64;
    /// Ok when the node can stage volumes.
    async fn ready(&self) -> CsiResult<()>;
    /// Whether the node grows a volume's filesystem (NodeExpandVolume).
    fn expands(&self) -> bool {
        true
    }
    /// Makes the volume's block device present on this node; idempotent.
    async fn attach_device(&self, volume_id: &str, publish_context: &Map) -> CsiResult<PathBuf>;
    /// The volume's block device if it is present.
    async fn find_device(&self, volume_id: &str) -> CsiResult<Option<PathBuf>>;
    /// Removes the volume's block device from this node; idempotent.
    async fn detach_device(&self, volume_id: &str) -> CsiResult<()>;
    /// Makes the node see the volume's new size; returns the device size.
    async fn refresh_device(&self, volume_id: &str) -> CsiResult<u64>;
    /// What the volume was made as, from the backend's own record of it;
    /// `None` when the backend keeps no such record (the volume context
    /// then tells). NOT_FOUND for a volume the backend does not know.
    async fn recorded(&self, _volume_id: &str) -> CsiResult<Option<Recorded>> {
        Ok(None)
    }
    /// What is wrong with the volume's backing store (I/O errors, no space
    /// for a thin volume), when the backend can tell; `None` when healthy.
    async fn backing_condition(&self, _volume_id: &str) -> CsiResult<Option<String>> {
        Ok(None)
    }
}

/// What a volume was made as, from its backend's own record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub made_as: crate::csi::made_as::MadeAs,
    /// Whether it was created encrypted (LUKS).
    pub encrypted: bool,
    /// The volume context recorded at create (encryption settings, mkfs
    /// options): node calls use it rather than the request's, which cannot
    /// drop encryption from it.
    pub context: Map,
}
