//! Emulator of the Packet (Equinix Metal) API and metadata service, as the
//! CSI driver and the official clients use them: project volumes (paged
//! listing, create with plan and facility, `queued` -> `provisioning` ->
//! `active`, update/lock/unlock with PATCH, no delete while locked),
//! attachments (synchronous; a detach answers 200, 404 once gone, and is
//! refused with 422 while the server still uses the volume), facilities,
//! and `/metadata` and `/userdata` of the server it runs on.
//! docs/emulators.md lists what it leaves out.
//!
//! Errors have the API's shape `{"errors": ["..."]}`. Every API route needs
//! an `X-Auth-Token`; `/metadata` needs none. With a device host, a volume
//! attached to the emulated server appears as a loop device linked as
//! `volume-<8 hex>` (the multipath alias the real node would build), its
//! image named after the volume id (its serial).

mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use self::model::{Attachment, Project, Volume};
pub use self::model::{DEVICES, Device, FACILITIES, Facility, HOST, PEER, PLANS, Plan};
use super::{DeviceHost, Options};

const GIB: u64 = 1 << 30;
/// Size limits of a volume, in GB.
pub const MIN_SIZE: u64 = 10;
pub const MAX_SIZE: u64 = 10_000;
/// The user data the emulated server was created with (`GET /userdata`).
pub const USER_DATA: &str = "#cloud-config\nhostname: emulated-node-1\n";
/// The refusal of a detach while the server still uses the volume.
pub const IN_USE: &str = "Cannot detach since volume is actively being used on your server";

struct Emulator {
    project: Mutex<Project>,
    rng: Mutex<fastrand::Rng>,
    devices: Option<DeviceHost>,
    transition: Duration,
}

type Shared = Arc<Emulator>;

/// The routes of the emulated API and metadata service.
pub fn router(options: Options) -> Router {
    let emulator = Arc::new(Emulator {
        project: Mutex::new(Project::default()),
        rng: Mutex::new(fastrand::Rng::new()),
        devices: options.devices,
        transition: Duration::from_millis(options.transition_ms),
    });
    Router::new()
        .route("/metadata", get(metadata))
        .route("/userdata", get(userdata))
        .route("/facilities", get(facilities))
        .route(
            "/projects/{project}/storage",
            get(list_volumes).post(create_volume),
        )
        .route(
            "/storage/{id}",
            get(get_volume)
                .patch(update_volume)
                .put(update_volume)
                .delete(delete_volume),
        )
        .route("/storage/{id}/attachments", post(attach))
        .route(
            "/storage/attachments/{id}",
            get(get_attachment).delete(detach),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found") })
        .with_state(emulator)
}

/// The body the API answers an injected fault with.
pub fn error_body(status: u16) -> String {
    let message = match status {
        429 => "Rate limit exceeded".to_string(),
        _ => format!("Internal server error ({status})"),
    };
    json!({ "errors": [message] }).to_string()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "errors": [message] }))).into_response()
}

fn ok(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The refusal of a request without a token, if it has none.
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    match headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        Some(token) if !token.trim().is_empty() => None,
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "Invalid authentication token",
        )),
    }
}

/// Answers with the one record `find` returns, or 404 when there is none.
fn get_one(
    emu: &Emulator,
    headers: &HeaderMap,
    find: impl FnOnce(&Project) -> Option<Value>,
) -> Response {
    if let Some(denied) = unauthorized(headers) {
        return denied;
    }
    match find(&emu.project()) {
        Some(found) => ok(StatusCode::OK, found),
        None => error(StatusCode::NOT_FOUND, "Not found"),
    }
}

