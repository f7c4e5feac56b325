//! The emulated Civo account: volumes, one Kubernetes cluster with its
//! instances, and the account quota. Every rule the API enforces is here;
//! the routes in `super` only translate HTTP.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// The region the emulated account lives in.
pub const REGION: &str = "LON1";
/// The emulated Kubernetes cluster.
pub const CLUSTER_ID: &str = "2b0d8f4e-6a1c-4e3b-9f5d-0c7a1e2b3d4f";
/// The cluster's instances: (id, hostname).
pub const INSTANCES: &[(&str, &str)] = &[
    (
        "7c1e5a2b-0d3f-4b6a-8e9c-1a2b3c4d5e01",
        "k3s-emulated-node-pool-1",
    ),
    (
        "7c1e5a2b-0d3f-4b6a-8e9c-1a2b3c4d5e02",
        "k3s-emulated-node-pool-2",
    ),
];
/// The volume type volumes get when the request names none.
pub const DEFAULT_VOLUME_TYPE: &str = "standard";
/// The volume types of the emulated region: (name, description).
pub const VOLUME_TYPES: &[(&str, &str)] = &[
    (DEFAULT_VOLUME_TYPE, "Standard block storage"),
    ("ms-xfs-2-replicas", "Block storage with two replicas"),
];
/// Account quota (the API's defaults are smaller; tests need room).
pub const DISK_GB_LIMIT: u64 = 2000;
pub const VOLUME_COUNT_LIMIT: u64 = 200;
pub const SNAPSHOT_COUNT_LIMIT: u64 = 30;
/// Largest single volume (Civo documents LVM for more than 1 TB).
pub const MAX_VOLUME_GB: u64 = 1000;
const NETWORK_ID: &str = "5c16ab17-8b1e-4a7d-9c3e-2f0a1b2c3d4e";

/// An API error: status and Civo's `code`, `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            reason: reason.into(),
        }
    }

    /// The body Civo answers an error with.
    pub fn body(&self) -> Value {
        json!({ "code": self.code, "reason": self.reason, "details": "" })
    }
}

/// A volume's lifecycle states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Creating,
    Available,
    Attaching,
    Attached,
    Detaching,
    Resizing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Available => "available",
            Status::Attaching => "attaching",
            Status::Attached => "attached",
            Status::Detaching => "detaching",
            Status::Resizing => "resizing",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub region: String,
    pub cluster_id: String,
    pub instance_id: Option<String>,
    pub status: Status,
    pub volume_type: String,
    pub size_gb: u64,
    pub created_at: String,
    /// Bumped on every state change; a finishing transition checks it.
    pub generation: u64,
}

impl Volume {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "instance_id": self.instance_id,
            "cluster_id": self.cluster_id,
            "network_id": NETWORK_ID,
            "mountpoint": if self.instance_id.is_some() { "/dev/sda" } else { "" },
            "status": self.status.as_str(),
            "volume_type": self.volume_type,
            "size_gb": self.size_gb,
            "bootable": false,
            "created_at": self.created_at,
        })
    }
}

/// A create request's fields.
#[derive(Debug, serde::Deserialize)]
pub struct CreateRequest {
    pub name: String,
    pub size_gb: i64,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub volume_type: Option<String>,
    /// Restore: the volume snapshot the new volume is made from.
    #[serde(default)]
    pub snapshot_id: Option<String>,
}

/// What a transition that was started must finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub volume_id: String,
    pub generation: u64,
}

#[derive(Default)]
pub struct State {
    pub volumes: BTreeMap<String, Volume>,
    pub snapshots: BTreeMap<String, super::snapshot::Snapshot>,
    /// How long a snapshot takes to be made or deleted.
    pub transition: Duration,
}

pub(super) fn not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        "database_volume_not_found",
        format!("Failed to find the volume {id} within your account"),
    )
}

impl State {
    pub(super) fn volume_mut(&mut self, id: &str, region: &str) -> Result<&mut Volume, ApiError> {
        self.volumes
            .get_mut(id)
            .filter(|v| v.region.eq_ignore_ascii_case(region))
            .ok_or_else(|| not_found(id))
    }

