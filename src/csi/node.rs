//! The Node service: checks requests and drives the node-side steps in
//! `crate::node::volume` over the backend's device handling.

use tonic::{Request, Response, Status};

use crate::backend::Map;
use crate::blocking;
use crate::csi::params;
use crate::csi::validate::{self, Access};
use crate::csi::{self as pb, node_server, node_service_capability};
use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};
use crate::node::readonly;
use crate::node::volume::{self, Usage};
use crate::node::{luks, luks_keys};

type Reply<T> = Result<Response<T>, Status>;

fn to_map(map: &std::collections::HashMap<String, String>) -> Map {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Driver {
    async fn node_stage(
        &self,
        r: pb::NodeStageVolumeRequest,
    ) -> CsiResult<pb::NodeStageVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let staging = node_path("staging_target_path", &r.staging_target_path)?;
        let capability = validate::capability("volume_capability", r.volume_capability.as_ref())?;
        let context = to_map(&r.volume_context);
        volume::mkfs_options(&context)?;
        let encryption = match params::luks(&context)? {
            Some(settings) => {
                let keys = luks_keys::volume_keys(&r.secrets, id)?;
                blocking::run(|| Ok(luks::check_available()?)).await?;
                Some((settings, keys))
            }
            None => None,
        };
        let _guard = self.locks.acquire(&[id])?;
        let mut device = self
            .node_backend
            .attach_device(id, &to_map(&r.publish_context))
            .await?;
        let markers = self.settings.state_dir.join("node");
        if let Some((settings, keys)) = encryption {
            device = volume::open_encrypted(
                device,
                luks::mapping_name(id),
                keys,
                settings,
                self.settings.luks_pbkdf,
                markers.join(format!("{id}.luks-format")),
            )
            .await?;
        }
        let marker = markers.join(format!("{id}.mkfs"));
        volume::stage_filesystem(device, staging, &capability, &context, marker).await?;
        Ok(pb::NodeStageVolumeResponse {})
    }

    async fn node_unstage(
        &self,
        r: pb::NodeUnstageVolumeRequest,
    ) -> CsiResult<pb::NodeUnstageVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let staging = node_path("staging_target_path", &r.staging_target_path)?;
        let _guard = self.locks.acquire(&[id])?;
        volume::unstage_filesystem(staging).await?;
        // Read-only views hold the device open: they go first.
        if let Some(device) = self.staged_device(id).await? {
            blocking::run(move || Ok(readonly::release_all(&device)?)).await?;
        }
        volume::close_encrypted(luks::mapping_name(id)).await?;
        self.node_backend.detach_device(id).await?;
        Ok(pb::NodeUnstageVolumeResponse {})
    }

    async fn node_publish(
        &self,
        r: pb::NodePublishVolumeRequest,
    ) -> CsiResult<pb::NodePublishVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let target = node_path("target_path", &r.target_path)?;
        let capability = validate::capability("volume_capability", r.volume_capability.as_ref())?;
        if r.staging_target_path.is_empty() {
            // CSI: with STAGE_UNSTAGE_VOLUME, a missing staging path is
            // FAILED_PRECONDITION ("Staging target path not set").
            return Err(CsiError::FailedPrecondition(
                "staging_target_path is not set: this plugin stages volumes; call NodeStageVolume and pass its staging_target_path".into(),
            ));
        }
        let staging = node_path("staging_target_path", &r.staging_target_path)?;
        if target == staging {
            return Err(CsiError::InvalidArgument(
                "target_path must differ from staging_target_path".into(),
            ));
        }
        let read_only = r.readonly || capability.read_only_mode();
        let _guard = self.locks.acquire(&[id, &r.target_path])?;
        // CSI: a volume that does not exist (here: has no device on this
        // node) is NOT_FOUND.
        let missing = || {
            CsiError::NotFound(format!(
                "volume {id} does not exist on this node: call NodeStageVolume first"
            ))
        };
        match capability.access {
            Access::Block => {
                let device = self.staged_device(id).await?;
                let device = match device {
                    // An encrypted volume is published through its mapping only.
                    None if params::luks(&r.volume_context)?.is_some() => {
                        return Err(CsiError::FailedPrecondition(format!(
                            "encrypted volume {id} is not open on this node: call NodeStageVolume first"
                        )));
                    }
                    other => other.ok_or_else(missing)?,
                };
                // A bind mount does not stop writes to a device: a
                // read-only publish gets a device the kernel keeps read-only.
                let device = if read_only {
                    blocking::run(move || Ok(readonly::view(&device)?)).await?
                } else {
                    device
                };
                volume::publish(device, target, true, read_only, Vec::new()).await?;
            }
            Access::Mount { flags, .. } => {
                match volume::publish(staging, target, false, read_only, flags).await {
                    // Not staged: tell a volume without a device apart.
                    Err(CsiError::FailedPrecondition(_))
                        if self.node_backend.find_device(id).await?.is_none() =>
                    {
                        return Err(missing());
                    }
                    result => result?,
                }
            }
        }
        Ok(pb::NodePublishVolumeResponse {})
    }

    async fn node_unpublish(
        &self,
        r: pb::NodeUnpublishVolumeRequest,
    ) -> CsiResult<pb::NodeUnpublishVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let target = node_path("target_path", &r.target_path)?;
        let _guard = self.locks.acquire(&[id, &r.target_path])?;
        let at = target.clone();
        let view = blocking::run(move || Ok(readonly::view_at(&at)?)).await?;
        volume::unpublish(target).await?;
        if let Some(view) = view {
            blocking::run(move || Ok(readonly::release_if_unused(&view)?)).await?;
        }
        Ok(pb::NodeUnpublishVolumeResponse {})
    }

    async fn node_stats(
        &self,
        r: pb::NodeGetVolumeStatsRequest,
    ) -> CsiResult<pb::NodeGetVolumeStatsResponse> {
        use pb::volume_usage::Unit;
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let path = node_path("volume_path", &r.volume_path)?;
        let device = self.staged_device(id).await?;
        let usage = volume::usage(path, device.clone()).await?;
        let healthy = |usage: Vec<pb::VolumeUsage>| pb::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(pb::VolumeCondition {
                abnormal: false,
                message: "volume is mounted and healthy".into(),
            }),
        };
        Ok(match usage {
            Usage::Filesystem(s) => {
                let mut usage = vec![pb::VolumeUsage {
                    available: s.available_bytes as i64,
                    total: s.total_bytes as i64,
                    used: s.used_bytes as i64,
                    unit: Unit::Bytes as i32,
                }];
                // btrfs has no fixed inode count: report no inode usage
                // rather than a misleading 0 of 0.
                if s.total_inodes > 0 {
                    usage.push(pb::VolumeUsage {
                        available: s.free_inodes as i64,
                        total: s.total_inodes as i64,
                        used: s.used_inodes as i64,
                        unit: Unit::Inodes as i32,
                    });
                }
                healthy(usage)
            }
            Usage::Block(size) => healthy(vec![pb::VolumeUsage {
                available: 0,
                total: size as i64,
                used: 0,
                unit: Unit::Bytes as i32,
            }]),
            Usage::NotMounted(message) => pb::NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: true,
                    message: if device.is_none() {
                        format!("{message}; the volume's device is not attached")
                    } else {
                        message
                    },
                }),
            },
        })
    }

    async fn node_expand(
        &self,
        r: pb::NodeExpandVolumeRequest,
    ) -> CsiResult<pb::NodeExpandVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let path = node_path("volume_path", &r.volume_path)?;
        validate::capacity_range(r.capacity_range.as_ref())?;
        if r.volume_capability.is_some() {
            validate::capability("volume_capability", r.volume_capability.as_ref())?;
        }
        if !path.exists() {
            return Err(CsiError::NotFound(format!(
                "volume_path {} does not exist",
                path.display()
            )));
        }
        let _guard = self.locks.acquire(&[id])?;
        let device =
            self.node_backend.find_device(id).await?.ok_or_else(|| {
                CsiError::NotFound(format!("volume {id} is not staged on this node"))
            })?;
        let size = self.node_backend.refresh_device(id).await?;
        let mapping = luks::mapping_name(id);
        let device = match volume::encrypted_device(mapping.clone()).await? {
            Some(opened) => {
                volume::grow_encrypted(mapping).await?;
                opened
            }
            None => device,
        };
        let views_of = device.clone();
        blocking::run(move || Ok(readonly::refresh_all(&views_of)?)).await?;
        let grow_at = if r.staging_target_path.is_empty() {
            path
        } else {
            node_path("staging_target_path", &r.staging_target_path)?
        };
        volume::grow_filesystem(device, grow_at).await?;
        Ok(pb::NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        })
    }

    /// The device a staged volume is used through: its LUKS mapping when
    /// one is open, else the backend's device.
    async fn staged_device(&self, id: &str) -> CsiResult<Option<std::path::PathBuf>> {
        match volume::encrypted_device(luks::mapping_name(id)).await? {
            Some(mapping) => Ok(Some(mapping)),
            None => self.node_backend.find_device(id).await,
        }
    }

    fn node_info(&self) -> pb::NodeGetInfoResponse {
        let max = if self.settings.max_volumes_per_node > 0 {
            self.settings.max_volumes_per_node
        } else {
            self.node_backend.max_volumes()
        };
        pb::NodeGetInfoResponse {
            // One ID for every backend, settled in `Driver::new`.
            node_id: self.settings.node_id.clone(),
            max_volumes_per_node: max as i64,
            accessible_topology: Some(pb::Topology {
                segments: self.node_backend.topology().into_iter().collect(),
            }),
        }
    }
}

