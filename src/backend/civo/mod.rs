//! The Civo backend: block volumes of one Civo region, attached by the
//! controller to the node's instance. The cloud is the only record: a
//! volume is found by its CSI name (Civo's volume names are unique per
//! region), so a restarted or killed driver picks up where it was.
//!
//! Volume snapshots (and restores from them) go through the API the
//! official client uses (`/v2/volumes/{id}/snapshots`, `/v2/snapshots`);
//! Civo's public documentation does not describe them, so they are off
//! unless `CIVO_VOLUME_SNAPSHOTS` turns them on. Civo resizes detached
//! volumes only (offline expansion) and has no clones.

pub mod api;
pub mod identity;
pub mod node;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use self::api::{ApiSnapshot, ApiVolume, CivoApi};
use super::size::{self, GIB, SizeRules};
use super::{
    Backend, Capacity, ContentSource, CreateVolume, Features, Map, NodeBackend, Snapshot, Volume,
    VolumeStatus,
};
use crate::cloud::http::{ApiClient, Auth, ClientOptions};
use crate::cloud::timestamp;
use crate::config::Settings;
use crate::error::{CsiError, CsiResult};

/// Topology key of a volume's region (civo-csi's key, so its volumes keep
/// their node affinity).
pub const TOPOLOGY_KEY: &str = "region";
/// StorageClass parameter: the Civo volume type (default: the cluster's).
pub const PARAM_VOLUME_TYPE: &str = "multicsi.io/volume-type";
const DEFAULT_API_URL: &str = "https://api.civo.com";
/// Largest volume (Civo documents LVM over several volumes beyond 1 TB).
const MAX_VOLUME_GB: u64 = 1000;
/// How long a call waits for a volume to reach a resting state.
const SETTLE_DEADLINE: Duration = Duration::from_secs(90);
/// How long CreateSnapshot waits for a snapshot to become available (it
/// answers ready_to_use=false after that; the CO asks again).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(15);

const RULES: SizeRules = SizeRules {
    step: GIB,
    minimum: GIB,
    maximum: MAX_VOLUME_GB * GIB,
    default: 10 * GIB,
};

/// Civo volume IDs are UUIDs; anything else names no volume (and never
/// reaches a URL path or a device lookup).
pub fn check_id(id: &str) -> CsiResult<()> {
    let well_formed = id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if well_formed {
        Ok(())
    } else {
        Err(CsiError::NotFound(format!(
            "no Civo volume has the id {id:?} (Civo volume ids are UUIDs)"
        )))
    }
}

/// The controller side.
pub struct Civo {
    api: Arc<CivoApi>,
    region: String,
    cluster_id: Option<String>,
    cluster_volume_type: OnceCell<Option<String>>,
    /// Whether volume snapshots are used (`CIVO_VOLUME_SNAPSHOTS`).
    snapshots: bool,
}

