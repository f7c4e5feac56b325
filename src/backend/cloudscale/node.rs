//! The node side of cloudscale: an attached volume is a virtio-scsi disk
//! whose serial is the volume's UUID, linked in `/dev/disk/by-id` as
//! `scsi-0QEMU_QEMU_HARDDISK_<uuid>` (or, on old images, `virtio-<first 20
//! characters>`). The controller attaches and detaches; the node only
//! finds the disk, checks its serial and makes it see a new size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use super::{DEFAULT_MAX_VOLUMES, PUBLISHED_SERVER, PUBLISHED_VOLUME, TOPOLOGY_KEY, is_uuid};
use crate::backend::{Map, NodeBackend};
use crate::config::Settings;
use crate::error::{CsiError, CsiResult};
use crate::node::discovery::{self, Found, Lookup};
use crate::node::loopdev;

/// How long NodeStage waits for the disk of a published volume.
const ATTACH_WAIT: Duration = Duration::from_secs(30);
/// How long it looks for a volume without a publish context from this
/// driver (attached by cloudscale's own driver before a switch).
const UNPUBLISHED_WAIT: Duration = Duration::from_secs(2);

/// The cloudscale node backend.
pub struct CloudscaleNode {
    /// This server's UUID (the node ID) and zone; empty on a controller.
    server_uuid: String,
    zone: String,
    device_dir: PathBuf,
    max_volumes: u64,
}

/// Whether a by-id link name may be the disk of `uuid`.
pub fn link_matches(name: &str, uuid: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name.contains("-part") {
        return false;
    }
    name.contains(uuid) || (name.starts_with("virtio-") && name.contains(&uuid[..20]))
}

impl CloudscaleNode {
    pub fn new(settings: &Settings, identity: Option<(String, String)>) -> Self {
        let (server_uuid, zone) = identity.unwrap_or_default();
        CloudscaleNode {
            server_uuid,
            zone,
            device_dir: settings.device_dir.clone(),
            max_volumes: settings
                .clouds
                .cloudscale
                .max_csi_volumes_per_node
                .unwrap_or(DEFAULT_MAX_VOLUMES),
        }
    }

    fn volume_uuid(volume_id: &str) -> CsiResult<String> {
        if is_uuid(volume_id) {
            Ok(volume_id.to_ascii_lowercase())
        } else {
            Err(CsiError::NotFound(format!(
                "volume {volume_id} does not exist (cloudscale volume IDs are UUIDs)"
            )))
        }
    }

    async fn lookup<T: Send + 'static>(
        &self,
        volume_id: &str,
        work: impl FnOnce(&Lookup) -> CsiResult<T> + Send + 'static,
    ) -> CsiResult<T> {
        let uuid = Self::volume_uuid(volume_id)?;
        let dir = self.device_dir.clone();
        crate::blocking::run(move || {
            let matches = |name: &str| link_matches(name, &uuid);
            let what = format!("cloudscale volume {uuid}");
            let lookup = Lookup {
                dir: &dir,
                link_matches: &matches,
                serial: &uuid,
                what: &what,
            };
            work(&lookup)
        })
        .await
    }
}

#[async_trait]
impl NodeBackend for CloudscaleNode {
    /// The server's UUID from the metadata service: the ID the controller
    /// attaches volumes to.
    fn node_id(&self) -> Option<String> {
        Some(self.server_uuid.clone()).filter(|id| !id.is_empty())
    }

    fn topology(&self) -> Map {
        Map::from([(TOPOLOGY_KEY.to_string(), self.zone.clone())])
    }

    fn max_volumes(&self) -> u64 {
        self.max_volumes
    }

    async fn ready(&self) -> CsiResult<()> {
        if self.server_uuid.is_empty() {
            return Err(CsiError::Unavailable(
                "this server's identity was not read from the metadata service".into(),
            ));
        }
        Ok(())
    }

    async fn attach_device(&self, volume_id: &str, publish_context: &Map) -> CsiResult<PathBuf> {
        // A context made for another volume says nothing about this one.
        let for_this_volume = publish_context
            .get(PUBLISHED_VOLUME)
            .is_some_and(|v| v.eq_ignore_ascii_case(volume_id));
        let published_here = match publish_context.get(PUBLISHED_SERVER) {
            _ if !for_this_volume => false,
            Some(server) if *server == self.server_uuid => true,
            Some(server) => {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {volume_id} was published to server {server}, not to this server {}",
                    self.server_uuid
                )));
            }
            None => false,
        };
        let id = volume_id.to_string();
        self.lookup(volume_id, move |lookup| {
            if published_here {
                return discovery::wait(lookup, ATTACH_WAIT);
            }
            // Not published by this driver: a volume attached before a
            // switch from cloudscale's own driver is found at once; anything
            // else does not exist here.
            discovery::wait(lookup, UNPUBLISHED_WAIT).map_err(|e| match e {
                CsiError::DeadlineExceeded(_) => CsiError::NotFound(format!(
                    "volume {id} is not attached to this server: publish it here first (ControllerPublishVolume)"
                )),
                other => other,
            })
        })
        .await
    }

    async fn find_device(&self, volume_id: &str) -> CsiResult<Option<PathBuf>> {
        if !is_uuid(volume_id) {
            return Ok(None);
        }
        self.lookup(volume_id, |lookup| match discovery::find(lookup)? {
            Found::Device(device) => Ok(Some(device)),
            Found::Missing | Found::Mismatch(_) => Ok(None),
        })
        .await
    }

    async fn detach_device(&self, _volume_id: &str) -> CsiResult<()> {
        // The controller detaches the disk from the server.
        Ok(())
    }

    async fn refresh_device(&self, volume_id: &str) -> CsiResult<u64> {
        let id = volume_id.to_string();
        self.lookup(volume_id, move |lookup| {
            let Found::Device(device) = discovery::find(lookup)? else {
                return Err(CsiError::NotFound(format!(
                    "volume {id} is not attached to this server"
                )));
            };
            rescan(&device);
            Ok(loopdev::device_size(&device)?)
        })
        .await
    }
}

/// Asks the kernel to read a disk's size again (SCSI rescan); loop devices
/// of an emulated cloud are refreshed by the emulator.
fn rescan(device: &Path) {
    if let Some(name) = device.file_name() {
        let rescan = Path::new("/sys/class/block")
            .join(name)
            .join("device/rescan");
        if rescan.exists() {
            let _ = std::fs::write(rescan, "1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_of_a_volume() {
        let uuid = "2db69ba3-1864-4608-853a-0771b6885a3a";
        assert!(link_matches(
            &format!("scsi-0QEMU_QEMU_HARDDISK_{uuid}"),
            uuid
        ));
        assert!(link_matches(
            &format!("scsi-SQEMU_QEMU_HARDDISK_{uuid}"),
            uuid
        ));
        assert!(link_matches(&format!("virtio-{}", &uuid[..20]), uuid));
        assert!(!link_matches(
            &format!("scsi-0QEMU_QEMU_HARDDISK_{uuid}-part1"),
            uuid
        ));
        assert!(!link_matches(
            "scsi-0QEMU_QEMU_HARDDISK_2db69ba3-1864-4608-853a-0771b6885a3b",
            uuid
        ));
        assert!(!link_matches(&format!("scsi-0X_{}", &uuid[..20]), uuid));
    }
}
