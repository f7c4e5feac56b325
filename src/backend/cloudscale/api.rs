//! Typed calls to the cloudscale.ch API (v1) and its metadata service, and
//! the one place where the API's answers become CSI errors.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::http::{ApiClient, ApiError, Request};
use crate::error::CsiError;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Zone {
    pub slug: String,
}

/// A volume as the API returns it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub uuid: String,
    pub name: String,
    pub size_gb: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub zone: Zone,
    #[serde(default)]
    pub server_uuids: Vec<String>,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SourceVolume {
    pub uuid: String,
}

/// A volume snapshot as the API returns it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub uuid: String,
    pub name: String,
    pub size_gb: u64,
    pub created_at: String,
    pub status: String,
    pub source_volume: SourceVolume,
    #[serde(default)]
    pub zone: Option<Zone>,
}

/// What the node learns from the metadata service.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    pub availability_zone: String,
    pub meta: MetadataMeta,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MetadataMeta {
    pub cloudscale_uuid: String,
}

/// The metadata document's path below the metadata service's URL.
pub const METADATA_PATH: &str = "/openstack/2017-02-22/meta_data.json";

/// Everything but RFC 3986's unreserved characters is escaped in a query value.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// The API calls the backend makes.
pub struct Api {
    pub client: ApiClient,
}

impl Api {
    /// Volumes named `name` (the API's filter, checked again here).
    pub async fn volumes_named(&self, name: &str) -> Result<Vec<Volume>, ApiError> {
        let path = format!("/v1/volumes?name={}", encode(name));
        let mut list: Vec<Volume> = self
            .client
            .json(&Request::get("list_volumes", path))
            .await?;
        list.retain(|v| v.name == name);
        Ok(list)
    }

    pub async fn volumes(&self) -> Result<Vec<Volume>, ApiError> {
        self.client
            .json(&Request::get("list_volumes", "/v1/volumes"))
            .await
    }

    pub async fn volume(&self, uuid: &str) -> Result<Volume, ApiError> {
        self.client
            .json(&Request::get("get_volume", format!("/v1/volumes/{uuid}")))
            .await
    }

    /// POST is not repeated by the client: a lost answer may have created
    /// the volume, which the caller finds by name.
    pub async fn create_volume(&self, body: Value) -> Result<Volume, ApiError> {
        self.client
            .json(&Request::post("create_volume", "/v1/volumes", body))
            .await
    }

    /// One attribute per PATCH (the API refuses more); setting an attribute
    /// to a value is safe to repeat.
    pub async fn patch_volume(
        &self,
        operation: &'static str,
        uuid: &str,
        attribute: &str,
        value: Value,
    ) -> Result<(), ApiError> {
        let mut body = serde_json::Map::new();
        body.insert(attribute.to_string(), value);
        let body = Value::Object(body);
        self.client
            .send(&Request::patch(operation, format!("/v1/volumes/{uuid}"), body).idempotent())
            .await
            .map(|_| ())
    }

    pub async fn delete_volume(&self, uuid: &str) -> Result<(), ApiError> {
        self.client
            .send(&Request::delete(
                "delete_volume",
                format!("/v1/volumes/{uuid}"),
            ))
            .await
            .map(|_| ())
    }

    pub async fn snapshots_named(&self, name: &str) -> Result<Vec<Snapshot>, ApiError> {
        let path = format!("/v1/volume-snapshots?name={}", encode(name));
        let mut list: Vec<Snapshot> = self
            .client
            .json(&Request::get("list_snapshots", path))
            .await?;
        list.retain(|s| s.name == name);
        Ok(list)
    }

    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, ApiError> {
        self.client
            .json(&Request::get("list_snapshots", "/v1/volume-snapshots"))
            .await
    }

    pub async fn snapshot(&self, uuid: &str) -> Result<Snapshot, ApiError> {
        self.client
            .json(&Request::get(
                "get_snapshot",
                format!("/v1/volume-snapshots/{uuid}"),
            ))
            .await
    }

    pub async fn create_snapshot(&self, name: &str, source: &str) -> Result<Snapshot, ApiError> {
        let body = json!({ "name": name, "source_volume": source });
        self.client
            .json(&Request::post(
                "create_snapshot",
                "/v1/volume-snapshots",
                body,
            ))
            .await
    }

    pub async fn delete_snapshot(&self, uuid: &str) -> Result<(), ApiError> {
        self.client
            .send(&Request::delete(
                "delete_snapshot",
                format!("/v1/volume-snapshots/{uuid}"),
            ))
            .await
            .map(|_| ())
    }
}