#[tonic::async_trait]
impl node_server::Node for Driver {
    async fn node_stage_volume(
        &self,
        r: Request<pb::NodeStageVolumeRequest>,
    ) -> Reply<pb::NodeStageVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("NodeStageVolume", volume_id = %r.volume_id);
        self.call(span, self.node_stage(r)).await
    }

    async fn node_unstage_volume(
        &self,
        r: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Reply<pb::NodeUnstageVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("NodeUnstageVolume", volume_id = %r.volume_id);
        self.call(span, self.node_unstage(r)).await
    }

    async fn node_publish_volume(
        &self,
        r: Request<pb::NodePublishVolumeRequest>,
    ) -> Reply<pb::NodePublishVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("NodePublishVolume", volume_id = %r.volume_id);
        self.call(span, self.node_publish(r)).await
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Reply<pb::NodeUnpublishVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("NodeUnpublishVolume", volume_id = %r.volume_id);
        self.call(span, self.node_unpublish(r)).await
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Reply<pb::NodeGetVolumeStatsResponse> {
        let r = r.into_inner();
        let span = tracing::debug_span!("NodeGetVolumeStats", volume_id = %r.volume_id);
        self.call(span, self.node_stats(r)).await
    }

    async fn node_expand_volume(
        &self,
        r: Request<pb::NodeExpandVolumeRequest>,
    ) -> Reply<pb::NodeExpandVolumeResponse> {
        let r = r.into_inner();
        let span = tracing::info_span!("NodeExpandVolume", volume_id = %r.volume_id);
        self.call(span, self.node_expand(r)).await
    }

    async fn node_get_capabilities(
        &self,
        _r: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Reply<pb::NodeGetCapabilitiesResponse> {
        use node_service_capability::rpc::Type as Rpc;
        let capabilities = [
            Rpc::StageUnstageVolume,
            Rpc::GetVolumeStats,
            Rpc::ExpandVolume,
            Rpc::VolumeCondition,
            Rpc::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| pb::NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _r: Request<pb::NodeGetInfoRequest>,
    ) -> Reply<pb::NodeGetInfoResponse> {
        Ok(Response::new(self.node_info()))
    }
}

/// A staging, target or volume path of a node request: checked (absolute,
/// no `..`, no NUL) and resolved through trusted symlinks only.
fn node_path(field: &str, value: &str) -> CsiResult<std::path::PathBuf> {
    let path = validate::target_path(field, value)?;
    crate::node::trusted_path::resolve(field, &path)
}