/// Builds the Civo controller (when the mode serves it) and node.
pub async fn open(settings: &Settings) -> Result<(Arc<dyn Backend>, Arc<dyn NodeBackend>), String> {
    let civo = &settings.clouds.civo;
    let url = civo.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
    let options = ClientOptions::rate_limited(civo.api_requests_per_second).map_err(|rate| {
        format!(
            "the Civo API rate limit must be a positive number of requests per second, not {rate}"
        )
    })?;
    let client = |region: &str| -> Result<Option<CivoApi>, String> {
        let Some(key) = civo
            .api_key
            .clone()
            .filter(|k| !secrecy::ExposeSecret::expose_secret(k).is_empty())
        else {
            return Ok(None);
        };
        check_region(region)?;
        let client = ApiClient::new("civo", url, Auth::Bearer(key), options.clone())?;
        Ok(Some(CivoApi::new(client, region)))
    };
    let cluster_id = civo.cluster_id.clone().filter(|c| !c.is_empty());
    let region = civo.region.clone().filter(|r| !r.is_empty());

    let controller_api = if settings.mode.serves_controller() {
        let region = region
            .as_deref()
            .ok_or("the Civo controller needs its region: set CIVO_REGION (or [civo] region)")?;
        let api = client(region)?
            .ok_or("the Civo controller needs an API key: set CIVO_API_KEY (or [civo] api-key)")?;
        Some(Arc::new(api))
    } else {
        None
    };

    let statsd = civo
        .statsd_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(identity::STATSD_FILE));
    let sources = identity::Sources {
        statsd_file: &statsd,
        instance_id: civo.instance_id.as_deref(),
        region: region.as_deref(),
        node_name: &settings.node_id,
        cluster_id: cluster_id.as_deref(),
    };
    let me = match (settings.mode.serves_node(), region.as_deref()) {
        (true, _) => identity::resolve(&sources, async |region: &str| client(region)).await?,
        // A controller-only process is no node: it only needs the region
        // (for GetCapacity's topology), which the controller has.
        (false, Some(region)) => identity::Identity {
            instance_id: settings.node_id.clone(),
            region: region.to_string(),
            source: "controller only",
        },
        (false, None) => return Err("the Civo controller needs its region: set CIVO_REGION".into()),
    };
    tracing::info!(
        instance_id = %me.instance_id,
        region = %me.region,
        source = me.source,
        "Civo node identity"
    );
    let node_api = match &controller_api {
        Some(api) if region.as_deref() == Some(me.region.as_str()) => Some(api.clone()),
        _ => client(&me.region)?.map(Arc::new),
    };
    let node = Arc::new(node::CivoNode {
        instance_id: me.instance_id,
        region: me.region.clone(),
        device_dir: settings.device_dir.clone(),
        api: node_api.clone(),
    });
    // A node-only process answers no controller calls; it still needs a
    // Backend, which reports what it lacks.
    let api = match controller_api.or(node_api) {
        Some(api) => api,
        None => Arc::new(CivoApi::new(
            ApiClient::new("civo", url, Auth::None, ClientOptions::default())?,
            &me.region,
        )),
    };
    let controller = Arc::new(Civo {
        api,
        region: region.unwrap_or(me.region),
        cluster_id,
        cluster_volume_type: OnceCell::new(),
        snapshots: civo.volume_snapshots.unwrap_or(false),
    });
    Ok((controller, node))
}

fn check_region(region: &str) -> Result<(), String> {
    if !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "Civo region {region:?} is not a region code like LON1"
        ))
    }
}

fn what(id: &str) -> String {
    format!("Civo volume {id}")
}

fn to_snapshot(s: &ApiSnapshot) -> Snapshot {
    Snapshot {
        id: s.snapshot_id.clone(),
        source_volume_id: s.volume_id.clone(),
        size_bytes: s.restore_size * GIB,
        created: s
            .creation_time
            .as_deref()
            .and_then(timestamp::parse)
            .unwrap_or(std::time::UNIX_EPOCH),
        ready: s.is_available(),
        group_snapshot_id: None,
    }
}

impl Civo {
    fn topology(&self) -> Vec<Map> {
        vec![Map::from([(TOPOLOGY_KEY.to_string(), self.region.clone())])]
    }

    fn to_volume(&self, v: &ApiVolume, context: Map) -> Volume {
        Volume {
            id: v.id.clone(),
            capacity_bytes: v.size_gb * GIB,
            context,
            source: None,
            topology: self.topology(),
        }
    }

    fn status(&self, v: &ApiVolume) -> VolumeStatus {
        VolumeStatus {
            volume: self.to_volume(v, Map::new()),
            published_nodes: v.attached_to().map(str::to_string).into_iter().collect(),
            abnormal: None,
        }
    }

