//! What the driver keeps with a Packet volume, in its `description`, and
//! whether an existing volume answers a create request.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::TOPOLOGY_KEY;
use super::api;
use crate::backend::size::GIB;
use crate::backend::{CreateVolume, Map};
use crate::cloud::timestamp;
use crate::csi::made_as;

/// The description JSON: `Name` and `Created` as the earlier driver wrote
/// them; `Context` (what the node reads later) and `ReadOnly` (the mode of
/// the current attachment) only when set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Created", default)]
    pub created: String,
    #[serde(rename = "Context", default, skip_serializing_if = "Map::is_empty")]
    pub context: Map,
    #[serde(rename = "ReadOnly", default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Description {
    pub fn new(name: &str, context: &Map) -> Self {
        Description {
            name: name.to_string(),
            created: timestamp::format_seconds(SystemTime::now()),
            context: context.clone(),
            read_only: false,
        }
    }

    /// The driver's description, if `text` is one.
    pub fn read(text: Option<&str>) -> Option<Self> {
        serde_json::from_str::<Description>(text?)
            .ok()
            .filter(|d| !d.name.is_empty())
    }

    pub fn write(&self) -> String {
        serde_json::to_string(self).expect("a description serializes")
    }
}

/// Ok when `existing` (found by the request's name) is what the request
/// asks for; otherwise what differs.
pub fn is_compatible<'a>(
    existing: &'a api::Volume,
    request: &CreateVolume,
    plan_id: &str,
    facility_code: impl Fn(&'a str) -> Option<&'a str>,
) -> Result<(), String> {
    let bytes = existing.size * GIB;
    if bytes < request.required_bytes || (request.limit_bytes > 0 && bytes > request.limit_bytes) {
        return Err(format!(
            "a size of {} GB, outside the requested capacity range",
            existing.size
        ));
    }
    if existing.plan_id() != Some(plan_id) {
        return Err(format!("another plan ({:?})", existing.plan_id()));
    }
    let context = Description::read(existing.description.as_deref())
        .map(|d| d.context)
        .unwrap_or_default();
    // A volume of an earlier version does not record what it was made as.
    let recorded = if context.contains_key(made_as::ACCESS_TYPE) {
        request.node_context.clone()
    } else {
        made_as::without_made_as(&request.node_context)
    };
    if context != recorded {
        return Err("different parameters (or another access type or filesystem)".into());
    }
    let code = existing.facility_id().and_then(facility_code);
    let allowed = request.requisite.is_empty()
        || request.requisite.iter().any(|segments| {
            segments
                .get(TOPOLOGY_KEY)
                .is_none_or(|c| Some(c.as_str()) == code)
        });
    if !allowed {
        return Err(format!("facility {code:?}, outside the requisite topology"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_and_read_the_earlier_format() {
        let d = Description::new("pvc-1", &Map::new());
        let text = d.write();
        assert!(text.starts_with(r#"{"Name":"pvc-1","Created":""#), "{text}");
        assert!(!text.contains("Context") && !text.contains("ReadOnly"));
        assert_eq!(Description::read(Some(&text)), Some(d));
        let earlier = r#"{"Name":"pvc-b718","Created":"2019-10-08T09:50:39.123Z"}"#;
        assert_eq!(Description::read(Some(earlier)).unwrap().name, "pvc-b718");
        assert_eq!(Description::read(Some("my database disk")), None);
        assert_eq!(Description::read(None), None);
    }

    fn volume(size: u64, plan: &str) -> api::Volume {
        serde_json::from_value(serde_json::json!({
            "id": "870f9650-19ea-48bd-84c5-ddf97471c1c1",
            "size": size,
            "state": "active",
            "plan": { "id": plan },
            "facility": { "href": "/facilities/f-ewr1" },
            "description": Description::new("pvc-1", &Map::new()).write(),
        }))
        .unwrap()
    }

    fn request(required: u64, limit: u64) -> CreateVolume {
        CreateVolume::sized("pvc-1", required, limit)
    }

    #[test]
    fn compatibility_checks_size_plan_context_and_facility() {
        let code = |id: &str| (id == "f-ewr1").then_some("ewr1");
        let v = volume(20, "p1");
        assert!(is_compatible(&v, &request(20 * GIB, 0), "p1", code).is_ok());
        assert!(is_compatible(&v, &request(0, 0), "p1", code).is_ok());
        assert!(is_compatible(&v, &request(21 * GIB, 0), "p1", code).is_err());
        assert!(is_compatible(&v, &request(0, 10 * GIB), "p1", code).is_err());
        assert!(is_compatible(&v, &request(0, 0), "p2", code).is_err());
        let mut other = request(0, 0);
        other.node_context.insert("k".into(), "v".into());
        assert!(is_compatible(&v, &other, "p1", code).is_err());
        let mut elsewhere = request(0, 0);
        elsewhere.requisite = vec![Map::from([(TOPOLOGY_KEY.into(), "sjc1".into())])];
        assert!(is_compatible(&v, &elsewhere, "p1", code).is_err());
    }
}
