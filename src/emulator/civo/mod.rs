//! Emulator of the Civo API (v2) as civo-csi and civogo use it: volumes
//! with their asynchronous states, volume snapshots, volume types, the
//! account quota, `/v2/ping` and a Kubernetes cluster with its instances.
//! Requests carry `?region=`; errors answer `{"code","reason","details"}`
//! with codes the official client knows; lists are bare arrays (no paging)
//! except the clusters' page. docs/emulators.md lists what it leaves out.
//!
//! An attached volume appears on this host as a loop device linked as
//! `scsi-0Civo_Volume_<volume id>`: a link name that ends with the full
//! volume id, whose disk reports the volume id as its serial.

pub mod snapshot;
pub mod state;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use self::state::{ApiError, CreateRequest, INSTANCES, Pending, REGION, State, Status};
use super::Options;

/// The device link name of an attached volume.
pub fn link_name(volume_id: &str) -> String {
    format!("scsi-0Civo_Volume_{volume_id}")
}

const GIB: u64 = 1 << 30;

struct Emulator {
    state: Mutex<State>,
    options: Options,
}

type App = Arc<Emulator>;

impl Emulator {
    /// The account's state, with finished snapshot deletions swept (their
    /// images removed in the background).
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gone = state.sweep_snapshots();
        if let (false, Some(devices)) = (gone.is_empty(), self.options.devices.clone()) {
            tokio::task::spawn_blocking(move || {
                for id in gone {
                    if let Err(e) = devices.remove(&id) {
                        tracing::warn!(snapshot = %id, error = %e, "removing a deleted snapshot's image failed");
                    }
                }
            });
        }
        state
    }
}

/// The routes of the emulated API.
pub fn router(options: Options) -> Router {
    let app: App = Arc::new(Emulator {
        state: Mutex::new(State {
            transition: Duration::from_millis(options.transition_ms),
            ..State::default()
        }),
        options,
    });
    Router::new()
        .route("/v2/ping", get(ping))
        .route("/v2/quota", get(quota))
        .route("/v2/volumetypes", get(volume_types))
        .route("/v2/kubernetes/clusters", get(clusters))
        .route("/v2/kubernetes/clusters/{id}", get(cluster))
        .route("/v2/kubernetes/clusters/{id}/instances", get(instances))
        .route("/v2/volumes", get(list).post(create))
        .route("/v2/volumes/{id}", get(show).delete(delete))
        .route("/v2/volumes/{id}/attach", put(attach))
        .route("/v2/volumes/{id}/detach", put(detach))
        .route("/v2/volumes/{id}/resize", put(resize))
        .route(
            "/v2/volumes/{id}/snapshots",
            get(volume_snapshots).post(create_snapshot),
        )
        .route(
            "/v2/volumes/{id}/snapshots/{snapshot}",
            get(volume_snapshot),
        )
        .route("/v2/snapshots", get(all_snapshots))
        .route(
            "/v2/snapshots/{id}",
            get(one_snapshot).delete(delete_snapshot),
        )
        .with_state(app)
}

/// The body the API answers an injected fault with: Rails' generic error
/// (no Civo code: none the client knows means "throttled").
pub fn error_body(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    json!({ "status": status, "error": reason }).to_string()
}

#[derive(Deserialize)]
struct RegionQuery {
    region: Option<String>,
    /// DELETE of a volume: its snapshots go too.
    #[serde(default)]
    delete_snapshot: bool,
}

impl RegionQuery {
    fn region(&self) -> String {
        self.region
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| REGION.to_string())
    }
}

fn failure(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(e.body())).into_response()
}

fn reply(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => failure(e),
    }
}

/// Requests must carry `Authorization: bearer <key>`.
fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, key)| scheme.eq_ignore_ascii_case("bearer") && !key.is_empty())
}

macro_rules! auth {
    ($headers:expr) => {
        if !authorized(&$headers) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "result": "requires_authentication" })),
            )
                .into_response();
        }
    };
}

/// The client's reachability check: any 2xx answer will do.
async fn ping(headers: HeaderMap) -> Response {
    auth!(headers);
    Json(json!({ "result": "pong" })).into_response()
}

async fn volume_types(headers: HeaderMap) -> Response {
    auth!(headers);
    let list: Vec<Value> = state::VOLUME_TYPES
        .iter()
        .map(|(name, description)| {
            json!({ "name": name, "description": description, "enabled": true, "labels": [] })
        })
        .collect();
    Json(list).into_response()
}

async fn quota(Shared(app): Shared<App>, headers: HeaderMap) -> Response {
    auth!(headers);
    Json(app.lock().quota()).into_response()
}

