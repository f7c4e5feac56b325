//! Contract tests: the cloudscale emulator answers with the documented
//! payloads of the real API (tests/fixtures/cloudscale/, taken from the
//! API's published examples): the same fields with the same JSON types,
//! the documented status codes, and error bodies whose values are strings.

use std::sync::Arc;

use multicsi::emulator::cloudscale::{self, SERVER_UUID};
use multicsi::emulator::{Faults, Options};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/cloudscale/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// Where `actual` differs in shape from `documented`: missing or extra
/// fields, other JSON types (recursively; arrays by their first element).
fn shape_differences(documented: &Value, actual: &Value, at: &str, out: &mut Vec<String>) {
    match (documented, actual) {
        (Value::Object(d), Value::Object(a)) => {
            for (key, dv) in d {
                match a.get(key) {
                    Some(av) => shape_differences(dv, av, &format!("{at}.{key}"), out),
                    None => out.push(format!("{at}.{key} is missing")),
                }
            }
            for key in a.keys().filter(|k| !d.contains_key(*k)) {
                out.push(format!("{at}.{key} is not in the documented payload"));
            }
        }
        (Value::Array(d), Value::Array(a)) => {
            if let (Some(dv), Some(av)) = (d.first(), a.first()) {
                shape_differences(dv, av, &format!("{at}[0]"), out);
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => {}
        (d, a) => out.push(format!("{at}: documented {d}, emulator gave {a}")),
    }
}

fn assert_shape(documented: &Value, actual: &Value, what: &str) {
    let mut diffs = Vec::new();
    shape_differences(documented, actual, "", &mut diffs);
    assert!(diffs.is_empty(), "{what}: {diffs:?}\nemulator: {actual}");
}

/// An error body the SDK can read: an object of strings.
fn assert_error_body(body: &Value, what: &str) {
    let object = body.as_object().unwrap_or_else(|| panic!("{what}: {body}"));
    assert!(!object.is_empty(), "{what}: empty error body");
    assert!(
        object.values().all(Value::is_string),
        "{what}: error values must be strings: {body}"
    );
}

struct Emulator {
    url: String,
    http: reqwest::Client,
    _runtime_guard: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Emulator {
    async fn start() -> Self {
        Self::start_with(20).await
    }

    /// An emulator whose snapshots take `transition_ms` to become available.
    async fn start_with(transition_ms: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = cloudscale::router(Options {
            devices: None,
            transition_ms,
        });
        let task = tokio::spawn(multicsi::emulator::serve(
            listener,
            app,
            Arc::new(Faults::none()),
            cloudscale::error_body,
        ));
        Emulator {
            url,
            http: multicsi::cloud::http::client_builder().build().unwrap(),
            _runtime_guard: task,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth("contract-token");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await.expect("emulator answers");
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, value)
    }
}

use reqwest::Method;

#[tokio::test]
async fn volume_payloads_and_status_codes_match_the_api() {
    let e = Emulator::start().await;
    let (status, created) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "pvc-contract", "size_gb": 5, "type": "ssd", "zone": "lpg1"})),
        )
        .await;
    assert_eq!(status, 201, "POST creates: {created}");
    let expected = fixture("volume.json");
    assert_shape(&expected, &created, "POST v1/volumes");
    let uuid = created["uuid"].as_str().unwrap().to_string();
    assert!(
        multicsi::cloud::timestamp::parse(created["created_at"].as_str().unwrap()).is_some(),
        "created_at is RFC 3339"
    );

    let (status, body) = e
        .call(
            Method::PATCH,
            &format!("/v1/volumes/{uuid}"),
            Some(json!({"server_uuids": [SERVER_UUID]})),
        )
        .await;
    assert_eq!((status, body), (204, Value::Null), "PATCH answers 204");
    let (status, got) = e
        .call(Method::GET, &format!("/v1/volumes/{uuid}"), None)
        .await;
    assert_eq!(status, 200);
    assert_shape(&expected, &got, "GET v1/volumes/{uuid}");
    assert_eq!(got["server_uuids"], json!([SERVER_UUID]));

    let (status, list) = e
        .call(Method::GET, "/v1/volumes?name=pvc-contract", None)
        .await;
    assert_eq!(status, 200);
    let list = list.as_array().expect("a bare JSON array, no pagination");
    assert_eq!(list.len(), 1);
    assert_shape(&expected, &list[0], "GET v1/volumes?name=");
    let (_, none) = e.call(Method::GET, "/v1/volumes?name=other", None).await;
    assert_eq!(none, json!([]));

    let (status, body) = e
        .call(
            Method::PATCH,
            &format!("/v1/volumes/{uuid}"),
            Some(json!({"size_gb": 6, "name": "x"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_error_body(&body, "PATCH with two attributes");
    assert!(body.to_string().contains("Only one attribute"), "{body}");

    let (status, body) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "bulk", "size_gb": 150, "type": "bulk"})),
        )
        .await;
    assert_eq!(status, 400, "bulk sizes are multiples of 100");
    assert_error_body(&body, "bulk size");

    e.call(
        Method::PATCH,
        &format!("/v1/volumes/{uuid}"),
        Some(json!({"server_uuids": []})),
    )
    .await;
    let (status, body) = e
        .call(Method::DELETE, &format!("/v1/volumes/{uuid}"), None)
        .await;
    assert_eq!((status, body), (204, Value::Null), "DELETE answers 204");
    let (status, body) = e
        .call(Method::GET, &format!("/v1/volumes/{uuid}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body, fixture("not-found.json"));
}

#[tokio::test]
async fn snapshot_payloads_and_lifecycle_match_the_api() {
    let e = Emulator::start().await;
    let (_, volume) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "pvc-x", "size_gb": 50})),
        )
        .await;
    let volume_uuid = volume["uuid"].as_str().unwrap().to_string();
    let (status, snapshot) = e
        .call(
            Method::POST,
            "/v1/volume-snapshots",
            Some(json!({"name": "snap-1", "source_volume": volume_uuid})),
        )
        .await;
    assert_eq!(status, 201);
    let documented = fixture("snapshot.json");
    assert_shape(&documented, &snapshot, "POST v1/volume-snapshots");
    let uuid = snapshot["uuid"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let (status, got) = e
        .call(Method::GET, &format!("/v1/volume-snapshots/{uuid}"), None)
        .await;
    assert_eq!(status, 200);
    assert_shape(&documented, &got, "GET v1/volume-snapshots/{uuid}");
    assert_eq!(got["status"], "available");
    assert_eq!(got["source_volume"]["uuid"], volume_uuid.as_str());

    // A volume with snapshots cannot be deleted.
    let (status, body) = e
        .call(Method::DELETE, &format!("/v1/volumes/{volume_uuid}"), None)
        .await;
    assert_eq!(status, 400);
    assert_error_body(&body, "DELETE of a volume with snapshots");
    assert!(body.to_string().contains("Snapshots exist for this volume"));

    // A restore takes size, type and zone from the snapshot.
    let (status, restored) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "pvc-restored", "volume_snapshot_uuid": uuid})),
        )
        .await;
    assert_eq!(status, 201, "{restored}");
    assert_eq!(restored["size_gb"], 50);
    assert_eq!(restored["type"], "ssd");

    // DELETE answers at once; the snapshot lingers as "deleting", then 404.
    let (status, _) = e
        .call(
            Method::DELETE,
            &format!("/v1/volume-snapshots/{uuid}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, lingering) = e
        .call(Method::GET, &format!("/v1/volume-snapshots/{uuid}"), None)
        .await;
    assert_eq!(lingering["status"], "deleting");
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let (status, body) = e
        .call(Method::GET, &format!("/v1/volume-snapshots/{uuid}"), None)
        .await;
    assert_eq!((status, body), (404, fixture("not-found.json")));
}

#[tokio::test]
async fn metadata_and_error_bodies_match_the_api() {
    let e = Emulator::start().await;
    let reply = e
        .http
        .get(format!("{}{}", e.url, cloudscale::METADATA_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200, "no token needed");
    let metadata: Value = reply.json().await.unwrap();
    let documented = fixture("metadata.json");
    assert_eq!(metadata["meta"]["cloudscale_uuid"], SERVER_UUID);
    for key in ["availability_zone", "meta"] {
        let mut diffs = Vec::new();
        shape_differences(&documented[key], &metadata[key], key, &mut diffs);
        assert!(diffs.is_empty(), "{diffs:?}");
    }

    let reply = e
        .http
        .get(format!("{}/v1/volumes", e.url))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 401, "the API needs a token");
    assert_error_body(&reply.json().await.unwrap(), "401");

    for status in [429, 500, 502, 503] {
        let body: Value = serde_json::from_str(&cloudscale::error_body(status)).unwrap();
        assert_error_body(&body, &format!("injected {status}"));
    }

    // The attach limit answers with the message the driver maps.
    let mut attached = 0;
    loop {
        let (_, v) = e
            .call(
                Method::POST,
                "/v1/volumes",
                Some(json!({"name": format!("v{attached}"), "size_gb": 1})),
            )
            .await;
        let (status, body) = e
            .call(
                Method::PATCH,
                &format!("/v1/volumes/{}", v["uuid"].as_str().unwrap()),
                Some(json!({"server_uuids": [SERVER_UUID]})),
            )
            .await;
        if status == 400 {
            assert_error_body(&body, "attach limit");
            assert!(
                body.to_string()
                    .contains("not possible to attach more than 128 volumes"),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 204);
        attached += 1;
        assert!(attached <= 200, "no attach limit");
    }
    assert_eq!(attached, cloudscale::MAX_ATTACHED);
}

/// The SDK's own integration tests restore from a snapshot right after
/// creating it: the API accepts a snapshot that is still being made.
#[tokio::test]
async fn a_restore_from_a_snapshot_being_created_is_accepted() {
    let e = Emulator::start_with(60_000).await;
    let (_, volume) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "pvc-src", "size_gb": 3, "type": "ssd"})),
        )
        .await;
    let (_, snapshot) = e
        .call(
            Method::POST,
            "/v1/volume-snapshots",
            Some(json!({"name": "snap-new", "source_volume": volume["uuid"]})),
        )
        .await;
    assert_ne!(snapshot["status"], "available", "{snapshot}");
    let (status, restored) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "pvc-early", "volume_snapshot_uuid": snapshot["uuid"]})),
        )
        .await;
    assert_eq!(status, 201, "{restored}");
    assert_eq!(restored["size_gb"], 3);
}

