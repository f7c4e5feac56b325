//! The Packet (Equinix Metal) backend: block storage volumes of a project,
//! attached to servers ("devices") over iSCSI.
//!
//! - Volume IDs are the API's own (UUIDs), so volumes made by the
//!   provider's earlier CSI driver are adopted as they are.
//! - The CSI name travels in the volume's `description`, as JSON
//!   `{"Name": ..., "Created": ...}` (the earlier driver's format), so a
//!   repeated CreateVolume finds the volume it made, even after a crash.
//!   If an interrupted create left two volumes with one name, the oldest
//!   is kept and the unattached others are deleted.
//! - Plans: `standard` (default) and `performance`, from the StorageClass
//!   parameter `multicsi.io/plan` or the earlier driver's `plan`.
//! - Volumes live in one facility; the facility code is the topology.
//! - The node id is the server's device id (from the metadata service).

pub mod api;
pub mod node;
mod volume;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use self::api::{Api, Facility, NewVolume, outcome_unknown, to_csi};
use self::volume::{Description, is_compatible};
use super::size::{GIB, SizeRules};
use super::{
    Backend, Capacity, CreateVolume, Features, Map, NodeBackend, Snapshot, Volume, VolumeStatus,
};
use crate::cloud::http::{ApiClient, Auth, ClientOptions};
use crate::config::Settings;
use crate::error::{CsiError, CsiResult};

/// Topology key: the facility (data centre) code, e.g. `ewr1`.
pub const TOPOLOGY_KEY: &str = "topology.multicsi.io/facility";
/// StorageClass parameter choosing the plan.
pub const PLAN_KEY: &str = "multicsi.io/plan";
/// The earlier driver's name of the same parameter.
pub const UPSTREAM_PLAN_KEY: &str = "plan";
/// Publish context keys (the earlier driver's).
pub const CONTEXT_ATTACHMENT: &str = "AttachmentId";
pub const CONTEXT_VOLUME_ID: &str = "VolumeId";
pub const CONTEXT_VOLUME_NAME: &str = "VolumeName";

pub const DEFAULT_API_URL: &str = "https://api.packet.net";
pub const DEFAULT_METADATA_URL: &str = "https://metadata.packet.net";

/// Plans by parameter value: (value, plan id).
pub const PLANS: &[(&str, &str)] = &[
    ("standard", "87728148-3155-4992-a730-8d1e6aca8a32"),
    ("performance", "d6570cfb-38fa-4467-92b3-e45d059bb249"),
];

/// Whole GiB from 10 GiB to 10000 GiB; 100 GiB when no size is asked for.
pub const SIZE_RULES: SizeRules = SizeRules {
    step: GIB,
    minimum: 10 * GIB,
    maximum: 10_000 * GIB,
    default: 100 * GIB,
};