impl Emulator {
    fn project(&self) -> std::sync::MutexGuard<'_, Project> {
        self.project.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_id(&self) -> String {
        super::random_uuid(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn metadata(State(emu): State<Shared>) -> Response {
    ok(StatusCode::OK, emu.project().metadata_json(&HOST))
}

/// The user data, as given when the server was made (plain text).
async fn userdata() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        USER_DATA,
    )
        .into_response()
}

async fn facilities(State(_): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let list: Vec<Value> = FACILITIES.iter().map(model::facility_json).collect();
    ok(StatusCode::OK, json!({ "facilities": list }))
}

async fn list_volumes(
    State(emu): State<Shared>,
    Path(project): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let number = |key: &str, default: usize| match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or(()),
    };
    let (Ok(per_page), Ok(page)) = (number("per_page", 10), number("page", 1)) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "page and per_page must be positive integers",
        );
    };
    let per_page = per_page.min(1000);
    let state = emu.project();
    let all: Vec<&Volume> = state
        .volumes
        .values()
        .filter(|v| v.project == project)
        .collect();
    let total = all.len();
    let last = total.div_ceil(per_page).max(1);
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(|v| state.volume_json(v, emu.transition))
        .collect();
    let link = |n: usize| json!({ "href": format!("/projects/{project}/storage?page={n}&per_page={per_page}") });
    let meta = json!({
        "first": link(1),
        "previous": if page > 1 { link(page - 1) } else { Value::Null },
        "self": link(page),
        "next": if page < last { link(page + 1) } else { Value::Null },
        "last": link(last),
        "current_page": page,
        "last_page": last,
        "total": total,
    });
    ok(StatusCode::OK, json!({ "volumes": items, "meta": meta }))
}

async fn create_volume(
    State(emu): State<Shared>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let unprocessable = |m: &str| error(StatusCode::UNPROCESSABLE_ENTITY, m);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return unprocessable("The request body is not valid JSON");
    };
    let Some(size) = body.get("size").and_then(Value::as_u64) else {
        return unprocessable("size is required and must be a whole number of GB");
    };
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return unprocessable(&format!(
            "size must be between {MIN_SIZE} and {MAX_SIZE} GB"
        ));
    }
    let plan_key = body
        .get("plan_id")
        .or_else(|| body.get("plan"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(plan) = model::plan(plan_key) else {
        return unprocessable(&format!("Plan {plan_key:?} is not a storage plan"));
    };
    let facility_key = body
        .get("facility_id")
        .or_else(|| body.get("facility"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(facility) = model::facility(facility_key) else {
        return unprocessable(&format!("Facility {facility_key:?} not found"));
    };
    if !facility.features.contains(&"storage") {
        return unprocessable(&format!(
            "Facility {} does not offer block storage",
            facility.code
        ));
    }
    let description = match body.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return unprocessable("description must be a string"),
    };
    let billing_cycle = body
        .get("billing_cycle")
        .and_then(Value::as_str)
        .unwrap_or("hourly")
        .to_string();
    let volume = Volume {
        id: emu.new_id(),
        project,
        description,
        size,
        plan,
        facility,
        billing_cycle,
        locked: false,
        created: Instant::now(),
        created_at: model::now(),
    };
    if let Some(host) = &emu.devices
        && let Err(e) = host.provision(&volume.id, size * GIB)
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
    }
    let mut state = emu.project();
    let reply = state.volume_json(&volume, emu.transition);
    state.volumes.insert(volume.id.clone(), volume);
    ok(StatusCode::CREATED, reply)
}

async fn get_volume(
    State(emu): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    get_one(&emu, &headers, |state| {
        state
            .volumes
            .get(&id)
            .map(|v| state.volume_json(v, emu.transition))
    })
}

/// Updates a volume (PATCH, and PUT as older clients send it): its
/// description, `locked` (the official client's lock and unlock) and size
/// (growth only); answers the volume.
async fn update_volume(
    State(emu): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The request body is not valid JSON",
        );
    };
    let mut state = emu.project();
    let Some(volume) = state.volumes.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "Not found");
    };
    let size = match body.get("size") {
        None => volume.size,
        Some(size) => match size.as_u64() {
            Some(size) if (volume.size..=MAX_SIZE).contains(&size) => size,
            _ => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!(
                        "size must be a whole number of GB from the current {} up to {MAX_SIZE}; volumes do not shrink",
                        volume.size
                    ),
                );
            }
        },
    };
    let locked = match body.get("locked") {
        None => volume.locked,
        Some(Value::Bool(locked)) => *locked,
        Some(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "locked must be true or false",
            );
        }
    };
    if size > volume.size
        && let Some(host) = &emu.devices
        && let Err(e) = host.provision(&volume.id, size * GIB)
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
    }
    volume.size = size;
    volume.locked = locked;
    match body.get("description") {
        None => {}
        Some(Value::String(s)) => volume.description = Some(s.clone()),
        Some(Value::Null) => volume.description = None,
        Some(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "description must be a string",
            );
        }
    }
    let state = &*state;
    let volume = &state.volumes[&id];
    ok(StatusCode::OK, state.volume_json(volume, emu.transition))
}

