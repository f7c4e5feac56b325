//! Typed calls to the Civo API (v2) and the one place its errors become
//! CSI errors. Every request carries `?region=`; errors are
//! `{"code","reason","details"}` and the `code` decides, not the status.

use serde::Deserialize;
use serde_json::json;

use crate::cloud::http::{ApiClient, ApiError, Request};
use crate::error::CsiError;

/// A volume as the API shows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ApiVolume {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    pub size_gb: u64,
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

impl ApiVolume {
    pub fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("creating")
    }

    /// Whether the volume is between two resting states.
    pub fn in_transition(&self) -> bool {
        matches!(
            self.status(),
            "creating" | "attaching" | "detaching" | "resizing"
        )
    }

    /// The instance the volume is attached (or attaching) to.
    pub fn attached_to(&self) -> Option<&str> {
        match self.status() {
            "attached" | "attaching" | "detaching" => {
                self.instance_id.as_deref().filter(|i| !i.is_empty())
            }
            _ => None,
        }
    }
}

/// A volume snapshot as the API shows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ApiSnapshot {
    pub snapshot_id: String,
    pub name: String,
    pub volume_id: String,
    /// GB a restored volume needs at least.
    pub restore_size: u64,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub creation_time: Option<String>,
}

impl ApiSnapshot {
    pub fn is_available(&self) -> bool {
        self.state.eq_ignore_ascii_case("available")
    }

    pub fn is_deleting(&self) -> bool {
        self.state.eq_ignore_ascii_case("deleting")
    }
}

/// The account quota (the fields the driver reads).
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Quota {
    pub disk_gb_limit: u64,
    pub disk_gb_usage: u64,
    pub disk_volume_count_limit: u64,
    pub disk_volume_count_usage: u64,
}

impl Quota {
    pub fn free_gb(&self) -> u64 {
        if self.disk_volume_count_usage >= self.disk_volume_count_limit {
            return 0;
        }
        self.disk_gb_limit.saturating_sub(self.disk_gb_usage)
    }
}

/// An instance of a Kubernetes cluster.
#[derive(Clone, Debug, Deserialize)]
pub struct Instance {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Cluster {
    #[serde(default)]
    volume_type: Option<String>,
}

/// The Civo API of one region.
#[derive(Debug)]
pub struct CivoApi {
    client: ApiClient,
    region: String,
}

impl CivoApi {
    pub fn new(client: ApiClient, region: &str) -> Self {
        CivoApi {
            client,
            region: region.to_string(),
        }
    }

    fn path(&self, path: &str) -> String {
        format!("{path}?region={}", self.region)
    }

    pub async fn list_volumes(&self) -> Result<Vec<ApiVolume>, ApiError> {
        self.client
            .json(&Request::get("list_volumes", self.path("/v2/volumes")))
            .await
    }

    pub async fn get_volume(&self, id: &str) -> Result<ApiVolume, ApiError> {
        self.client
            .json(&Request::get(
                "get_volume",
                self.path(&format!("/v2/volumes/{id}")),
            ))
            .await
    }

    /// Creates a volume (from `snapshot_id` when given); returns its ID.
    /// Safe to repeat: names are unique per region, so a repeat answers
    /// `database_volume_duplicate_name`.
    pub async fn create_volume(
        &self,
        name: &str,
        size_gb: u64,
        volume_type: Option<&str>,
        cluster_id: Option<&str>,
        snapshot_id: Option<&str>,
    ) -> Result<String, ApiError> {
        let mut body = json!({
            "name": name,
            "size_gb": size_gb,
            "region": self.region,
            "bootable": false,
        });
        if let Some(t) = volume_type {
            body["volume_type"] = json!(t);
        }
        if let Some(c) = cluster_id {
            body["cluster_id"] = json!(c);
        }
        if let Some(s) = snapshot_id {
            body["snapshot_id"] = json!(s);
        }
        let request = Request::post("create_volume", self.path("/v2/volumes"), body).idempotent();
        let created: Created = self.client.json(&request).await?;
        Ok(created.id)
    }

    pub async fn delete_volume(&self, id: &str) -> Result<(), ApiError> {
        let path = self.path(&format!("/v2/volumes/{id}"));
        self.client
            .send(&Request::delete("delete_volume", path))
            .await
            .map(|_| ())
    }