/// `?tag:KEY=` (empty value) means "has tag KEY"; `?tag:KEY=VALUE`
/// matches the value.
#[tokio::test]
async fn an_empty_tag_filter_matches_every_volume_with_the_tag() {
    let e = Emulator::start().await;
    for (name, tags) in [
        ("tagged-a", json!({"team": "a"})),
        ("tagged-b", json!({"team": "b"})),
        ("untagged", json!({})),
    ] {
        let (status, _) = e
            .call(
                Method::POST,
                "/v1/volumes",
                Some(json!({"name": name, "size_gb": 1, "tags": tags})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let names = |list: &Value| -> Vec<String> {
        let mut names: Vec<String> = list
            .as_array()
            .expect("a bare array")
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let (_, any) = e.call(Method::GET, "/v1/volumes?tag:team=", None).await;
    assert_eq!(names(&any), ["tagged-a", "tagged-b"]);
    let (_, one) = e.call(Method::GET, "/v1/volumes?tag:team=b", None).await;
    assert_eq!(names(&one), ["tagged-b"]);
}

/// Snapshots are renamed and retagged with PATCH (204, one attribute).
#[tokio::test]
async fn a_snapshot_is_renamed_and_retagged_with_patch() {
    let e = Emulator::start().await;
    let (_, volume) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "pvc-p", "size_gb": 1})),
        )
        .await;
    let (_, snapshot) = e
        .call(
            Method::POST,
            "/v1/volume-snapshots",
            Some(json!({"name": "before", "source_volume": volume["uuid"]})),
        )
        .await;
    let path = format!(
        "/v1/volume-snapshots/{}",
        snapshot["uuid"].as_str().unwrap()
    );
    let (status, body) = e
        .call(Method::PATCH, &path, Some(json!({"name": "after"})))
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = e
        .call(Method::PATCH, &path, Some(json!({"tags": {"k": "v"}})))
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (_, got) = e.call(Method::GET, &path, None).await;
    assert_eq!(got["name"], "after");
    assert_eq!(got["tags"], json!({"k": "v"}));
    let (status, body) = e
        .call(Method::PATCH, &path, Some(json!({"name": "x", "tags": {}})))
        .await;
    assert_eq!(status, 400, "one attribute per PATCH: {body}");
    assert_error_body(&body, "PATCH snapshot with two attributes");
    let (status, body) = e
        .call(
            Method::PATCH,
            "/v1/volume-snapshots/00000000-0000-4000-8000-000000000000",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!((status, body), (404, fixture("not-found.json")));
}

/// Attaching to a server that does not exist is a 400 about the field.
#[tokio::test]
async fn attaching_to_an_unknown_server_names_the_field() {
    let e = Emulator::start().await;
    let (_, volume) = e
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "pvc-u", "size_gb": 1})),
        )
        .await;
    let unknown = "11111111-2222-4333-8444-555555555555";
    let (status, body) = e
        .call(
            Method::PATCH,
            &format!("/v1/volumes/{}", volume["uuid"].as_str().unwrap()),
            Some(json!({"server_uuids": [unknown]})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"server_uuids": format!("Object with uuid={unknown} does not exist.")})
    );
}
