//! Emulator of the cloudscale.ch API (v1 volumes and volume snapshots) and
//! of its OpenStack-style metadata service.
//!
//! What it reproduces: bare JSON arrays (no pagination), `?name=` and
//! `?tag:KEY=VALUE` filters (an empty value: every item with the tag), 201
//! on POST with the object, 204 on PATCH and DELETE, one attribute per
//! PATCH (volumes: size, servers, name, tags; snapshots: name, tags),
//! `{"detail": ...}` error bodies with string values, the ssd (1 GB steps)
//! and bulk (100 GB steps) size rules, no shrinking, restores that take
//! size, type and zone from the snapshot (also while the snapshot is still
//! being created), snapshots that become `available` after a moment and
//! linger as `deleting` after DELETE, the refusal to delete a volume that
//! has snapshots, the per-server attach limit and the per-volume snapshot
//! limit. docs/emulators.md lists what it does not reproduce.
//!
//! Two servers exist: [`SERVER_UUID`] in lpg1 (this host: volumes attached
//! to it appear as loop devices when a [`DeviceHost`] is given, linked as
//! `scsi-0QEMU_QEMU_HARDDISK_<uuid>`) and [`OTHER_SERVER_UUID`] in rma1.
//! The metadata service describes [`SERVER_UUID`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map as JsonMap, Value, json};

use super::{DeviceHost, Options};
use crate::cloud::timestamp;

/// The emulated server the metadata service describes (this host).
pub const SERVER_UUID: &str = "6b5a7c3e-2f41-4d8e-9a10-3c2d4e5f6a7b";
/// Another server, in another zone, with no devices on this host.
pub const OTHER_SERVER_UUID: &str = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a";
/// Zones of the emulated cloud; new volumes go to the first by default.
pub const ZONES: &[&str] = &["lpg1", "rma1"];
/// Volumes a server can hold besides its root volume.
pub const MAX_ATTACHED: usize = 127;
/// Snapshots a volume can have.
pub const MAX_SNAPSHOTS_PER_VOLUME: usize = 10;
/// Largest volume, in GB.
pub const MAX_SIZE_GB: u64 = 51_200;
/// The metadata document's path.
pub const METADATA_PATH: &str = "/openstack/2017-02-22/meta_data.json";
/// The by-id link name of an attached volume.
pub fn link_name(uuid: &str) -> String {
    format!("scsi-0QEMU_QEMU_HARDDISK_{uuid}")
}

const GB: u64 = 1 << 30;

struct Volume {
    uuid: String,
    name: String,
    size_gb: u64,
    kind: String,
    zone: String,
    server_uuids: Vec<String>,
    tags: JsonMap<String, Value>,
    created_at: String,
}

struct Snapshot {
    uuid: String,
    name: String,
    size_gb: u64,
    zone: String,
    source_uuid: String,
    source_name: String,
    /// Type of the source volume, used by restores.
    kind: String,
    tags: JsonMap<String, Value>,
    created_at: String,
    available_at: Instant,
    /// Set by DELETE: the snapshot is `deleting` until then, gone after.
    gone_at: Option<Instant>,
}

struct Cloud {
    volumes: BTreeMap<String, Volume>,
    snapshots: BTreeMap<String, Snapshot>,
    servers: BTreeMap<&'static str, &'static str>,
    rng: fastrand::Rng,
    devices: Option<DeviceHost>,
    transition: Duration,
    base: String,
}

type Shared = Arc<Mutex<Cloud>>;

/// The routes of the emulated API and metadata service.
pub fn router(options: Options) -> Router {
    let cloud = Cloud {
        volumes: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        servers: BTreeMap::from([(SERVER_UUID, "lpg1"), (OTHER_SERVER_UUID, "rma1")]),
        rng: fastrand::Rng::new(),
        devices: options.devices,
        transition: Duration::from_millis(options.transition_ms),
        base: "https://api.cloudscale.ch".into(),
    };
    Router::new()
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route(
            "/v1/volumes/{uuid}",
            get(get_volume).patch(patch_volume).delete(delete_volume),
        )
        .route(
            "/v1/volume-snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/volume-snapshots/{uuid}",
            get(get_snapshot)
                .patch(patch_snapshot)
                .delete(delete_snapshot),
        )
        .route(METADATA_PATH, get(metadata))
        .with_state(Arc::new(Mutex::new(cloud)))
}