    pub async fn attach(&self, id: &str, instance_id: &str) -> Result<(), ApiError> {
        let body =
            json!({ "instance_id": instance_id, "attach_at_boot": false, "region": self.region });
        let path = self.path(&format!("/v2/volumes/{id}/attach"));
        self.client
            .send(&Request::put("attach_volume", path, body))
            .await
            .map(|_| ())
    }

    pub async fn detach(&self, id: &str) -> Result<(), ApiError> {
        let body = json!({ "region": self.region });
        let path = self.path(&format!("/v2/volumes/{id}/detach"));
        self.client
            .send(&Request::put("detach_volume", path, body))
            .await
            .map(|_| ())
    }

    pub async fn resize(&self, id: &str, size_gb: u64) -> Result<(), ApiError> {
        let body = json!({ "size_gb": size_gb, "region": self.region });
        let path = self.path(&format!("/v2/volumes/{id}/resize"));
        self.client
            .send(&Request::put("resize_volume", path, body))
            .await
            .map(|_| ())
    }

    /// Starts a snapshot of a volume (the official client's call).
    pub async fn create_snapshot(
        &self,
        volume_id: &str,
        name: &str,
    ) -> Result<ApiSnapshot, ApiError> {
        let body = json!({ "name": name, "description": "", "region": self.region });
        let path = self.path(&format!("/v2/volumes/{volume_id}/snapshots"));
        self.client
            .json(&Request::post("create_snapshot", path, body))
            .await
    }

    /// The volume snapshots of the region.
    pub async fn list_snapshots(&self) -> Result<Vec<ApiSnapshot>, ApiError> {
        let path = format!("/v2/snapshots?resource_type=volume&region={}", self.region);
        self.client
            .json(&Request::get("list_snapshots", path))
            .await
    }

    pub async fn get_snapshot(&self, id: &str) -> Result<ApiSnapshot, ApiError> {
        let path = format!(
            "/v2/snapshots/{id}?resource_type=volume&region={}",
            self.region
        );
        self.client.json(&Request::get("get_snapshot", path)).await
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        let path = self.path(&format!("/v2/snapshots/{id}"));
        self.client
            .send(&Request::delete("delete_snapshot", path))
            .await
            .map(|_| ())
    }

    pub async fn quota(&self) -> Result<Quota, ApiError> {
        self.client
            .json(&Request::get("get_quota", self.path("/v2/quota")))
            .await
    }

    pub async fn cluster_instances(&self, cluster_id: &str) -> Result<Vec<Instance>, ApiError> {
        let path = self.path(&format!("/v2/kubernetes/clusters/{cluster_id}/instances"));
        self.client
            .json(&Request::get("list_cluster_instances", path))
            .await
    }