    pub fn get(&self, id: &str, region: &str) -> Result<Value, ApiError> {
        self.volumes
            .get(id)
            .filter(|v| v.region.eq_ignore_ascii_case(region))
            .map(Volume::to_json)
            .ok_or_else(|| not_found(id))
    }

    pub fn list(&self, region: &str) -> Value {
        Value::Array(
            self.volumes
                .values()
                .filter(|v| v.region.eq_ignore_ascii_case(region))
                .map(Volume::to_json)
                .collect(),
        )
    }

    pub fn quota(&self) -> Value {
        let used: u64 = self.volumes.values().map(|v| v.size_gb).sum();
        json!({
            "id": "44aab548-61ca-11e5-860e-5cf9389be614",
            "default_user_id": "ca04ddda-06e9-4d4a-ae9b-2e2b6e5f0d7a",
            "default_user_email_address": "emulated@example.com",
            "instance_count_limit": 16,
            "instance_count_usage": INSTANCES.len(),
            "disk_gb_limit": DISK_GB_LIMIT,
            "disk_gb_usage": used,
            "disk_volume_count_limit": VOLUME_COUNT_LIMIT,
            "disk_volume_count_usage": self.volumes.len(),
            "disk_snapshot_count_limit": SNAPSHOT_COUNT_LIMIT,
            "disk_snapshot_count_usage": self.snapshots.len(),
        })
    }

    fn check_size(size_gb: i64) -> Result<u64, ApiError> {
        if size_gb < 1 {
            return Err(ApiError::new(
                400,
                "parameter_volume_size_incorrect",
                "The volume size must be a whole number of GB, at least 1",
            ));
        }
        let size = size_gb as u64;
        if size > MAX_VOLUME_GB {
            return Err(ApiError::new(
                400,
                "volume_invalid_size",
                format!("A volume can be at most {MAX_VOLUME_GB} GB"),
            ));
        }
        Ok(size)
    }

    pub(super) fn check_quota(&self, extra_gb: u64, extra_volumes: u64) -> Result<(), ApiError> {
        let used: u64 = self.volumes.values().map(|v| v.size_gb).sum();
        if used + extra_gb > DISK_GB_LIMIT
            || self.volumes.len() as u64 + extra_volumes > VOLUME_COUNT_LIMIT
        {
            return Err(ApiError::new(
                403,
                "quota_limit_reached",
                "The quota limit for your account has been reached",
            ));
        }
        Ok(())
    }

