//! A backend whose node calls another node plugin serves.
//!
//! A node belongs to one cloud: its identity comes from that cloud's
//! metadata service, so a node plugin cannot serve the node half of every
//! backend of a multi-cloud driver. A node-only process started with
//! `--node-backends` keeps routing every volume ID by the full backend list
//! and answers for the backends it does not serve with this: no topology,
//! no volume limit, and FAILED_PRECONDITION for a volume that is to become a
//! device here. It never touches anything, so a detach is a no-op.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{
    Backend, Capacity, CreateVolume, Features, Map, NodeBackend, Snapshot, Volume, VolumeStatus,
};
use crate::error::{CsiError, CsiResult};

/// Stands in for backend `name` in a node plugin that does not serve it.
pub struct Elsewhere {
    name: &'static str,
}

impl Elsewhere {
    pub fn new(name: &'static str) -> Self {
        Elsewhere { name }
    }

    fn refused<T>(&self) -> CsiResult<T> {
        Err(CsiError::FailedPrecondition(format!(
            "this node plugin does not serve the {name} backend (--node-backends): a {name} volume \
             can only be used on a node of the {name} cloud; schedule the pod there (the \
             StorageClass's allowedTopologies or a node selector)",
            name = self.name
        )))
    }
}

#[async_trait]
impl Backend for Elsewhere {
    fn name(&self) -> &'static str {
        self.name
    }

    fn features(&self) -> Features {
        Features::default()
    }

    fn parameter_keys(&self) -> &'static [&'static str] {
        &[]
    }

    async fn ready(&self) -> CsiResult<()> {
        Ok(())
    }

    async fn create_volume(&self, _request: &CreateVolume) -> CsiResult<Volume> {
        self.refused()
    }

    async fn delete_volume(&self, _id: &str) -> CsiResult<()> {
        self.refused()
    }

    async fn get_volume(&self, _id: &str) -> CsiResult<VolumeStatus> {
        self.refused()
    }

    async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>> {
        self.refused()
    }

    async fn publish(&self, _id: &str, _node_id: &str, _read_only: bool) -> CsiResult<Map> {
        self.refused()
    }

    async fn unpublish(&self, _id: &str, _node_id: Option<&str>) -> CsiResult<()> {
        self.refused()
    }

    async fn expand(&self, _id: &str, _required_bytes: u64, _limit_bytes: u64) -> CsiResult<u64> {
        self.refused()
    }

    async fn capacity(&self) -> CsiResult<Capacity> {
        self.refused()
    }

    async fn create_snapshot(&self, _source_volume_id: &str, _name: &str) -> CsiResult<Snapshot> {
        self.refused()
    }

    async fn delete_snapshot(&self, _id: &str) -> CsiResult<()> {
        self.refused()
    }

    async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>> {
        self.refused()
    }
}

#[async_trait]
impl NodeBackend for Elsewhere {
    fn topology(&self) -> Map {
        Map::new()
    }

    fn max_volumes(&self) -> u64 {
        0
    }

    async fn ready(&self) -> CsiResult<()> {
        Ok(())
    }

    fn expands(&self) -> bool {
        false
    }

    async fn attach_device(&self, _volume_id: &str, _publish_context: &Map) -> CsiResult<PathBuf> {
        self.refused()
    }

    /// Nothing of this backend is ever a device here.
    async fn find_device(&self, _volume_id: &str) -> CsiResult<Option<PathBuf>> {
        Ok(None)
    }

    /// Nothing was attached here, so nothing is left to remove.
    async fn detach_device(&self, _volume_id: &str) -> CsiResult<()> {
        Ok(())
    }

    async fn refresh_device(&self, _volume_id: &str) -> CsiResult<u64> {
        self.refused()
    }
}