fn instance_json(id: &str, hostname: &str) -> Value {
    json!({
        "id": id,
        "hostname": hostname,
        "size": "g4s.kube.medium",
        "region": REGION,
        "status": "ACTIVE",
        "cpu_cores": 2,
        "ram_mb": 4096,
        "disk_gb": 50,
    })
}

fn cluster_instances(id: &str) -> Result<Value, ApiError> {
    if id != state::CLUSTER_ID {
        return Err(ApiError {
            status: 404,
            code: "database_kubernetes_cluster_not_found",
            reason: format!("Failed to find the Kubernetes cluster {id} within your account"),
        });
    }
    Ok(Value::Array(
        INSTANCES
            .iter()
            .map(|(id, hostname)| instance_json(id, hostname))
            .collect(),
    ))
}

fn cluster_json(id: &str) -> Result<Value, ApiError> {
    cluster_instances(id).map(|instances| {
        json!({
            "id": id,
            "name": "emulated",
            "region": REGION,
            "status": "ACTIVE",
            "volume_type": state::DEFAULT_VOLUME_TYPE,
            "instances": instances,
        })
    })
}

async fn cluster(headers: HeaderMap, Path(id): Path<String>) -> Response {
    auth!(headers);
    reply(cluster_json(&id))
}

/// The account's clusters: one page holding the emulated cluster.
async fn clusters(headers: HeaderMap) -> Response {
    auth!(headers);
    reply(
        cluster_json(state::CLUSTER_ID)
            .map(|cluster| json!({ "page": 1, "per_page": 20, "pages": 1, "items": [cluster] })),
    )
}

async fn instances(headers: HeaderMap, Path(id): Path<String>) -> Response {
    auth!(headers);
    reply(cluster_instances(&id))
}

async fn list(Shared(app): Shared<App>, headers: HeaderMap, q: Query<RegionQuery>) -> Response {
    auth!(headers);
    Json(app.lock().list(&q.region())).into_response()
}

async fn show(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
) -> Response {
    auth!(headers);
    reply(app.lock().get(&id, &q.region()))
}

fn bad_body(e: impl std::fmt::Display) -> Response {
    failure(ApiError::new(
        400,
        "parameter_value_missing",
        format!("The request body is invalid: {e}"),
    ))
}

async fn create(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    q: Query<RegionQuery>,
    body: axum::body::Bytes,
) -> Response {
    auth!(headers);
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_body(e),
    };
    let source = request.snapshot_id.clone();
    let created = app.lock().create(request, &q.region());
    let (value, pending) = match created {
        Ok(created) => created,
        Err(e) => return failure(e),
    };
    // A restore starts from the snapshot's image; the transition grows it.
    if let (Some(source), Some(devices)) = (source, app.options.devices.clone()) {
        let id = pending.volume_id.clone();
        let copied = tokio::task::spawn_blocking(move || devices.copy(&source, &id)).await;
        if let Err(e) = copied.unwrap_or_else(|e| Err(e.to_string())) {
            tracing::warn!(volume = %pending.volume_id, error = %e, "copying a snapshot's image failed");
        }
    }
    finish_later(app, pending);
    Json(value).into_response()
}

async fn delete(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
) -> Response {
    auth!(headers);
    let deleted = app.lock().delete(&id, &q.region(), q.delete_snapshot);
    if let Err(e) = deleted {
        return failure(e);
    }
    if let Some(devices) = app.options.devices.clone() {
        let result = tokio::task::spawn_blocking(move || devices.remove(&id)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "removing a deleted volume's image failed");
        }
    }
    Json(json!({ "result": "success" })).into_response()
}

#[derive(Deserialize)]
struct AttachBody {
    instance_id: String,
    region: Option<String>,
}

#[derive(Deserialize)]
struct ResizeBody {
    size_gb: i64,
    region: Option<String>,
}

#[derive(Deserialize)]
struct RegionBody {
    region: Option<String>,
}

/// The region of a PUT: the query's, else the body's.
fn put_region(q: &RegionQuery, body: Option<String>) -> String {
    q.region
        .clone()
        .or(body)
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| REGION.to_string())
}

fn started(app: App, result: Result<Option<Pending>, ApiError>) -> Response {
    match result {
        Ok(pending) => {
            if let Some(pending) = pending {
                finish_later(app, pending);
            }
            Json(json!({ "result": "success" })).into_response()
        }
        Err(e) => failure(e),
    }
}

/// Runs a volume action in the request's region and answers it; a transition
/// the action starts finishes later.
fn act(
    app: App,
    q: &RegionQuery,
    body_region: Option<String>,
    action: impl FnOnce(&mut State, &str) -> Result<Option<Pending>, ApiError>,
) -> Response {
    let region = put_region(q, body_region);
    let result = action(&mut app.lock(), &region);
    started(app, result)
}