/// The body the API answers an injected fault with.
pub fn error_body(status: u16) -> String {
    let detail = match status {
        429 => "Request was throttled.".to_string(),
        503 => "Service temporarily unavailable, try again later.".to_string(),
        _ => "A server error occurred.".to_string(),
    };
    json!({ "detail": detail }).to_string()
}

/// An error answer: a status and a body whose values are strings.
struct Refusal {
    status: StatusCode,
    body: JsonMap<String, Value>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, axum::Json(Value::Object(self.body))).into_response()
    }
}

fn error(status: StatusCode, field: &str, message: impl Into<String>) -> Refusal {
    let mut body = JsonMap::new();
    body.insert(field.to_string(), Value::String(message.into()));
    Refusal { status, body }
}

fn detail(status: StatusCode, message: impl Into<String>) -> Refusal {
    error(status, "detail", message)
}

fn not_found() -> Refusal {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Every API call needs `Authorization: Bearer <token>`.
fn check_auth(headers: &HeaderMap) -> Result<(), Refusal> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token.trim().is_empty() {
        Err(detail(
            StatusCode::UNAUTHORIZED,
            "Authentication credentials were not provided.",
        ))
    } else {
        Ok(())
    }
}

/// Runs `f` on the cloud's state off the async workers (attaching a loop
/// device blocks).
async fn with_cloud(
    cloud: Shared,
    headers: HeaderMap,
    f: impl FnOnce(&mut Cloud) -> Response + Send + 'static,
) -> Response {
    if let Err(denied) = check_auth(&headers) {
        return denied.into_response();
    }
    tokio::task::spawn_blocking(move || {
        let mut cloud = cloud.lock().unwrap_or_else(|p| p.into_inner());
        cloud.sweep();
        f(&mut cloud)
    })
    .await
    .unwrap_or_else(|_| {
        detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "A server error occurred.",
        )
        .into_response()
    })
}

/// Runs `f` on the cloud's state with the request's JSON body; a body that
/// is not JSON is refused before anything else.
async fn with_body(
    cloud: Shared,
    headers: HeaderMap,
    body: Option<axum::Json<Value>>,
    f: impl FnOnce(&mut Cloud, &Value) -> Result<Response, Refusal> + Send + 'static,
) -> Response {
    let Some(axum::Json(body)) = body else {
        return detail(StatusCode::BAD_REQUEST, "JSON parse error.").into_response();
    };
    with_cloud(cloud, headers, move |c| {
        f(c, &body).unwrap_or_else(IntoResponse::into_response)
    })
    .await
}

/// Answers with the one record `find` returns, or 404 when there is none.
async fn get_one(
    cloud: Shared,
    headers: HeaderMap,
    find: impl FnOnce(&Cloud) -> Option<Value> + Send + 'static,
) -> Response {
    with_cloud(cloud, headers, move |c| match find(c) {
        Some(found) => axum::Json(found).into_response(),
        None => not_found().into_response(),
    })
    .await
}

impl Cloud {
    fn new_uuid(&mut self) -> String {
        super::random_uuid(&mut self.rng)
    }

    /// Forgets snapshots whose deletion has finished.
    fn sweep(&mut self) {
        for uuid in super::remove_finished(&mut self.snapshots, |s| s.gone_at) {
            if let Some(devices) = &self.devices {
                let _ = devices.remove(&uuid);
            }
        }
    }

    fn volume_json(&self, v: &Volume) -> Value {
        json!({
            "href": format!("{}/v1/volumes/{}", self.base, v.uuid),
            "created_at": v.created_at,
            "uuid": v.uuid,
            "name": v.name,
            "zone": { "slug": v.zone },
            "size_gb": v.size_gb,
            "type": v.kind,
            "server_uuids": v.server_uuids,
            "tags": v.tags,
        })
    }