    /// Creates a volume (from a snapshot when `snapshot_id` is set).
    pub fn create(&mut self, r: CreateRequest, region: &str) -> Result<(Value, Pending), ApiError> {
        if r.name.trim().is_empty() {
            return Err(ApiError::new(
                400,
                "parameter_name_invalid",
                "The volume name must not be empty",
            ));
        }
        let size_gb = Self::check_size(r.size_gb)?;
        if let Some(t) = r.volume_type.as_deref().filter(|t| !t.is_empty())
            && !VOLUME_TYPES.iter().any(|(name, _)| *name == t)
        {
            let known: Vec<&str> = VOLUME_TYPES.iter().map(|(name, _)| *name).collect();
            return Err(ApiError::new(
                400,
                "parameter_value_missing",
                format!(
                    "Volume type {t} does not exist in this region; use one of {}",
                    known.join(", ")
                ),
            ));
        }
        if let Some(snapshot_id) = &r.snapshot_id {
            self.check_restore(snapshot_id, size_gb, region)?;
        }
        if self
            .volumes
            .values()
            .any(|v| v.name == r.name && v.region.eq_ignore_ascii_case(region))
        {
            return Err(ApiError::new(
                409,
                "database_volume_duplicate_name",
                format!("A volume named {} already exists", r.name),
            ));
        }
        self.check_quota(size_gb, 1)?;
        let id = uuid();
        let volume = Volume {
            id: id.clone(),
            name: r.name.clone(),
            region: region.to_uppercase(),
            cluster_id: r.cluster_id.unwrap_or_default(),
            instance_id: None,
            status: Status::Creating,
            volume_type: r
                .volume_type
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_VOLUME_TYPE.to_string()),
            size_gb,
            created_at: rfc3339_now(),
            generation: 1,
        };
        self.volumes.insert(id.clone(), volume);
        let reply = json!({ "id": id, "name": r.name, "result": "success" });
        Ok((
            reply,
            Pending {
                volume_id: id,
                generation: 1,
            },
        ))
    }

    /// The refusal of `code`'s action on a volume between two states (the
    /// API documents no code for it; this is the client-known code of the
    /// refused action).
    fn busy(v: &Volume, code: &'static str) -> ApiError {
        ApiError::new(
            409,
            code,
            format!(
                "The volume {} is {}; try again shortly",
                v.id,
                v.status.as_str()
            ),
        )
    }

    fn begin(v: &mut Volume, status: Status) -> Pending {
        v.status = status;
        v.generation += 1;
        Pending {
            volume_id: v.id.clone(),
            generation: v.generation,
        }
    }

    pub fn attach(
        &mut self,
        id: &str,
        instance_id: &str,
        region: &str,
    ) -> Result<Option<Pending>, ApiError> {
        if !INSTANCES.iter().any(|(i, _)| *i == instance_id) || !region.eq_ignore_ascii_case(REGION)
        {
            return Err(ApiError::new(
                404,
                "database_instance_find",
                format!("Failed to find the instance {instance_id} within your account"),
            ));
        }
        let v = self.volume_mut(id, region)?;
        match (v.status, v.instance_id.as_deref()) {
            (Status::Attaching | Status::Attached, Some(i)) if i == instance_id => Ok(None),
            (Status::Attaching | Status::Attached | Status::Detaching, Some(_)) => {
                Err(ApiError::new(
                    409,
                    "database_volume_cannot_multiple_attach",
                    format!("The volume {id} is already attached to another instance"),
                ))
            }
            (Status::Available, _) => {
                v.instance_id = Some(instance_id.to_string());
                Ok(Some(Self::begin(v, Status::Attaching)))
            }
            _ => Err(Self::busy(v, "database_volume_cannot_multiple_attach")),
        }
    }

    pub fn detach(&mut self, id: &str, region: &str) -> Result<Option<Pending>, ApiError> {
        let v = self.volume_mut(id, region)?;
        match v.status {
            Status::Attached | Status::Attaching => Ok(Some(Self::begin(v, Status::Detaching))),
            Status::Detaching => Ok(None),
            Status::Available | Status::Creating | Status::Resizing => Err(ApiError::new(
                409,
                "database_volume_not_attached",
                format!("The volume {id} is not attached to an instance"),
            )),
        }
    }

    pub fn resize(&mut self, id: &str, size_gb: i64, region: &str) -> Result<Pending, ApiError> {
        let size = Self::check_size(size_gb)?;
        let current = self.volume_mut(id, region)?.size_gb;
        if size <= current {
            return Err(ApiError::new(
                400,
                "parameter_volume_size_must_increase",
                format!("The new size must be larger than {current} GB"),
            ));
        }
        self.check_quota(size - current, 0)?;
        let v = self.volume_mut(id, region)?;
        match v.status {
            Status::Available => {
                v.size_gb = size;
                Ok(Self::begin(v, Status::Resizing))
            }
            Status::Attached | Status::Attaching => Err(ApiError::new(
                409,
                "database_volume_still_attached_cannot_resize",
                format!("The volume {id} is attached; detach it before resizing"),
            )),
            _ => Err(Self::busy(v, "cannot_resize_volume")),
        }
    }

    /// Deletes a volume; its snapshots stay unless `with_snapshots`.
    pub fn delete(&mut self, id: &str, region: &str, with_snapshots: bool) -> Result<(), ApiError> {
        let v = self.volume_mut(id, region)?;
        match v.status {
            Status::Available => {
                self.volumes.remove(id);
                if with_snapshots {
                    self.delete_snapshots_of(id);
                }
                Ok(())
            }
            Status::Attached | Status::Attaching | Status::Detaching => Err(ApiError::new(
                409,
                "database_volume_delete_failed",
                format!("The volume {id} is attached to an instance; detach it first"),
            )),
            _ => Err(Self::busy(v, "database_volume_delete_failed")),
        }
    }

    /// The volume a pending transition is about, if the transition is still
    /// current.
    pub fn current(&mut self, pending: &Pending) -> Option<&mut Volume> {
        self.volumes
            .get_mut(&pending.volume_id)
            .filter(|v| v.generation == pending.generation)
    }
}

