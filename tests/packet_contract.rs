//! Contract tests of the Packet emulator: its answers have the fields and
//! JSON types of the documented payloads (tests/fixtures/packet/), its
//! errors the API's shape and messages, and it behaves as the API does
//! where the driver depends on it (names, states, pages, the detach refused
//! while the server uses the volume). The tests with devices need root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multicsi::emulator::{self, DeviceHost, Faults, Options, packet};
use serde_json::{Value, json};

const PROJECT: &str = "93125c2a-8b78-4d4f-a3c4-7367d6b7cca8";
const TOKEN: &str = "contract-token";

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/packet")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of `expected` is in `actual` with the same JSON type,
/// recursively; array items are checked against the fixture's first item.
/// A null in the fixture allows anything (the API sends null or a value).
fn same_shape(expected: &Value, actual: &Value, at: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match (expected, actual) {
        (Value::Null, _) => {}
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                match a.get(key) {
                    Some(found) => {
                        problems.extend(same_shape(value, found, &format!("{at}.{key}")))
                    }
                    None => problems.push(format!("{at}.{key} is missing")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let Some(first) = e.first() {
                for (i, item) in a.iter().enumerate() {
                    problems.extend(same_shape(first, item, &format!("{at}[{i}]")));
                }
            }
        }
        (e, a) if kind(e) == kind(a) => {}
        (e, a) => problems.push(format!("{at} is a {}, expected a {}", kind(a), kind(e))),
    }
    problems
}

fn assert_shape(fixture_name: &str, expected: &Value, actual: &Value) {
    let problems = same_shape(expected, actual, "$");
    assert!(
        problems.is_empty(),
        "the emulator's answer differs from {fixture_name}: {problems:?}\nanswer: {actual}"
    );
}

/// An emulator served in this process.
struct Emu {
    url: String,
    http: reqwest::Client,
}

impl Emu {
    async fn start(devices: Option<DeviceHost>) -> Emu {
        Self::with_transition(devices, 20).await
    }

    async fn with_transition(devices: Option<DeviceHost>, transition_ms: u64) -> Emu {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = packet::router(Options {
            devices,
            transition_ms,
        });
        tokio::spawn(emulator::serve(
            listener,
            app,
            Arc::new(Faults::none()),
            packet::error_body,
        ));
        Emu {
            url,
            http: multicsi::cloud::http::client_builder().build().unwrap(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-Auth-Token", TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await.expect("emulator answers");
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn create(&self, size: u64) -> Value {
        let mut body = fixture("create_request.json");
        body["size"] = json!(size);
        let (status, volume) = self
            .call(
                reqwest::Method::POST,
                &format!("/projects/{PROJECT}/storage"),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{volume}");
        volume
    }

    async fn wait_active(&self, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let (status, volume) = self.get(&format!("/storage/{id}")).await;
            assert_eq!(status, 200);
            if volume["state"] == "active" {
                return volume;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{volume}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn attach(&self, id: &str, device: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/storage/{id}/attachments"),
            Some(json!({ "device_id": device })),
        )
        .await
    }
}

#[tokio::test]
async fn volumes_have_the_documented_fields() {
    let emu = Emu::start(None).await;
    let created = emu.create(10).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["name"], format!("volume-{}", &id[..8]));
    assert_eq!(created["state"], "queued");
    let request = fixture("create_request.json");
    assert_eq!(
        created["description"], request["description"],
        "the description round-trips"
    );
    assert_eq!(created["plan"]["id"], request["plan_id"]);
    let active = emu.wait_active(&id).await;
    let (status, attachment) = emu.attach(&id, packet::PEER.id).await;
    assert_eq!(status, 201, "{attachment}");
    assert_shape(
        "volume.json attachment",
        &fixture("volume.json")["attachments"][0],
        &attachment,
    );
    let (_, attached) = emu
        .get(&format!("/storage/{id}?include=attachments.device"))
        .await;
    assert_shape("volume.json", &fixture("volume.json"), &attached);
    assert_eq!(attached["attachments"][0]["device"]["id"], packet::PEER.id);
    assert_eq!(active["size"], 10);
}

#[tokio::test]
async fn facilities_and_pages_have_the_documented_fields() {
    let emu = Emu::start(None).await;
    let (status, facilities) = emu.get("/facilities?").await;
    assert_eq!(status, 200);
    assert_shape("facilities.json", &fixture("facilities.json"), &facilities);
    for _ in 0..3 {
        emu.create(10).await;
    }
    let (_, first) = emu
        .get(&format!("/projects/{PROJECT}/storage?per_page=2&page=1"))
        .await;
    assert_shape("volume_list.json", &fixture("volume_list.json"), &first);
    assert_eq!(first["volumes"].as_array().unwrap().len(), 2);
    assert_eq!(first["meta"]["total"], 3);
    let next = first["meta"]["next"]["href"].as_str().expect("a next page");
    let (_, second) = emu.get(next).await;
    assert_eq!(second["volumes"].as_array().unwrap().len(), 1);
    assert!(
        second["meta"]["next"].is_null(),
        "no next page after the last"
    );
    let (_, other) = emu.get("/projects/another-project/storage").await;
    assert_eq!(
        other["volumes"],
        json!([]),
        "volumes belong to their project"
    );
}

#[tokio::test]
async fn errors_have_the_api_shape_and_messages() {
    let emu = Emu::start(None).await;
    let errors_shape = json!({ "errors": ["message"] });
    let anonymous = reqwest::get(format!("{}/projects/{PROJECT}/storage", emu.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_shape(
        "an error",
        &errors_shape,
        &anonymous.json::<Value>().await.unwrap(),
    );
    let (status, body) = emu
        .get("/storage/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
    assert_shape("an error", &errors_shape, &body);
    let mut tiny = fixture("create_request.json");
    tiny["size"] = json!(1);
    let (status, body) = emu
        .call(
            reqwest::Method::POST,
            &format!("/projects/{PROJECT}/storage"),
            Some(tiny),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let slow = Emu::with_transition(None, 60_000).await;
    let queued = slow.create(10).await["id"].as_str().unwrap().to_string();
    let (status, _) = slow.attach(&queued, packet::PEER.id).await;
    assert_eq!(
        status, 422,
        "an attach before the volume is active is refused"
    );
    let id = emu.create(10).await["id"].as_str().unwrap().to_string();
    emu.wait_active(&id).await;
    assert_eq!(emu.attach(&id, packet::PEER.id).await.0, 201);
    let (status, body) = emu.attach(&id, packet::PEER.id).await;
    assert_eq!(
        (status, body),
        (
            422,
            json!({ "errors": ["Instance is already attached to this volume"] })
        )
    );
    let (status, body) = emu.attach(&id, packet::HOST.id).await;
    assert_eq!(status, 422, "a second server is refused: {body}");
    let (status, body) = emu
        .call(reqwest::Method::DELETE, &format!("/storage/{id}"), None)
        .await;
    assert_eq!(status, 422, "an attached volume is not deleted: {body}");
    let injected: Value = serde_json::from_str(&packet::error_body(503)).unwrap();
    assert_shape("an injected error", &errors_shape, &injected);
}

#[tokio::test]
async fn metadata_lists_the_volumes_attached_to_this_server() {
    let emu = Emu::start(None).await;
    let id = emu.create(10).await["id"].as_str().unwrap().to_string();
    emu.wait_active(&id).await;
    let metadata = reqwest::get(format!("{}/metadata", emu.url)).await.unwrap();
    assert_eq!(
        metadata.status().as_u16(),
        200,
        "the metadata service needs no token"
    );
    let metadata: Value = metadata.json().await.unwrap();
    assert_eq!(metadata["volumes"], json!([]));
    assert_eq!(emu.attach(&id, packet::HOST.id).await.0, 201);
    let metadata: Value = reqwest::get(format!("{}/metadata", emu.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_shape("metadata.json", &fixture("metadata.json"), &metadata);
    assert_eq!(metadata["id"], packet::HOST.id);
    assert_eq!(
        metadata["volumes"][0]["name"],
        format!("volume-{}", &id[..8])
    );
    assert_eq!(metadata["volumes"][0]["capacity"]["size"], "10");
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test attaches loop devices: run it as root");
}

/// A device host in a temporary directory, cleared when dropped.
struct Devices {
    _dir: tempfile::TempDir,
    host: DeviceHost,
}

impl Devices {
    fn new() -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let host = DeviceHost::new(dir.path().join("images"), dir.path().join("links")).unwrap();
        Devices { _dir: dir, host }
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        self.host.clear();
    }
}

/// Holds a block device open exclusively, as a mount or multipath would.
fn hold(device: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
        .expect("open the device exclusively")
}

fn link_target(host: &DeviceHost, id: &str) -> PathBuf {
    std::fs::canonicalize(host.links.join(format!("volume-{}", &id[..8])))
        .expect("the volume's link")
}

#[tokio::test]
async fn a_detach_is_refused_while_the_server_uses_the_volume() {
    let devices = Devices::new();
    let emu = Emu::start(Some(devices.host.clone())).await;
    let id = emu.create(10).await["id"].as_str().unwrap().to_string();
    emu.wait_active(&id).await;
    let (_, attachment) = emu.attach(&id, packet::HOST.id).await;
    let device = link_target(&devices.host, &id);
    assert_eq!(
        multicsi::node::discovery::read_serial(&device).as_deref(),
        Some(id.as_str()),
        "the device's serial is the volume id"
    );
    let path = format!(
        "/storage/attachments/{}",
        attachment["id"].as_str().unwrap()
    );
    let held = hold(&device);
    let (status, body) = emu.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 422);
    assert_eq!(body, fixture("detach_in_use.json"));
    drop(held);
    let (status, _) = emu.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200);
    assert!(
        !devices
            .host
            .links
            .join(format!("volume-{}", &id[..8]))
            .exists(),
        "the link is removed"
    );
    assert_eq!(emu.call(reqwest::Method::DELETE, &path, None).await.0, 404);
}

/// The controller side of the packet backend against `emu` (no facility
/// configured: it comes from the metadata service).
async fn controller(emu: &Emu, dir: &Path) -> Arc<dyn multicsi::backend::Backend> {
    let config = dir.join("multicsi.toml");
    std::fs::write(
        &config,
        format!(
            "[packet]\napi-key = \"{TOKEN}\"\nproject-id = \"{PROJECT}\"\napi-url = \"{0}\"\nmetadata-url = \"{0}\"\n",
            emu.url
        ),
    )
    .unwrap();
    let settings = multicsi::config::Settings::resolve(multicsi::config::ServeArgs {
        endpoint: Some("unix:///nonexistent/csi.sock".into()),
        node_id: Some("unused".into()),
        mode: Some(multicsi::config::Mode::Controller),
        backend: Some("packet".into()),
        config: Some(config),
        ..Default::default()
    })
    .unwrap();
    multicsi::backend::packet::build(&settings).await.unwrap().0
}

fn create_request(name: &str) -> multicsi::backend::CreateVolume {
    multicsi::backend::CreateVolume {
        name: name.into(),
        required_bytes: 10 << 30,
        limit_bytes: 0,
        source: None,
        parameters: Default::default(),
        node_context: Default::default(),
        fs_type: Some("ext4".into()),
        requisite: vec![],
        preferred: vec![],
        metadata: Default::default(),
    }
}

/// Two volumes with one CSI name (a create whose answer was lost, then
/// repeated): a repeated CreateVolume keeps the oldest (ties by id) and
/// deletes the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_duplicate_is_removed_and_the_oldest_kept() {
    let emu = Emu::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = controller(&emu, dir.path()).await;
    let description = json!({ "Name": "pvc-twice", "Created": "2026-11-21T18:00:00Z" }).to_string();
    let mut made = Vec::new();
    for _ in 0..2 {
        let mut body = fixture("create_request.json");
        body["description"] = json!(description);
        let (status, volume) = emu
            .call(
                reqwest::Method::POST,
                &format!("/projects/{PROJECT}/storage"),
                Some(body),
            )
            .await;
        assert_eq!(status, 201);
        made.push((
            volume["created_at"].as_str().unwrap().to_string(),
            volume["id"].as_str().unwrap().to_string(),
        ));
    }
    made.sort();
    let volume = backend
        .create_volume(&create_request("pvc-twice"))
        .await
        .unwrap();
    assert_eq!(volume.id, made[0].1, "the oldest is kept");
    let listed: Vec<String> = backend
        .list_volumes()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.volume.id)
        .collect();
    assert_eq!(listed, vec![made[0].1.clone()], "the duplicate is deleted");
    let again = backend
        .create_volume(&create_request("pvc-twice"))
        .await
        .unwrap();
    assert_eq!(again.id, made[0].1);
    backend.delete_volume(&volume.id).await.unwrap();
}

/// The backend keeps retrying ControllerUnpublish's detach while the API
/// answers "actively being used", and succeeds once the server lets go.
/// (No facility is configured: the controller takes its server's, from the
/// metadata service.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_waits_until_the_server_lets_go() {
    let devices = Devices::new();
    let emu = Emu::start(Some(devices.host.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = controller(&emu, dir.path()).await;
    let volume = backend
        .create_volume(&create_request("pvc-in-use"))
        .await
        .unwrap();
    let context = backend
        .publish(&volume.id, packet::HOST.id, false)
        .await
        .unwrap();
    assert_eq!(context["VolumeName"], format!("volume-{}", &volume.id[..8]));
    let held = hold(&link_target(&devices.host, &volume.id));
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let started = Instant::now();
    backend
        .unpublish(&volume.id, Some(packet::HOST.id))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the detach succeeded while the device was held"
    );
    release.join().unwrap();
    assert!(
        backend
            .get_volume(&volume.id)
            .await
            .unwrap()
            .published_nodes
            .is_empty()
    );
    backend.delete_volume(&volume.id).await.unwrap();
    assert!(backend.list_volumes().await.unwrap().is_empty());
}

/// DELETE of an attachment answers 200 (the official clients expect it),
/// and 404 once the attachment is gone.
#[tokio::test]
async fn a_detach_answers_200_then_404() {
    let emu = Emu::start(None).await;
    let id = emu.create(10).await["id"].as_str().unwrap().to_string();
    emu.wait_active(&id).await;
    let (status, attachment) = emu.attach(&id, packet::PEER.id).await;
    assert_eq!(status, 201, "{attachment}");
    let path = format!(
        "/storage/attachments/{}",
        attachment["id"].as_str().unwrap()
    );
    let (status, _) = emu.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "a detach answers 200");
    let (status, body) = emu.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 404, "a detach of a gone attachment answers 404");
    assert_shape("an error", &json!({ "errors": ["message"] }), &body);
}

/// PATCH /storage/{id}: the official client's update, lock and unlock. A
/// locked volume is not deleted.
#[tokio::test]
async fn a_volume_is_updated_locked_and_unlocked_with_patch() {
    let emu = Emu::start(None).await;
    let id = emu.create(10).await["id"].as_str().unwrap().to_string();
    emu.wait_active(&id).await;
    let path = format!("/storage/{id}");
    let (status, updated) = emu
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "description": "renamed" })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_shape("volume.json", &fixture("volume.json"), &updated);
    assert_eq!(updated["description"], "renamed");
    let (status, locked) = emu
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "locked": true })),
        )
        .await;
    assert_eq!((status, &locked["locked"]), (200, &json!(true)));
    let (status, body) = emu.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 422, "a locked volume is not deleted: {body}");
    assert_shape("an error", &json!({ "errors": ["message"] }), &body);
    let (status, unlocked) = emu
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "locked": false })),
        )
        .await;
    assert_eq!((status, &unlocked["locked"]), (200, &json!(false)));
    let (status, body) = emu
        .call(reqwest::Method::PATCH, &path, Some(json!({ "size": 5 })))
        .await;
    assert_eq!(status, 422, "a volume does not shrink: {body}");
    let (status, grown) = emu
        .call(reqwest::Method::PATCH, &path, Some(json!({ "size": 20 })))
        .await;
    assert_eq!((status, &grown["size"]), (200, &json!(20)));
    let (status, _) = emu.call(reqwest::Method::DELETE, &path, None).await;
    assert!(status == 200 || status == 204, "{status}");
}

/// GET /userdata answers the server's user data as it was given, not JSON.
#[tokio::test]
async fn userdata_is_the_servers_user_data() {
    let emu = Emu::start(None).await;
    let reply = reqwest::get(format!("{}/userdata", emu.url)).await.unwrap();
    assert_eq!(
        reply.status().as_u16(),
        200,
        "the metadata service needs no token"
    );
    assert_eq!(reply.text().await.unwrap(), packet::USER_DATA);
}
