//! The node side of Civo: the controller attaches a volume to the instance;
//! the node finds its disk in the device directory by a link whose name
//! ends with the full volume id, and accepts it only when the disk's serial
//! is the volume id.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::api::{self, CivoApi};
use super::{TOPOLOGY_KEY, check_id};
use crate::backend::{Map, NodeBackend};
use crate::error::{CsiError, CsiResult};
use crate::node::discovery::{self, Found, Lookup};
use crate::node::loopdev;

/// How long staging waits for an attached volume's disk to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(60);
/// Volumes per instance (civo-csi's limit).
const MAX_VOLUMES: u64 = 1024;

/// The Civo node.
pub struct CivoNode {
    pub instance_id: String,
    pub region: String,
    pub device_dir: PathBuf,
    /// The API, when the node has a key: lets staging tell an unknown or
    /// unattached volume from a slow disk.
    pub api: Option<Arc<CivoApi>>,
}

impl CivoNode {
    /// Looks for the volume's disk once.
    async fn look(&self, volume_id: &str) -> CsiResult<Found> {
        let (dir, id) = (self.device_dir.clone(), volume_id.to_string());
        crate::blocking::run(move || with_lookup(&dir, &id, discovery::find)).await
    }

    /// Why an absent disk will not appear, if the API can tell.
    async fn why_absent(&self, volume_id: &str) -> CsiResult<()> {
        let Some(api) = &self.api else {
            return Ok(());
        };
        let what = format!("Civo volume {volume_id}");
        let volume = api
            .get_volume(volume_id)
            .await
            .map_err(|e| api::to_csi(&e, &what))?;
        match volume.attached_to() {
            Some(instance) if instance == self.instance_id => Ok(()),
            Some(instance) => Err(CsiError::FailedPrecondition(format!(
                "{what} is attached to instance {instance}, not to this node ({})",
                self.instance_id
            ))),
            None => Err(CsiError::FailedPrecondition(format!(
                "{what} is not attached to this node ({}); ControllerPublishVolume attaches it",
                self.instance_id
            ))),
        }
    }
}

/// Runs `f` with the lookup of a volume's disk: a link whose name ends
/// with the volume id, to a disk whose serial is the volume id.
fn with_lookup<T>(dir: &Path, id: &str, f: impl FnOnce(&Lookup) -> T) -> T {
    let matches = |name: &str| name.ends_with(id);
    let what = format!("Civo volume {id}");
    f(&Lookup {
        dir,
        link_matches: &matches,
        serial: id,
        what: &what,
    })
}

#[async_trait]
impl NodeBackend for CivoNode {
    fn topology(&self) -> Map {
        Map::from([(TOPOLOGY_KEY.to_string(), self.region.clone())])
    }

    fn node_id(&self) -> Option<String> {
        Some(self.instance_id.clone())
    }

    fn max_volumes(&self) -> u64 {
        MAX_VOLUMES
    }

    async fn ready(&self) -> CsiResult<()> {
        if self.device_dir.is_dir() {
            Ok(())
        } else {
            Err(CsiError::Unavailable(format!(
                "device directory {} does not exist",
                self.device_dir.display()
            )))
        }
    }

    async fn attach_device(&self, volume_id: &str, _context: &Map) -> CsiResult<PathBuf> {
        check_id(volume_id)?;
        if let Found::Device(device) = self.look(volume_id).await? {
            return Ok(device);
        }
        self.why_absent(volume_id).await?;
        let (dir, id) = (self.device_dir.clone(), volume_id.to_string());
        crate::blocking::run(move || {
            with_lookup(&dir, &id, |lookup| discovery::wait(lookup, DEVICE_WAIT))
        })
        .await
    }

    async fn find_device(&self, volume_id: &str) -> CsiResult<Option<PathBuf>> {
        if check_id(volume_id).is_err() {
            return Ok(None);
        }
        match self.look(volume_id).await? {
            Found::Device(device) => Ok(Some(device)),
            Found::Missing => Ok(None),
            Found::Mismatch(seen) => Err(CsiError::FailedPrecondition(format!(
                "the links of Civo volume {volume_id} do not lead to its disk: {seen}"
            ))),
        }
    }

    /// The controller detaches; nothing to do on the node.
    async fn detach_device(&self, _volume_id: &str) -> CsiResult<()> {
        Ok(())
    }

    async fn refresh_device(&self, volume_id: &str) -> CsiResult<u64> {
        let device = self.find_device(volume_id).await?.ok_or_else(|| {
            CsiError::NotFound(format!(
                "Civo volume {volume_id} is not attached to this node"
            ))
        })?;
        crate::blocking::run(move || {
            // A SCSI disk learns its new size on a rescan (best effort).
            if let Some(name) = device.file_name().and_then(|n| n.to_str()) {
                let rescan = PathBuf::from("/sys/class/block")
                    .join(name)
                    .join("device/rescan");
                let _ = std::fs::write(rescan, "1");
            }
            Ok(loopdev::device_size(&device)?)
        })
        .await
    }
}