async fn attach(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
    body: axum::body::Bytes,
) -> Response {
    auth!(headers);
    let body: AttachBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    act(app, &q, body.region, |state, region| {
        state.attach(&id, &body.instance_id, region)
    })
}

async fn detach(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
    body: axum::body::Bytes,
) -> Response {
    auth!(headers);
    let body: RegionBody = serde_json::from_slice(&body).unwrap_or(RegionBody { region: None });
    act(app, &q, body.region, |state, region| {
        state.detach(&id, region)
    })
}

async fn resize(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
    body: axum::body::Bytes,
) -> Response {
    auth!(headers);
    let body: ResizeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    act(app, &q, body.region, |state, region| {
        state.resize(&id, body.size_gb, region).map(Some)
    })
}

/// Finishes a transition after `transition_ms`: makes the device change on
/// the host, then moves the volume to its resting state. A transition
/// overtaken by another state change does nothing.
fn finish_later(app: App, pending: Pending) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(app.options.transition_ms)).await;
        let (status, size_gb) = {
            let mut state = app.lock();
            let Some(v) = state.current(&pending) else {
                return;
            };
            (v.status, v.size_gb)
        };
        let id = pending.volume_id.clone();
        let device_work = app.options.devices.clone().map(|devices| {
            tokio::task::spawn_blocking(move || match status {
                Status::Creating | Status::Resizing => devices.provision(&id, size_gb * GIB),
                Status::Attaching => devices.attach(&id, &link_name(&id)).map(|_| ()),
                Status::Detaching => devices.detach(&id, &link_name(&id)),
                _ => Ok(()),
            })
        });
        let outcome = match device_work {
            Some(work) => work.await.unwrap_or_else(|e| Err(e.to_string())),
            None => Ok(()),
        };
        let mut state = app.lock();
        let Some(v) = state.current(&pending) else {
            return;
        };
        match (status, outcome) {
            (Status::Attaching, Ok(())) => v.status = Status::Attached,
            (Status::Attaching, Err(e)) => {
                tracing::warn!(volume = %v.id, error = %e, "attaching the device failed");
                v.status = Status::Available;
                v.instance_id = None;
            }
            (Status::Detaching, result) => {
                if let Err(e) = result {
                    tracing::warn!(volume = %v.id, error = %e, "detaching the device failed");
                }
                v.status = Status::Available;
                v.instance_id = None;
            }
            (_, result) => {
                if let Err(e) = result {
                    tracing::warn!(volume = %v.id, error = %e, "preparing the image failed");
                }
                v.status = Status::Available;
            }
        }
        v.generation += 1;
    });
}

#[derive(Deserialize)]
struct SnapshotBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    region: Option<String>,
}

/// Starts a snapshot of a volume: 201 with the snapshot, `creating`; its
/// image is copied at once (the point in time), the state follows later.
async fn create_snapshot(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
    body: axum::body::Bytes,
) -> Response {
    auth!(headers);
    let body: SnapshotBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let region = put_region(&q, body.region);
    let created = app
        .lock()
        .create_snapshot(&id, &body.name, &body.description, &region);
    let snapshot = match created {
        Ok(s) => s,
        Err(e) => return failure(e),
    };
    let snapshot_id = snapshot["snapshot_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(devices) = app.options.devices.clone() {
        let (from, to) = (id.clone(), snapshot_id.clone());
        let copied = tokio::task::spawn_blocking(move || devices.copy(&from, &to)).await;
        if let Err(e) = copied.unwrap_or_else(|e| Err(e.to_string())) {
            app.lock().abandon_snapshot(&snapshot_id);
            return failure(ApiError::new(
                500,
                "database_snapshot_create",
                format!("The snapshot of volume {id} could not be made: {e}"),
            ));
        }
    }
    (StatusCode::CREATED, Json(snapshot)).into_response()
}

async fn volume_snapshots(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
) -> Response {
    auth!(headers);
    reply(app.lock().snapshots_of(&id, &q.region()))
}

async fn volume_snapshot(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path((id, snapshot)): Path<(String, String)>,
    q: Query<RegionQuery>,
) -> Response {
    auth!(headers);
    reply(app.lock().snapshot(&snapshot, Some(&id), &q.region()))
}

async fn all_snapshots(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    q: Query<RegionQuery>,
) -> Response {
    auth!(headers);
    Json(app.lock().snapshot_list(&q.region(), None)).into_response()
}

async fn one_snapshot(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
) -> Response {
    auth!(headers);
    reply(app.lock().snapshot(&id, None, &q.region()))
}

async fn delete_snapshot(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query<RegionQuery>,
) -> Response {
    auth!(headers);
    reply(
        app.lock()
            .delete_snapshot(&id, &q.region())
            .map(|()| json!({ "result": "success" })),
    )
}
