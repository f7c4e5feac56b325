//! The cloudscale.ch backend: a volume is a cloudscale volume (`ssd` or
//! `bulk`), attached to the node's server over virtio-scsi.
//!
//! Volume and snapshot IDs are the cloud's UUIDs, as with cloudscale's own
//! CSI driver, so its volumes are adopted as they are. The cloud is the only
//! state: idempotency goes by the volume's name, and a duplicate left by an
//! interrupted create is resolved deterministically (the oldest is kept,
//! unattached younger ones are deleted).

mod api;
mod node;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::json;

use self::api::Api;
pub use self::node::CloudscaleNode;
use super::size::{self, GIB, SizeRules};
use super::{
    Backend, Capacity, ContentSource, CreateVolume, Features, Map, Snapshot, Volume, VolumeStatus,
};
use crate::cloud::http::{ApiClient, ApiError, Auth, ClientOptions};
use crate::cloud::timestamp;
use crate::config::Settings;
use crate::csi::made_as::{self, MadeAs};
use crate::error::{CsiError, CsiResult};

/// Topology key: the zone of a volume and of a node (as cloudscale's own
/// driver names it).
pub const TOPOLOGY_KEY: &str = "csi.cloudscale.ch/zone";
/// StorageClass parameter: `ssd` (default) or `bulk`.
pub const VOLUME_TYPE: &str = "multicsi.io/volume-type";
/// The same, under the key of cloudscale's own driver.
pub const UPSTREAM_VOLUME_TYPE: &str = "csi.cloudscale.ch/volume-type";
/// StorageClass parameter: tags every volume of the class carries,
/// `key=value` pairs separated by commas.
pub const TAGS: &str = "multicsi.io/tags";
/// Tag key prefixes the driver writes itself; a StorageClass cannot set them.
const RESERVED_TAG_PREFIXES: &[&str] = &["multicsi.io/", "csi.storage.k8s.io/"];
/// Publish context key: the server the controller attached the volume to.
pub const PUBLISHED_SERVER: &str = "multicsi.io/cloudscale-server";
/// Publish context key: the volume that was attached.
pub const PUBLISHED_VOLUME: &str = "multicsi.io/cloudscale-volume";
/// Tag recording the snapshot a volume was restored from.
const SOURCE_TAG: &str = "multicsi.io/source-snapshot";
/// Tag recording the volume a volume was cloned from.
const CLONE_TAG: &str = "multicsi.io/source-volume";
/// Tag recording a read-only publication (the cloud attaches read-write;
/// the node mounts read-only).
const READ_ONLY_TAG: &str = "multicsi.io/published-read-only";
pub const DEFAULT_API_URL: &str = "https://api.cloudscale.ch";
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// Volumes a node accepts unless configured otherwise: virtio-scsi takes
/// 128 disks, the root disk and a margin included.
pub const DEFAULT_MAX_VOLUMES: u64 = 125;
/// Largest volume this driver makes.
const MAX_VOLUME_BYTES: u64 = 51_200 * GIB;
/// How long create/delete wait for a snapshot to change state.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(15);
/// Rounds of "look up by name, then POST" when the POST's answer is lost.
const CREATE_ROUNDS: u32 = 6;

/// The two volume types and their size steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeType {
    Ssd,
    Bulk,
}

impl VolumeType {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "ssd" => Some(VolumeType::Ssd),
            "bulk" => Some(VolumeType::Bulk),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Ssd => "ssd",
            VolumeType::Bulk => "bulk",
        }
    }

    /// ssd: 1 GiB steps; bulk: 100 GiB steps. One step is the minimum and
    /// the default.
    pub fn rules(self) -> SizeRules {
        let step = match self {
            VolumeType::Ssd => GIB,
            VolumeType::Bulk => 100 * GIB,
        };
        SizeRules {
            step,
            minimum: step,
            maximum: MAX_VOLUME_BYTES,
            default: step,
        }
    }
}

/// The volume type a StorageClass asks for.
fn requested_type(parameters: &Map) -> CsiResult<VolumeType> {
    let ours = parameters.get(VOLUME_TYPE);
    let upstream = parameters.get(UPSTREAM_VOLUME_TYPE);
    if let (Some(a), Some(b)) = (ours, upstream)
        && a != b
    {
        return Err(CsiError::InvalidArgument(format!(
            "parameters {VOLUME_TYPE}={a:?} and {UPSTREAM_VOLUME_TYPE}={b:?} disagree; set one of them"
        )));
    }
    match ours.or(upstream) {
        None => Ok(VolumeType::Ssd),
        Some(text) => VolumeType::parse(text).ok_or_else(|| {
            CsiError::InvalidArgument(format!(
                "volume type {text:?} is not known: use \"ssd\" or \"bulk\""
            ))
        }),
    }
}

