//! The Node service: checks requests and drives the node-side steps in
//! `crate::node::volume` over the backend's device handling.

use tonic::{Request, Response, Status};

use std::path::{Path, PathBuf};

use crate::backend::{Map, Recorded};
use crate::blocking;
use crate::csi::made_as::MadeAs;
use crate::csi::params;
use crate::csi::validate::{self, Access};
use crate::csi::{self as pb, node_server, node_service_capability};
use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};
use crate::node::ownership::Owner;
use crate::node::volume::{self, Usage};
use crate::node::{luks, luks_keys, mount, readonly, trusted_path};

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
        let staging = validate::target_path("staging_target_path", &r.staging_target_path)?;
        let capability = validate::capability("volume_capability", r.volume_capability.as_ref())?;
        check_mount_flags(&capability)?;
        let recorded = self.known_volume(id).await?;
        let staging = self.inside_kubelet_dir("staging_target_path", &staging)?;
        let context = volume_context(recorded.as_ref(), &r.volume_context);
        require_made_as(id, recorded.as_ref(), &context, &capability)?;
        volume::mkfs_options(&context)?;
        if matches!(capability.access, Access::Mount { .. }) {
            volume::check_mount_point("staging_target_path", &staging, false)?;
        }
        let encryption = match params::luks(&context)? {
            Some(settings) => {
                let keys = luks_keys::volume_keys(&r.secrets, id)?;
                blocking::run(|| Ok(luks::check_available()?)).await?;
                Some((settings, keys))
            }
            None if luks_keys::has_key_material(&r.secrets) => {
                return Err(CsiError::InvalidArgument(format!(
                    "the node-stage secret has LUKS key material ({}) but the volume context lacks the encryption settings ({}); nothing was touched: pass the volume_context the volume was created with",
                    luks_keys::KEY_ENTRIES.join(", "),
                    params::LUKS_ENCRYPTED
                )));
            }
            None => None,
        };
        let _guard = self.locks.acquire(&[id])?;
        let attached_before = self.node_backend.find_device(id).await?.is_some();
        let mapping = luks::mapping_name(id);
        let open_before = match encryption {
            Some(_) => volume::encrypted_device(mapping.clone()).await?.is_some(),
            None => true,
        };
        let staged = self
            .stage_steps(id, &r, staging, &capability, &context, encryption)
            .await;
        if staged.is_err() {
            // Undo what this call did, so that a failed stage holds nothing
            // (DeleteVolume would be refused while a device stays attached).
            if !open_before && let Err(e) = volume::close_encrypted(mapping).await {
                tracing::warn!(volume_id = %id, error = %e, "cannot close the LUKS mapping of a failed stage");
            }
            if !attached_before && let Err(e) = self.node_backend.detach_device(id).await {
                tracing::warn!(volume_id = %id, error = %e, "cannot detach the device of a failed stage");
            }
        }
        staged?;
        Ok(pb::NodeStageVolumeResponse {})
    }

    /// Attaches, opens (when encrypted), formats (when blank) and mounts.
    async fn stage_steps(
        &self,
        id: &str,
        r: &pb::NodeStageVolumeRequest,
        staging: PathBuf,
        capability: &validate::Capability,
        context: &Map,
        encryption: Option<(params::Luks, luks_keys::VolumeKeys)>,
    ) -> CsiResult<()> {
        let mut device = self
            .node_backend
            .attach_device(id, &to_map(&r.publish_context))
            .await?;
        let markers = self.settings.state_dir.join("node");
        let mkfs_marker = markers.join(format!("{id}.mkfs"));
        if let Some((settings, keys)) = encryption {
            device = volume::open_encrypted(
                device,
                luks::mapping_name(id),
                keys,
                settings,
                self.settings.luks_pbkdf,
                markers.join(format!("{id}.luks-format")),
                mkfs_marker.clone(),
            )
            .await?;
        }
        volume::stage_filesystem(device, staging, capability, context, mkfs_marker).await
    }

    async fn node_unstage(
        &self,
        r: pb::NodeUnstageVolumeRequest,
    ) -> CsiResult<pb::NodeUnstageVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let staging = validate::target_path("staging_target_path", &r.staging_target_path)?;
        self.known_volume(id).await?;
        let staging = self.inside_kubelet_dir("staging_target_path", &staging)?;
        let _guard = self.locks.acquire(&[id])?;
        let owner = self.owner(id).await?;
        if let Some(owner) = owner.clone() {
            let (root, at) = (self.kubelet_root(), staging.clone());
            let targets = blocking::run(move || {
                let table = crate::node::mount::mounts()?;
                Ok(owner.targets(&table, &root, &at))
            })
            .await?;
            if !targets.is_empty() {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {id} is still published at {}; nothing was unstaged: call NodeUnpublishVolume for each target first",
                    targets
                        .iter()
                        .map(|t| t.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        volume::unstage_filesystem(staging, owner.clone()).await?;
        // Read-only views hold the device open: they go first.
        if let Some(owner) = owner {
            let device = owner.device().to_path_buf();
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
        let target = validate::target_path("target_path", &r.target_path)?;
        let capability = validate::capability("volume_capability", r.volume_capability.as_ref())?;
        if r.staging_target_path.is_empty() {
            // CSI: with STAGE_UNSTAGE_VOLUME, a missing staging path is
            // FAILED_PRECONDITION ("Staging target path not set").
            return Err(CsiError::FailedPrecondition(
                "staging_target_path is not set: this plugin stages volumes; call NodeStageVolume and pass its staging_target_path".into(),
            ));
        }
        let staging = validate::target_path("staging_target_path", &r.staging_target_path)?;
        check_mount_flags(&capability)?;
        let recorded = self.known_volume(id).await?;
        let knowable = recorded.is_some();
        let target = self.inside_kubelet_dir("target_path", &target)?;
        let staging = self.inside_kubelet_dir("staging_target_path", &staging)?;
        if target == staging {
            return Err(CsiError::InvalidArgument(
                "target_path must differ from staging_target_path".into(),
            ));
        }
        let context = volume_context(recorded.as_ref(), &r.volume_context);
        require_made_as(id, recorded.as_ref(), &context, &capability)?;
        let block = matches!(capability.access, Access::Block);
        volume::check_mount_point("target_path", &target, block)?;
        let read_only = r.readonly || capability.read_only_mode();
        let _guard = self.locks.acquire(&[id, &r.target_path])?;
        let encrypted = params::luks(&context)?.is_some();
        let owner = if encrypted {
            // An encrypted volume is published through its mapping only.
            match volume::encrypted_device(luks::mapping_name(id)).await? {
                Some(mapping) => Some(blocking::run(move || Ok(Owner::of(&mapping)?)).await?),
                None => None,
            }
        } else {
            self.owner(id).await?
        };
        let Some(owner) = owner else {
            if encrypted || knowable {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {id} is not staged on this node: call NodeStageVolume first"
                )));
            }
            // CSI: a volume that does not exist (here: has no device on
            // this node) is NOT_FOUND.
            return Err(CsiError::NotFound(format!(
                "volume {id} does not exist on this node: call NodeStageVolume first"
            )));
        };
        if matches!(capability.access, Access::Mount { .. }) {
            volume::require_staged(staging.clone(), owner.clone()).await?;
        }
        if single_writer(&capability) {
            self.require_no_other_target(id, &owner, &staging, &target)
                .await?;
        }
        match capability.access {
            Access::Block => {
                let device = owner.device().to_path_buf();
                // A bind mount does not stop writes to a device: a
                // read-only publish gets a device the kernel keeps read-only.
                let device = if read_only {
                    blocking::run(move || Ok(readonly::view(&device)?)).await?
                } else {
                    device
                };
                volume::publish(device, target, true, read_only, Vec::new(), owner).await?;
            }
            Access::Mount { flags, .. } => {
                volume::publish(staging, target, false, read_only, flags, owner).await?;
            }
        }
        Ok(pb::NodePublishVolumeResponse {})
    }

    /// A single-writer volume is published at one target at a time (CSI:
    /// a second target is FAILED_PRECONDITION).
    async fn require_no_other_target(
        &self,
        id: &str,
        owner: &Owner,
        staging: &Path,
        target: &Path,
    ) -> CsiResult<()> {
        let (owner, root, staging, target) = (
            owner.clone(),
            self.kubelet_root(),
            staging.to_path_buf(),
            target.to_path_buf(),
        );
        let others = blocking::run(move || {
            let table = crate::node::mount::mounts()?;
            let mut found = owner.targets(&table, &root, &staging);
            found.retain(|t| *t != target);
            Ok(found)
        })
        .await?;
        match others.first() {
            None => Ok(()),
            Some(other) => Err(CsiError::FailedPrecondition(format!(
                "volume {id} has a single-writer access mode and is already published at {}; unpublish it there first, or use SINGLE_NODE_MULTI_WRITER",
                other.display()
            ))),
        }
    }

    async fn node_unpublish(
        &self,
        r: pb::NodeUnpublishVolumeRequest,
    ) -> CsiResult<pb::NodeUnpublishVolumeResponse> {
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let target = validate::target_path("target_path", &r.target_path)?;
        self.known_volume(id).await?;
        let target = self.inside_kubelet_dir("target_path", &target)?;
        let _guard = self.locks.acquire(&[id, &r.target_path])?;
        let owner = self.owner(id).await?;
        let at = target.clone();
        let view = blocking::run(move || Ok(readonly::view_at(&at)?)).await?;
        volume::unpublish(target, owner).await?;
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
        let path = validate::target_path("volume_path", &r.volume_path)?;
        self.known_volume(id).await?;
        let path = self.inside_kubelet_dir("volume_path", &path)?;
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
        if !self.node_backend.expands() {
            return Err(CsiError::Unimplemented(
                "NodeExpandVolume: this backend's volumes do not grow".into(),
            ));
        }
        let id = validate::identifier("volume_id", &r.volume_id)?;
        let path = validate::target_path("volume_path", &r.volume_path)?;
        validate::capacity_range(r.capacity_range.as_ref())?;
        if r.volume_capability.is_some() {
            validate::capability("volume_capability", r.volume_capability.as_ref())?;
        }
        let staging = match r.staging_target_path.as_str() {
            "" => None,
            given => Some(validate::target_path("staging_target_path", given)?),
        };
        self.known_volume(id).await?;
        let path = self.inside_kubelet_dir("volume_path", &path)?;
        let staging = staging
            .map(|s| self.inside_kubelet_dir("staging_target_path", &s))
            .transpose()?;
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
        let grow_at = staging.unwrap_or(path);
        volume::grow_filesystem(device, grow_at).await?;
        Ok(pb::NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        })
    }

    /// What the backend records of a volume (`None`: it keeps no record);
    /// a volume it does not know is NOT_FOUND, before any path of the
    /// request is looked at.
    async fn known_volume(&self, id: &str) -> CsiResult<Option<Recorded>> {
        self.node_backend.recorded(id).await
    }

    /// The kubelet directory as node paths resolve.
    fn kubelet_root(&self) -> PathBuf {
        trusted_path::resolve_root(&self.settings.kubelet_dir)
    }

    /// A checked node path, resolved through trusted symlinks only and
    /// confined to the kubelet directory.
    fn inside_kubelet_dir(&self, field: &str, path: &Path) -> CsiResult<PathBuf> {
        trusted_path::resolve_inside(field, path, &self.kubelet_root())
    }

    /// The volume's device as its mounts show it, if it is on this node.
    async fn owner(&self, id: &str) -> CsiResult<Option<Owner>> {
        match self.staged_device(id).await? {
            Some(device) => Ok(Some(blocking::run(move || Ok(Owner::of(&device)?)).await?)),
            None => Ok(None),
        }
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
        .filter(|rpc| *rpc != Rpc::ExpandVolume || self.node_backend.expands())
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

/// Mount flags that can never be passed to mount(2) are the caller's
/// mistake, found before anything is touched.
fn check_mount_flags(capability: &validate::Capability) -> CsiResult<()> {
    if let Access::Mount { flags, .. } = &capability.access {
        mount::parse_options(flags, false).map_err(|e| {
            CsiError::InvalidArgument(format!("volume_capability.mount.mount_flags: {e}"))
        })?;
    }
    Ok(())
}

/// The context a node call acts on: the backend's own record where there is
/// one (the request cannot drop encryption from it), else the request's.
fn volume_context(
    recorded: Option<&Recorded>,
    request: &std::collections::HashMap<String, String>,
) -> Map {
    match recorded {
        Some(recorded) => recorded.context.clone(),
        None => to_map(request),
    }
}

/// A volume made for one access type (block or mount) is staged and
/// published only as that type; what it was made as comes from the
/// backend's record, else from the volume context.
fn require_made_as(
    id: &str,
    recorded: Option<&Recorded>,
    context: &Map,
    capability: &validate::Capability,
) -> CsiResult<()> {
    let made = match recorded {
        Some(recorded) => Some(recorded.made_as.clone()),
        None => MadeAs::from_context(context)?,
    };
    let Some(made) = made else {
        return Ok(());
    };
    match (&made, &capability.access) {
        (MadeAs::Block, Access::Block) | (MadeAs::Filesystem(_), Access::Mount { .. }) => Ok(()),
        _ => Err(CsiError::FailedPrecondition(format!(
            "volume {id}: {}; nothing was touched: use a volume_capability of the access type it was made with",
            made.admits(capability).err().unwrap_or_default()
        ))),
    }
}

/// Whether the access mode allows one publish on the node at a time.
fn single_writer(capability: &validate::Capability) -> bool {
    use pb::volume_capability::access_mode::Mode;
    matches!(
        capability.mode,
        Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::volume_capability::access_mode::Mode;

    fn capability(access: Access, mode: Mode) -> validate::Capability {
        validate::Capability { access, mode }
    }

    fn mount() -> Access {
        Access::Mount {
            fs_type: "ext4".into(),
            flags: vec![],
        }
    }

    #[test]
    fn a_volume_is_used_only_as_it_was_made() {
        let block = MadeAs::Block.to_context();
        let err = require_made_as(
            "v",
            None,
            &block,
            &capability(mount(), Mode::SingleNodeWriter),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CsiError::FailedPrecondition(m) if m.contains("raw block")),
            "{err:?}"
        );
        let recorded = Recorded {
            made_as: MadeAs::Block,
            encrypted: false,
            context: Map::new(),
        };
        // The record wins over a context that says otherwise.
        let mount_context = MadeAs::Filesystem("ext4".into()).to_context();
        require_made_as(
            "v",
            Some(&recorded),
            &mount_context,
            &capability(mount(), Mode::SingleNodeWriter),
        )
        .unwrap_err();
        require_made_as(
            "v",
            Some(&recorded),
            &Map::new(),
            &capability(Access::Block, Mode::SingleNodeWriter),
        )
        .unwrap();
        // Volumes made before the access type was recorded: no refusal.
        require_made_as(
            "v",
            None,
            &Map::new(),
            &capability(mount(), Mode::SingleNodeWriter),
        )
        .unwrap();
    }

    #[test]
    fn the_backends_record_wins_over_the_request() {
        let request = std::collections::HashMap::from([("k".to_string(), "request".to_string())]);
        let recorded = Recorded {
            made_as: MadeAs::Block,
            encrypted: false,
            context: Map::from([("k".to_string(), "record".to_string())]),
        };
        assert_eq!(volume_context(Some(&recorded), &request)["k"], "record");
        assert_eq!(volume_context(None, &request)["k"], "request");
    }

    #[test]
    fn only_single_writer_modes_limit_publishes() {
        assert!(single_writer(&capability(mount(), Mode::SingleNodeWriter)));
        assert!(single_writer(&capability(
            mount(),
            Mode::SingleNodeSingleWriter
        )));
        assert!(!single_writer(&capability(
            mount(),
            Mode::SingleNodeMultiWriter
        )));
        assert!(!single_writer(&capability(
            mount(),
            Mode::MultiNodeReaderOnly
        )));
    }

    #[test]
    fn mount_flags_that_change_the_mount_are_invalid_with_the_field() {
        let flags = Access::Mount {
            fs_type: "ext4".into(),
            flags: vec!["rbind".into()],
        };
        let err = check_mount_flags(&capability(flags, Mode::SingleNodeWriter)).unwrap_err();
        assert!(
            matches!(&err, CsiError::InvalidArgument(m) if m.contains("mount_flags")),
            "{err:?}"
        );
    }
}