async fn delete_volume(
    State(emu): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let mut state = emu.project();
    let Some(volume) = state.volumes.get(&id) else {
        return error(StatusCode::NOT_FOUND, "Not found");
    };
    if volume.locked {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Cannot delete a locked volume; unlock it first",
        );
    }
    if !state.attachments_of(&id).is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Cannot delete a volume that is attached to a server; detach it first",
        );
    }
    if let Some(host) = &emu.devices
        && let Err(e) = host.remove(&id)
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
    }
    state.volumes.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

async fn attach(
    State(emu): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let device_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("device_id").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    let attachment_id = emu.new_id();
    let mut state = emu.project();
    let Some(volume) = state.volumes.get(&id) else {
        return error(StatusCode::NOT_FOUND, "Not found");
    };
    let Some(device) = model::device(&device_id) else {
        return error(StatusCode::NOT_FOUND, "Device not found");
    };
    if volume.state(emu.transition) != "active" {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Volume is not active yet and cannot be attached",
        );
    }
    if device.facility != volume.facility.code {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Volume and device must be in the same facility",
        );
    }
    let current = state.attachments_of(&id);
    if current.iter().any(|a| a.device_id == device_id) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Instance is already attached to this volume",
        );
    }
    if !current.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Volume is already attached to another device",
        );
    }
    if device.id == HOST.id
        && let Some(host) = &emu.devices
        && let Err(e) = host.attach(&id, &volume.name())
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
    }
    let attachment = Attachment {
        id: attachment_id.clone(),
        volume_id: id,
        device_id,
    };
    let reply = model::attachment_json(&attachment);
    state.attachments.insert(attachment_id, attachment);
    ok(StatusCode::CREATED, reply)
}

async fn get_attachment(
    State(emu): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    get_one(&emu, &headers, |state| {
        state.attachments.get(&id).map(model::attachment_json)
    })
}

async fn detach(State(emu): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let mut state = emu.project();
    let Some(attachment) = state.attachments.get(&id) else {
        return error(StatusCode::NOT_FOUND, "Not found");
    };
    if attachment.device_id == HOST.id
        && let Some(host) = &emu.devices
        && let Some(volume) = state.volumes.get(&attachment.volume_id)
    {
        let name = volume.name();
        if in_use(host, &name) {
            return error(StatusCode::UNPROCESSABLE_ENTITY, IN_USE);
        }
        if let Err(e) = host.detach(&volume.id, &name) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
        }
    }
    state.attachments.remove(&id);
    StatusCode::OK.into_response()
}

/// Whether the server still uses the volume's device: mounted, or held
/// open exclusively, so an exclusive open fails with EBUSY.
fn in_use(host: &DeviceHost, link_name: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(device) = std::fs::canonicalize(host.links.join(link_name)) else {
        return false;
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
        .open(&device)
    {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32),
    }
}