/// The tags of a new volume: the StorageClass's own (`multicsi.io/tags`),
/// then what the provisioner says the volume is for (PVC name and
/// namespace, PV name), so the cloud console tells whose volume it is.
fn volume_tags(request: &CreateVolume) -> CsiResult<serde_json::Map<String, serde_json::Value>> {
    let mut tags = serde_json::Map::new();
    let text = request.parameters.get(TAGS).map_or("", String::as_str);
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                CsiError::InvalidArgument(format!(
                    "parameter {TAGS}: {pair:?} is not key=value; write tags like team=storage,env=prod"
                ))
            })?;
        if RESERVED_TAG_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Err(CsiError::InvalidArgument(format!(
                "parameter {TAGS}: tag {key:?} is reserved for the driver (keys starting with {}); choose another key",
                RESERVED_TAG_PREFIXES.join(" or ")
            )));
        }
        tags.insert(key.to_string(), json!(value));
    }
    for (key, value) in &request.metadata {
        tags.insert(key.clone(), json!(value));
    }
    // What the volume is made as (block or a filesystem) stays with it, so a
    // repeated create or a later check sees it.
    for (key, value) in made_as_entries(&request.node_context) {
        tags.insert(key, json!(value));
    }
    Ok(tags)
}

/// The made-as entries (access type, filesystem) of a context or tag map.
fn made_as_entries(map: &Map) -> Map {
    map.iter()
        .filter(|(k, _)| k.as_str() == made_as::ACCESS_TYPE || k.as_str() == made_as::FS_TYPE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Where a new volume may go: `allowed` None = any zone; `first` is the
/// zone to ask for (preferred before requisite), None = the API's default.
#[derive(Debug, PartialEq, Eq)]
struct Placement {
    allowed: Option<Vec<String>>,
    first: Option<String>,
}

fn placement(request: &CreateVolume) -> Placement {
    let zone_of = |segments: &Map| segments.get(TOPOLOGY_KEY).cloned();
    let allowed: Option<Vec<String>> = if request.requisite.is_empty() {
        None
    } else {
        request.requisite.iter().map(zone_of).collect()
    };
    let fits = |zone: &String| allowed.as_ref().is_none_or(|a| a.contains(zone));
    let first = request
        .preferred
        .iter()
        .filter_map(zone_of)
        .find(|z| fits(z))
        .or_else(|| allowed.as_ref().and_then(|a| a.first().cloned()));
    Placement { allowed, first }
}

/// A cloudscale UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn bytes(size_gb: u64) -> u64 {
    size_gb.saturating_mul(GIB)
}

fn created(text: &str) -> SystemTime {
    timestamp::parse(text).unwrap_or(UNIX_EPOCH)
}

fn source_of(volume: &api::Volume) -> Option<ContentSource> {
    if let Some(id) = volume.tags.get(SOURCE_TAG) {
        return Some(ContentSource::Snapshot(id.clone()));
    }
    volume
        .tags
        .get(CLONE_TAG)
        .map(|id| ContentSource::Volume(id.clone()))
}

/// The snapshot a clone named `volume_name` is made through.
fn clone_snapshot_name(volume_name: &str) -> String {
    format!("{volume_name}-clone-source")
}

fn to_volume(volume: &api::Volume, mut context: Map) -> Volume {
    context.extend(made_as_entries(&volume.tags));
    Volume {
        id: volume.uuid.clone(),
        capacity_bytes: bytes(volume.size_gb),
        context,
        source: source_of(volume),
        topology: vec![Map::from([(
            TOPOLOGY_KEY.to_string(),
            volume.zone.slug.clone(),
        )])],
    }
}

fn to_status(volume: &api::Volume) -> VolumeStatus {
    VolumeStatus {
        volume: to_volume(volume, Map::new()),
        published_nodes: volume.server_uuids.clone(),
        abnormal: None,
    }
}

fn to_snapshot(snapshot: &api::Snapshot) -> Snapshot {
    Snapshot {
        id: snapshot.uuid.clone(),
        source_volume_id: snapshot.source_volume.uuid.clone(),
        size_bytes: bytes(snapshot.size_gb),
        created: created(&snapshot.created_at),
        ready: snapshot.status == "available",
        group_snapshot_id: None,
    }
}

/// Orders duplicates: the oldest first, the UUID breaking ties, so every
/// controller keeps the same one.
fn oldest_first<T>(items: &mut [T], key: impl Fn(&T) -> (SystemTime, String)) {
    items.sort_by_key(|item| key(item));
}

/// Whether an answer means the call may or may not have happened (no
/// answer, a 5xx): the outcome has to be looked up.
fn outcome_unknown(error: &ApiError) -> bool {
    match error {
        ApiError::Status { status, .. } => *status >= 500,
        ApiError::Transport { .. } | ApiError::Exhausted { .. } => true,
        ApiError::Decode { .. } => false,
    }
}

/// The cloudscale controller backend.
pub struct Cloudscale {
    api: Option<Api>,
}

/// Builds the HTTP client of the API from the settings; None without a
/// token.
fn api_client(settings: &Settings) -> Result<Option<Api>, String> {
    let cs = &settings.clouds.cloudscale;
    let Some(token) = cs.access_token.clone() else {
        return Ok(None);
    };
    let url = cs.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
    let options = ClientOptions::rate_limited(cs.api_requests_per_second).map_err(|rate| {
        format!("cloudscale api-requests-per-second must be a positive number, not {rate}")
    })?;
    let client = ApiClient::new("cloudscale", url, Auth::Bearer(token), options)?;
    Ok(Some(Api { client }))
}

/// The node's identity from the metadata service: (server UUID, zone).
pub async fn node_identity(settings: &Settings) -> Result<(String, String), String> {
    let url = settings
        .clouds
        .cloudscale
        .metadata_url
        .as_deref()
        .unwrap_or(DEFAULT_METADATA_URL);
    let options = ClientOptions {
        attempt_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        max_attempts: 5,
        deadline: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let client = ApiClient::new("cloudscale-metadata", url, Auth::None, options)?;
    let metadata = api::metadata(&client).await.map_err(|e| {
        format!(
            "cannot read this server's identity from the cloudscale metadata service at {url}: {e} (set CLOUDSCALE_METADATA_URL if it lives elsewhere)"
        )
    })?;
    if !is_uuid(&metadata.meta.cloudscale_uuid) {
        return Err(format!(
            "the metadata service at {url} gave {:?} as this server's UUID",
            metadata.meta.cloudscale_uuid
        ));
    }
    Ok((metadata.meta.cloudscale_uuid, metadata.availability_zone))
}

impl Cloudscale {
    /// The controller backend. Serving the controller needs a token.
    pub fn open(settings: &Settings) -> Result<Self, String> {
        let api = api_client(settings)?;
        if api.is_none() && settings.mode.serves_controller() {
            return Err(
                "the cloudscale controller needs an API token: set CLOUDSCALE_ACCESS_TOKEN or access-token in [cloudscale]"
                    .into(),
            );
        }
        Ok(Cloudscale { api })
    }

    fn api(&self) -> CsiResult<&Api> {
        self.api.as_ref().ok_or_else(|| {
            CsiError::FailedPrecondition(
                "no cloudscale API token is configured on this instance".into(),
            )
        })
    }

    /// The volume named `name`, if any; duplicates (an interrupted create
    /// that went through twice) are resolved: the oldest is kept.
    async fn find_volume(&self, name: &str) -> CsiResult<Option<api::Volume>> {
        let api = self.api()?;
        let mut found = api.volumes_named(name).await.map_err(|e| api::to_csi(&e))?;
        oldest_first(&mut found, |v| (created(&v.created_at), v.uuid.clone()));
        let mut found = found.into_iter();
        let keep = found.next();
        for extra in found {
            if !extra.server_uuids.is_empty() {
                tracing::warn!(volume_id = %extra.uuid, name, "duplicate volume is attached; left in place");
                continue;
            }
            match api.delete_volume(&extra.uuid).await {
                Ok(()) => {
                    tracing::warn!(volume_id = %extra.uuid, name, "deleted a duplicate volume left by an interrupted create")
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(volume_id = %extra.uuid, name, error = %e, "cannot delete a duplicate volume")
                }
            }
        }
        Ok(keep)
    }

    async fn find_snapshot(&self, name: &str) -> CsiResult<Option<api::Snapshot>> {
        let api = self.api()?;
        let mut found = api
            .snapshots_named(name)
            .await
            .map_err(|e| api::to_csi(&e))?;
        found.retain(|s| s.status != "deleting");
        oldest_first(&mut found, |s| (created(&s.created_at), s.uuid.clone()));
        let mut found = found.into_iter();
        let keep = found.next();
        for extra in found {
            if let Err(e) = api.delete_snapshot(&extra.uuid).await
                && !e.is_not_found()
            {
                tracing::warn!(snapshot_id = %extra.uuid, name, error = %e, "cannot delete a duplicate snapshot");
            } else {
                tracing::warn!(snapshot_id = %extra.uuid, name, "deleted a duplicate snapshot left by an interrupted create");
            }
        }
        Ok(keep)
    }

    async fn get(&self, id: &str) -> CsiResult<api::Volume> {
        if !is_uuid(id) {
            return Err(CsiError::NotFound(format!(
                "volume {id} does not exist (cloudscale volume IDs are UUIDs)"
            )));
        }
        self.api()?.volume(id).await.map_err(|e| {
            if e.is_not_found() {
                CsiError::NotFound(format!("volume {id} does not exist"))
            } else {
                api::to_csi(&e)
            }
        })
    }

    /// Waits until a snapshot is available (or gone, or the wait is over).
    async fn settle_snapshot(&self, snapshot: api::Snapshot) -> CsiResult<api::Snapshot> {
        let api = self.api()?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut current = snapshot;
        while current.status != "available" && started.elapsed() < SNAPSHOT_WAIT {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            current = api
                .snapshot(&current.uuid)
                .await
                .map_err(|e| api::to_csi(&e))?;
        }
        Ok(current)
    }

    /// Checks an existing volume against a repeated create; grows a restore
    /// whose growth was interrupted.
    async fn adopt(
        &self,
        existing: api::Volume,
        request: &CreateVolume,
        kind: VolumeType,
        placement: &Placement,
    ) -> CsiResult<Volume> {
        let name = &request.name;
        let conflict = |why: String| {
            CsiError::AlreadyExists(format!(
                "volume {name:?} exists already ({}) and this request asks for {why}",
                existing.uuid
            ))
        };
        if source_of(&existing) != request.source {
            return Err(conflict("a different content source".into()));
        }
        if let (Some(was), Some(wanted)) = (
            MadeAs::from_context(&existing.tags)?,
            MadeAs::from_context(&request.node_context)?,
        ) && was != wanted
        {
            return Err(conflict(format!("{wanted} (it was made as {was})")));
        }
        if request.source.is_none() && existing.kind != kind.as_str() {
            return Err(conflict(format!(
                "type {} (it is {})",
                kind.as_str(),
                existing.kind
            )));
        }
        if let Some(allowed) = &placement.allowed
            && !allowed.contains(&existing.zone.slug)
        {
            return Err(conflict(format!(
                "zones {allowed:?} (it is in {})",
                existing.zone.slug
            )));
        }
        let capacity = bytes(existing.size_gb);
        if request.limit_bytes > 0 && capacity > request.limit_bytes {
            return Err(conflict(format!(
                "at most {} bytes (it has {capacity})",
                request.limit_bytes
            )));
        }
        let volume = if capacity < request.required_bytes {
            if request.source.is_none() {
                return Err(conflict(format!(
                    "at least {} bytes (it has {capacity})",
                    request.required_bytes
                )));
            }
            // A restore or clone cut off before it was grown.
            let rules = VolumeType::parse(&existing.kind)
                .unwrap_or(VolumeType::Ssd)
                .rules();
            let size = size::choose(rules, request.required_bytes, request.limit_bytes, capacity)?;
            self.grow(existing, size, request).await?
        } else {
            to_volume(&existing, request.node_context.clone())
        };
        if matches!(request.source, Some(ContentSource::Volume(_))) {
            self.remove_clone_snapshot(name).await?;
        }
        Ok(volume)
    }

    async fn grow(
        &self,
        mut volume: api::Volume,
        size: u64,
        request: &CreateVolume,
    ) -> CsiResult<Volume> {
        let size_gb = size / GIB;
        self.api()?
            .patch_volume("resize_volume", &volume.uuid, "size_gb", json!(size_gb))
            .await
            .map_err(|e| api::to_csi(&e))?;
        volume.size_gb = size_gb;
        Ok(to_volume(&volume, request.node_context.clone()))
    }

    /// The POST of a create, repeated by looking the name up whenever the
    /// outcome of an attempt is unknown, so a lost answer never makes a
    /// second volume.
    async fn post_volume(&self, name: &str, body: serde_json::Value) -> CsiResult<api::Volume> {
        let api = self.api()?;
        let mut last = None;
        for round in 0..CREATE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(50 << round.min(5))).await;
                if let Some(found) = self.find_volume(name).await? {
                    return Ok(found);
                }
            }
            match api.create_volume(body.clone()).await {
                Ok(volume) => return Ok(volume),
                Err(e) if outcome_unknown(&e) => last = Some(e),
                Err(e) => return Err(api::to_csi(&e)),
            }
        }
        Err(api::to_csi(&last.expect("at least one round ran")))
    }

    async fn create_blank(
        &self,
        request: &CreateVolume,
        kind: VolumeType,
        placement: &Placement,
    ) -> CsiResult<Volume> {
        let size = size::choose(kind.rules(), request.required_bytes, request.limit_bytes, 0)?;
        let mut body = json!({
            "name": request.name,
            "size_gb": size / GIB,
            "type": kind.as_str(),
            "tags": volume_tags(request)?,
        });
        if let Some(zone) = &placement.first {
            body["zone"] = json!(zone);
        }
        let volume = self
            .post_volume(&request.name, body)
            .await
            .map_err(|e| match e {
                CsiError::InvalidArgument(m)
                    if placement.allowed.is_some() && m.contains("zone") =>
                {
                    CsiError::ResourceExhausted(format!(
                        "no volume can be made in the requisite zones {:?}: {m}",
                        placement.allowed.as_deref().unwrap_or_default()
                    ))
                }
                other => other,
            })?;
        Ok(to_volume(&volume, request.node_context.clone()))
    }

    async fn restore(
        &self,
        request: &CreateVolume,
        snapshot_id: &str,
        placement: &Placement,
    ) -> CsiResult<Volume> {
        let api = self.api()?;
        let missing =
            || CsiError::NotFound(format!("source snapshot {snapshot_id} does not exist"));
        if !is_uuid(snapshot_id) {
            return Err(missing());
        }
        let snapshot = match api.snapshot(snapshot_id).await {
            Ok(s) if s.status == "deleting" => return Err(missing()),
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Err(missing()),
            Err(e) => return Err(api::to_csi(&e)),
        };
        if let (Some(allowed), Some(zone)) = (&placement.allowed, &snapshot.zone)
            && !allowed.contains(&zone.slug)
        {
            return Err(CsiError::ResourceExhausted(format!(
                "snapshot {snapshot_id} is in zone {}, outside the requisite zones {allowed:?}; a restore stays in the snapshot's zone",
                zone.slug
            )));
        }
        let snapshot = self.settle_snapshot(snapshot).await?;
        self.restore_snapshot(request, snapshot, (SOURCE_TAG, snapshot_id))
            .await
    }

    /// Makes the requested volume from an available snapshot, tagged with
    /// where it came from, and grows it to the size asked for.
    async fn restore_snapshot(
        &self,
        request: &CreateVolume,
        snapshot: api::Snapshot,
        (tag, source): (&str, &str),
    ) -> CsiResult<Volume> {
        let api = self.api()?;
        if snapshot.status != "available" {
            return Err(CsiError::Unavailable(format!(
                "snapshot {} is {}, not yet available; retry later",
                snapshot.uuid, snapshot.status
            )));
        }
        // The restore takes the type of the snapshot's volume; its size
        // rules decide the final size.
        let assumed = match api.volume(&snapshot.source_volume.uuid).await {
            Ok(v) => VolumeType::parse(&v.kind).unwrap_or(VolumeType::Ssd),
            Err(_) => VolumeType::Ssd,
        };
        let floor = bytes(snapshot.size_gb);
        size::choose(
            assumed.rules(),
            request.required_bytes,
            request.limit_bytes,
            floor,
        )?;
        let mut tags = volume_tags(request)?;
        tags.insert(tag.to_string(), json!(source));
        let body = json!({
            "name": request.name,
            "volume_snapshot_uuid": snapshot.uuid,
            "tags": tags,
        });
        let volume = self.post_volume(&request.name, body).await?;
        let kind = VolumeType::parse(&volume.kind).unwrap_or(VolumeType::Ssd);
        let size = match size::choose(
            kind.rules(),
            request.required_bytes,
            request.limit_bytes,
            bytes(volume.size_gb).max(floor),
        ) {
            Ok(size) => size,
            Err(e) => {
                let _ = api.delete_volume(&volume.uuid).await;
                return Err(e);
            }
        };
        if size > bytes(volume.size_gb) {
            return self.grow(volume, size, request).await;
        }
        Ok(to_volume(&volume, request.node_context.clone()))
    }

    /// A clone: a snapshot of the source (named after the new volume, so a
    /// repeat finds it), restored, then removed.
    async fn clone_volume(
        &self,
        request: &CreateVolume,
        source_id: &str,
        placement: &Placement,
    ) -> CsiResult<Volume> {
        let source = self.get(source_id).await.map_err(|e| match e {
            CsiError::NotFound(_) => {
                CsiError::NotFound(format!("source volume {source_id} does not exist"))
            }
            other => other,
        })?;
        if let Some(allowed) = &placement.allowed
            && !allowed.contains(&source.zone.slug)
        {
            return Err(CsiError::ResourceExhausted(format!(
                "volume {source_id} is in zone {}, outside the requisite zones {allowed:?}; a clone stays in its source's zone",
                source.zone.slug
            )));
        }
        let kind = VolumeType::parse(&source.kind).unwrap_or(VolumeType::Ssd);
        size::choose(
            kind.rules(),
            request.required_bytes,
            request.limit_bytes,
            bytes(source.size_gb),
        )?;
        let temporary = clone_snapshot_name(&request.name);
        let snapshot = match self.find_snapshot(&temporary).await? {
            Some(found) => found,
            None => self.post_snapshot(&temporary, source_id).await?,
        };
        let snapshot = self.settle_snapshot(snapshot).await?;
        let volume = self
            .restore_snapshot(request, snapshot, (CLONE_TAG, source_id))
            .await?;
        self.remove_clone_snapshot(&request.name).await?;
        Ok(volume)
    }

    /// Deletes the snapshot a clone was made through, if it is still there.
    async fn remove_clone_snapshot(&self, volume_name: &str) -> CsiResult<()> {
        if let Some(snapshot) = self
            .find_snapshot(&clone_snapshot_name(volume_name))
            .await?
        {
            self.delete_snapshot(&snapshot.uuid).await?;
        }
        Ok(())
    }

    async fn post_snapshot(&self, name: &str, source: &str) -> CsiResult<api::Snapshot> {
        let api = self.api()?;
        let mut last = None;
        for round in 0..CREATE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(50 << round.min(5))).await;
                if let Some(found) = self.find_snapshot(name).await? {
                    return Ok(found);
                }
            }
            match api.create_snapshot(name, source).await {
                Ok(snapshot) => return Ok(snapshot),
                Err(e) if outcome_unknown(&e) => last = Some(e),
                Err(e) => return Err(api::to_csi(&e)),
            }
        }
        Err(api::to_csi(&last.expect("at least one round ran")))
    }
}

