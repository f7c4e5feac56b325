//! Request builders and assertions shared by the sections.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;

use multicsi::csi::volume_capability::access_mode::Mode;
use multicsi::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use multicsi::csi::{self as csi, VolumeCapability};
use tonic::{Code, Response, Status};

use crate::harness::Server;

pub type Reply<T> = Result<Response<T>, Status>;

/// The value of an OK reply; a failure names the call and the status.
#[track_caller]
pub fn ok<T>(what: &str, reply: Reply<T>) -> T {
    match reply {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("{what}: expected OK, got {:?}: {}", s.code(), s.message()),
    }
}

/// Asserts the reply failed with `code`; returns the status.
#[track_caller]
pub fn fails<T: Debug>(what: &str, reply: Reply<T>, code: Code) -> Status {
    match reply {
        Ok(r) => panic!("{what}: expected {code:?}, got OK: {:?}", r.into_inner()),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            assert!(
                !s.message().is_empty(),
                "{what}: the status message must describe the error"
            );
            s
        }
    }
}

pub fn capability(access: AccessType, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(access),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn mount_access(fs: &str) -> AccessType {
    AccessType::Mount(MountVolume {
        fs_type: fs.to_string(),
        mount_flags: vec![],
        volume_mount_group: String::new(),
    })
}

pub fn block_access() -> AccessType {
    AccessType::Block(BlockVolume {})
}

/// A mounted, single-node-writer capability.
pub fn mount_cap(fs: &str) -> VolumeCapability {
    capability(mount_access(fs), Mode::SingleNodeWriter)
}

/// A raw block, single-node-writer capability.
pub fn block_cap() -> VolumeCapability {
    capability(block_access(), Mode::SingleNodeWriter)
}

/// A mounted capability that may be published at several targets of the
/// node (SINGLE_NODE_MULTI_WRITER).
pub fn shared_mount_cap(fs: &str) -> VolumeCapability {
    capability(mount_access(fs), Mode::SingleNodeMultiWriter)
}

/// A raw block capability that may be published at several targets.
pub fn shared_block_cap() -> VolumeCapability {
    capability(block_access(), Mode::SingleNodeMultiWriter)
}

pub fn range(required: u64, limit: u64) -> Option<csi::CapacityRange> {
    Some(csi::CapacityRange {
        required_bytes: required as i64,
        limit_bytes: limit as i64,
    })
}

pub fn create_request(
    name: &str,
    required: u64,
    cap: VolumeCapability,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: range(required, 0),
        volume_capabilities: vec![cap],
        ..Default::default()
    }
}

pub fn snapshot_source(id: &str) -> Option<csi::VolumeContentSource> {
    use csi::volume_content_source::{SnapshotSource, Type};
    Some(csi::VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: id.to_string(),
        })),
    })
}

pub fn volume_source(id: &str) -> Option<csi::VolumeContentSource> {
    use csi::volume_content_source::{Type, VolumeSource};
    Some(csi::VolumeContentSource {
        r#type: Some(Type::Volume(VolumeSource {
            volume_id: id.to_string(),
        })),
    })
}