    fn snapshot_json(&self, s: &Snapshot) -> Value {
        let status = if s.gone_at.is_some() {
            "deleting"
        } else if Instant::now() < s.available_at {
            "creating"
        } else {
            "available"
        };
        json!({
            "href": format!("{}/v1/volume-snapshots/{}", self.base, s.uuid),
            "uuid": s.uuid,
            "name": s.name,
            "size_gb": s.size_gb,
            "created_at": s.created_at,
            "status": status,
            "zone": { "slug": s.zone },
            "tags": s.tags,
            "source_volume": {
                "href": format!("{}/v1/volumes/{}", self.base, s.source_uuid),
                "uuid": s.source_uuid,
                "name": s.source_name,
                "type": s.kind,
            },
        })
    }

    fn attached_to(&self, server: &str) -> usize {
        self.volumes
            .values()
            .filter(|v| v.server_uuids.iter().any(|s| s == server))
            .count()
    }

    /// Makes `uuid`'s device appear on (or leave) this host.
    fn sync_device(&self, uuid: &str, attached_here: bool) -> Result<(), Refusal> {
        let Some(devices) = &self.devices else {
            return Ok(());
        };
        let result = if attached_here {
            devices.attach(uuid, &link_name(uuid)).map(|_| ())
        } else {
            devices.detach(uuid, &link_name(uuid))
        };
        result.map_err(|e| detail(StatusCode::INTERNAL_SERVER_ERROR, e))
    }
}

/// Keeps the items whose `name` and tags match the query's filters.
fn matches_filters(
    query: &HashMap<String, String>,
    name: &str,
    tags: &JsonMap<String, Value>,
) -> bool {
    query.iter().all(|(key, wanted)| {
        if key == "name" {
            name == wanted
        } else if let Some(tag) = key.strip_prefix("tag:") {
            // An empty value asks for every item carrying the tag.
            let value = tags.get(tag).and_then(Value::as_str);
            value.is_some_and(|v| wanted.is_empty() || v == wanted)
        } else {
            true
        }
    })
}

/// The body's `name`: required and not blank.
fn required_name(body: &Value) -> Result<String, Refusal> {
    match body.get("name").and_then(Value::as_str) {
        Some(name) if !name.trim().is_empty() => Ok(name.to_string()),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "name",
            "This field is required.",
        )),
    }
}

fn parse_tags(body: &Value) -> Result<JsonMap<String, Value>, Refusal> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(JsonMap::new()),
        Some(Value::Object(tags)) if tags.values().all(Value::is_string) => Ok(tags.clone()),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "tags",
            "Tags must be an object of strings.",
        )),
    }
}

fn check_size(kind: &str, size_gb: u64) -> Result<(), Refusal> {
    if size_gb == 0 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "size_gb",
            "Ensure this value is greater than or equal to 1.",
        ));
    }
    if size_gb > MAX_SIZE_GB {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "size_gb",
            format!("Ensure this value is less than or equal to {MAX_SIZE_GB}."),
        ));
    }
    if kind == "bulk" && !size_gb.is_multiple_of(100) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "size_gb",
            "Volumes of type bulk must have a size that is a multiple of 100 GB.",
        ));
    }
    Ok(())
}

async fn list_volumes(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    with_cloud(cloud, headers, move |c| {
        let list: Vec<Value> = c
            .volumes
            .values()
            .filter(|v| matches_filters(&query, &v.name, &v.tags))
            .map(|v| c.volume_json(v))
            .collect();
        axum::Json(list).into_response()
    })
    .await
}

