//! The GroupController service: volume group snapshots. Served (and
//! advertised) only by a controller whose backend takes group snapshots
//! (see `Backend::group_snapshots`); elsewhere its calls are UNIMPLEMENTED.

use std::collections::BTreeSet;

use tonic::{Request, Response, Status};

use crate::backend::GroupSnapshot;
use crate::csi::controller::snapshot_to_pb;
use crate::csi::{self as pb, group_controller_server, group_controller_service_capability};
use crate::csi::{params, validate};
use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};

type Reply<T> = Result<Response<T>, Status>;

fn group_to_pb(group: &GroupSnapshot) -> pb::VolumeGroupSnapshot {
    pb::VolumeGroupSnapshot {
        group_snapshot_id: group.id.clone(),
        snapshots: group.snapshots.iter().map(snapshot_to_pb).collect(),
        creation_time: Some(prost_types::Timestamp::from(group.created)),
        ready_to_use: group.ready,
    }
}

/// A required, non-empty list of distinct identifiers.
fn identifiers<'a>(field: &str, values: &'a [String]) -> CsiResult<&'a [String]> {
    if values.is_empty() {
        return Err(CsiError::InvalidArgument(format!(
            "{field} is required: name at least one"
        )));
    }
    let mut seen = BTreeSet::new();
    for value in values {
        validate::identifier(field, value)?;
        if !seen.insert(value) {
            return Err(CsiError::InvalidArgument(format!(
                "{field} names {value} twice; name each once"
            )));
        }
    }
    Ok(values)
}

/// An optional list of distinct identifiers (empty: not given).
fn optional_identifiers<'a>(field: &str, values: &'a [String]) -> CsiResult<&'a [String]> {
    if values.is_empty() {
        Ok(values)
    } else {
        identifiers(field, values)
    }
}

impl Driver {
    async fn create_group(
        &self,
        r: pb::CreateVolumeGroupSnapshotRequest,
    ) -> CsiResult<pb::CreateVolumeGroupSnapshotResponse> {
        let name = validate::identifier("name", &r.name)?;
        let sources = identifiers("source_volume_ids", &r.source_volume_ids)?;
        params::parse(&r.parameters, &self.backend.backend_names(), &[])?;
        let _guard = self.locks.acquire(&[name])?;
        let group = self.backend.create_group_snapshot(name, sources).await?;
        Ok(pb::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_to_pb(&group)),
        })
    }

    async fn delete_group(
        &self,
        r: pb::DeleteVolumeGroupSnapshotRequest,
    ) -> CsiResult<pb::DeleteVolumeGroupSnapshotResponse> {
        let id = validate::identifier("group_snapshot_id", &r.group_snapshot_id)?;
        let members = optional_identifiers("snapshot_ids", &r.snapshot_ids)?;
        let _guard = self.locks.acquire(&[id])?;
        self.backend.delete_group_snapshot(id, members).await?;
        Ok(pb::DeleteVolumeGroupSnapshotResponse {})
    }

    async fn get_group(
        &self,
        r: pb::GetVolumeGroupSnapshotRequest,
    ) -> CsiResult<pb::GetVolumeGroupSnapshotResponse> {
        let id = validate::identifier("group_snapshot_id", &r.group_snapshot_id)?;
        let members = optional_identifiers("snapshot_ids", &r.snapshot_ids)?;
        let group = self.backend.get_group_snapshot(id, members).await?;
        Ok(pb::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_to_pb(&group)),
        })
    }
}

#[tonic::async_trait]
impl group_controller_server::GroupController for Driver {
    async fn group_controller_get_capabilities(
        &self,
        _r: Request<pb::GroupControllerGetCapabilitiesRequest>,
    ) -> Reply<pb::GroupControllerGetCapabilitiesResponse> {
        use group_controller_service_capability::{Rpc, Type, rpc};
        let span = tracing::debug_span!("GroupControllerGetCapabilities");
        self.call(span, async {
            let mut capabilities = Vec::new();
            if self.backend.group_snapshots() {
                capabilities.push(pb::GroupControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc {
                        r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                    })),
                });
            }
            Ok(pb::GroupControllerGetCapabilitiesResponse { capabilities })
        })
        .await
    }

    async fn create_volume_group_snapshot(
        &self,
        r: Request<pb::CreateVolumeGroupSnapshotRequest>,
    ) -> Reply<pb::CreateVolumeGroupSnapshotResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("CreateVolumeGroupSnapshot", group_snapshot_name = %r.name, volumes = r.source_volume_ids.len());
        self.call(span, self.create_group(r)).await
    }

    async fn delete_volume_group_snapshot(
        &self,
        r: Request<pb::DeleteVolumeGroupSnapshotRequest>,
    ) -> Reply<pb::DeleteVolumeGroupSnapshotResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("DeleteVolumeGroupSnapshot", group_snapshot_id = %r.group_snapshot_id);
        self.call(span, self.delete_group(r)).await
    }

    async fn get_volume_group_snapshot(
        &self,
        r: Request<pb::GetVolumeGroupSnapshotRequest>,
    ) -> Reply<pb::GetVolumeGroupSnapshotResponse> {
        let r = r.into_inner();
        let span = tracing::debug_span!("GetVolumeGroupSnapshot", group_snapshot_id = %r.group_snapshot_id);
        self.call(span, self.get_group(r)).await
    }
}