/// Reads the node's identity from the metadata service.
pub async fn metadata(client: &ApiClient) -> Result<Metadata, ApiError> {
    client.json(&Request::get("metadata", METADATA_PATH)).await
}

/// The text of an error body: `{"detail": "..."}` or `{"field": "..."}`.
fn body_text(error: &ApiError) -> String {
    match error {
        ApiError::Status { body, .. } => match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) if k == "detail" => s.clone(),
                    Value::String(s) => format!("{k}: {s}"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => body.clone(),
        },
        _ => String::new(),
    }
}

/// Whether a 400 answer is about the field `field` (`{"field": ...}`).
pub fn is_field_error(error: &ApiError, field: &str) -> bool {
    match error {
        ApiError::Status {
            status: 400, body, ..
        } => serde_json::from_str::<Value>(body)
            .ok()
            .is_some_and(|v| v.get(field).is_some()),
        _ => false,
    }
}

/// The CSI error of a failed call: the answers cloudscale gives for limits
/// and conflicts get their codes; everything else the generic mapping.
pub fn to_csi(error: &ApiError) -> CsiError {
    let text = body_text(error).to_lowercase();
    let message = error.to_string();
    if error.status() == Some(400) {
        if text.contains("not possible to attach more than") {
            return CsiError::ResourceExhausted(format!(
                "{message} (the server's attach limit is reached; detach a volume or schedule elsewhere)"
            ));
        }
        if text.contains("snapshots per volume") {
            return CsiError::ResourceExhausted(format!(
                "{message} (delete old snapshots of this volume first)"
            ));
        }
        if text.contains("snapshots exist for this volume") {
            return CsiError::FailedPrecondition(format!(
                "{message} (delete the volume's snapshots first)"
            ));
        }
        if text.contains("quota") || text.contains("limit") {
            return CsiError::ResourceExhausted(message);
        }
    }
    error.to_csi()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, body: &str) -> ApiError {
        ApiError::Status {
            operation: "x".into(),
            status,
            body: body.into(),
        }
    }

    #[test]
    fn known_answers_get_their_codes() {
        let cases = [
            (
                status(
                    400,
                    r#"{"detail":"Due to internal limitations, it is currently not possible to attach more than 128 volumes"}"#,
                ),
                tonic::Code::ResourceExhausted,
            ),
            (
                status(
                    400,
                    r#"{"detail":"It is not possible to create more than 10 snapshots per volume."}"#,
                ),
                tonic::Code::ResourceExhausted,
            ),
            (
                status(400, r#"{"detail":"Snapshots exist for this volume."}"#),
                tonic::Code::FailedPrecondition,
            ),
            (
                status(400, r#"{"size_gb":"Volumes cannot be shrunk."}"#),
                tonic::Code::InvalidArgument,
            ),
            (
                status(404, r#"{"detail":"Not found."}"#),
                tonic::Code::NotFound,
            ),
            (
                status(503, r#"{"detail":"unavailable"}"#),
                tonic::Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(to_csi(&error).code(), code, "{error}");
        }
    }

    #[test]
    fn field_errors_are_recognised() {
        let e = status(400, r#"{"zone":"Object with slug=x does not exist."}"#);
        assert!(is_field_error(&e, "zone"));
        assert!(!is_field_error(&e, "size_gb"));
        assert!(!is_field_error(&status(500, r#"{"zone":"x"}"#), "zone"));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("pvc-1_a.b~"), "pvc-1_a.b~");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn documented_payloads_decode() {
        let volume: Volume = serde_json::from_str(
            r#"{"href":"https://api.cloudscale.ch/v1/volumes/2db69ba3-1864-4608-853a-0771b6885a3a",
 "created_at":"2019-05-29T13:18:42.511407Z","uuid":"2db69ba3-1864-4608-853a-0771b6885a3a",
 "name":"capitano-root","zone":{"slug":"lpg1"},"size_gb":150,"type":"ssd",
 "server_uuids":["9e1f9a7f-e8d0-4086-ad7e-fea161d7c5f7"],"tags":{}}"#,
        )
        .unwrap();
        assert_eq!(volume.size_gb, 150);
        assert_eq!(volume.zone.slug, "lpg1");
        assert_eq!(volume.server_uuids.len(), 1);
        let metadata: Metadata = serde_json::from_str(
            r#"{"availability_zone":"lpg1","meta":{"cloudscale_uuid":"9e1f9a7f-e8d0-4086-ad7e-fea161d7c5f7"}}"#,
        )
        .unwrap();
        assert_eq!(
            metadata.meta.cloudscale_uuid,
            "9e1f9a7f-e8d0-4086-ad7e-fea161d7c5f7"
        );
    }
}