async fn get_volume(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Response {
    get_one(cloud, headers, move |c| {
        c.volumes.get(&uuid).map(|v| c.volume_json(v))
    })
    .await
}

async fn create_volume(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    body: Option<axum::Json<Value>>,
) -> Response {
    with_body(cloud, headers, body, Cloud::create_volume).await
}

impl Cloud {
    fn create_volume(&mut self, body: &Value) -> Result<Response, Refusal> {
        let name = required_name(body)?;
        let tags = parse_tags(body)?;
        let snapshot = body.get("volume_snapshot_uuid").and_then(Value::as_str);
        let (size_gb, kind, zone, from) = match snapshot {
            Some(snapshot_uuid) => {
                for field in ["size_gb", "type", "zone"] {
                    if body.get(field).is_some_and(|v| !v.is_null()) {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            field,
                            "This field cannot be set when restoring a snapshot; it is taken from the snapshot.",
                        ));
                    }
                }
                let Some(s) = self.snapshots.get(snapshot_uuid) else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "volume_snapshot_uuid",
                        format!("Snapshot {snapshot_uuid} does not exist."),
                    ));
                };
                // A snapshot still being created can be restored already
                // (the SDK's integration tests do so); one being deleted not.
                if s.gone_at.is_some() {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "volume_snapshot_uuid",
                        format!("Snapshot {snapshot_uuid} is being deleted."),
                    ));
                }
                (
                    s.size_gb,
                    s.kind.clone(),
                    s.zone.clone(),
                    Some(s.uuid.clone()),
                )
            }
            None => {
                let kind = match body.get("type") {
                    None | Some(Value::Null) => "ssd".to_string(),
                    Some(Value::String(k)) if k == "ssd" || k == "bulk" => k.clone(),
                    Some(other) => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "type",
                            format!(
                                "\"{}\" is not a valid choice.",
                                other.as_str().unwrap_or("?")
                            ),
                        ));
                    }
                };
                let Some(size_gb) = body.get("size_gb").and_then(Value::as_u64) else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "size_gb",
                        "A valid integer is required.",
                    ));
                };
                check_size(&kind, size_gb)?;
                let zone = match body.get("zone") {
                    None | Some(Value::Null) => ZONES[0].to_string(),
                    Some(Value::String(z)) if ZONES.contains(&z.as_str()) => z.clone(),
                    Some(other) => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "zone",
                            format!(
                                "Object with slug={} does not exist.",
                                other.as_str().unwrap_or("?")
                            ),
                        ));
                    }
                };
                (size_gb, kind, zone, None)
            }
        };
        let server_uuids = self.parse_servers(body, &zone)?.unwrap_or_default();
        let uuid = self.new_uuid();
        if let Some(devices) = &self.devices {
            let made = match &from {
                Some(snapshot_uuid) => devices.copy(snapshot_uuid, &uuid),
                None => Ok(()),
            }
            .and_then(|()| devices.provision(&uuid, size_gb * GB));
            if let Err(e) = made {
                let _ = devices.remove(&uuid);
                return Err(detail(StatusCode::INTERNAL_SERVER_ERROR, e));
            }
        }
        let volume = Volume {
            uuid: uuid.clone(),
            name,
            size_gb,
            kind,
            zone,
            server_uuids,
            tags,
            created_at: timestamp::format(SystemTime::now()),
        };
        let attached_here = volume.server_uuids.iter().any(|s| s == SERVER_UUID);
        let answer = (StatusCode::CREATED, axum::Json(self.volume_json(&volume))).into_response();
        self.volumes.insert(uuid.clone(), volume);
        if attached_here {
            self.sync_device(&uuid, true)?;
        }
        Ok(answer)
    }

    /// `server_uuids` of a request: known servers in the volume's zone, at
    /// most one, within the attach limit. None when absent.
    fn parse_servers(&self, body: &Value, zone: &str) -> Result<Option<Vec<String>>, Refusal> {
        let Some(value) = body.get("server_uuids") else {
            return Ok(None);
        };
        let Some(list) = value.as_array() else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "server_uuids",
                "Expected a list of items.",
            ));
        };
        let mut servers = Vec::new();
        for item in list {
            let Some(uuid) = item.as_str() else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "server_uuids",
                    "Expected a list of UUIDs.",
                ));
            };
            match self.servers.get(uuid) {
                None => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "server_uuids",
                        format!("Object with uuid={uuid} does not exist."),
                    ));
                }
                Some(z) if *z != zone => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "server_uuids",
                        format!("Server {uuid} is in zone {z}, the volume in zone {zone}."),
                    ));
                }
                Some(_) => servers.push(uuid.to_string()),
            }
        }
        if servers.len() > 1 {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "server_uuids",
                "A volume can only be attached to one server.",
            ));
        }
        Ok(Some(servers))
    }
}