/// Creates and attaches tried at most this often when the API's answer is
/// lost (each try looks for the result of the previous one first).
const UNSURE_ATTEMPTS: u32 = 6;
/// How long a new volume may take to become active.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a detach is retried while the server still uses the volume,
/// and how often: within one call, and below the external-attacher's
/// default timeout (15 s); after that the call answers UNAVAILABLE and the
/// attacher calls again.
const DETACH_TIMEOUT: Duration = Duration::from_secs(10);
const DETACH_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the controller and node sides from the settings. The controller
/// needs `PACKET_API_KEY` and `PACKET_PROJECT_ID` only where it is served;
/// the node needs no token, only the metadata service.
pub async fn build(
    settings: &Settings,
) -> Result<(Arc<dyn Backend>, Arc<dyn NodeBackend>), String> {
    let packet = &settings.clouds.packet;
    let api = if settings.mode.serves_controller() {
        let key = packet.api_key.clone().ok_or(
            "the packet backend needs an API key: set PACKET_API_KEY (or api-key in [packet])",
        )?;
        let project = packet.project_id.clone().ok_or(
            "the packet backend needs a project: set PACKET_PROJECT_ID (or project-id in [packet])",
        )?;
        let url = packet.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
        let options = ClientOptions::rate_limited(packet.requests_per_second).map_err(|rate| {
            format!(
                "PACKET_REQUESTS_PER_SECOND (requests-per-second in [packet]) must be positive, not {rate}"
            )
        })?;
        let client = ApiClient::new("packet", url, Auth::Header("X-Auth-Token", key), options)?;
        Some(Api::new(client, project))
    } else {
        None
    };
    let metadata_url = packet
        .metadata_url
        .as_deref()
        .unwrap_or(DEFAULT_METADATA_URL);
    let metadata = ApiClient::new(
        "packet-metadata",
        metadata_url,
        Auth::None,
        ClientOptions {
            max_attempts: 3,
            deadline: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )?;
    let controller = Packet {
        api,
        facility: packet.facility_id.clone(),
        facilities: OnceCell::new(),
        metadata,
        own_facility: OnceCell::new(),
    };
    let node = node::PacketNode::build(settings).await?;
    Ok((Arc::new(controller), Arc::new(node)))
}

/// The controller side.
pub struct Packet {
    api: Option<Api>,
    /// The configured facility (id or code), used when a request names none.
    facility: Option<String>,
    facilities: OnceCell<Vec<Facility>>,
    /// The metadata service, for the facility of the server the controller
    /// runs on when neither the settings nor the request name one.
    metadata: ApiClient,
    own_facility: OnceCell<String>,
}

impl Packet {
    fn api(&self) -> CsiResult<&Api> {
        self.api.as_ref().ok_or_else(|| {
            CsiError::FailedPrecondition(
                "this process does not serve the packet controller (no API key)".into(),
            )
        })
    }

    async fn facilities(&self) -> CsiResult<&[Facility]> {
        let api = self.api()?;
        let list = self
            .facilities
            .get_or_try_init(|| async { api.facilities().await.map_err(|e| to_csi(&e)) })
            .await?;
        Ok(list)
    }

    fn topology(&self, facilities: &[Facility], volume: &api::Volume) -> Vec<Map> {
        volume
            .facility_id()
            .and_then(|id| facilities.iter().find(|f| f.id == id))
            .map(|f| vec![Map::from([(TOPOLOGY_KEY.to_string(), f.code.clone())])])
            .unwrap_or_default()
    }

    async fn to_volume(&self, volume: &api::Volume) -> CsiResult<Volume> {
        let facilities = self.facilities().await?;
        Ok(Volume {
            id: volume.id.clone(),
            capacity_bytes: volume.size * GIB,
            context: Description::read(volume.description.as_deref())
                .map(|d| d.context)
                .unwrap_or_default(),
            source: None,
            topology: self.topology(facilities, volume),
        })
    }

    async fn to_status(&self, volume: &api::Volume) -> CsiResult<VolumeStatus> {
        Ok(VolumeStatus {
            volume: self.to_volume(volume).await?,
            published_nodes: volume.device_ids(),
            abnormal: (volume.state != "active")
                .then(|| format!("volume state is {:?}, not active", volume.state)),
        })
    }

    /// The facility named by the settings, or else, for a request without
    /// topology, the facility of the server the controller runs on.
    async fn default_facility(&self, request: &CreateVolume) -> Option<String> {
        if self.facility.is_some() || !request.requisite.is_empty() || !request.preferred.is_empty()
        {
            return self.facility.clone();
        }
        let own = self
            .own_facility
            .get_or_try_init(|| async { node::fetch(&self.metadata).await.map(|m| m.facility) })
            .await;
        match own {
            Ok(code) => Some(code.clone()),
            Err(e) => {
                tracing::debug!(error = %e, "no facility from the metadata service");
                None
            }
        }
    }

    /// The facility a new volume goes to: the first preferred one that the
    /// requisite topology allows and that offers storage, else the
    /// configured one if allowed, else the first allowed requisite one.
    fn choose_facility<'a>(
        facilities: &'a [Facility],
        configured: Option<&str>,
        request: &CreateVolume,
    ) -> CsiResult<&'a Facility> {
        let by_code = |code: &str| facilities.iter().find(|f| f.code == code);
        let codes = |segments: &[Map]| -> Vec<Option<String>> {
            segments
                .iter()
                .map(|s| s.get(TOPOLOGY_KEY).cloned())
                .collect()
        };
        let requisite = codes(&request.requisite);
        // A requisite segment without our key does not restrict the facility.
        let allowed = |f: &Facility| {
            requisite.is_empty()
                || requisite
                    .iter()
                    .any(|c| c.as_deref().is_none_or(|c| c == f.code))
        };
        let usable = |f: &&Facility| f.has_storage() && allowed(f);
        let configured = match configured {
            Some(key) => Some(
                facilities
                    .iter()
                    .find(|f| f.id == key || f.code == key)
                    .ok_or_else(|| {
                        CsiError::FailedPrecondition(format!(
                            "the configured facility {key:?} (PACKET_FACILITY_ID) is not a Packet facility"
                        ))
                    })?,
            ),
            None => None,
        };
        let preferred = codes(&request.preferred).into_iter().flatten();
        let from_requisite = requisite.iter().flatten();
        preferred
            .filter_map(|c| by_code(&c))
            .find(usable)
            .or_else(|| configured.filter(usable))
            .or_else(|| from_requisite.filter_map(|c| by_code(c)).find(usable))
            .ok_or_else(|| {
                if requisite.is_empty() && configured.is_none() {
                    CsiError::FailedPrecondition(
                        "no facility: set PACKET_FACILITY_ID, request a topology with topology.multicsi.io/facility, or run the controller on a Packet server".into(),
                    )
                } else {
                    CsiError::ResourceExhausted(format!(
                        "no facility with block storage satisfies the requisite topology {:?}",
                        request.requisite
                    ))
                }
            })
    }

    /// The volumes carrying `name`, oldest first. Younger duplicates (left
    /// by a create whose answer was lost) are deleted when unattached.
    async fn find_named(&self, name: &str) -> CsiResult<Option<api::Volume>> {
        let api = self.api()?;
        let all = api.list_volumes().await.map_err(|e| to_csi(&e))?;
        let mut named: Vec<api::Volume> = all
            .into_iter()
            .filter(|v| Description::read(v.description.as_deref()).is_some_and(|d| d.name == name))
            .collect();
        named.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        let mut named = named.into_iter();
        let keep = named.next();
        for duplicate in named {
            if duplicate.attachments.is_empty() {
                tracing::warn!(volume_id = %duplicate.id, name, "deleting a duplicate volume of this name");
                api.delete_volume(&duplicate.id)
                    .await
                    .map_err(|e| to_csi(&e))?;
            } else {
                tracing::warn!(volume_id = %duplicate.id, name, "a duplicate volume of this name is attached; left in place");
            }
        }
        Ok(keep)
    }

    /// Waits until the volume is active.
    async fn wait_active(&self, mut volume: api::Volume) -> CsiResult<api::Volume> {
        let api = self.api()?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(25);
        while volume.state != "active" {
            if started.elapsed() > ACTIVE_TIMEOUT {
                return Err(CsiError::Unavailable(format!(
                    "volume {} is still {:?} after {}s; the request may be repeated",
                    volume.id,
                    volume.state,
                    ACTIVE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            volume = api
                .get_volume(&volume.id)
                .await
                .map_err(|e| to_csi(&e))?
                .ok_or_else(|| {
                    CsiError::Aborted(format!("volume {} disappeared while created", volume.id))
                })?;
        }
        Ok(volume)
    }

    /// The volume, or None when there is none by this id (an id that is
    /// not a UUID names no Packet volume and never reaches the API).
    async fn existing(&self, id: &str) -> CsiResult<Option<api::Volume>> {
        if !is_uuid(id) {
            return Ok(None);
        }
        self.api()?.get_volume(id).await.map_err(|e| to_csi(&e))
    }

    /// Removes one attachment, waiting while the server still uses the
    /// volume (until its iSCSI sessions are logged out).
    async fn detach(&self, volume_id: &str, attachment_id: &str) -> CsiResult<()> {
        let api = self.api()?;
        let started = Instant::now();
        loop {
            match api.detach(attachment_id).await {
                Ok(()) => return Ok(()),
                Err(e) if api::is_in_use(&e) && started.elapsed() < DETACH_TIMEOUT => {
                    tracing::debug!(
                        volume_id,
                        attachment_id,
                        "volume still in use; detach retried"
                    );
                    tokio::time::sleep(DETACH_INTERVAL).await;
                }
                Err(e) => return Err(to_csi(&e)),
            }
        }
    }
}

/// The plan id the parameters ask for.
fn plan_of(parameters: &Map) -> CsiResult<&'static str> {
    let ours = parameters.get(PLAN_KEY);
    let upstream = parameters.get(UPSTREAM_PLAN_KEY);
    if let (Some(a), Some(b)) = (ours, upstream)
        && a != b
    {
        return Err(CsiError::InvalidArgument(format!(
            "parameters {PLAN_KEY}={a:?} and {UPSTREAM_PLAN_KEY}={b:?} disagree; give one"
        )));
    }
    let value = ours.or(upstream).map(String::as_str).unwrap_or("standard");
    PLANS
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, id)| *id)
        .ok_or_else(|| {
            CsiError::InvalidArgument(format!(
                "parameter {PLAN_KEY}={value:?}: the plans are standard and performance"
            ))
        })
}

