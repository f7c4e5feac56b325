//! The Controller service: checks requests, turns them into backend calls
//! and backend results into CSI responses.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use crate::backend::{ContentSource, CreateVolume, Map, Snapshot, Volume, VolumeStatus};
use crate::csi::made_as::MadeAs;
use crate::csi::validate;
use crate::csi::{self as pb, controller_server, controller_service_capability, paging, params};
use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};

type Reply<T> = Result<Response<T>, Status>;

fn to_hash(map: &Map) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn topologies(list: &[pb::Topology]) -> Vec<Map> {
    list.iter()
        .map(|t| {
            t.segments
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect()
}

fn volume_to_pb(volume: &Volume) -> pb::Volume {
    pb::Volume {
        capacity_bytes: volume.capacity_bytes as i64,
        volume_id: volume.id.clone(),
        volume_context: to_hash(&volume.context),
        content_source: volume.source.as_ref().map(source_to_pb),
        accessible_topology: volume
            .topology
            .iter()
            .map(|segments| pb::Topology {
                segments: to_hash(segments),
            })
            .collect(),
    }
}

fn source_to_pb(source: &ContentSource) -> pb::VolumeContentSource {
    use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
    pb::VolumeContentSource {
        r#type: Some(match source {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

fn condition(status: &VolumeStatus) -> pb::VolumeCondition {
    match &status.abnormal {
        Some(message) => pb::VolumeCondition {
            abnormal: true,
            message: message.clone(),
        },
        None => pb::VolumeCondition {
            abnormal: false,
            message: "volume is healthy".into(),
        },
    }
}

fn snapshot_to_pb(snapshot: &Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: snapshot.size_bytes as i64,
        snapshot_id: snapshot.id.clone(),
        source_volume_id: snapshot.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp::from(snapshot.created)),
        ready_to_use: snapshot.ready,
        group_snapshot_id: String::new(),
    }
}

fn source_from_pb(source: Option<&pb::VolumeContentSource>) -> CsiResult<Option<ContentSource>> {
    use pb::volume_content_source::Type;
    let Some(source) = source else {
        return Ok(None);
    };
    match &source.r#type {
        Some(Type::Snapshot(s)) => Ok(Some(ContentSource::Snapshot(
            validate::identifier("volume_content_source.snapshot.snapshot_id", &s.snapshot_id)?
                .to_string(),
        ))),
        Some(Type::Volume(v)) => Ok(Some(ContentSource::Volume(
            validate::identifier("volume_content_source.volume.volume_id", &v.volume_id)?
                .to_string(),
        ))),
        None => Err(CsiError::InvalidArgument(
            "volume_content_source needs a snapshot or a volume".into(),
        )),
    }
}

/// The mkfs parameters of a filesystem volume, checked now against what its
/// filesystem accepts (the node would refuse them only at stage), with the
/// node's own parsing and rules. A raw block volume ignores them.
fn check_mkfs(context: &Map, made_as: &MadeAs) -> CsiResult<()> {
    let MadeAs::Filesystem(fs_type) = made_as else {
        return Ok(());
    };
    let options = crate::node::volume::mkfs_options(context)?;
    options.validate(fs_type).map_err(|e| {
        let key = match &e {
            crate::node::HostError::InvalidMkfsOption { option, .. } => match *option {
                "inode size" => params::MKFS_INODE_SIZE,
                "block size" => params::MKFS_BLOCK_SIZE,
                _ => params::MKFS_RESERVED_PERCENT,
            },
            _ => "csi.storage.k8s.io/fstype",
        };
        CsiError::InvalidArgument(format!(
            "parameter {key} cannot work for a {fs_type} volume: {e}"
        ))
    })
}

/// Confirms only capabilities that ask for what the volume was made as:
/// as its backend recorded it, else as the request's volume context says
/// (a backend that keeps no context); a volume that records neither (made
/// by an earlier version) is not checked.
fn confirm_made_as(
    recorded: &Map,
    given: &HashMap<String, String>,
    caps: &[validate::Capability],
) -> CsiResult<()> {
    let made_as = match MadeAs::from_context(recorded)? {
        Some(made_as) => Some(made_as),
        None => MadeAs::from_context(given)?,
    };
    let Some(made_as) = made_as else {
        return Ok(());
    };
    for (i, cap) in caps.iter().enumerate() {
        made_as
            .admits(cap)
            .map_err(|why| CsiError::InvalidArgument(format!("volume_capabilities[{i}]: {why}")))?;
    }
    Ok(())
}

impl Driver {
    fn require(&self, supported: bool, what: &str) -> CsiResult<()> {
        if supported {
            Ok(())
        } else {
            Err(CsiError::Unimplemented(format!(
                "the {} backend does not support {what}",
                self.backend.name()
            )))
        }
    }

    async fn create_volume(
        &self,
        r: pb::CreateVolumeRequest,
    ) -> CsiResult<pb::CreateVolumeResponse> {
        let name = validate::identifier("name", &r.name)?;
        let caps = validate::capabilities("volume_capabilities", &r.volume_capabilities)?;
        let (required_bytes, limit_bytes) = validate::capacity_range(r.capacity_range.as_ref())?;
        let source = source_from_pb(r.volume_content_source.as_ref())?;
        match &source {
            Some(ContentSource::Snapshot(_)) => {
                self.require(self.backend.features().snapshots, "restoring snapshots")?
            }
            Some(ContentSource::Volume(_)) => {
                self.require(self.backend.features().clone, "cloning volumes")?
            }
            None => {}
        }
        if !r.mutable_parameters.is_empty() {
            return Err(CsiError::InvalidArgument(
                "mutable_parameters are not supported by this driver".into(),
            ));
        }
        let parameters = params::parse(
            &r.parameters,
            &self.backend.backend_names(),
            self.backend.parameter_keys(),
        )?;
        let made_as = MadeAs::from_capabilities(&caps)?;
        let fs_type = match &made_as {
            MadeAs::Filesystem(fs) => Some(fs.clone()),
            MadeAs::Block => None,
        };
        let mut node_context = parameters.node_context;
        check_mkfs(&node_context, &made_as)?;
        node_context.extend(made_as.to_context());
        let (requisite, preferred) = match &r.accessibility_requirements {
            Some(t) => (topologies(&t.requisite), topologies(&t.preferred)),
            None => (Vec::new(), Vec::new()),
        };
        let _guard = self.locks.acquire(&[name])?;
        let volume = self
            .backend
            .create_volume(&CreateVolume {
                name: name.to_string(),
                required_bytes,
                limit_bytes,
                source,
                parameters: parameters.backend,
                metadata: params::metadata(&r.parameters),
                node_context,
                fs_type,
                requisite,
                preferred,
            })
            .await?;
        Ok(pb::CreateVolumeResponse {
            volume: Some(volume_to_pb(&volume)),
        })
    }

    async fn delete_volume(
        &self,
        r: pb::DeleteVolumeRequest,
    ) -> CsiResult<pb::DeleteVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let _guard = self.locks.acquire(&[id])?;
        self.backend.delete_volume(id).await?;
        Ok(pb::DeleteVolumeResponse {})
    }

    async fn controller_publish(
        &self,
        r: pb::ControllerPublishVolumeRequest,
    ) -> CsiResult<pb::ControllerPublishVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let node = validate::identifier("node_id", &r.node_id)?;
        validate::capability("volume_capability", r.volume_capability.as_ref())?;
        self.require(self.backend.features().attach, "ControllerPublishVolume")?;
        let _guard = self.locks.acquire(&[id])?;
        let context = self.backend.publish(id, node, r.readonly).await?;
        Ok(pb::ControllerPublishVolumeResponse {
            publish_context: to_hash(&context),
        })
    }

    async fn controller_unpublish(
        &self,
        r: pb::ControllerUnpublishVolumeRequest,
    ) -> CsiResult<pb::ControllerUnpublishVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let node = if r.node_id.is_empty() {
            None
        } else {
            Some(validate::identifier("node_id", &r.node_id)?)
        };
        self.require(self.backend.features().attach, "ControllerUnpublishVolume")?;
        let _guard = self.locks.acquire(&[id])?;
        self.backend.unpublish(id, node).await?;
        Ok(pb::ControllerUnpublishVolumeResponse {})
    }

    async fn validate_capabilities(
        &self,
        r: pb::ValidateVolumeCapabilitiesRequest,
    ) -> CsiResult<pb::ValidateVolumeCapabilitiesResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(CsiError::InvalidArgument(
                "volume_capabilities is required".into(),
            ));
        }
        let volume = self.backend.get_volume(id).await?.volume;
        let checked = validate::capabilities("volume_capabilities", &r.volume_capabilities)
            .and_then(|caps| {
                params::parse(
                    &r.parameters,
                    &self.backend.backend_names(),
                    self.backend.parameter_keys(),
                )?;
                confirm_made_as(&volume.context, &r.volume_context, &caps)
            });
        Ok(match checked {
            Ok(_) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
            Err(e) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            },
        })
    }

    async fn list_volumes(&self, r: pb::ListVolumesRequest) -> CsiResult<pb::ListVolumesResponse> {
        let all = self.backend.list_volumes().await?;
        let (page, next_token) = paging::page(
            all,
            |s| s.volume.id.as_str(),
            r.max_entries,
            &r.starting_token,
        )?;
        let entries = page
            .iter()
            .map(|status| pb::list_volumes_response::Entry {
                volume: Some(volume_to_pb(&status.volume)),
                status: Some(pb::list_volumes_response::VolumeStatus {
                    published_node_ids: status.published_nodes.clone(),
                    volume_condition: Some(condition(status)),
                }),
            })
            .collect();
        Ok(pb::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn get_capacity(&self, r: pb::GetCapacityRequest) -> CsiResult<pb::GetCapacityResponse> {
        self.require(self.backend.features().capacity, "GetCapacity")?;
        let supported = validate::capabilities("volume_capabilities", &r.volume_capabilities)
            .is_ok()
            || r.volume_capabilities.is_empty();
        params::parse(
            &r.parameters,
            &self.backend.backend_names(),
            self.backend.parameter_keys(),
        )?;
        let here = self.node_backend.topology();
        let reachable = r.accessible_topology.as_ref().is_none_or(|t| {
            t.segments
                .iter()
                .all(|(k, v)| here.get(k).is_none_or(|h| h == v))
        });
        let parameters: Map = r.parameters.clone().into_iter().collect();
        let capacity = self.backend.capacity_for(&parameters).await?;
        let available = if supported && reachable {
            capacity.available_bytes
        } else {
            0
        };
        Ok(pb::GetCapacityResponse {
            available_capacity: available as i64,
            maximum_volume_size: Some(capacity.maximum_volume_bytes.min(available) as i64),
            minimum_volume_size: Some(capacity.minimum_volume_bytes as i64),
        })
    }

    fn controller_capabilities(&self) -> pb::ControllerGetCapabilitiesResponse {
        use controller_service_capability::rpc::Type as Rpc;
        let features = self.backend.features();
        let mut rpcs = vec![
            Rpc::CreateDeleteVolume,
            Rpc::ListVolumes,
            Rpc::GetVolume,
            Rpc::SingleNodeMultiWriter,
        ];
        if features.attach {
            rpcs.extend([Rpc::PublishUnpublishVolume, Rpc::ListVolumesPublishedNodes]);
            if self.backend.publish_readonly() {
                rpcs.push(Rpc::PublishReadonly);
            }
        }
        if features.capacity {
            rpcs.push(Rpc::GetCapacity);
        }
        if features.snapshots {
            rpcs.extend([
                Rpc::CreateDeleteSnapshot,
                Rpc::ListSnapshots,
                Rpc::GetSnapshot,
            ]);
        }
        if features.clone {
            rpcs.push(Rpc::CloneVolume);
        }
        if features.expand {
            rpcs.push(Rpc::ExpandVolume);
        }
        if features.volume_condition {
            rpcs.push(Rpc::VolumeCondition);
        }
        pb::ControllerGetCapabilitiesResponse {
            capabilities: rpcs
                .into_iter()
                .map(|t| pb::ControllerServiceCapability {
                    r#type: Some(controller_service_capability::Type::Rpc(
                        controller_service_capability::Rpc { r#type: t as i32 },
                    )),
                })
                .collect(),
        }
    }

    async fn create_snapshot(
        &self,
        r: pb::CreateSnapshotRequest,
    ) -> CsiResult<pb::CreateSnapshotResponse> {
        self.require(self.backend.features().snapshots, "snapshots")?;
        let source = validate::identifier("source_volume_id", &r.source_volume_id)?;
        let name = validate::identifier("name", &r.name)?;
        params::parse(&r.parameters, &self.backend.backend_names(), &[])?;
        params::check_snapshot_class(&r.parameters, source, self.backend.backend_of(source))?;
        let _guard = self.locks.acquire(&[name])?;
        let snapshot = self.backend.create_snapshot(source, name).await?;
        Ok(pb::CreateSnapshotResponse {
            snapshot: Some(snapshot_to_pb(&snapshot)),
        })
    }

    async fn delete_snapshot(
        &self,
        r: pb::DeleteSnapshotRequest,
    ) -> CsiResult<pb::DeleteSnapshotResponse> {
        self.require(self.backend.features().snapshots, "snapshots")?;
        let id = validate::identifier("snapshot_id", &r.snapshot_id)?;
        let _guard = self.locks.acquire(&[id])?;
        self.backend.delete_snapshot(id).await?;
        Ok(pb::DeleteSnapshotResponse {})
    }

    async fn list_snapshots(
        &self,
        r: pb::ListSnapshotsRequest,
    ) -> CsiResult<pb::ListSnapshotsResponse> {
        self.require(self.backend.features().snapshots, "snapshots")?;
        let mut all = self.backend.list_snapshots().await?;
        if !r.snapshot_id.is_empty() {
            all.retain(|s| s.id == r.snapshot_id);
        }
        if !r.source_volume_id.is_empty() {
            all.retain(|s| s.source_volume_id == r.source_volume_id);
        }
        let (page, next_token) =
            paging::page(all, |s| s.id.as_str(), r.max_entries, &r.starting_token)?;
        Ok(pb::ListSnapshotsResponse {
            entries: page
                .iter()
                .map(|s| pb::list_snapshots_response::Entry {
                    snapshot: Some(snapshot_to_pb(s)),
                })
                .collect(),
            next_token,
        })
    }

    async fn get_snapshot(&self, r: pb::GetSnapshotRequest) -> CsiResult<pb::GetSnapshotResponse> {
        self.require(self.backend.features().snapshots, "snapshots")?;
        let id = validate::identifier("snapshot_id", &r.snapshot_id)?;
        let snapshot = self
            .backend
            .list_snapshots()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| CsiError::NotFound(format!("snapshot {id} does not exist")))?;
        Ok(pb::GetSnapshotResponse {
            snapshot: Some(snapshot_to_pb(&snapshot)),
        })
    }

    async fn controller_expand(
        &self,
        r: pb::ControllerExpandVolumeRequest,
    ) -> CsiResult<pb::ControllerExpandVolumeResponse> {
        self.require(self.backend.features().expand, "expansion")?;
        let id = validate::identifier("volume_id", &r.volume_id)?;
        if r.capacity_range.is_none() {
            return Err(CsiError::InvalidArgument(
                "capacity_range is required".into(),
            ));
        }
        let (required, limit) = validate::capacity_range(r.capacity_range.as_ref())?;
        if r.volume_capability.is_some() {
            validate::capability("volume_capability", r.volume_capability.as_ref())?;
        }
        let _guard = self.locks.acquire(&[id])?;
        let size = self.backend.expand(id, required, limit).await?;
        Ok(pb::ControllerExpandVolumeResponse {
            capacity_bytes: size as i64,
            node_expansion_required: true,
        })
    }

    async fn controller_get_volume(
        &self,
        r: pb::ControllerGetVolumeRequest,
    ) -> CsiResult<pb::ControllerGetVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let status = self.backend.get_volume(id).await?;
        Ok(pb::ControllerGetVolumeResponse {
            volume: Some(volume_to_pb(&status.volume)),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: status.published_nodes.clone(),
                volume_condition: Some(condition(&status)),
            }),
        })
    }
}

