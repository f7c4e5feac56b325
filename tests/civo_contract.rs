//! Contract tests: the Civo emulator answers with the documented payloads
//! (tests/fixtures/civo): every documented field is there with the same
//! JSON type, errors have Civo's shape, requests need the bearer key.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use multicsi::emulator::Options;
use multicsi::emulator::civo::{self, state};
use serde_json::{Value, json};
use tower::ServiceExt;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/civo/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Fields that Civo answers with null while they are unset.
const NULLABLE: &[&str] = &["instance_id"];

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

/// Every field of `documented` is in `answer` with the same type.
fn assert_shape(documented: &Value, answer: &Value, at: &str) {
    let (Value::Object(doc), Value::Object(got)) = (documented, answer) else {
        assert_eq!(kind(documented), kind(answer), "{at}: {answer}");
        return;
    };
    for (key, doc_value) in doc {
        let got_value = got
            .get(key)
            .unwrap_or_else(|| panic!("{at}: field {key:?} missing in {answer}"));
        if NULLABLE.contains(&key.as_str()) && got_value.is_null() {
            continue;
        }
        assert_shape(doc_value, got_value, &format!("{at}.{key}"));
    }
}

struct Api(axum::Router);

impl Api {
    fn new() -> Self {
        Self::with_transition(0)
    }

    /// An emulator whose asynchronous states take `transition_ms`.
    fn with_transition(transition_ms: u64) -> Self {
        Api(civo::router(Options {
            devices: None,
            transition_ms,
        }))
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(method, path, body, Some("bearer contract-key"))
            .await
    }

    async fn call_as(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.0.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {bytes:?}"));
        (status, value)
    }

