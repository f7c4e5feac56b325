//! The node side of the Packet backend. The server's identity (device id,
//! facility, initiator IQN) and the iSCSI targets of its attached volumes
//! come from the metadata service, which needs no token. How an attached
//! volume becomes a block device depends on the attach mode:
//!
//! - `iscsi` (real servers): log in to the volume's target on every portal
//!   and build the multipath device `/dev/mapper/volume-<8 hex>`
//!   (`crate::node::iscsi`);
//! - `linked` (emulation and tests): the device is already present, linked
//!   as `volume-<8 hex>` in the device directory, and is found and checked
//!   by its serial (the volume id) with `crate::node::discovery`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use super::{DEFAULT_METADATA_URL, TOPOLOGY_KEY};
use crate::backend::{Map, NodeBackend};
use crate::cloud::http::{ApiClient, Auth, ClientOptions, Request};
use crate::config::Settings;
use crate::error::{CsiError, CsiResult};
use crate::node::discovery::{self, Found, Lookup};
use crate::node::iscsi::{self, IscsiHost, IscsiVolume};
use crate::node::loopdev;

/// Volumes a server takes by default (`--max-volumes-per-node` overrides).
pub const DEFAULT_MAX_VOLUMES: u64 = 16;
/// How long an attached volume may take to show in the metadata.
const LISTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long its device may take to appear.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// How an attached volume becomes a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Iscsi,
    Linked,
}

impl AttachMode {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("iscsi") => Ok(AttachMode::Iscsi),
            Some("linked") => Ok(AttachMode::Linked),
            Some(other) => Err(format!(
                "packet attach mode {other:?} (PACKET_ATTACH_MODE, attach-mode in [packet]): use iscsi, or linked for emulation and tests"
            )),
        }
    }
}