pub fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Server {
    /// Creates a volume; it must succeed.
    pub async fn create(&self, name: &str, required: u64, cap: VolumeCapability) -> csi::Volume {
        self.create_with(create_request(name, required, cap)).await
    }

    pub async fn create_with(&self, request: csi::CreateVolumeRequest) -> csi::Volume {
        let what = format!("CreateVolume {}", request.name);
        let volume = ok(&what, self.controller().create_volume(request).await)
            .volume
            .unwrap_or_else(|| panic!("{what}: the response has no volume"));
        assert!(!volume.volume_id.is_empty(), "{what}: empty volume_id");
        volume
    }

    pub async fn delete(&self, id: &str) {
        ok(
            &format!("DeleteVolume {id}"),
            self.controller()
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id.to_string(),
                    ..Default::default()
                })
                .await,
        );
    }

    /// Creates a snapshot and waits until it is ready to use (a snapshot
    /// may be cut first and processed after; ListSnapshots tells).
    pub async fn snapshot(&self, name: &str, source: &str) -> csi::Snapshot {
        let what = format!("CreateSnapshot {name}");
        let snapshot = ok(
            &what,
            self.controller()
                .create_snapshot(csi::CreateSnapshotRequest {
                    name: name.to_string(),
                    source_volume_id: source.to_string(),
                    ..Default::default()
                })
                .await,
        )
        .snapshot
        .unwrap_or_else(|| panic!("{what}: the response has no snapshot"));
        if snapshot.ready_to_use {
            return snapshot;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let listed = ok(
                "ListSnapshots by snapshot_id",
                self.controller()
                    .list_snapshots(csi::ListSnapshotsRequest {
                        snapshot_id: snapshot.snapshot_id.clone(),
                        ..Default::default()
                    })
                    .await,
            );
            if let Some(s) = listed.entries.into_iter().find_map(|e| e.snapshot)
                && s.ready_to_use
            {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not ready to use after 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    pub async fn delete_snapshot(&self, id: &str) {
        ok(
            &format!("DeleteSnapshot {id}"),
            self.controller()
                .delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: id.to_string(),
                    ..Default::default()
                })
                .await,
        );
    }

    /// ControllerPublishVolume to this server's node; returns the publish context.
    pub async fn controller_publish(
        &self,
        id: &str,
        cap: &VolumeCapability,
        readonly: bool,
    ) -> HashMap<String, String> {
        ok(
            &format!("ControllerPublishVolume {id}"),
            self.controller()
                .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                    volume_id: id.to_string(),
                    node_id: self.backend.node_id.to_string(),
                    volume_capability: Some(cap.clone()),
                    readonly,
                    ..Default::default()
                })
                .await,
        )
        .publish_context
    }

    pub async fn controller_unpublish(&self, id: &str) {
        ok(
            &format!("ControllerUnpublishVolume {id}"),
            self.controller()
                .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                    volume_id: id.to_string(),
                    node_id: self.backend.node_id.to_string(),
                    ..Default::default()
                })
                .await,
        );
    }

    /// Every volume, following next_token with pages of `page` entries.
    pub async fn list_volume_ids(&self, page: i32) -> Vec<String> {
        let mut ids = Vec::new();
        let mut token = String::new();
        for _ in 0..10_000 {
            let reply = ok(
                "ListVolumes",
                self.controller()
                    .list_volumes(csi::ListVolumesRequest {
                        max_entries: page,
                        starting_token: token.clone(),
                    })
                    .await,
            );
            if page > 0 {
                assert!(
                    reply.entries.len() <= page as usize,
                    "page longer than max_entries"
                );
            }
            ids.extend(
                reply
                    .entries
                    .into_iter()
                    .map(|e| e.volume.expect("entry without volume").volume_id),
            );
            if reply.next_token.is_empty() {
                return ids;
            }
            token = reply.next_token;
        }
        panic!("ListVolumes never ended");
    }

    pub async fn list_snapshot_ids(&self, page: i32) -> Vec<String> {
        let mut ids = Vec::new();
        let mut token = String::new();
        for _ in 0..10_000 {
            let reply = ok(
                "ListSnapshots",
                self.controller()
                    .list_snapshots(csi::ListSnapshotsRequest {
                        max_entries: page,
                        starting_token: token.clone(),
                        ..Default::default()
                    })
                    .await,
            );
            if page > 0 {
                assert!(
                    reply.entries.len() <= page as usize,
                    "page longer than max_entries"
                );
            }
            ids.extend(
                reply
                    .entries
                    .into_iter()
                    .map(|e| e.snapshot.expect("entry without snapshot").snapshot_id),
            );
            if reply.next_token.is_empty() {
                return ids;
            }
            token = reply.next_token;
        }
        panic!("ListSnapshots never ended");
    }
}

/// A staged and published volume on the node, driven like kubelet does.
pub struct NodeVolume {
    pub volume: csi::Volume,
    pub cap: VolumeCapability,
    pub publish_context: HashMap<String, String>,
    pub staging: String,
}