/// A random version-4 UUID.
pub fn uuid() -> String {
    crate::emulator::random_uuid(&mut fastrand::Rng::new())
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_now() -> String {
    crate::cloud::timestamp::format_seconds(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(state: &mut State, name: &str, size_gb: i64) -> Result<String, ApiError> {
        let (reply, _) = state.create(
            CreateRequest {
                name: name.into(),
                size_gb,
                cluster_id: None,
                volume_type: None,
                snapshot_id: None,
            },
            REGION,
        )?;
        Ok(reply["id"].as_str().unwrap().to_string())
    }

    fn settle(state: &mut State, id: &str, status: Status) {
        let v = state.volumes.get_mut(id).unwrap();
        v.status = status;
        if status == Status::Available {
            v.instance_id = None;
        }
    }

    #[test]
    fn names_are_unique_per_region() {
        let mut s = State::default();
        create(&mut s, "pvc-1", 1).unwrap();
        let err = create(&mut s, "pvc-1", 1).unwrap_err();
        assert_eq!(err.code, "database_volume_duplicate_name");
    }

    #[test]
    fn sizes_and_quota_are_enforced() {
        let mut s = State::default();
        assert_eq!(
            create(&mut s, "a", 0).unwrap_err().code,
            "parameter_volume_size_incorrect"
        );
        assert_eq!(
            create(&mut s, "a", MAX_VOLUME_GB as i64 + 1)
                .unwrap_err()
                .code,
            "volume_invalid_size"
        );
        create(&mut s, "a", MAX_VOLUME_GB as i64).unwrap();
        create(&mut s, "b", MAX_VOLUME_GB as i64).unwrap();
        assert_eq!(
            create(&mut s, "c", 1).unwrap_err().code,
            "quota_limit_reached"
        );
        assert_eq!(s.quota()["disk_gb_usage"], DISK_GB_LIMIT);
    }

    #[test]
    fn attach_is_exclusive_and_resize_needs_a_detached_volume() {
        let mut s = State::default();
        let id = create(&mut s, "v", 1).unwrap();
        let (one, two) = (INSTANCES[0].0, INSTANCES[1].0);
        assert_eq!(
            s.attach(&id, one, REGION).unwrap_err().code,
            "database_volume_cannot_multiple_attach"
        );
        settle(&mut s, &id, Status::Available);
        assert_eq!(
            s.attach(&id, "no-such", REGION).unwrap_err().code,
            "database_instance_find"
        );
        assert!(s.attach(&id, one, REGION).unwrap().is_some());
        assert!(s.attach(&id, one, REGION).unwrap().is_none());
        assert_eq!(
            s.attach(&id, two, REGION).unwrap_err().code,
            "database_volume_cannot_multiple_attach"
        );
        settle(&mut s, &id, Status::Attached);
        assert_eq!(
            s.resize(&id, 2, REGION).unwrap_err().code,
            "database_volume_still_attached_cannot_resize"
        );
        assert_eq!(
            s.delete(&id, REGION, false).unwrap_err().code,
            "database_volume_delete_failed"
        );
        assert!(s.detach(&id, REGION).unwrap().is_some());
        settle(&mut s, &id, Status::Available);
        assert_eq!(
            s.detach(&id, REGION).unwrap_err().code,
            "database_volume_not_attached"
        );
        assert_eq!(
            s.resize(&id, 1, REGION).unwrap_err().code,
            "parameter_volume_size_must_increase"
        );
        s.resize(&id, 3, REGION).unwrap();
        assert_eq!(s.volumes[&id].size_gb, 3);
    }

    #[test]
    fn volumes_belong_to_their_region() {
        let mut s = State::default();
        let id = create(&mut s, "v", 1).unwrap();
        assert!(s.get(&id, "lon1").is_ok());
        assert_eq!(s.get(&id, "NYC1").unwrap_err().status, 404);
        assert_eq!(s.list("NYC1"), json!([]));
    }

    #[test]
    fn uuids_and_dates_are_well_formed() {
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let now = rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