async fn patch_volume(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    body: Option<axum::Json<Value>>,
) -> Response {
    with_body(cloud, headers, body, move |c, body| {
        c.patch_volume(&uuid, body)
    })
    .await
}

impl Cloud {
    fn patch_volume(&mut self, uuid: &str, body: &Value) -> Result<Response, Refusal> {
        let Some(volume) = self.volumes.get(uuid) else {
            return Err(not_found());
        };
        let (field, value) = one_attribute(body)?;
        match field {
            "size_gb" => {
                let Some(size_gb) = value.as_u64() else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "size_gb",
                        "A valid integer is required.",
                    ));
                };
                if size_gb < volume.size_gb {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "size_gb",
                        "Volumes cannot be shrunk.",
                    ));
                }
                check_size(&volume.kind, size_gb)?;
                if let Some(devices) = &self.devices {
                    devices
                        .provision(uuid, size_gb * GB)
                        .map_err(|e| detail(StatusCode::INTERNAL_SERVER_ERROR, e))?;
                }
                self.volumes.get_mut(uuid).expect("exists").size_gb = size_gb;
            }
            "server_uuids" => {
                let zone = volume.zone.clone();
                let before = volume.server_uuids.clone();
                let servers = self
                    .parse_servers(body, &zone)?
                    .expect("server_uuids is present");
                for server in &servers {
                    if !before.contains(server) && self.attached_to(server) >= MAX_ATTACHED {
                        return Err(detail(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "Due to internal limitations, it is currently not possible to attach more than {} volumes",
                                MAX_ATTACHED + 1
                            ),
                        ));
                    }
                }
                let was_here = before.iter().any(|s| s == SERVER_UUID);
                let is_here = servers.iter().any(|s| s == SERVER_UUID);
                if was_here != is_here {
                    self.sync_device(uuid, is_here)?;
                }
                self.volumes.get_mut(uuid).expect("exists").server_uuids = servers;
            }
            "name" => {
                self.volumes.get_mut(uuid).expect("exists").name = required_name(body)?;
            }
            "tags" => {
                let tags = parse_tags(body)?;
                self.volumes.get_mut(uuid).expect("exists").tags = tags;
            }
            "type" | "zone" => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    field,
                    "This field cannot be changed.",
                ));
            }
            other => {
                return Err(detail(
                    StatusCode::BAD_REQUEST,
                    format!("Unknown attribute {other}."),
                ));
            }
        }
        Ok(no_content())
    }
}

/// The one attribute a PATCH changes (the API refuses more).
fn one_attribute(body: &Value) -> Result<(&str, &Value), Refusal> {
    let Some(fields) = body.as_object() else {
        return Err(detail(StatusCode::BAD_REQUEST, "Expected an object."));
    };
    match fields.iter().next() {
        Some((field, value)) if fields.len() == 1 => Ok((field.as_str(), value)),
        _ => Err(detail(
            StatusCode::BAD_REQUEST,
            "Only one attribute can be changed at a time.",
        )),
    }
}

async fn patch_snapshot(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    body: Option<axum::Json<Value>>,
) -> Response {
    with_body(cloud, headers, body, move |c, body| {
        c.patch_snapshot(&uuid, body)
    })
    .await
}

impl Cloud {
    /// Renames or retags a snapshot (204, one attribute per request).
    fn patch_snapshot(&mut self, uuid: &str, body: &Value) -> Result<Response, Refusal> {
        if !self.snapshots.contains_key(uuid) {
            return Err(not_found());
        }
        let (field, _) = one_attribute(body)?;
        let snapshot = self.snapshots.get_mut(uuid).expect("exists");
        match field {
            "name" => snapshot.name = required_name(body)?,
            "tags" => snapshot.tags = parse_tags(body)?,
            other => {
                return Err(detail(
                    StatusCode::BAD_REQUEST,
                    format!("Attribute {other} of a snapshot cannot be changed."),
                ));
            }
        }
        Ok(no_content())
    }
}

