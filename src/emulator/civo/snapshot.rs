//! Volume snapshots of the emulated Civo account, as the official client
//! calls them: made under a volume (`creating` until done), listed per
//! volume and for the account, deleted by ID (`deleting` for a moment),
//! restored with `snapshot_id` on volume create. A snapshot outlives its
//! volume unless the volume is deleted with `?delete_snapshot=true`.

use std::time::Instant;

use serde_json::{Value, json};

use super::state::{ApiError, SNAPSHOT_COUNT_LIMIT, State, Status, rfc3339_now, uuid};

/// A volume snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub description: String,
    pub volume_id: String,
    pub source_volume_name: String,
    pub region: String,
    pub restore_size: u64,
    pub creation_time: String,
    ready_at: Instant,
    /// Set by DELETE: `deleting` until then, gone after.
    gone_at: Option<Instant>,
}

impl Snapshot {
    pub fn state(&self) -> &'static str {
        if self.gone_at.is_some() {
            "deleting"
        } else if Instant::now() < self.ready_at {
            "creating"
        } else {
            "available"
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "snapshot_id": self.id,
            "snapshot_description": self.description,
            "volume_id": self.volume_id,
            "source_volume_name": self.source_volume_name,
            "restore_size": self.restore_size,
            "state": self.state(),
            "creation_time": self.creation_time,
        })
    }
}

fn snapshot_not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        "database_snapshot_not_found",
        format!("Failed to find the snapshot {id} within your account"),
    )
}

impl State {
    /// Starts a snapshot of a volume; returns it (`creating`).
    pub fn create_snapshot(
        &mut self,
        volume_id: &str,
        name: &str,
        description: &str,
        region: &str,
    ) -> Result<Value, ApiError> {
        let volume = self.volume_mut(volume_id, region)?;
        if volume.status == Status::Creating {
            return Err(ApiError::new(
                409,
                "database_snapshot_create",
                format!("The volume {volume_id} is still being created"),
            ));
        }
        let (source_volume_name, restore_size, volume_region) =
            (volume.name.clone(), volume.size_gb, volume.region.clone());
        if name.trim().is_empty() {
            return Err(ApiError::new(
                400,
                "parameter_name_invalid",
                "The snapshot name must not be empty",
            ));
        }
        if self.snapshots.len() as u64 >= SNAPSHOT_COUNT_LIMIT {
            return Err(ApiError::new(
                403,
                "quota_limit_reached",
                "The snapshot quota of your account has been reached",
            ));
        }
        let snapshot = Snapshot {
            id: uuid(),
            name: name.to_string(),
            description: description.to_string(),
            volume_id: volume_id.to_string(),
            source_volume_name,
            region: volume_region,
            restore_size,
            creation_time: rfc3339_now(),
            ready_at: Instant::now() + self.transition,
            gone_at: None,
        };
        let reply = snapshot.to_json();
        self.snapshots.insert(snapshot.id.clone(), snapshot);
        Ok(reply)
    }

    /// Forgets a snapshot whose image could not be made.
    pub fn abandon_snapshot(&mut self, id: &str) {
        self.snapshots.remove(id);
    }

    fn visible(&self, id: &str, region: &str) -> Option<&Snapshot> {
        self.snapshots
            .get(id)
            .filter(|s| s.region.eq_ignore_ascii_case(region))
    }

    /// A snapshot, optionally only if it belongs to `volume_id`.
    pub fn snapshot(
        &self,
        id: &str,
        volume_id: Option<&str>,
        region: &str,
    ) -> Result<Value, ApiError> {
        self.visible(id, region)
            .filter(|s| volume_id.is_none_or(|v| s.volume_id == v))
            .map(Snapshot::to_json)
            .ok_or_else(|| snapshot_not_found(id))
    }

    /// The snapshots of one volume (which must exist).
    pub fn snapshots_of(&mut self, volume_id: &str, region: &str) -> Result<Value, ApiError> {
        self.volume_mut(volume_id, region)?;
        Ok(self.snapshot_list(region, Some(volume_id)))
    }

    /// Every snapshot of the region, or of one volume.
    pub fn snapshot_list(&self, region: &str, volume_id: Option<&str>) -> Value {
        Value::Array(
            self.snapshots
                .values()
                .filter(|s| s.region.eq_ignore_ascii_case(region))
                .filter(|s| volume_id.is_none_or(|v| s.volume_id == v))
                .map(Snapshot::to_json)
                .collect(),
        )
    }

    /// Starts deleting a snapshot (repeating it is harmless).
    pub fn delete_snapshot(&mut self, id: &str, region: &str) -> Result<(), ApiError> {
        if self.visible(id, region).is_none() {
            return Err(snapshot_not_found(id));
        }
        let gone_at = Instant::now() + self.transition;
        let snapshot = self
            .snapshots
            .get_mut(id)
            .ok_or_else(|| snapshot_not_found(id))?;
        snapshot.gone_at.get_or_insert(gone_at);
        Ok(())
    }

    /// Starts deleting every snapshot of a volume.
    pub fn delete_snapshots_of(&mut self, volume_id: &str) {
        let gone_at = Instant::now() + self.transition;
        for s in self.snapshots.values_mut() {
            if s.volume_id == volume_id {
                s.gone_at.get_or_insert(gone_at);
            }
        }
    }

    /// Checks that a volume of `size_gb` can be restored from a snapshot.
    pub fn check_restore(&self, id: &str, size_gb: u64, region: &str) -> Result<(), ApiError> {
        let snapshot = self
            .visible(id, region)
            .filter(|s| s.gone_at.is_none())
            .ok_or_else(|| snapshot_not_found(id))?;
        if snapshot.state() != "available" {
            return Err(ApiError::new(
                409,
                "cannot_restore_new_volume",
                format!(
                    "The snapshot {id} is {}; restore it once available",
                    snapshot.state()
                ),
            ));
        }
        if size_gb < snapshot.restore_size {
            return Err(ApiError::new(
                400,
                "volume_invalid_size",
                format!(
                    "A volume restored from snapshot {id} needs at least {} GB",
                    snapshot.restore_size
                ),
            ));
        }
        Ok(())
    }

    /// Forgets the snapshots whose deletion has finished; returns their IDs.
    pub fn sweep_snapshots(&mut self) -> Vec<String> {
        crate::emulator::remove_finished(&mut self.snapshots, |s| s.gone_at)
    }
}
