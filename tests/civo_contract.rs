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
        Api(civo::router(Options {
            devices: None,
            transition_ms: 0,
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

    // Injected faults: Rails' 5xx body, Civo's error shape for 429.
    let server_error: Value = serde_json::from_str(&civo::error_body(503)).unwrap();
    assert_eq!(server_error["status"], 503);
    let throttled: Value = serde_json::from_str(&civo::error_body(429)).unwrap();
    assert_shape(&fixture("error.json"), &throttled, "429");
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