async fn delete_volume(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Response {
    with_cloud(cloud, headers, move |c| {
        if !c.volumes.contains_key(&uuid) {
            return not_found().into_response();
        }
        if c.snapshots.values().any(|s| s.source_uuid == uuid) {
            return detail(
                StatusCode::BAD_REQUEST,
                "Snapshots exist for this volume. Delete them first.",
            )
            .into_response();
        }
        if let Some(devices) = &c.devices
            && let Err(e) = devices
                .detach(&uuid, &link_name(&uuid))
                .and_then(|()| devices.remove(&uuid))
        {
            return detail(StatusCode::INTERNAL_SERVER_ERROR, e).into_response();
        }
        c.volumes.remove(&uuid);
        no_content()
    })
    .await
}

async fn list_snapshots(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    with_cloud(cloud, headers, move |c| {
        let list: Vec<Value> = c
            .snapshots
            .values()
            .filter(|s| matches_filters(&query, &s.name, &s.tags))
            .map(|s| c.snapshot_json(s))
            .collect();
        axum::Json(list).into_response()
    })
    .await
}

async fn get_snapshot(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Response {
    get_one(cloud, headers, move |c| {
        c.snapshots.get(&uuid).map(|s| c.snapshot_json(s))
    })
    .await
}

async fn create_snapshot(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    body: Option<axum::Json<Value>>,
) -> Response {
    with_body(cloud, headers, body, Cloud::create_snapshot).await
}

impl Cloud {
    fn create_snapshot(&mut self, body: &Value) -> Result<Response, Refusal> {
        let name = required_name(body)?;
        let tags = parse_tags(body)?;
        let Some(source) = body.get("source_volume").and_then(Value::as_str) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "source_volume",
                "This field is required.",
            ));
        };
        let Some(volume) = self.volumes.get(source) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "source_volume",
                format!("Object with uuid={source} does not exist."),
            ));
        };
        let existing = self
            .snapshots
            .values()
            .filter(|s| s.source_uuid == source)
            .count();
        if existing >= MAX_SNAPSHOTS_PER_VOLUME {
            return Err(detail(
                StatusCode::BAD_REQUEST,
                format!(
                    "It is not possible to create more than {MAX_SNAPSHOTS_PER_VOLUME} snapshots per volume."
                ),
            ));
        }
        let (size_gb, zone, kind, source_name) = (
            volume.size_gb,
            volume.zone.clone(),
            volume.kind.clone(),
            volume.name.clone(),
        );
        let uuid = self.new_uuid();
        if let Some(devices) = &self.devices
            && let Err(e) = devices.copy(source, &uuid)
        {
            let _ = devices.remove(&uuid);
            return Err(detail(StatusCode::INTERNAL_SERVER_ERROR, e));
        }
        let snapshot = Snapshot {
            uuid: uuid.clone(),
            name,
            size_gb,
            zone,
            source_uuid: source.to_string(),
            source_name,
            kind,
            tags,
            created_at: timestamp::format(SystemTime::now()),
            available_at: Instant::now() + self.transition,
            gone_at: None,
        };
        let answer = (
            StatusCode::CREATED,
            axum::Json(self.snapshot_json(&snapshot)),
        )
            .into_response();
        self.snapshots.insert(uuid, snapshot);
        Ok(answer)
    }
}

async fn delete_snapshot(
    State(cloud): State<Shared>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Response {
    with_cloud(cloud, headers, move |c| {
        let transition = c.transition;
        match c.snapshots.get_mut(&uuid) {
            None => not_found().into_response(),
            Some(s) => {
                if s.gone_at.is_none() {
                    s.gone_at = Some(Instant::now() + transition);
                }
                no_content()
            }
        }
    })
    .await
}

/// The metadata service: no credentials needed.
async fn metadata() -> Response {
    axum::Json(json!({
        "uuid": SERVER_UUID,
        "name": "emulated-node",
        "hostname": "emulated-node",
        "availability_zone": "lpg1",
        "project_id": "00000000000000000000000000000000",
        "launch_index": 0,
        "meta": { "cloudscale_uuid": SERVER_UUID },
    }))
    .into_response()
}