    /// The volume, None if it does not exist.
    async fn find(&self, id: &str) -> CsiResult<Option<ApiVolume>> {
        match self.api.get_volume(id).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if api::is_volume_not_found(&e) => Ok(None),
            Err(e) => Err(api::to_csi(&e, &what(id))),
        }
    }

    /// Polls the volume until `done` holds (None = the volume is gone);
    /// DEADLINE_EXCEEDED after `SETTLE_DEADLINE`.
    async fn wait_until(
        &self,
        id: &str,
        goal: &str,
        done: impl Fn(Option<&ApiVolume>) -> bool,
    ) -> CsiResult<Option<ApiVolume>> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let volume = self.find(id).await?;
            if done(volume.as_ref()) {
                return Ok(volume);
            }
            if started.elapsed() > SETTLE_DEADLINE {
                let now = volume.as_ref().map_or("gone", ApiVolume::status);
                return Err(CsiError::DeadlineExceeded(format!(
                    "{} did not become {goal} within {}s (it is {now}); the call can be repeated",
                    what(id),
                    SETTLE_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_secs(2));
        }
    }

    /// The volume once it rests (not creating, attaching, detaching or
    /// resizing); NotFound when it does not exist.
    async fn settled(&self, id: &str) -> CsiResult<ApiVolume> {
        self.wait_until(id, "ready", |v| v.is_none_or(|v| !v.in_transition()))
            .await?
            .ok_or_else(|| CsiError::NotFound(format!("{} does not exist", what(id))))
    }

    /// The volume named `name`: the oldest when several carry the name.
    async fn by_name(&self, name: &str) -> CsiResult<Option<ApiVolume>> {
        let mut all: Vec<ApiVolume> = self
            .api
            .list_volumes()
            .await
            .map_err(|e| api::to_csi(&e, "listing Civo volumes"))?
            .into_iter()
            .filter(|v| v.name == name)
            .collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(all.into_iter().next())
    }

    async fn volume_type(&self, parameters: &Map) -> CsiResult<Option<String>> {
        if let Some(t) = parameters.get(PARAM_VOLUME_TYPE) {
            if t.is_empty() {
                return Err(CsiError::InvalidArgument(format!(
                    "parameter {PARAM_VOLUME_TYPE} must not be empty"
                )));
            }
            return Ok(Some(t.clone()));
        }
        let Some(cluster) = &self.cluster_id else {
            return Ok(None);
        };
        self.cluster_volume_type
            .get_or_try_init(|| async {
                self.api
                    .cluster_volume_type(cluster)
                    .await
                    .map_err(|e| api::to_csi(&e, &format!("Civo cluster {cluster}")))
            })
            .await
            .cloned()
    }

    /// Checks an existing volume against a create request.
    fn compatible(v: &ApiVolume, r: &CreateVolume, volume_type: Option<&str>) -> CsiResult<()> {
        let size = v.size_gb * GIB;
        let fits = size >= r.required_bytes && (r.limit_bytes == 0 || size <= r.limit_bytes);
        if !fits {
            return Err(CsiError::AlreadyExists(format!(
                "volume {:?} exists ({}) with {}, outside the requested range",
                r.name,
                v.id,
                size::human(size)
            )));
        }
        if let (Some(wanted), Some(has)) = (volume_type, v.volume_type.as_deref())
            && wanted != has
        {
            return Err(CsiError::AlreadyExists(format!(
                "volume {:?} exists ({}) with volume type {has}, not {wanted}",
                r.name, v.id
            )));
        }
        Ok(())
    }

    /// Fails early when the account has no room for `size_gb` more.
    async fn check_quota(&self, size_gb: u64, new_volume: bool) -> CsiResult<()> {
        let quota = self
            .api
            .quota()
            .await
            .map_err(|e| api::to_csi(&e, "reading the Civo quota"))?;
        if size_gb > quota.disk_gb_limit {
            return Err(CsiError::OutOfRange(format!(
                "{size_gb} GB is more than the account's whole volume quota ({} GB)",
                quota.disk_gb_limit
            )));
        }
        let free = quota.disk_gb_limit.saturating_sub(quota.disk_gb_usage);
        if size_gb > free
            || (new_volume && quota.disk_volume_count_usage >= quota.disk_volume_count_limit)
        {
            return Err(CsiError::ResourceExhausted(format!(
                "the Civo quota has no room for {size_gb} GB more: {} of {} GB and {} of {} volumes used",
                quota.disk_gb_usage,
                quota.disk_gb_limit,
                quota.disk_volume_count_usage,
                quota.disk_volume_count_limit
            )));
        }
        Ok(())
    }

    /// Creates the volume `r` names after a quota check (from `snapshot`
    /// when given); returns its ID. When a concurrent or earlier call made
    /// it first (duplicate name), that volume is the answer.
    async fn create_new(
        &self,
        r: &CreateVolume,
        explicit_type: Option<&str>,
        snapshot: Option<&ApiSnapshot>,
    ) -> CsiResult<String> {
        let floor = snapshot.map_or(0, |s| s.restore_size * GIB);
        let size_gb = size::choose(RULES, r.required_bytes, r.limit_bytes, floor)? / GIB;
        let volume_type = self.volume_type(&r.parameters).await?;
        self.check_quota(size_gb, true).await?;
        let created = self
            .api
            .create_volume(
                &r.name,
                size_gb,
                volume_type.as_deref(),
                self.cluster_id.as_deref(),
                snapshot.map(|s| s.snapshot_id.as_str()),
            )
            .await;
        match created {
            Ok(id) => {
                tracing::info!(volume_id = %id, size_gb, "created Civo volume");
                Ok(id)
            }
            Err(e) if api::is_duplicate_name(&e) => {
                let v = self.by_name(&r.name).await?.ok_or_else(|| {
                    CsiError::Aborted(format!(
                        "volume {:?} vanished while being created; retry",
                        r.name
                    ))
                })?;
                Self::compatible(&v, r, explicit_type)?;
                Ok(v.id)
            }
            Err(e) => Err(api::to_csi(&e, &format!("volume {:?}", r.name))),
        }
    }

    /// The snapshot named `name` (the oldest when several carry it), not
    /// counting one being deleted.
    async fn snapshot_named(&self, name: &str) -> CsiResult<Option<ApiSnapshot>> {
        let mut all: Vec<ApiSnapshot> = self
            .api
            .list_snapshots()
            .await
            .map_err(|e| api::to_csi(&e, "listing Civo volume snapshots"))?
            .into_iter()
            .filter(|s| s.name == name && !s.is_deleting())
            .collect();
        all.sort_by(|a, b| {
            (&a.creation_time, &a.snapshot_id).cmp(&(&b.creation_time, &b.snapshot_id))
        });
        Ok(all.into_iter().next())
    }

    /// Polls a snapshot until it is available or `SNAPSHOT_WAIT` is over;
    /// the last state seen. NotFound when it vanishes.
    async fn settle_snapshot(&self, mut snapshot: ApiSnapshot) -> CsiResult<ApiSnapshot> {
        let id = snapshot.snapshot_id.clone();
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        while !snapshot.is_available() && started.elapsed() < SNAPSHOT_WAIT {
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_secs(2));
            snapshot = match self.api.get_snapshot(&id).await {
                Ok(s) if !s.is_deleting() => s,
                Ok(_) => {
                    return Err(CsiError::NotFound(format!(
                        "snapshot {id} is being deleted"
                    )));
                }
                Err(e) if api::is_snapshot_not_found(&e) => {
                    return Err(CsiError::NotFound(format!("snapshot {id} does not exist")));
                }
                Err(e) => return Err(api::to_csi(&e, &format!("Civo snapshot {id}"))),
            };
        }
        Ok(snapshot)
    }

    /// The available snapshot a volume is restored from.
    async fn restorable(&self, id: &str) -> CsiResult<ApiSnapshot> {
        let missing = || CsiError::NotFound(format!("source snapshot {id} does not exist"));
        if check_id(id).is_err() {
            return Err(missing());
        }
        let snapshot = match self.api.get_snapshot(id).await {
            Ok(s) if !s.is_deleting() => s,
            Ok(_) => return Err(missing()),
            Err(e) if api::is_snapshot_not_found(&e) => return Err(missing()),
            Err(e) => return Err(api::to_csi(&e, &format!("Civo snapshot {id}"))),
        };
        let snapshot = self.settle_snapshot(snapshot).await.map_err(|e| match e {
            CsiError::NotFound(_) => missing(),
            other => other,
        })?;
        if !snapshot.is_available() {
            return Err(CsiError::Unavailable(format!(
                "source snapshot {id} is {}, not yet available; retry later",
                snapshot.state
            )));
        }
        Ok(snapshot)
    }

    /// Whether a requisite topology lets the volume live in this region.
    fn reachable(&self, requisite: &[Map]) -> bool {
        requisite.is_empty()
            || requisite.iter().any(|term| {
                term.get(TOPOLOGY_KEY)
                    .is_some_and(|r| r.eq_ignore_ascii_case(&self.region))
            })
    }
}

