//! Typed calls of the Packet (Equinix Metal) API the driver makes, and the
//! one place where the API's failures become CSI errors.

use serde::Deserialize;
use serde_json::json;

use crate::cloud::http::{ApiClient, ApiError, Request};
use crate::error::CsiError;

/// The refusal of a detach while the server still uses the volume (its
/// iSCSI sessions are not logged out yet); matched as a prefix.
pub const IN_USE: &str = "Cannot detach since volume is actively being used";
/// The refusal of a second attach to the same server.
const ALREADY_ATTACHED: &str = "Instance is already attached to this volume";

/// A reference to another resource: the API sends `{"href": ...}` and,
/// with `?include=`, the resource's fields.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Link {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub href: Option<String>,
}

impl Link {
    /// The id, or else the last segment of the href.
    pub fn id(&self) -> Option<&str> {
        id_or_tail(&self.id, &self.href)
    }
}

fn id_or_tail<'a>(id: &'a Option<String>, href: &'a Option<String>) -> Option<&'a str> {
    id.as_deref()
        .or_else(|| href.as_deref().and_then(|h| h.rsplit('/').next()))
        .filter(|id| !id.is_empty())
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PlanRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Attachment {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub href: Option<String>,
    #[serde(default)]
    pub device: Option<Link>,
}

impl Attachment {
    pub fn id(&self) -> Option<&str> {
        id_or_tail(&self.id, &self.href)
    }

    pub fn device_id(&self) -> Option<&str> {
        self.device.as_ref().and_then(Link::id)
    }
}

/// A volume as the API answers it.
#[derive(Clone, Debug, Deserialize)]
pub struct Volume {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// GB.
    pub size: u64,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub facility: Option<Link>,
    #[serde(default)]
    pub plan: Option<PlanRef>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

impl Volume {
    pub fn facility_id(&self) -> Option<&str> {
        self.facility.as_ref().and_then(Link::id)
    }

    pub fn plan_id(&self) -> Option<&str> {
        self.plan.as_ref().and_then(|p| p.id.as_deref())
    }

    /// Devices the volume is attached to.
    pub fn device_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .attachments
            .iter()
            .filter_map(|a| a.device_id().map(String::from))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Facility {
    pub id: String,
    pub code: String,
    #[serde(default)]
    pub features: Vec<String>,
}

impl Facility {
    pub fn has_storage(&self) -> bool {
        self.features.iter().any(|f| f == "storage")
    }
}

#[derive(Deserialize)]
struct VolumePage {
    #[serde(default)]
    volumes: Vec<Volume>,
    #[serde(default)]
    meta: Option<PageMeta>,
}

#[derive(Deserialize)]
struct PageMeta {
    #[serde(default)]
    next: Option<Link>,
}

#[derive(Deserialize)]
struct Facilities {
    facilities: Vec<Facility>,
}

/// What a new volume is made of.
#[derive(Clone, Debug)]
pub struct NewVolume<'a> {
    pub size_gb: u64,
    pub plan_id: &'a str,
    pub facility_id: &'a str,
    pub description: &'a str,
}

/// The API of one project.
#[derive(Debug)]
pub struct Api {
    client: ApiClient,
    project: String,
}

/// Volumes asked for per page when listing.
const PER_PAGE: usize = 100;
/// Pages followed at most (the API's own limit on `page`).
const MAX_PAGES: usize = 100_000;

impl Api {
    pub fn new(client: ApiClient, project: String) -> Self {
        Api { client, project }
    }

    pub async fn facilities(&self) -> Result<Vec<Facility>, ApiError> {
        let reply: Facilities = self
            .client
            .json(&Request::get("list_facilities", "/facilities"))
            .await?;
        Ok(reply.facilities)
    }

    /// Every volume of the project, following the pages.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, ApiError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!(
                "/projects/{}/storage?per_page={PER_PAGE}&page={page}",
                self.project
            );
            let reply: VolumePage = self
                .client
                .json(&Request::get("list_volumes", path))
                .await?;
            let count = reply.volumes.len();
            all.extend(reply.volumes);
            let more = reply
                .meta
                .and_then(|m| m.next)
                .and_then(|n| n.href)
                .is_some();
            if !more || count == 0 {
                break;
            }
        }
        Ok(all)
    }

    /// The volume, or None when the API does not know it.
    pub async fn get_volume(&self, id: &str) -> Result<Option<Volume>, ApiError> {
        let path = format!("/storage/{id}?include=attachments.device");
        match self.client.json(&Request::get("get_volume", path)).await {
            Ok(volume) => Ok(Some(volume)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a volume. Not repeated on an unclear outcome: the caller
    /// looks for it by name first.
    pub async fn create_volume(&self, new: &NewVolume<'_>) -> Result<Volume, ApiError> {
        let body = json!({
            "size": new.size_gb,
            "plan_id": new.plan_id,
            "facility_id": new.facility_id,
            "billing_cycle": "hourly",
            "description": new.description,
        });
        let path = format!("/projects/{}/storage", self.project);
        self.client
            .json(&Request::post("create_volume", path, body))
            .await
    }

    /// Replaces a volume's description (PATCH, as the official client updates).
    pub async fn set_description(&self, id: &str, description: &str) -> Result<(), ApiError> {
        let body = json!({ "description": description });
        let request = Request::patch("update_volume", format!("/storage/{id}"), body).idempotent();
        self.client.send(&request).await.map(|_| ())
    }

    /// Deletes a volume; one that is gone already counts as deleted.
    pub async fn delete_volume(&self, id: &str) -> Result<(), ApiError> {
        let request = Request::delete("delete_volume", format!("/storage/{id}"));
        match self.client.send(&request).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Attaches a volume to a device (a server).
    pub async fn attach(&self, id: &str, device_id: &str) -> Result<Attachment, ApiError> {
        let body = json!({ "device_id": device_id });
        let path = format!("/storage/{id}/attachments");
        self.client
            .json(&Request::post("attach_volume", path, body))
            .await
    }

    /// Removes an attachment; one that is gone already counts as removed.
    pub async fn detach(&self, attachment_id: &str) -> Result<(), ApiError> {
        let path = format!("/storage/attachments/{attachment_id}");
        match self
            .client
            .send(&Request::delete("detach_volume", path))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The first message of an error body `{"errors": [...]}` or
/// `{"error": "..."}`.
pub fn message(err: &ApiError) -> Option<String> {
    let ApiError::Status { body, .. } = err else {
        return None;
    };
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value
        .get("errors")
        .and_then(|e| e.get(0))
        .or_else(|| value.get("error"))
        .and_then(|m| m.as_str())
        .map(String::from)
}

/// A detach refused because the server still uses the volume.
pub fn is_in_use(err: &ApiError) -> bool {
    err.status() == Some(422) && message(err).is_some_and(|m| m.starts_with(IN_USE))
}

/// An attach refused because the volume is attached to that server already.
pub fn is_already_attached(err: &ApiError) -> bool {
    err.status() == Some(422) && message(err).is_some_and(|m| m.starts_with(ALREADY_ATTACHED))
}

/// Whether the API may have acted on a request that failed: a server error
/// or no (complete) answer. A create or attach is then looked up before it
/// is sent again.
pub fn outcome_unknown(err: &ApiError) -> bool {
    match err {
        ApiError::Status { status, .. } => *status >= 500,
        ApiError::Transport { .. } | ApiError::Exhausted { .. } => true,
        ApiError::Decode { .. } => false,
    }
}

/// The CSI error of a failed call.
pub fn to_csi(err: &ApiError) -> CsiError {
    let ApiError::Status {
        operation, status, ..
    } = err
    else {
        return err.to_csi();
    };
    let text = format!("{err}");
    let said = message(err).unwrap_or_default().to_ascii_lowercase();
    match (*status, operation.as_str()) {
        (422 | 403, _) if said.contains("quota") || said.contains("limit") => {
            CsiError::ResourceExhausted(text)
        }
        (422, "detach_volume") if is_in_use(err) => CsiError::Unavailable(format!(
            "{text} (the server still uses the volume: unstage it on the node first)"
        )),
        (422, "attach_volume") if said.contains("not active") => CsiError::Unavailable(text),
        (422, "attach_volume" | "delete_volume" | "detach_volume") => {
            CsiError::FailedPrecondition(text)
        }
        (422, "create_volume") => CsiError::InvalidArgument(text),
        _ => err.to_csi(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(operation: &str, status: u16, body: &str) -> ApiError {
        ApiError::Status {
            operation: operation.into(),
            status,
            body: body.into(),
        }
    }

    #[test]
    fn error_bodies_are_read_in_both_shapes() {
        let e = status("x", 422, r#"{"errors":["first","second"]}"#);
        assert_eq!(message(&e).as_deref(), Some("first"));
        let e = status("x", 401, r#"{"error":"Invalid token"}"#);
        assert_eq!(message(&e).as_deref(), Some("Invalid token"));
        assert_eq!(message(&status("x", 500, "oops")), None);
    }

    #[test]
    fn detach_in_use_is_recognised_by_prefix() {
        let e = status(
            "detach_volume",
            422,
            r#"{"errors":["Cannot detach since volume is actively being used on your server"]}"#,
        );
        assert!(is_in_use(&e));
        assert!(matches!(to_csi(&e), CsiError::Unavailable(_)));
        assert!(!is_in_use(&status("detach_volume", 500, "")));
    }

    #[test]
    fn failures_map_to_csi_codes() {
        let attached = status(
            "attach_volume",
            422,
            r#"{"errors":["Volume is already attached to another device"]}"#,
        );
        assert!(matches!(to_csi(&attached), CsiError::FailedPrecondition(_)));
        let same = status(
            "attach_volume",
            422,
            r#"{"errors":["Instance is already attached to this volume"]}"#,
        );
        assert!(is_already_attached(&same));
        let quota = status(
            "create_volume",
            422,
            r#"{"errors":["Project storage quota exceeded"]}"#,
        );
        assert!(matches!(to_csi(&quota), CsiError::ResourceExhausted(_)));
        let size = status(
            "create_volume",
            422,
            r#"{"errors":["size must be between 10 and 10000 GB"]}"#,
        );
        assert!(matches!(to_csi(&size), CsiError::InvalidArgument(_)));
        let busy = status("delete_volume", 422, r#"{"errors":["attached"]}"#);
        assert!(matches!(to_csi(&busy), CsiError::FailedPrecondition(_)));
        assert!(matches!(
            to_csi(&status("get_volume", 404, "")),
            CsiError::NotFound(_)
        ));
        assert!(outcome_unknown(&status("create_volume", 502, "")));
        assert!(!outcome_unknown(&status("create_volume", 422, "")));
    }

    #[test]
    fn links_give_their_id_or_the_href_tail() {
        let link = Link {
            id: None,
            href: Some("/facilities/abc".into()),
        };
        assert_eq!(link.id(), Some("abc"));
        let attachment: Attachment = serde_json::from_str(
            r#"{"href":"/storage/attachments/a1","device":{"href":"/devices/d1"}}"#,
        )
        .unwrap();
        assert_eq!(attachment.id(), Some("a1"));
        assert_eq!(attachment.device_id(), Some("d1"));
    }
}