    /// Polls a volume until it has `status`.
    async fn wait_for(&self, id: &str, status: &str) -> Value {
        for _ in 0..200 {
            let (_, v) = self
                .call("GET", &format!("/v2/volumes/{id}?region=LON1"), None)
                .await;
            if v["status"] == status {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("volume {id} never became {status}");
    }
}

fn create_body(name: &str, size_gb: u64) -> Value {
    json!({
        "name": name, "namespace": "default", "cluster_id": state::CLUSTER_ID,
        "network_id": "", "region": "LON1", "size_gb": size_gb, "bootable": false,
        "volume_type": "standard",
    })
}

#[tokio::test]
async fn volume_lifecycle_payloads_match_the_documented_ones() {
    let api = Api::new();
    let (status, created) = api
        .call(
            "POST",
            "/v2/volumes?region=LON1",
            Some(create_body("pvc-contract", 10)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_shape(&fixture("create_volume_reply.json"), &created, "create");
    let id = created["id"].as_str().unwrap().to_string();

    let available = api.wait_for(&id, "available").await;
    assert_shape(&fixture("volume.json"), &available, "volume");
    assert!(available["instance_id"].is_null());

    let (status, list) = api.call("GET", "/v2/volumes?region=LON1", None).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().expect("GET /v2/volumes is a bare array");
    assert_eq!(list.len(), 1);
    assert_shape(&fixture("volume.json"), &list[0], "list[0]");

    let instance = state::INSTANCES[0].0;
    let (status, reply) = api
        .call(
            "PUT",
            &format!("/v2/volumes/{id}/attach?region=LON1"),
            Some(json!({"instance_id": instance, "attach_at_boot": false, "region": "LON1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_shape(&fixture("result_success.json"), &reply, "attach");
    let attached = api.wait_for(&id, "attached").await;
    assert_shape(&fixture("volume.json"), &attached, "attached volume");
    assert_eq!(attached["instance_id"], instance);

    let (status, reply) = api
        .call(
            "PUT",
            &format!("/v2/volumes/{id}/detach?region=LON1"),
            Some(json!({"region": "LON1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_shape(&fixture("result_success.json"), &reply, "detach");
    api.wait_for(&id, "available").await;

    let (status, reply) = api
        .call(
            "PUT",
            &format!("/v2/volumes/{id}/resize?region=LON1"),
            Some(json!({"size_gb": 20, "region": "LON1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(api.wait_for(&id, "available").await["size_gb"], 20);

    let (status, reply) = api
        .call("DELETE", &format!("/v2/volumes/{id}?region=LON1"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_shape(&fixture("result_success.json"), &reply, "delete");
}

#[tokio::test]
async fn errors_have_civos_shape() {
    let api = Api::new();
    let (status, missing) = api
        .call(
            "GET",
            "/v2/volumes/00000000-0000-4000-8000-000000000000?region=LON1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_shape(&fixture("error.json"), &missing, "not found");
    assert_eq!(missing["code"], "database_volume_not_found");

    api.call(
        "POST",
        "/v2/volumes?region=LON1",
        Some(create_body("pvc-twice", 1)),
    )
    .await;
    let (_, duplicate) = api
        .call(
            "POST",
            "/v2/volumes?region=LON1",
            Some(create_body("pvc-twice", 1)),
        )
        .await;
    assert_shape(&fixture("error.json"), &duplicate, "duplicate");
    assert_eq!(duplicate["code"], "database_volume_duplicate_name");

    let (status, unauthenticated) = api
        .call_as("GET", "/v2/volumes?region=LON1", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated, fixture("requires_authentication.json"));

    // Injected faults: Rails' body for 5xx and 429 (no Civo code the
    // client would misread).
    let server_error: Value = serde_json::from_str(&civo::error_body(503)).unwrap();
    assert_eq!(server_error["status"], 503);
    let throttled: Value = serde_json::from_str(&civo::error_body(429)).unwrap();
    assert_eq!(throttled["status"], 429);
    assert!(throttled.get("code").is_none(), "{throttled}");
}

#[tokio::test]
async fn quota_and_cluster_instances_match_the_documented_ones() {
    let api = Api::new();
    let (status, quota) = api.call("GET", "/v2/quota?region=LON1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_shape(&fixture("quota.json"), &quota, "quota");

    let path = format!(
        "/v2/kubernetes/clusters/{}/instances?region=LON1",
        state::CLUSTER_ID
    );
    let (status, instances) = api.call("GET", &path, None).await;
    assert_eq!(status, StatusCode::OK);
    let instances = instances.as_array().expect("instances are an array");
    assert!(!instances.is_empty());
    for instance in instances {
        assert_shape(&fixture("cluster_instance.json"), instance, "instance");
    }
}

/// The error codes the official client (civogo's decodeError) knows for
/// the calls the emulator serves: an answer with any other code reaches
/// the client as "unknown error".
const KNOWN_CODES: &[&str] = &[
    "database_volume_not_found",
    "database_volume_duplicate_name",
    "database_volume_cannot_multiple_attach",
    "database_volume_still_attached_cannot_resize",
    "database_volume_not_attached",
    "database_volume_delete_failed",
    "database_volume_id_invalid",
    "database_instance_find",
    "database_kubernetes_cluster_not_found",
    "database_snapshot_not_found",
    "database_snapshot_create",
    "cannot_restore_new_volume",
    "cannot_resize_volume",
    "quota_limit_reached",
    "volume_invalid_size",
    "parameter_volume_size_incorrect",
    "parameter_volume_size_must_increase",
    "parameter_name_invalid",
    "parameter_size_missing",
    "parameter_value_missing",
    "parameter_empty_volume_id",
];

fn assert_known_code(answer: &Value, what: &str) {
    assert_shape(&fixture("error.json"), answer, what);
    let code = answer["code"].as_str().unwrap_or_default();
    assert!(
        KNOWN_CODES.contains(&code),
        "{what}: code {code:?} is not one the official client knows: {answer}"
    );
}

#[tokio::test]
async fn ping_clusters_and_volume_types_are_served() {
    let api = Api::new();
    let (status, _) = api.call("GET", "/v2/ping", None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, page) = api
        .call("GET", "/v2/kubernetes/clusters?region=LON1", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let documented = fixture("cluster_page.json");
    assert_shape(&documented, &page, "cluster page");
    assert_shape(&documented["items"][0], &page["items"][0], "cluster");
    assert_eq!(page["items"][0]["id"], state::CLUSTER_ID);

    let (status, types) = api.call("GET", "/v2/volumetypes?region=LON1", None).await;
    assert_eq!(status, StatusCode::OK, "{types}");
    let types = types.as_array().expect("volume types are a bare array");
    assert!(
        types
            .iter()
            .any(|t| t["name"] == state::DEFAULT_VOLUME_TYPE)
    );
    for t in types {
        assert_shape(&fixture("volume_type.json"), t, "volume type");
    }
}

#[tokio::test]
async fn every_refusal_carries_a_code_the_client_knows() {
    let api = Api::with_transition(60_000);
    let mut body = create_body("", 1);
    let (status, empty_name) = api
        .call("POST", "/v2/volumes?region=LON1", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_known_code(&empty_name, "empty name");

    body["name"] = json!("pvc-type");
    body["volume_type"] = json!("no-such-type");
    let (status, bad_type) = api
        .call("POST", "/v2/volumes?region=LON1", Some(body))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown volume types are refused"
    );
    assert_known_code(&bad_type, "unknown volume type");

    let (status, garbage) = api
        .call("POST", "/v2/volumes?region=LON1", Some(json!({"name": 5})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_known_code(&garbage, "malformed body");

    // A volume still being created: every action is refused.
    let (_, created) = api
        .call(
            "POST",
            "/v2/volumes?region=LON1",
            Some(create_body("pvc-busy", 1)),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let instance = state::INSTANCES[0].0;
    for (method, path, body) in [
        (
            "PUT",
            format!("/v2/volumes/{id}/attach?region=LON1"),
            json!({"instance_id": instance, "region": "LON1"}),
        ),
        (
            "PUT",
            format!("/v2/volumes/{id}/detach?region=LON1"),
            json!({}),
        ),
        (
            "PUT",
            format!("/v2/volumes/{id}/resize?region=LON1"),
            json!({"size_gb": 5}),
        ),
        ("DELETE", format!("/v2/volumes/{id}?region=LON1"), json!({})),
    ] {
        let (status, answer) = api.call(method, &path, Some(body)).await;
        assert!(status.is_client_error(), "{method} {path}: {status}");
        assert_known_code(&answer, &format!("{method} {path} while creating"));
    }

    let (status, answer) = api
        .call(
            "PUT",
            &format!("/v2/volumes/{id}/attach?region=LON1"),
            Some(json!({"instance_id": "00000000-0000-4000-8000-000000000000"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_known_code(&answer, "attach to an unknown instance");
}

/// Volume snapshots as the official client calls them: created under the
/// volume, listed per volume and for the account, deleted by ID, restored
/// with `snapshot_id` on volume create; `creating` until done.
#[tokio::test]
async fn volume_snapshots_follow_the_clients_calls() {
    let api = Api::with_transition(50);
    let (_, created) = api
        .call(
            "POST",
            "/v2/volumes?region=LON1",
            Some(create_body("pvc-snap", 4)),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    api.wait_for(&id, "available").await;

    let (status, snapshot) = api
        .call(
            "POST",
            &format!("/v2/volumes/{id}/snapshots?region=LON1"),
            Some(json!({"name": "snap-1", "description": "", "region": "LON1"})),
        )
        .await;
    assert!(status.is_success(), "{status}: {snapshot}");
    let documented = fixture("volume_snapshot.json");
    assert_shape(&documented, &snapshot, "created snapshot");
    assert_eq!(snapshot["state"], "creating");
    assert_eq!(snapshot["volume_id"], id.as_str());
    assert_eq!(snapshot["restore_size"], 4);
    let snapshot_id = snapshot["snapshot_id"].as_str().unwrap().to_string();

    let (status, early) = api
        .call(
            "POST",
            "/v2/volumes?region=LON1",
            Some(json!({"name": "pvc-early", "size_gb": 4, "snapshot_id": snapshot_id})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{early}");
    assert_known_code(&early, "restore before the snapshot is available");

    let mut ready = Value::Null;
    for _ in 0..200 {
        let (_, got) = api
            .call(
                "GET",
                &format!("/v2/volumes/{id}/snapshots/{snapshot_id}?region=LON1"),
                None,
            )
            .await;
        if got["state"] == "available" {
            ready = got;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_shape(&documented, &ready, "snapshot by volume");

    let (_, per_volume) = api
        .call(
            "GET",
            &format!("/v2/volumes/{id}/snapshots?region=LON1"),
            None,
        )
        .await;
    assert_eq!(per_volume.as_array().map(Vec::len), Some(1), "{per_volume}");
    let (_, all) = api
        .call(
            "GET",
            "/v2/snapshots?resource_type=volume&region=LON1",
            None,
        )
        .await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    assert_shape(&documented, &all[0], "account list");
    let (status, one) = api
        .call(
            "GET",
            &format!("/v2/snapshots/{snapshot_id}?resource_type=volume&region=LON1"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["snapshot_id"], snapshot_id.as_str());

    let (status, small) = api
        .call(
            "POST",
            "/v2/volumes?region=LON1",
            Some(json!({"name": "pvc-small", "size_gb": 2, "snapshot_id": snapshot_id})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{small}");
    assert_known_code(&small, "restore smaller than the snapshot");
    let (status, restored) = api
        .call(
            "POST",
            "/v2/volumes?region=LON1",
            Some(json!({"name": "pvc-restored", "size_gb": 6, "snapshot_id": snapshot_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    let restored_id = restored["id"].as_str().unwrap().to_string();
    assert_eq!(api.wait_for(&restored_id, "available").await["size_gb"], 6);

    // A snapshot outlives its volume unless the delete asks otherwise.
    let (status, _) = api
        .call("DELETE", &format!("/v2/volumes/{id}?region=LON1"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, kept) = api
        .call(
            "GET",
            &format!("/v2/snapshots/{snapshot_id}?resource_type=volume&region=LON1"),
            None,
        )
        .await;
    assert_eq!(
        (status, &kept["state"]),
        (StatusCode::OK, &json!("available"))
    );
    let mut taken = None;
    for _ in 0..200 {
        let (status, s) = api
            .call(
                "POST",
                &format!("/v2/volumes/{restored_id}/snapshots?region=LON1"),
                Some(json!({"name": "snap-2"})),
            )
            .await;
        if status.is_success() {
            taken = s["snapshot_id"].as_str().map(String::from);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let taken = taken.expect("a snapshot of the restored volume");
    let (status, _) = api
        .call(
            "DELETE",
            &format!("/v2/volumes/{restored_id}?region=LON1&delete_snapshot=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, going) = api
        .call(
            "GET",
            &format!("/v2/snapshots/{taken}?resource_type=volume&region=LON1"),
            None,
        )
        .await;
    assert_eq!(going["state"], "deleting", "{going}");

    let (status, reply) = api
        .call(
            "DELETE",
            &format!("/v2/snapshots/{snapshot_id}?region=LON1"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_shape(&fixture("result_success.json"), &reply, "delete snapshot");
    let mut gone = Value::Null;
    for _ in 0..200 {
        let (status, got) = api
            .call(
                "GET",
                &format!("/v2/snapshots/{snapshot_id}?resource_type=volume&region=LON1"),
                None,
            )
            .await;
        if status == StatusCode::NOT_FOUND {
            gone = got;
            break;
        }
        assert_eq!(got["state"], "deleting");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_known_code(&gone, "deleted snapshot");
    assert_eq!(gone["code"], "database_snapshot_not_found");
    let (status, missing) = api
        .call(
            "POST",
            "/v2/volumes/00000000-0000-4000-8000-000000000000/snapshots?region=LON1",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["code"], "database_volume_not_found");
}