#[async_trait]
impl Backend for Civo {
    fn name(&self) -> &'static str {
        "civo"
    }

    fn features(&self) -> Features {
        Features {
            snapshots: self.snapshots,
            clone: false,
            expand: true,
            capacity: true,
            attach: true,
            volume_condition: false,
        }
    }

    fn parameter_keys(&self) -> &'static [&'static str] {
        &[PARAM_VOLUME_TYPE]
    }

    fn online_expansion(&self) -> bool {
        false
    }

    /// Civo attaches read-write only; read-only is the node's mount.
    fn publish_readonly(&self) -> bool {
        false
    }

    async fn ready(&self) -> CsiResult<()> {
        self.api
            .quota()
            .await
            .map(|_| ())
            .map_err(|e| api::to_csi(&e, "the Civo API"))
    }

    async fn create_volume(&self, r: &CreateVolume) -> CsiResult<Volume> {
        if !self.reachable(&r.requisite) {
            return Err(CsiError::ResourceExhausted(format!(
                "this driver makes volumes in Civo region {} only; the requisite topology allows none there",
                self.region
            )));
        }
        size::choose(RULES, r.required_bytes, r.limit_bytes, 0)?;
        let explicit_type = r.parameters.get(PARAM_VOLUME_TYPE).map(String::as_str);
        let id = match self.by_name(&r.name).await? {
            // Civo records no volume's source: a repeat is checked by size
            // and type only.
            Some(v) => {
                Self::compatible(&v, r, explicit_type)?;
                v.id
            }
            None => {
                let snapshot = match &r.source {
                    None => None,
                    Some(ContentSource::Snapshot(id)) if self.snapshots => {
                        Some(self.restorable(id).await?)
                    }
                    Some(_) => {
                        return Err(CsiError::Unimplemented(
                            "this Civo backend makes volumes from no content source (clones are not offered; snapshots need CIVO_VOLUME_SNAPSHOTS)".into(),
                        ));
                    }
                };
                self.create_new(r, explicit_type, snapshot.as_ref()).await?
            }
        };
        let ready = self
            .wait_until(&id, "available", |v| {
                v.is_none_or(|v| v.status() != "creating")
            })
            .await?
            .ok_or_else(|| {
                CsiError::Aborted(format!(
                    "volume {:?} was deleted while being created; retry",
                    r.name
                ))
            })?;
        let mut volume = self.to_volume(&ready, r.node_context.clone());
        volume.source = r.source.clone();
        Ok(volume)
    }

    async fn delete_volume(&self, id: &str) -> CsiResult<()> {
        if check_id(id).is_err() {
            return Ok(());
        }
        let Some(v) = self
            .wait_until(id, "ready", |v| v.is_none_or(|v| !v.in_transition()))
            .await?
        else {
            return Ok(());
        };
        if let Some(instance) = v.attached_to() {
            return Err(CsiError::FailedPrecondition(format!(
                "{} is attached to instance {instance}; ControllerUnpublishVolume first",
                what(id)
            )));
        }
        match self.api.delete_volume(id).await {
            Ok(()) => {
                tracing::info!(volume_id = %id, "deleted Civo volume");
                Ok(())
            }
            Err(e) if api::is_volume_not_found(&e) => Ok(()),
            Err(e) => Err(api::to_csi(&e, &what(id))),
        }
    }

    async fn get_volume(&self, id: &str) -> CsiResult<VolumeStatus> {
        check_id(id)?;
        let v = self
            .find(id)
            .await?
            .ok_or_else(|| CsiError::NotFound(format!("{} does not exist", what(id))))?;
        Ok(self.status(&v))
    }

    async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>> {
        let mut all = self
            .api
            .list_volumes()
            .await
            .map_err(|e| api::to_csi(&e, "listing Civo volumes"))?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all.iter().map(|v| self.status(v)).collect())
    }

    async fn publish(&self, id: &str, node_id: &str, read_only: bool) -> CsiResult<Map> {
        check_id(id)?;
        if read_only {
            return Err(CsiError::InvalidArgument(
                "readonly=true: Civo attaches volumes read-write only (PUBLISH_READONLY is not offered); mount read-only on the node instead".into(),
            ));
        }
        let v = self.settled(id).await?;
        match v.attached_to() {
            Some(instance) if instance == node_id => return Ok(Map::new()),
            Some(instance) => {
                return Err(CsiError::FailedPrecondition(format!(
                    "{} is attached to instance {instance}; a Civo volume attaches to one instance at a time",
                    what(id)
                )));
            }
            None => {}
        }
        self.api
            .attach(id, node_id)
            .await
            .map_err(|e| api::to_csi(&e, &format!("attaching {} to {node_id}", what(id))))?;
        let v = self
            .wait_until(id, "attached", |v| {
                v.is_none_or(|v| v.status() != "attaching")
            })
            .await?
            .ok_or_else(|| CsiError::NotFound(format!("{} was deleted", what(id))))?;
        if v.status() == "attached" && v.instance_id.as_deref() == Some(node_id) {
            tracing::info!(volume_id = %id, instance_id = %node_id, "attached Civo volume");
            Ok(Map::new())
        } else {
            Err(CsiError::Unavailable(format!(
                "{} did not attach to {node_id} (it is {}); retry",
                what(id),
                v.status()
            )))
        }
    }

    async fn unpublish(&self, id: &str, node_id: Option<&str>) -> CsiResult<()> {
        if check_id(id).is_err() {
            return Ok(());
        }
        let v = match self.settled(id).await {
            Ok(v) => v,
            Err(CsiError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match (v.attached_to(), node_id) {
            (None, _) => return Ok(()),
            (Some(instance), Some(node)) if instance != node => return Ok(()),
            _ => {}
        }
        match self.api.detach(id).await {
            Ok(()) => {}
            Err(e) if api::is_not_attached(&e) || api::is_volume_not_found(&e) => return Ok(()),
            Err(e) => return Err(api::to_csi(&e, &format!("detaching {}", what(id)))),
        }
        self.wait_until(id, "detached", |v| {
            v.is_none_or(|v| v.attached_to().is_none())
        })
        .await?;
        tracing::info!(volume_id = %id, "detached Civo volume");
        Ok(())
    }

    async fn expand(&self, id: &str, required_bytes: u64, limit_bytes: u64) -> CsiResult<u64> {
        check_id(id)?;
        let bytes = size::choose(RULES, required_bytes, limit_bytes, 0)?;
        let v = self.settled(id).await?;
        let current = v.size_gb * GIB;
        if bytes <= current {
            return Ok(current);
        }
        if let Some(instance) = v.attached_to() {
            return Err(CsiError::FailedPrecondition(format!(
                "{} is attached to instance {instance}; Civo resizes detached volumes only (offline expansion)",
                what(id)
            )));
        }
        self.check_quota(bytes / GIB - v.size_gb, false).await?;
        match self.api.resize(id, bytes / GIB).await {
            Ok(()) => {}
            Err(e) if api::is_size_must_increase(&e) => {}
            Err(e) => return Err(api::to_csi(&e, &format!("resizing {}", what(id)))),
        }
        let v = self.settled(id).await?;
        tracing::info!(volume_id = %id, size_gb = v.size_gb, "resized Civo volume");
        Ok(v.size_gb * GIB)
    }

    async fn capacity(&self) -> CsiResult<Capacity> {
        let quota = self
            .api
            .quota()
            .await
            .map_err(|e| api::to_csi(&e, "reading the Civo quota"))?;
        Ok(Capacity {
            available_bytes: quota.free_gb() * GIB,
            maximum_volume_bytes: RULES.maximum,
            minimum_volume_bytes: RULES.minimum,
        })
    }

    async fn create_snapshot(&self, source: &str, name: &str) -> CsiResult<Snapshot> {
        self.require_snapshots()?;
        check_id(source)?;
        if let Some(existing) = self.snapshot_named(name).await? {
            if existing.volume_id != source {
                return Err(CsiError::AlreadyExists(format!(
                    "snapshot {name:?} exists already ({}) for volume {}, not {source}",
                    existing.snapshot_id, existing.volume_id
                )));
            }
            return Ok(to_snapshot(&self.settle_snapshot(existing).await?));
        }
        if self.find(source).await?.is_none() {
            return Err(CsiError::NotFound(format!(
                "source volume {source} does not exist"
            )));
        }
        let snapshot = self
            .api
            .create_snapshot(source, name)
            .await
            .map_err(|e| api::to_csi(&e, &format!("snapshotting {}", what(source))))?;
        tracing::info!(snapshot_id = %snapshot.snapshot_id, volume_id = %source, "Civo snapshot started");
        Ok(to_snapshot(&self.settle_snapshot(snapshot).await?))
    }

    async fn delete_snapshot(&self, id: &str) -> CsiResult<()> {
        self.require_snapshots()?;
        if check_id(id).is_err() {
            return Ok(());
        }
        match self.api.delete_snapshot(id).await {
            Ok(()) => {
                tracing::info!(snapshot_id = %id, "deleted Civo snapshot");
                Ok(())
            }
            Err(e) if api::is_snapshot_not_found(&e) => Ok(()),
            Err(e) => Err(api::to_csi(&e, &format!("Civo snapshot {id}"))),
        }
    }

    async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>> {
        self.require_snapshots()?;
        let mut all = self
            .api
            .list_snapshots()
            .await
            .map_err(|e| api::to_csi(&e, "listing Civo volume snapshots"))?;
        all.retain(|s| !s.is_deleting());
        all.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        Ok(all.iter().map(to_snapshot).collect())
    }
}

impl Civo {
    fn require_snapshots(&self) -> CsiResult<()> {
        if self.snapshots {
            Ok(())
        } else {
            Err(CsiError::Unimplemented(
                "Civo volume snapshots are off: set CIVO_VOLUME_SNAPSHOTS=true (or [civo] volume-snapshots) where the region offers them".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_uuids() {
        assert!(check_id("06a1da94-10bc-4c29-bb19-06a422fde100").is_ok());
        for bad in [
            "",
            "../quota",
            "06a1da94-10bc-4c29-bb19-06a422fde10",
            "06a1da94x10bc-4c29-bb19-06a422fde100",
        ] {
            assert!(matches!(check_id(bad), Err(CsiError::NotFound(_))), "{bad}");
        }
    }

    #[test]
    fn regions_are_codes() {
        assert!(check_region("LON1").is_ok());
        assert!(check_region("lon1&x=1").is_err());
        assert!(check_region("").is_err());
    }

    #[test]
    fn existing_volumes_are_checked_against_the_request() {
        let v = ApiVolume {
            id: "06a1da94-10bc-4c29-bb19-06a422fde100".into(),
            name: "pvc-1".into(),
            instance_id: None,
            status: Some("available".into()),
            size_gb: 10,
            volume_type: Some("standard".into()),
            created_at: None,
        };
        let request = |required, limit| CreateVolume::sized("pvc-1", required, limit);
        assert!(Civo::compatible(&v, &request(GIB, 0), None).is_ok());
        assert!(Civo::compatible(&v, &request(11 * GIB, 0), None).is_err());
        assert!(Civo::compatible(&v, &request(GIB, 5 * GIB), None).is_err());
        assert!(Civo::compatible(&v, &request(GIB, 0), Some("ms-xfs-2-replicas")).is_err());
        assert!(Civo::compatible(&v, &request(GIB, 0), Some("standard")).is_ok());
    }
}