#[tonic::async_trait]
impl controller_server::Controller for Driver {
    async fn create_volume(
        &self,
        r: Request<pb::CreateVolumeRequest>,
    ) -> Reply<pb::CreateVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("CreateVolume", volume_name = %r.name);
        self.call(span, Driver::create_volume(self, r)).await
    }

    async fn delete_volume(
        &self,
        r: Request<pb::DeleteVolumeRequest>,
    ) -> Reply<pb::DeleteVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("DeleteVolume", volume_id = %r.volume_id);
        self.call(span, Driver::delete_volume(self, r)).await
    }

    async fn controller_publish_volume(
        &self,
        r: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Reply<pb::ControllerPublishVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("ControllerPublishVolume", volume_id = %r.volume_id, node_id = %r.node_id);
        self.call(span, self.controller_publish(r)).await
    }

    async fn controller_unpublish_volume(
        &self,
        r: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Reply<pb::ControllerUnpublishVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("ControllerUnpublishVolume", volume_id = %r.volume_id, node_id = %r.node_id);
        self.call(span, self.controller_unpublish(r)).await
    }

    async fn validate_volume_capabilities(
        &self,
        r: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<pb::ValidateVolumeCapabilitiesResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("ValidateVolumeCapabilities", volume_id = %r.volume_id);
        self.call(span, self.validate_capabilities(r)).await
    }

    async fn list_volumes(
        &self,
        r: Request<pb::ListVolumesRequest>,
    ) -> Reply<pb::ListVolumesResponse> {
        let span = tracing::debug_span!("ListVolumes");
        self.call(span, Driver::list_volumes(self, r.into_inner()))
            .await
    }

    async fn get_capacity(
        &self,
        r: Request<pb::GetCapacityRequest>,
    ) -> Reply<pb::GetCapacityResponse> {
        let span = tracing::debug_span!("GetCapacity");
        self.call(span, Driver::get_capacity(self, r.into_inner()))
            .await
    }

    async fn controller_get_capabilities(
        &self,
        _r: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Reply<pb::ControllerGetCapabilitiesResponse> {
        Ok(Response::new(self.controller_capabilities()))
    }

    async fn create_snapshot(
        &self,
        r: Request<pb::CreateSnapshotRequest>,
    ) -> Reply<pb::CreateSnapshotResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("CreateSnapshot", snapshot_name = %r.name, volume_id = %r.source_volume_id);
        self.call(span, Driver::create_snapshot(self, r)).await
    }

    async fn delete_snapshot(
        &self,
        r: Request<pb::DeleteSnapshotRequest>,
    ) -> Reply<pb::DeleteSnapshotResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("DeleteSnapshot", snapshot_id = %r.snapshot_id);
        self.call(span, Driver::delete_snapshot(self, r)).await
    }

    async fn list_snapshots(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Reply<pb::ListSnapshotsResponse> {
        let span = tracing::debug_span!("ListSnapshots");
        self.call(span, Driver::list_snapshots(self, r.into_inner()))
            .await
    }

    async fn get_snapshot(
        &self,
        r: Request<pb::GetSnapshotRequest>,
    ) -> Reply<pb::GetSnapshotResponse> {
        let r = r.into_inner();
        let span = tracing::debug_span!("GetSnapshot", snapshot_id = %r.snapshot_id);
        self.call(span, Driver::get_snapshot(self, r)).await
    }

    async fn controller_expand_volume(
        &self,
        r: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Reply<pb::ControllerExpandVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("ControllerExpandVolume", volume_id = %r.volume_id);
        self.call(span, self.controller_expand(r)).await
    }

    async fn controller_get_volume(
        &self,
        r: Request<pb::ControllerGetVolumeRequest>,
    ) -> Reply<pb::ControllerGetVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::debug_span!("ControllerGetVolume", volume_id = %r.volume_id);
        self.call(span, self.controller_get_volume(r)).await
    }

    async fn controller_modify_volume(
        &self,
        _r: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Reply<pb::ControllerModifyVolumeResponse> {
        Err(CsiError::Unimplemented("ControllerModifyVolume is not supported".into()).into())
    }
}