/// Whether `id` has the form of the API's ids (a UUID), so that it can be
/// put into a request path as it is.
fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn publish_context(volume: &api::Volume, attachment_id: &str) -> Map {
    Map::from([
        (CONTEXT_ATTACHMENT.to_string(), attachment_id.to_string()),
        (CONTEXT_VOLUME_ID.to_string(), volume.id.clone()),
        (CONTEXT_VOLUME_NAME.to_string(), volume.name.clone()),
    ])
}

fn unimplemented(what: &str) -> CsiError {
    CsiError::Unimplemented(format!("the packet backend does not support {what}"))
}

#[async_trait]
impl Backend for Packet {
    fn name(&self) -> &'static str {
        "packet"
    }

    fn features(&self) -> Features {
        Features {
            attach: true,
            volume_condition: true,
            ..Features::default()
        }
    }

    fn parameter_keys(&self) -> &'static [&'static str] {
        &[PLAN_KEY, UPSTREAM_PLAN_KEY]
    }

    async fn ready(&self) -> CsiResult<()> {
        self.api().map(|_| ())
    }

    async fn create_volume(&self, request: &CreateVolume) -> CsiResult<Volume> {
        let api = self.api()?;
        let plan_id = plan_of(&request.parameters)?;
        // A volume of this name answers first; the size rules only matter
        // for a new one.
        let size = super::size::choose(SIZE_RULES, request.required_bytes, request.limit_bytes, 0);
        let facilities = self.facilities().await?;
        let description = Description::new(&request.name, &request.node_context).write();
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(existing) = self.find_named(&request.name).await? {
                if let Err(why) = is_compatible(&existing, request, plan_id, |id| {
                    facilities
                        .iter()
                        .find(|f| f.id == id)
                        .map(|f| f.code.as_str())
                }) {
                    return Err(CsiError::AlreadyExists(format!(
                        "volume {:?} exists already ({}) with {why}",
                        request.name, existing.id
                    )));
                }
                let volume = self.wait_active(existing).await?;
                return self.to_volume(&volume).await;
            }
            let size = size.clone()?;
            let configured = self.default_facility(request).await;
            let facility = Self::choose_facility(facilities, configured.as_deref(), request)?;
            let new = NewVolume {
                size_gb: size / GIB,
                plan_id,
                facility_id: &facility.id,
                description: &description,
            };
            match api.create_volume(&new).await {
                Ok(volume) => {
                    tracing::info!(volume_id = %volume.id, name = %request.name, size_gb = new.size_gb, facility = %facility.code, "volume created");
                    let volume = self.wait_active(volume).await?;
                    return self.to_volume(&volume).await;
                }
                Err(e) if outcome_unknown(&e) && attempt < UNSURE_ATTEMPTS => {
                    tracing::info!(name = %request.name, error = %e, "create outcome unknown; looking for the volume before trying again");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => return Err(to_csi(&e)),
            }
        }
    }

    async fn delete_volume(&self, id: &str) -> CsiResult<()> {
        // The API refuses to delete an attached volume (422, mapped to
        // FAILED_PRECONDITION); a volume gone already counts as deleted.
        if !is_uuid(id) {
            return Ok(());
        }
        self.api()?.delete_volume(id).await.map_err(|e| {
            let error = to_csi(&e);
            match error {
                CsiError::FailedPrecondition(m) => CsiError::FailedPrecondition(format!(
                    "{m} (volume {id} is probably still attached: unpublish it first)"
                )),
                other => other,
            }
        })?;
        tracing::info!(volume_id = %id, "volume deleted");
        Ok(())
    }

    async fn get_volume(&self, id: &str) -> CsiResult<VolumeStatus> {
        let volume = self
            .existing(id)
            .await?
            .ok_or_else(|| CsiError::NotFound(format!("volume {id} does not exist")))?;
        self.to_status(&volume).await
    }

    async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>> {
        let mut volumes = self.api()?.list_volumes().await.map_err(|e| to_csi(&e))?;
        volumes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut statuses = Vec::with_capacity(volumes.len());
        for volume in &volumes {
            statuses.push(self.to_status(volume).await?);
        }
        Ok(statuses)
    }

    async fn publish(&self, id: &str, node_id: &str, read_only: bool) -> CsiResult<Map> {
        let api = self.api()?;
        if !is_uuid(node_id) {
            return Err(CsiError::NotFound(format!(
                "node {node_id:?} is not a Packet server: node ids are device ids (UUIDs) from the metadata service"
            )));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let volume = self
                .existing(id)
                .await?
                .ok_or_else(|| CsiError::NotFound(format!("volume {id} does not exist")))?;
            let description = Description::read(volume.description.as_deref());
            let recorded_read_only = description.as_ref().is_some_and(|d| d.read_only);
            if let Some(attachment) = volume
                .attachments
                .iter()
                .find(|a| a.device_id() == Some(node_id))
            {
                if recorded_read_only != read_only {
                    return Err(CsiError::AlreadyExists(format!(
                        "volume {id} is already published to {node_id} with readonly={recorded_read_only}"
                    )));
                }
                let attachment_id = attachment.id().unwrap_or_default();
                return Ok(publish_context(&volume, attachment_id));
            }
            let others = volume.device_ids();
            if !others.is_empty() {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {id} is attached to {}; a Packet volume is attached to one server at a time",
                    others.join(", ")
                )));
            }
            let volume = self.wait_active(volume).await?;
            if recorded_read_only != read_only {
                match description {
                    Some(mut d) => {
                        d.read_only = read_only;
                        api.set_description(id, &d.write())
                            .await
                            .map_err(|e| to_csi(&e))?;
                    }
                    None if read_only => {
                        return Err(CsiError::FailedPrecondition(format!(
                            "volume {id} was not created by a CSI driver (its description is not the driver's); it can be published read-write only"
                        )));
                    }
                    None => {}
                }
            }
            match api.attach(id, node_id).await {
                Ok(attachment) => {
                    tracing::info!(volume_id = %id, node_id, "volume attached");
                    return Ok(publish_context(
                        &volume,
                        attachment.id().unwrap_or_default(),
                    ));
                }
                Err(e) if e.is_not_found() => {
                    return Err(CsiError::NotFound(format!(
                        "node {node_id} is not a server of this Packet project (or volume {id} is gone): {e}"
                    )));
                }
                Err(e) if api::is_already_attached(&e) => {}
                Err(e) if outcome_unknown(&e) && attempt < UNSURE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => return Err(to_csi(&e)),
            }
        }
    }

    async fn unpublish(&self, id: &str, node_id: Option<&str>) -> CsiResult<()> {
        let Some(volume) = self.existing(id).await? else {
            return Ok(());
        };
        for attachment in &volume.attachments {
            if node_id.is_some_and(|n| attachment.device_id() != Some(n)) {
                continue;
            }
            let Some(attachment_id) = attachment.id() else {
                continue;
            };
            self.detach(id, attachment_id).await?;
            tracing::info!(volume_id = %id, device = ?attachment.device_id(), "volume detached");
        }
        Ok(())
    }

    async fn expand(&self, _id: &str, _required: u64, _limit: u64) -> CsiResult<u64> {
        Err(unimplemented("volume expansion"))
    }

    async fn capacity(&self) -> CsiResult<Capacity> {
        Err(unimplemented("GetCapacity"))
    }

    async fn create_snapshot(&self, _source: &str, _name: &str) -> CsiResult<Snapshot> {
        Err(unimplemented("snapshots"))
    }

    async fn delete_snapshot(&self, _id: &str) -> CsiResult<()> {
        Err(unimplemented("snapshots"))
    }

    async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>> {
        Err(unimplemented("snapshots"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Map {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_uuids_are_ids() {
        assert!(is_uuid("870f9650-19ea-48bd-84c5-ddf97471c1c1"));
        assert!(!is_uuid("870f9650-19ea-48bd-84c5-ddf97471c1c"));
        assert!(!is_uuid("870f9650/19ea-48bd-84c5-ddf97471c1c1"));
        assert!(!is_uuid("870f9650-19ea-48bd-84c5-ddf97471c1c1/../x"));
        assert!(!is_uuid("../storage?page=2&per_page=100000000000"));
    }

    #[test]
    fn plans_come_from_either_key() {
        assert_eq!(plan_of(&Map::new()).unwrap(), PLANS[0].1);
        assert_eq!(
            plan_of(&params(&[(PLAN_KEY, "performance")])).unwrap(),
            PLANS[1].1
        );
        assert_eq!(
            plan_of(&params(&[(UPSTREAM_PLAN_KEY, "performance")])).unwrap(),
            PLANS[1].1
        );
        let err = plan_of(&params(&[(PLAN_KEY, "fast")])).unwrap_err();
        assert!(matches!(err, CsiError::InvalidArgument(ref m) if m.contains("standard")));
        let err = plan_of(&params(&[
            (PLAN_KEY, "standard"),
            (UPSTREAM_PLAN_KEY, "performance"),
        ]))
        .unwrap_err();
        assert!(matches!(err, CsiError::InvalidArgument(_)));
    }

    fn facilities() -> Vec<Facility> {
        let f = |id: &str, code: &str, storage: bool| Facility {
            id: id.into(),
            code: code.into(),
            features: if storage {
                vec!["baremetal".into(), "storage".into()]
            } else {
                vec!["baremetal".into()]
            },
        };
        vec![
            f("id-ewr1", "ewr1", true),
            f("id-sjc1", "sjc1", true),
            f("id-nrt1", "nrt1", false),
        ]
    }

    fn request(requisite: &[&str], preferred: &[&str]) -> CreateVolume {
        let seg = |c: &&str| Map::from([(TOPOLOGY_KEY.to_string(), c.to_string())]);
        CreateVolume {
            name: "pvc-1".into(),
            required_bytes: 0,
            limit_bytes: 0,
            source: None,
            parameters: Map::new(),
            node_context: Map::new(),
            fs_type: None,
            requisite: requisite.iter().map(seg).collect(),
            preferred: preferred.iter().map(seg).collect(),
            metadata: Map::new(),
        }
    }

    #[test]
    fn facility_follows_preference_then_configuration_then_requisite() {
        let all = facilities();
        let code = |r: &CreateVolume| {
            Packet::choose_facility(&all, Some("ewr1"), r).map(|f| f.code.clone())
        };
        assert_eq!(code(&request(&[], &[])).unwrap(), "ewr1");
        assert_eq!(
            code(&request(&["sjc1", "ewr1"], &["sjc1"])).unwrap(),
            "sjc1"
        );
        assert_eq!(code(&request(&["sjc1"], &[])).unwrap(), "sjc1");
        // No storage in nrt1, unknown elsewhere: nothing fits.
        let err = code(&request(&["nrt1", "nowhere"], &[])).unwrap_err();
        assert!(matches!(err, CsiError::ResourceExhausted(_)));
        let err = Packet::choose_facility(&all, None, &request(&[], &[])).unwrap_err();
        assert!(
            matches!(err, CsiError::FailedPrecondition(ref m) if m.contains("PACKET_FACILITY_ID"))
        );
        let err = Packet::choose_facility(&all, Some("xyz9"), &request(&[], &[])).unwrap_err();
        assert!(matches!(err, CsiError::FailedPrecondition(_)));
    }
}