    /// The volume type of a cluster's volumes, if the cluster names one.
    pub async fn cluster_volume_type(&self, cluster_id: &str) -> Result<Option<String>, ApiError> {
        let path = self.path(&format!("/v2/kubernetes/clusters/{cluster_id}"));
        let cluster: Cluster = self.client.json(&Request::get("get_cluster", path)).await?;
        Ok(cluster.volume_type.filter(|t| !t.is_empty()))
    }
}

/// The Civo error code of a failed call (`code` in the body), or
/// `requires_authentication` for the API's authentication answer.
pub fn code(e: &ApiError) -> Option<String> {
    let ApiError::Status { body, .. } = e else {
        return None;
    };
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    if let Some(code) = value.get("code").and_then(|c| c.as_str()) {
        return Some(code.to_string());
    }
    value
        .get("result")
        .and_then(|r| r.as_str())
        .filter(|r| *r == "requires_authentication")
        .map(str::to_string)
}

/// Whether a failure says the volume does not exist.
pub fn is_volume_not_found(e: &ApiError) -> bool {
    code(e).as_deref() == Some("database_volume_not_found")
        || (e.is_not_found() && code(e).is_none())
}

/// Whether a failure says the snapshot does not exist.
pub fn is_snapshot_not_found(e: &ApiError) -> bool {
    code(e).as_deref() == Some("database_snapshot_not_found")
        || (e.is_not_found() && code(e).is_none())
}

/// Whether a failure is the duplicate-name answer of a create.
pub fn is_duplicate_name(e: &ApiError) -> bool {
    code(e).as_deref() == Some("database_volume_duplicate_name")
}

/// Whether a failure says the volume is not attached.
pub fn is_not_attached(e: &ApiError) -> bool {
    code(e).as_deref() == Some("database_volume_not_attached")
}

/// Whether a failure asked for a larger size than the volume has.
pub fn is_size_must_increase(e: &ApiError) -> bool {
    code(e).as_deref() == Some("parameter_volume_size_must_increase")
}

/// The CSI error of a failed call; `what` names the object, e.g.
/// `volume 5f0c...`.
pub fn to_csi(e: &ApiError, what: &str) -> CsiError {
    let Some(code) = code(e) else {
        return e.to_csi();
    };
    let message = format!("{what}: {e}");
    match code.as_str() {
        "database_volume_not_found" => CsiError::NotFound(format!("{what} does not exist: {e}")),
        "database_instance_find" => CsiError::NotFound(format!(
            "{what}: the node is not a Civo instance in this region: {e}"
        )),
        "database_kubernetes_cluster_not_found" => CsiError::FailedPrecondition(format!(
            "{message} (check CIVO_CLUSTER_ID and CIVO_REGION)"
        )),
        "requires_authentication" => {
            CsiError::FailedPrecondition(format!("{message} (check CIVO_API_KEY)"))
        }
        "database_volume_duplicate_name" => CsiError::AlreadyExists(message),
        "database_volume_cannot_multiple_attach" => CsiError::FailedPrecondition(format!(
            "{message} (a Civo volume attaches to one instance at a time)"
        )),
        "database_volume_still_attached_cannot_resize" => {
            CsiError::FailedPrecondition(format!("{message} (Civo resizes detached volumes only)"))
        }
        "database_volume_delete_failed" | "database_volume_not_attached" => {
            CsiError::FailedPrecondition(message)
        }
        "quota_limit_reached" => CsiError::ResourceExhausted(format!(
            "{message} (free space in the Civo account or raise its quota)"
        )),
        "volume_invalid_size"
        | "parameter_volume_size_incorrect"
        | "parameter_volume_size_must_increase" => CsiError::OutOfRange(message),
        "database_snapshot_not_found" => CsiError::NotFound(format!("{what} does not exist: {e}")),
        "cannot_resize_volume" | "cannot_restore_new_volume" | "database_snapshot_create" => {
            CsiError::Unavailable(format!("{message} (it is busy; retry)"))
        }
        "parameter_name_invalid" | "parameter_value_missing" | "parameter_size_missing" => {
            CsiError::InvalidArgument(message)
        }
        _ => e.to_csi(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn failed(status: u16, body: &str) -> ApiError {
        ApiError::Status {
            operation: "op".into(),
            status,
            body: body.into(),
        }
    }

    fn civo(status: u16, code: &str) -> ApiError {
        failed(
            status,
            &json!({"code": code, "reason": "r", "details": ""}).to_string(),
        )
    }

    #[test]
    fn codes_decide_over_statuses() {
        let cases = [
            ("database_volume_not_found", Code::NotFound),
            ("database_instance_find", Code::NotFound),
            ("database_snapshot_not_found", Code::NotFound),
            ("parameter_value_missing", Code::InvalidArgument),
            (
                "database_volume_cannot_multiple_attach",
                Code::FailedPrecondition,
            ),
            (
                "database_volume_still_attached_cannot_resize",
                Code::FailedPrecondition,
            ),
            ("quota_limit_reached", Code::ResourceExhausted),
            ("volume_invalid_size", Code::OutOfRange),
            ("cannot_resize_volume", Code::Unavailable),
        ];
        for (c, expected) in cases {
            assert_eq!(to_csi(&civo(400, c), "volume v").code(), expected, "{c}");
        }
        let auth = failed(401, r#"{"result":"requires_authentication"}"#);
        let err = to_csi(&auth, "volume v");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.to_string().contains("CIVO_API_KEY"), "{err}");
    }

    #[test]
    fn unknown_answers_fall_back_to_the_status() {
        assert_eq!(
            to_csi(&failed(503, r#"{"status":503,"error":"x"}"#), "v").code(),
            Code::Unavailable
        );
        assert_eq!(
            to_csi(&failed(502, "<html>"), "v").code(),
            Code::Unavailable
        );
        assert!(is_volume_not_found(&failed(404, "not json")));
        assert!(!is_volume_not_found(&civo(404, "database_instance_find")));
    }

    #[test]
    fn quota_counts_volumes_too() {
        let q = Quota {
            disk_gb_limit: 100,
            disk_gb_usage: 40,
            disk_volume_count_limit: 10,
            disk_volume_count_usage: 3,
        };
        assert_eq!(q.free_gb(), 60);
        let full = Quota {
            disk_volume_count_usage: 10,
            ..q
        };
        assert_eq!(full.free_gb(), 0);
    }
}