/// The metadata service's answer (the fields the driver reads).
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub iqn: String,
    #[serde(default)]
    pub facility: String,
    #[serde(default)]
    pub volumes: Vec<MetadataVolume>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MetadataVolume {
    pub name: String,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub iqn: String,
    #[serde(default)]
    pub capacity: Option<MetadataCapacity>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MetadataCapacity {
    /// A number written as a string.
    pub size: String,
    pub unit: String,
}

/// The multipath alias and API name of a volume: `volume-` and the first
/// eight hex digits of its id.
pub fn volume_alias(volume_id: &str) -> Option<String> {
    let head = volume_id.get(..8)?;
    let uuid_like =
        volume_id.len() == 36 && volume_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    (uuid_like && head.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("volume-{}", head.to_ascii_lowercase()))
}

/// The node side.
pub struct PacketNode {
    metadata: Option<ApiClient>,
    identity: Option<Metadata>,
    device_dir: PathBuf,
    mode: AttachMode,
    /// Where the iSCSI work happens (the host's own files and tools).
    iscsi: Arc<IscsiHost>,
}

/// Runs `work` with the lookup of a linked (not iSCSI) volume: its link in
/// `dir` is named after its alias, its serial is its id.
fn linked_lookup<T>(
    dir: &std::path::Path,
    alias: &str,
    id: &str,
    work: impl FnOnce(&Lookup) -> T,
) -> T {
    let matches = |name: &str| name == alias;
    let what = format!("packet volume {id}");
    work(&Lookup {
        dir,
        link_matches: &matches,
        serial: id,
        what: &what,
    })
}

impl PacketNode {
    /// Reads this server's identity when the node is served.
    pub async fn build(settings: &Settings) -> Result<Self, String> {
        let packet = &settings.clouds.packet;
        let mode = AttachMode::parse(packet.attach_mode.as_deref())?;
        let mut node = PacketNode {
            metadata: None,
            identity: None,
            device_dir: settings.device_dir.clone(),
            mode,
            iscsi: Arc::new(IscsiHost::default()),
        };
        if !settings.mode.serves_node() {
            return Ok(node);
        }
        let url = packet
            .metadata_url
            .as_deref()
            .unwrap_or(DEFAULT_METADATA_URL);
        let client = ApiClient::new("packet-metadata", url, Auth::None, ClientOptions::default())?;
        let identity = fetch(&client).await.map_err(|e| {
            format!(
                "cannot read this server's identity from the Packet metadata service {url}: {e}"
            )
        })?;
        if identity.id != settings.node_id {
            tracing::info!(
                device_id = %identity.id,
                configured = %settings.node_id,
                "the node id is this server's Packet device id, from the metadata service"
            );
        }
        node.metadata = Some(client);
        node.identity = Some(identity);
        Ok(node)
    }

    fn identity(&self) -> CsiResult<(&ApiClient, &Metadata)> {
        match (&self.metadata, &self.identity) {
            (Some(client), Some(identity)) => Ok((client, identity)),
            _ => Err(CsiError::FailedPrecondition(
                "this process does not serve the packet node".into(),
            )),
        }
    }

    /// The volume's entry in the metadata, waiting a little for it to show.
    async fn listed(&self, volume_id: &str, alias: &str) -> CsiResult<MetadataVolume> {
        let (client, _) = self.identity()?;
        let started = Instant::now();
        loop {
            let metadata = fetch(client).await?;
            if let Some(entry) = metadata.volumes.into_iter().find(|v| v.name == alias) {
                return Ok(entry);
            }
            if started.elapsed() >= LISTED_TIMEOUT {
                return Err(CsiError::NotFound(format!(
                    "volume {volume_id} is not attached to this server: the metadata service does not list {alias}; ControllerPublishVolume attaches it"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn target(&self, alias: &str, entry: &MetadataVolume) -> CsiResult<IscsiVolume> {
        let (_, identity) = self.identity()?;
        if entry.ips.is_empty() {
            return Err(CsiError::FailedPrecondition(format!(
                "the metadata service lists {alias} without portal addresses"
            )));
        }
        Ok(IscsiVolume {
            target_iqn: entry.iqn.clone(),
            portals: entry.ips.clone(),
            lun: 0,
            alias: alias.to_string(),
            initiator_iqn: identity.iqn.clone(),
        })
    }

    fn alias(volume_id: &str) -> CsiResult<String> {
        volume_alias(volume_id).ok_or_else(|| {
            CsiError::NotFound(format!(
                "volume {volume_id} does not exist (Packet volume ids are UUIDs)"
            ))
        })
    }
}

pub(super) async fn fetch(client: &ApiClient) -> CsiResult<Metadata> {
    client
        .json(&Request::get("metadata", "/metadata"))
        .await
        .map_err(|e| e.to_csi())
}

#[async_trait]
impl NodeBackend for PacketNode {
    fn node_id(&self) -> Option<String> {
        self.identity.as_ref().map(|m| m.id.clone())
    }

    fn topology(&self) -> Map {
        self.identity
            .as_ref()
            .map(|m| Map::from([(TOPOLOGY_KEY.to_string(), m.facility.clone())]))
            .unwrap_or_default()
    }

    fn max_volumes(&self) -> u64 {
        DEFAULT_MAX_VOLUMES
    }

    async fn ready(&self) -> CsiResult<()> {
        self.identity().map(|_| ())
    }

    /// Packet volumes do not grow (the controller has no expansion), so
    /// the node does not offer NodeExpandVolume either.
    fn expands(&self) -> bool {
        false
    }

    async fn attach_device(&self, volume_id: &str, _publish_context: &Map) -> CsiResult<PathBuf> {
        // The alias follows from the id; the publish context (the earlier
        // driver's keys) adds nothing the metadata service does not say.
        let alias = Self::alias(volume_id)?;
        let entry = self.listed(volume_id, &alias).await?;
        match self.mode {
            AttachMode::Linked => {
                let (dir, id) = (self.device_dir.clone(), volume_id.to_string());
                crate::blocking::run(move || {
                    linked_lookup(&dir, &alias, &id, |lookup| {
                        discovery::wait(lookup, DEVICE_TIMEOUT)
                    })
                })
                .await
            }
            AttachMode::Iscsi => {
                let target = self.target(&alias, &entry)?;
                let host = self.iscsi.clone();
                crate::blocking::run(move || Ok(iscsi::attach(&host, &target)?)).await
            }
        }
    }

    async fn find_device(&self, volume_id: &str) -> CsiResult<Option<PathBuf>> {
        let Some(alias) = volume_alias(volume_id) else {
            return Ok(None);
        };
        let (dir, id, mode) = (self.device_dir.clone(), volume_id.to_string(), self.mode);
        let mapper = self.iscsi.mapper_dir.clone();
        crate::blocking::run(move || match mode {
            AttachMode::Linked => match linked_lookup(&dir, &alias, &id, discovery::find)? {
                Found::Device(device) => Ok(Some(device)),
                Found::Missing | Found::Mismatch(_) => Ok(None),
            },
            AttachMode::Iscsi => {
                let device = mapper.join(&alias);
                Ok(device.exists().then_some(device))
            }
        })
        .await
    }

    async fn detach_device(&self, volume_id: &str) -> CsiResult<()> {
        if self.mode == AttachMode::Linked {
            // The emulated cloud removes the device when it detaches the
            // volume; nothing is held on this side.
            return Ok(());
        }
        let Some(alias) = volume_alias(volume_id) else {
            return Ok(());
        };
        let (client, _) = self.identity()?;
        let metadata = fetch(client).await?;
        let Some(entry) = metadata.volumes.iter().find(|v| v.name == alias) else {
            // No longer attached to this server: only a map left behind
            // would need work, and without the target it cannot be undone.
            let map = self.iscsi.mapper_dir.join(&alias);
            return if map.exists() {
                Err(CsiError::FailedPrecondition(format!(
                    "{} is still present but the metadata service no longer lists {alias} (volume {volume_id}); remove the map with multipath -f {alias} and log out of its target",
                    map.display()
                )))
            } else {
                Ok(())
            };
        };
        let target = self.target(&alias, entry)?;
        let host = self.iscsi.clone();
        crate::blocking::run(move || Ok(iscsi::detach(&host, &target)?)).await
    }

    async fn refresh_device(&self, volume_id: &str) -> CsiResult<u64> {
        let device = self.find_device(volume_id).await?.ok_or_else(|| {
            CsiError::NotFound(format!("volume {volume_id} is not attached on this node"))
        })?;
        crate::blocking::run(move || Ok(loopdev::device_size(&device)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_take_the_first_eight_hex_digits() {
        assert_eq!(
            volume_alias("870f9650-19ea-48bd-84c5-ddf97471c1c1").as_deref(),
            Some("volume-870f9650")
        );
        assert_eq!(
            volume_alias("../../etc/passwd-0000-0000-0000-0000000"),
            None
        );
        assert_eq!(volume_alias("870f9650"), None);
        assert_eq!(volume_alias("zzzzzzzz-19ea-48bd-84c5-ddf97471c1c1"), None);
    }

    #[test]
    fn attach_mode_defaults_to_iscsi_and_refuses_typos() {
        assert_eq!(AttachMode::parse(None).unwrap(), AttachMode::Iscsi);
        assert_eq!(
            AttachMode::parse(Some("linked")).unwrap(),
            AttachMode::Linked
        );
        assert!(
            AttachMode::parse(Some("link"))
                .unwrap_err()
                .contains("linked")
        );
    }

    #[test]
    fn iscsi_targets_come_from_the_metadata() {
        let metadata: Metadata = serde_json::from_str(
            r#"{"id":"d1","iqn":"iqn.2018-06.net.packet:device.d1","facility":"ewr1",
                "volumes":[{"ips":["10.144.35.132","10.144.51.11"],"name":"volume-870f9650",
                            "iqn":"iqn.2013-05.com.daterainc:tc:01:sn:60448a8a63a20a82"},
                           {"ips":[],"name":"volume-00000000","iqn":"iqn.2013-05.com.daterainc:tc:01:sn:0"}]}"#,
        )
        .unwrap();
        let node = PacketNode {
            metadata: Some(
                ApiClient::new(
                    "t",
                    "http://127.0.0.1:1",
                    Auth::None,
                    ClientOptions::default(),
                )
                .unwrap(),
            ),
            identity: Some(metadata.clone()),
            device_dir: PathBuf::from("/dev/disk/by-id"),
            mode: AttachMode::Iscsi,
            iscsi: Arc::new(IscsiHost::default()),
        };
        let target = node
            .target("volume-870f9650", &metadata.volumes[0])
            .unwrap();
        assert_eq!(
            target,
            IscsiVolume {
                target_iqn: "iqn.2013-05.com.daterainc:tc:01:sn:60448a8a63a20a82".into(),
                portals: vec!["10.144.35.132".into(), "10.144.51.11".into()],
                lun: 0,
                alias: "volume-870f9650".into(),
                initiator_iqn: "iqn.2018-06.net.packet:device.d1".into(),
            }
        );
        assert!(target.validate().is_ok());
        let err = node
            .target("volume-00000000", &metadata.volumes[1])
            .unwrap_err();
        assert!(matches!(err, CsiError::FailedPrecondition(_)), "{err}");
        assert_eq!(node.node_id().as_deref(), Some("d1"));
        assert_eq!(node.topology()[TOPOLOGY_KEY], "ewr1");
    }

    #[test]
    fn metadata_reads_the_documented_payload() {
        let m: Metadata = serde_json::from_str(
            r#"{"id":"9307dc37-7f39-400b-9cd2-009087434a95","hostname":"worker-1","iqn":"iqn.2018-06.net.packet:device.9307dc37",
                "plan":"baremetal_1","facility":"ewr1",
                "volumes":[{"ips":["10.144.35.132","10.144.51.11"],"name":"volume-b7f8e13c",
                            "capacity":{"size":"10","unit":"gb"},"iqn":"iqn.2013-05.com.daterainc:tc:01:sn:60448a8a63a20a82"}]}"#,
        )
        .unwrap();
        assert_eq!(m.facility, "ewr1");
        assert_eq!(m.volumes[0].ips.len(), 2);
        assert_eq!(m.volumes[0].capacity.as_ref().unwrap().size, "10");
    }
}