#[async_trait]
impl Backend for Cloudscale {
    fn name(&self) -> &'static str {
        "cloudscale"
    }

    fn features(&self) -> Features {
        Features {
            snapshots: true,
            clone: true,
            expand: true,
            capacity: false,
            attach: true,
            volume_condition: false,
        }
    }

    fn parameter_keys(&self) -> &'static [&'static str] {
        &[VOLUME_TYPE, UPSTREAM_VOLUME_TYPE, TAGS]
    }

    async fn ready(&self) -> CsiResult<()> {
        self.api().map(|_| ())
    }

    async fn create_volume(&self, request: &CreateVolume) -> CsiResult<Volume> {
        let kind = requested_type(&request.parameters)?;
        volume_tags(request)?;
        let placement = placement(request);
        if let Some(existing) = self.find_volume(&request.name).await? {
            return self.adopt(existing, request, kind, &placement).await;
        }
        let volume = match &request.source {
            None => self.create_blank(request, kind, &placement).await?,
            Some(ContentSource::Snapshot(id)) => self.restore(request, id, &placement).await?,
            Some(ContentSource::Volume(id)) => self.clone_volume(request, id, &placement).await?,
        };
        tracing::info!(volume_id = %volume.id, name = %request.name, bytes = volume.capacity_bytes, "volume created");
        Ok(volume)
    }

    async fn delete_volume(&self, id: &str) -> CsiResult<()> {
        let volume = match self.get(id).await {
            Ok(v) => v,
            Err(CsiError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !volume.server_uuids.is_empty() {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {id} is still attached to server {}; unpublish it first",
                volume.server_uuids.join(", ")
            )));
        }
        match self.api()?.delete_volume(id).await {
            Ok(()) => {
                tracing::info!(volume_id = %id, "volume deleted");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(api::to_csi(&e)),
        }
    }

    async fn get_volume(&self, id: &str) -> CsiResult<VolumeStatus> {
        Ok(to_status(&self.get(id).await?))
    }

    async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>> {
        let mut all = self.api()?.volumes().await.map_err(|e| api::to_csi(&e))?;
        all.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(all.iter().map(to_status).collect())
    }

    async fn publish(&self, id: &str, node_id: &str, read_only: bool) -> CsiResult<Map> {
        let volume = self.get(id).await?;
        if !is_uuid(node_id) {
            return Err(CsiError::NotFound(format!(
                "node {node_id} is not a cloudscale server (node IDs are server UUIDs from the metadata service)"
            )));
        }
        let context = Map::from([
            (PUBLISHED_SERVER.to_string(), node_id.to_string()),
            (PUBLISHED_VOLUME.to_string(), id.to_string()),
        ]);
        let was_read_only = volume.tags.get(READ_ONLY_TAG).is_some_and(|v| v == "true");
        match volume.server_uuids.as_slice() {
            [] => {}
            [only] if only == node_id && was_read_only == read_only => return Ok(context),
            [only] if only == node_id => {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {id} is already published to {node_id} with readonly={was_read_only}"
                )));
            }
            others => {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {id} is attached to server {}; a cloudscale volume attaches to one server at a time, unpublish it there first",
                    others.join(", ")
                )));
            }
        }
        let api = self.api()?;
        if was_read_only != read_only {
            // Recorded before the attachment, so a repeat after a crash
            // sees how the volume was published.
            let mut tags = volume.tags.clone();
            if read_only {
                tags.insert(READ_ONLY_TAG.to_string(), "true".to_string());
            } else {
                tags.remove(READ_ONLY_TAG);
            }
            api.patch_volume("tag_volume", id, "tags", json!(tags))
                .await
                .map_err(|e| api::to_csi(&e))?;
        }
        api.patch_volume("attach_volume", id, "server_uuids", json!([node_id]))
            .await
            .map_err(|e| {
                if api::is_field_error(&e, "server_uuids")
                    && e.to_string().contains("does not exist")
                {
                    CsiError::NotFound(format!("server {node_id} does not exist: {e}"))
                } else if e.is_not_found() {
                    CsiError::NotFound(format!("volume {id} does not exist"))
                } else {
                    api::to_csi(&e)
                }
            })?;
        tracing::info!(volume_id = %id, node_id, read_only, "volume attached");
        Ok(context)
    }

    async fn unpublish(&self, id: &str, node_id: Option<&str>) -> CsiResult<()> {
        let volume = match self.get(id).await {
            Ok(v) => v,
            Err(CsiError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let attached = match node_id {
            Some(node) => volume.server_uuids.iter().any(|s| s == node),
            None => !volume.server_uuids.is_empty(),
        };
        if !attached {
            return Ok(());
        }
        match self
            .api()?
            .patch_volume("detach_volume", id, "server_uuids", json!([]))
            .await
        {
            Ok(()) => {
                tracing::info!(volume_id = %id, "volume detached");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(api::to_csi(&e)),
        }
    }

    async fn expand(&self, id: &str, required_bytes: u64, limit_bytes: u64) -> CsiResult<u64> {
        let volume = self.get(id).await?;
        let current = bytes(volume.size_gb);
        if required_bytes <= current && (limit_bytes == 0 || current <= limit_bytes) {
            return Ok(current);
        }
        let rules = VolumeType::parse(&volume.kind)
            .unwrap_or(VolumeType::Ssd)
            .rules();
        let size = size::choose(rules, required_bytes, limit_bytes, current)?;
        self.api()?
            .patch_volume("resize_volume", id, "size_gb", json!(size / GIB))
            .await
            .map_err(|e| api::to_csi(&e))?;
        tracing::info!(volume_id = %id, bytes = size, "volume expanded");
        Ok(size)
    }

    async fn capacity(&self) -> CsiResult<Capacity> {
        Err(CsiError::Unimplemented(
            "the cloudscale API reports no free capacity".into(),
        ))
    }

    async fn create_snapshot(&self, source_volume_id: &str, name: &str) -> CsiResult<Snapshot> {
        if let Some(existing) = self.find_snapshot(name).await? {
            if existing.source_volume.uuid != source_volume_id {
                return Err(CsiError::AlreadyExists(format!(
                    "snapshot {name:?} exists already ({}) for volume {}, not {source_volume_id}",
                    existing.uuid, existing.source_volume.uuid
                )));
            }
            return Ok(to_snapshot(&self.settle_snapshot(existing).await?));
        }
        self.get(source_volume_id).await?;
        let snapshot = self.post_snapshot(name, source_volume_id).await?;
        tracing::info!(snapshot_id = %snapshot.uuid, volume_id = %source_volume_id, "snapshot created");
        Ok(to_snapshot(&self.settle_snapshot(snapshot).await?))
    }

    async fn delete_snapshot(&self, id: &str) -> CsiResult<()> {
        if !is_uuid(id) {
            return Ok(());
        }
        let api = self.api()?;
        match api.delete_snapshot(id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(api::to_csi(&e)),
        }
        // The snapshot lingers as "deleting"; wait until it is gone so that
        // deleting its volume next succeeds.
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        while started.elapsed() < SNAPSHOT_WAIT {
            match api.snapshot(id).await {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(api::to_csi(&e)),
                Ok(_) => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        tracing::warn!(snapshot_id = %id, "snapshot is still being deleted");
        Ok(())
    }

    async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>> {
        let mut all = self.api()?.snapshots().await.map_err(|e| api::to_csi(&e))?;
        all.retain(|s| s.status != "deleting");
        all.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(all.iter().map(to_snapshot).collect())
    }
}

/// Builds the controller and node halves from the settings; `identity` is
/// the node's (server UUID, zone) from the metadata service when this
/// instance serves the node.
pub fn open(
    settings: &Settings,
    identity: Option<(String, String)>,
) -> Result<(Arc<Cloudscale>, Arc<CloudscaleNode>), String> {
    let backend = Cloudscale::open(settings)?;
    let node = CloudscaleNode::new(settings, identity);
    Ok((Arc::new(backend), Arc::new(node)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(requisite: &[&str], preferred: &[&str]) -> CreateVolume {
        let segs = |zones: &[&str]| {
            zones
                .iter()
                .map(|z| Map::from([(TOPOLOGY_KEY.to_string(), z.to_string())]))
                .collect()
        };
        CreateVolume {
            name: "pvc-1".into(),
            required_bytes: 0,
            limit_bytes: 0,
            source: None,
            parameters: Map::new(),
            node_context: Map::new(),
            fs_type: None,
            requisite: segs(requisite),
            preferred: segs(preferred),
            metadata: Map::new(),
        }
    }

    #[test]
    fn volume_types_and_their_steps() {
        let with = |pairs: &[(&str, &str)]| -> Map {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(requested_type(&Map::new()).unwrap(), VolumeType::Ssd);
        assert_eq!(
            requested_type(&with(&[(UPSTREAM_VOLUME_TYPE, "bulk")])).unwrap(),
            VolumeType::Bulk
        );
        assert_eq!(
            requested_type(&with(&[
                (VOLUME_TYPE, "bulk"),
                (UPSTREAM_VOLUME_TYPE, "bulk")
            ]))
            .unwrap(),
            VolumeType::Bulk
        );
        assert!(
            requested_type(&with(&[
                (VOLUME_TYPE, "ssd"),
                (UPSTREAM_VOLUME_TYPE, "bulk")
            ]))
            .is_err()
        );
        assert!(requested_type(&with(&[(VOLUME_TYPE, "nvme")])).is_err());
        let ssd = VolumeType::Ssd.rules();
        let bulk = VolumeType::Bulk.rules();
        assert_eq!(size::choose(ssd, 0, 0, 0).unwrap(), GIB);
        assert_eq!(size::choose(ssd, GIB + 1, 0, 0).unwrap(), 2 * GIB);
        assert_eq!(size::choose(bulk, 0, 0, 0).unwrap(), 100 * GIB);
        assert_eq!(size::choose(bulk, 101 * GIB, 0, 0).unwrap(), 200 * GIB);
        assert!(size::choose(bulk, GIB, 50 * GIB, 0).is_err());
    }

    #[test]
    fn placement_prefers_preferred_zones_within_requisite() {
        assert_eq!(
            placement(&request(&[], &[])),
            Placement {
                allowed: None,
                first: None
            }
        );
        let p = placement(&request(&["lpg1", "rma1"], &["rma1"]));
        assert_eq!(p.first.as_deref(), Some("rma1"));
        let p = placement(&request(&["lpg1"], &["rma1"]));
        assert_eq!(p.first.as_deref(), Some("lpg1"));
        assert_eq!(p.allowed, Some(vec!["lpg1".to_string()]));
        let p = placement(&request(&[], &["rma1"]));
        assert_eq!((p.allowed, p.first.as_deref()), (None, Some("rma1")));
    }

    #[test]
    fn tags_come_from_the_class_and_the_provisioner() {
        let mut r = request(&[], &[]);
        r.parameters
            .insert(TAGS.into(), " team=storage , env=test,".into());
        r.metadata
            .insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
        let tags = volume_tags(&r).unwrap();
        assert_eq!(
            serde_json::Value::Object(tags),
            json!({"team": "storage", "env": "test", "csi.storage.k8s.io/pvc/name": "data"})
        );
        for bad in [
            "team",
            "=x",
            "multicsi.io/source-snapshot=x",
            "csi.storage.k8s.io/pv/name=y",
        ] {
            r.parameters.insert(TAGS.into(), bad.into());
            assert!(
                matches!(volume_tags(&r), Err(CsiError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn uuids_are_recognised() {
        assert!(is_uuid("2db69ba3-1864-4608-853a-0771b6885a3a"));
        assert!(!is_uuid("2db69ba3-1864-4608-853a-0771b6885a3"));
        assert!(!is_uuid("hp-00000000000000000000000000000000"));
        assert!(!is_uuid("2db69ba3-1864-4608-853a-0771b6885a3g"));
    }

    #[test]
    fn duplicates_order_oldest_first_then_by_uuid() {
        let mut items = vec![
            ("2026-01-01T10:00:01Z", "b"),
            ("2026-01-01T10:00:00Z", "c"),
            ("2026-01-01T10:00:00Z", "a"),
        ];
        oldest_first(&mut items, |(t, u)| (created(t), u.to_string()));
        assert_eq!(
            items.iter().map(|(_, u)| *u).collect::<Vec<_>>(),
            ["a", "c", "b"]
        );
    }
}