impl Server {
    pub fn stage_request(&self, v: &NodeVolume) -> csi::NodeStageVolumeRequest {
        csi::NodeStageVolumeRequest {
            volume_id: v.volume.volume_id.clone(),
            publish_context: v.publish_context.clone(),
            staging_target_path: v.staging.clone(),
            volume_capability: Some(v.cap.clone()),
            volume_context: v.volume.volume_context.clone(),
            ..Default::default()
        }
    }

    pub fn publish_request(
        &self,
        v: &NodeVolume,
        target: &str,
        readonly: bool,
    ) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: v.volume.volume_id.clone(),
            publish_context: v.publish_context.clone(),
            staging_target_path: v.staging.clone(),
            target_path: target.to_string(),
            volume_capability: Some(v.cap.clone()),
            readonly,
            volume_context: v.volume.volume_context.clone(),
            ..Default::default()
        }
    }

    /// Creates, controller-publishes (where supported) and prepares the
    /// staging directory of a volume; does not stage it.
    pub async fn node_volume(&self, name: &str, bytes: u64, cap: VolumeCapability) -> NodeVolume {
        let volume = self.create(name, bytes, cap.clone()).await;
        self.attach(volume, cap, name).await
    }

    /// Controller-publishes an existing volume and prepares its staging dir.
    pub async fn attach(
        &self,
        volume: csi::Volume,
        cap: VolumeCapability,
        name: &str,
    ) -> NodeVolume {
        let publish_context = self
            .controller_publish(&volume.volume_id, &cap, false)
            .await;
        let staging = self.path(&format!("{name}-staging"));
        std::fs::create_dir_all(&staging).expect("staging dir");
        NodeVolume {
            volume,
            cap,
            publish_context,
            staging: staging.display().to_string(),
        }
    }

    pub async fn stage(&self, v: &NodeVolume) {
        ok(
            &format!("NodeStageVolume {}", v.volume.volume_id),
            self.node().node_stage_volume(self.stage_request(v)).await,
        );
    }

    pub async fn unstage(&self, v: &NodeVolume) {
        ok(
            &format!("NodeUnstageVolume {}", v.volume.volume_id),
            self.node()
                .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                    volume_id: v.volume.volume_id.clone(),
                    staging_target_path: v.staging.clone(),
                })
                .await,
        );
    }

    pub async fn publish(&self, v: &NodeVolume, target: &str, readonly: bool) {
        ok(
            &format!("NodePublishVolume {} at {target}", v.volume.volume_id),
            self.node()
                .node_publish_volume(self.publish_request(v, target, readonly))
                .await,
        );
    }

    pub async fn unpublish(&self, v: &NodeVolume, target: &str) {
        ok(
            &format!("NodeUnpublishVolume {} at {target}", v.volume.volume_id),
            self.node()
                .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                    volume_id: v.volume.volume_id.clone(),
                    target_path: target.to_string(),
                })
                .await,
        );
    }

    /// Unstages, controller-unpublishes and deletes.
    pub async fn teardown(&self, v: &NodeVolume) {
        self.unstage(v).await;
        self.controller_unpublish(&v.volume.volume_id).await;
        self.delete(&v.volume.volume_id).await;
    }

    pub async fn stats(&self, id: &str, path: &str) -> csi::NodeGetVolumeStatsResponse {
        ok(
            &format!("NodeGetVolumeStats {id} {path}"),
            self.node()
                .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                    volume_id: id.to_string(),
                    volume_path: path.to_string(),
                    ..Default::default()
                })
                .await,
        )
    }
}

/// The usage entry of a unit in a stats reply.
pub fn usage(
    reply: &csi::NodeGetVolumeStatsResponse,
    unit: csi::volume_usage::Unit,
) -> csi::VolumeUsage {
    reply
        .usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .cloned()
        .unwrap_or_else(|| panic!("NodeGetVolumeStats has no {unit:?} usage: {reply:?}"))
}

/// Writes a file and makes it durable.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(data)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A unique-enough name for volumes and snapshots of one test.
pub fn name(test: &str, n: usize) -> String {
    format!("conf-{test}-{n}")
}
