//! Node service: request checks, and real stage/publish cycles on loop
//! devices with ext4 and xfs (root only), raw block, read-only, expansion,
//! restore and clone with data, stats and volume condition, concurrency.

use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use multicsi::csi::controller_service_capability::rpc::Type as Rpc;
use multicsi::csi::node_service_capability::rpc::Type as NodeRpc;
use multicsi::csi::volume_usage::Unit;
use multicsi::csi::{self as csi};
use tokio::task::JoinSet;
use tonic::Code;

use crate::api::*;
use crate::harness::{
    BackendUnderTest, Server, can_resize_ext4_online, mount_at, mount_count, require_node,
};

const MIB: u64 = 1 << 20;

fn hostile_values() -> Vec<String> {
    vec!["../x".into(), "/abs".into(), "a\0b".into(), "v".repeat(200)]
}

fn assert_no_leftovers(s: &Server) {
    let left = s.host_leftovers();
    assert!(
        left.is_empty(),
        "mounts or loop devices left behind: {left:?}"
    );
    assert!(
        s.stored_volumes().is_empty(),
        "volumes left behind: {:?}",
        s.stored_volumes()
    );
}

/// NodeGetCapabilities lists known capabilities; NodeGetInfo names the
/// node, a volume limit and its topology.
pub async fn node_capabilities_and_info(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    // Expansion only where the backend grows volumes (packet's do not).
    assert_eq!(
        adv.node(NodeRpc::ExpandVolume),
        b.node_rpcs.contains(&NodeRpc::ExpandVolume),
        "EXPAND_VOLUME advertised: {:?}",
        adv.node
    );
    for rpc in &adv.node {
        assert!(
            NodeRpc::try_from(*rpc).is_ok_and(|r| r != NodeRpc::Unknown),
            "unknown node capability {rpc}"
        );
    }
    for _ in 0..3 {
        let info = ok(
            "NodeGetInfo",
            s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
        );
        assert_eq!(info.node_id, b.node_id);
        assert!(
            info.max_volumes_per_node > 0,
            "max_volumes_per_node must be positive"
        );
        if adv.plugin(csi::plugin_capability::service::Type::VolumeAccessibilityConstraints) {
            let topology = info
                .accessible_topology
                .expect("VOLUME_ACCESSIBILITY_CONSTRAINTS requires accessible_topology");
            assert!(
                topology.segments.contains_key(b.topology_key),
                "topology {:?} lacks {}",
                topology.segments,
                b.topology_key
            );
        }
    }
}

/// Missing required fields: INVALID_ARGUMENT for every node RPC.
pub async fn node_missing_fields_are_invalid(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    // A backend that does not grow volumes answers UNIMPLEMENTED first.
    let expands = s.advertised().await.node(NodeRpc::ExpandVolume);
    let expand = |code: Code| if expands { code } else { Code::Unimplemented };
    let mut n = s.node();
    let ia = Code::InvalidArgument;
    let id = b.unknown_volume_id.to_string();
    let staging = s.path_str("staging");
    let target = s.path_str("target");
    std::fs::create_dir_all(&staging).unwrap();
    let stage = csi::NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.clone(),
        volume_capability: Some(mount_cap("ext4")),
        ..Default::default()
    };
    let mut r = stage.clone();
    r.volume_id.clear();
    fails(
        "NodeStageVolume without volume_id",
        n.node_stage_volume(r).await,
        ia,
    );
    let mut r = stage.clone();
    r.staging_target_path.clear();
    fails(
        "NodeStageVolume without staging_target_path",
        n.node_stage_volume(r).await,
        ia,
    );
    let mut r = stage.clone();
    r.volume_capability = None;
    fails(
        "NodeStageVolume without volume_capability",
        n.node_stage_volume(r).await,
        ia,
    );
    let mut r = stage.clone();
    r.volume_capability = Some(csi::VolumeCapability {
        access_mode: None,
        ..mount_cap("ext4")
    });
    fails(
        "NodeStageVolume with a capability without access_mode",
        n.node_stage_volume(r).await,
        ia,
    );

    fails(
        "NodeUnstageVolume without volume_id",
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: String::new(),
            staging_target_path: staging.clone(),
        })
        .await,
        ia,
    );
    fails(
        "NodeUnstageVolume without staging_target_path",
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: String::new(),
        })
        .await,
        ia,
    );

    let publish = csi::NodePublishVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.clone(),
        target_path: target.clone(),
        volume_capability: Some(mount_cap("ext4")),
        ..Default::default()
    };
    let mut r = publish.clone();
    r.volume_id.clear();
    fails(
        "NodePublishVolume without volume_id",
        n.node_publish_volume(r).await,
        ia,
    );
    let mut r = publish.clone();
    r.target_path.clear();
    fails(
        "NodePublishVolume without target_path",
        n.node_publish_volume(r).await,
        ia,
    );
    let mut r = publish.clone();
    r.volume_capability = None;
    fails(
        "NodePublishVolume without volume_capability",
        n.node_publish_volume(r).await,
        ia,
    );

    fails(
        "NodeUnpublishVolume without volume_id",
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: String::new(),
            target_path: target.clone(),
        })
        .await,
        ia,
    );
    fails(
        "NodeUnpublishVolume without target_path",
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: String::new(),
        })
        .await,
        ia,
    );
    fails(
        "NodeGetVolumeStats without volume_id",
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_path: staging.clone(),
            ..Default::default()
        })
        .await,
        ia,
    );
    fails(
        "NodeGetVolumeStats without volume_path",
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await,
        ia,
    );
    fails(
        "NodeExpandVolume without volume_id",
        n.node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_path: staging.clone(),
            capacity_range: range(64 * MIB, 0),
            ..Default::default()
        })
        .await,
        expand(ia),
    );
    fails(
        "NodeExpandVolume without volume_path",
        n.node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: range(64 * MIB, 0),
            ..Default::default()
        })
        .await,
        expand(ia),
    );
    assert!(s.host_leftovers().is_empty());
}

/// Hostile IDs and relative or escaping paths: INVALID_ARGUMENT, nothing
/// created or mounted.
pub async fn node_hostile_input_is_invalid(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    // A backend that does not grow volumes answers UNIMPLEMENTED first.
    let expands = s.advertised().await.node(NodeRpc::ExpandVolume);
    let expand = |code: Code| if expands { code } else { Code::Unimplemented };
    let mut n = s.node();
    let ia = Code::InvalidArgument;
    let staging = s.path_str("staging");
    let target = s.path_str("target");
    std::fs::create_dir_all(&staging).unwrap();
    let cap = mount_cap("ext4");
    for bad in hostile_values() {
        let w = |rpc: &str| {
            format!(
                "{rpc} volume_id {:?}",
                if bad.len() > 20 { "<200 bytes>" } else { &bad }
            )
        };
        fails(
            &w("NodeStageVolume"),
            n.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: bad.clone(),
                staging_target_path: staging.clone(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("NodeUnstageVolume"),
            n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: bad.clone(),
                staging_target_path: staging.clone(),
            })
            .await,
            ia,
        );
        fails(
            &w("NodePublishVolume"),
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: bad.clone(),
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("NodeUnpublishVolume"),
            n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: bad.clone(),
                target_path: target.clone(),
            })
            .await,
            ia,
        );
        fails(
            &w("NodeGetVolumeStats"),
            n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: bad.clone(),
                volume_path: staging.clone(),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("NodeExpandVolume"),
            n.node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: bad.clone(),
                volume_path: staging.clone(),
                capacity_range: range(64 * MIB, 0),
                ..Default::default()
            })
            .await,
            expand(ia),
        );
    }
    let id = b.unknown_volume_id.to_string();
    let bad_paths = [
        "relative/dir".to_string(),
        "staging".to_string(),
        format!("{}/../escape", s.path_str("x")),
        format!("{staging}\0x"),
    ];
    for bad in &bad_paths {
        let w = |rpc: &str| format!("{rpc} with path {bad:?}");
        fails(
            &w("NodeStageVolume staging_target_path"),
            n.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: bad.clone(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("NodeUnstageVolume staging_target_path"),
            n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: bad.clone(),
            })
            .await,
            ia,
        );
        fails(
            &w("NodePublishVolume target_path"),
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
                target_path: bad.clone(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("NodePublishVolume staging_target_path"),
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: bad.clone(),
                target_path: target.clone(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("NodeUnpublishVolume target_path"),
            n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: bad.clone(),
            })
            .await,
            ia,
        );
        fails(
            &w("NodeGetVolumeStats volume_path"),
            n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: bad.clone(),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("NodeExpandVolume volume_path"),
            n.node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: bad.clone(),
                capacity_range: range(64 * MIB, 0),
                ..Default::default()
            })
            .await,
            expand(ia),
        );
    }
    assert!(!s.dir().join("escape").exists() && !Path::new("relative").exists());
    assert!(s.host_leftovers().is_empty());
}

/// A volume that does not exist: NOT_FOUND from NodeStage and
/// NodePublish; stats of a path that does not exist: NOT_FOUND.
pub async fn node_unknown_volume_is_not_found(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    // A backend that does not grow volumes answers UNIMPLEMENTED first.
    let expands = s.advertised().await.node(NodeRpc::ExpandVolume);
    let expand = |code: Code| if expands { code } else { Code::Unimplemented };
    let mut n = s.node();
    let staging = s.path_str("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let cap = mount_cap("ext4");
    fails(
        "NodeStageVolume of an unknown volume",
        n.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: b.unknown_volume_id.into(),
            staging_target_path: staging.clone(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    fails(
        "NodePublishVolume of an unknown volume",
        n.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: b.unknown_volume_id.into(),
            staging_target_path: staging.clone(),
            target_path: s.path_str("target"),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    // A real volume, asked for at a path where nothing is.
    let volume = s
        .create("conf-stats-missing", b.fs_bytes("ext4"), cap.clone())
        .await;
    fails(
        "NodeGetVolumeStats of a path that does not exist",
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume.volume_id.clone(),
            volume_path: s.path_str("no-such-dir"),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    fails(
        "NodeExpandVolume of an unknown volume",
        n.node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: b.unknown_volume_id.into(),
            volume_path: staging.clone(),
            capacity_range: range(2 * b.fs_bytes("ext4"), 0),
            ..Default::default()
        })
        .await,
        expand(Code::NotFound),
    );
    // Unpublish and unstage of what is not there are OK (and repeatable).
    for _ in 0..3 {
        ok(
            "NodeUnpublishVolume of a target that does not exist",
            n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                target_path: s.path_str("never-published"),
            })
            .await,
        );
        ok(
            "NodeUnstageVolume of a volume that is not staged",
            n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: staging.clone(),
            })
            .await,
        );
    }
    s.delete(&volume.volume_id).await;
    assert_no_leftovers(&s);
}

/// With STAGE_UNSTAGE_VOLUME, a NodePublish without staging_target_path is
/// FAILED_PRECONDITION ("Staging target path not set").
pub async fn node_publish_requires_staging(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    if !s.advertised().await.node(NodeRpc::StageUnstageVolume) {
        return;
    }
    let v = s
        .node_volume("conf-nostaging", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    s.stage(&v).await;
    let mut r = s.publish_request(&v, &s.path_str("target"), false);
    r.staging_target_path.clear();
    fails(
        "NodePublishVolume without staging_target_path",
        s.node().node_publish_volume(r).await,
        Code::FailedPrecondition,
    );
    assert!(mount_at(&s.path("target")).is_none());
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

async fn node_cycle(b: BackendUnderTest, fs: &str) {
    require_node(&b);
    let s = Server::start(&b).await;
    let cap = shared_mount_cap(fs);
    let v = s
        .node_volume(&format!("conf-cycle-{fs}"), b.fs_bytes(fs), cap.clone())
        .await;
    let staging = Path::new(&v.staging).to_path_buf();
    for _ in 0..3 {
        s.stage(&v).await;
    }
    let staged = mount_at(&staging).expect("nothing mounted at the staging path");
    assert_eq!(staged.fs_type, fs, "staged with the wrong filesystem");
    assert_eq!(mount_count(&staging), 1, "repeated stage stacked mounts");

    let t1 = s.path_str("target-1");
    let t2 = s.path_str("target-2");
    for _ in 0..3 {
        s.publish(&v, &t1, false).await;
    }
    s.publish(&v, &t2, false).await;
    assert_eq!(
        mount_count(Path::new(&t1)),
        1,
        "repeated publish stacked mounts"
    );
    let published = mount_at(Path::new(&t1)).expect("nothing mounted at the target");
    assert!(
        !published.read_only(),
        "published read-only without readonly"
    );
    write_durably(&Path::new(&t1).join("data"), b"written through target 1").unwrap();
    assert_eq!(
        std::fs::read(Path::new(&t2).join("data")).unwrap(),
        b"written through target 1",
        "both targets must show the same volume"
    );

    let stats = s.stats(&v.volume.volume_id, &t1).await;
    let bytes = usage(&stats, Unit::Bytes);
    assert!(
        bytes.total > 0 && bytes.available > 0 && bytes.used >= 0,
        "{bytes:?}"
    );
    assert!(
        bytes.available <= bytes.total && bytes.used <= bytes.total,
        "{bytes:?}"
    );
    assert!(
        bytes.total as u64 <= v.volume.capacity_bytes as u64,
        "{bytes:?}"
    );
    if fs == "btrfs" {
        assert!(
            stats.usage.iter().all(|u| u.unit != Unit::Inodes as i32),
            "btrfs has no fixed inode count, yet inodes were reported: {stats:?}"
        );
    } else {
        let inodes = usage(&stats, Unit::Inodes);
        assert!(
            inodes.total > 0 && inodes.used > 0 && inodes.available > 0,
            "{inodes:?}"
        );
    }
    if s.advertised().await.node(NodeRpc::VolumeCondition) {
        let condition = stats
            .volume_condition
            .expect("VOLUME_CONDITION requires a condition");
        assert!(
            !condition.abnormal,
            "healthy volume reported abnormal: {}",
            condition.message
        );
    }
    let staged_stats = s.stats(&v.volume.volume_id, &v.staging).await;
    assert_eq!(usage(&staged_stats, Unit::Bytes).total, bytes.total);

    for _ in 0..3 {
        s.unpublish(&v, &t1).await;
    }
    assert!(mount_at(Path::new(&t1)).is_none(), "target still mounted");
    assert!(
        !Path::new(&t1).exists(),
        "the target directory the plugin made must be removed"
    );
    s.unpublish(&v, &t2).await;
    for _ in 0..3 {
        s.unstage(&v).await;
    }
    assert!(mount_at(&staging).is_none(), "staging path still mounted");

    // Stage again: the filesystem (and the data) is kept, never reformatted.
    s.stage(&v).await;
    s.publish(&v, &t1, false).await;
    assert_eq!(
        std::fs::read(Path::new(&t1).join("data")).unwrap(),
        b"written through target 1",
        "data lost across unstage/stage: the volume was reformatted"
    );
    s.unpublish(&v, &t1).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// The full node cycle with ext4: stage, publish twice, write, stats,
/// unpublish, unstage, each repeated; stage again keeps the data.
pub async fn node_cycle_ext4(b: BackendUnderTest) {
    node_cycle(b, "ext4").await;
}

/// The same cycle with xfs.
pub async fn node_cycle_xfs(b: BackendUnderTest) {
    if !b.filesystems.contains(&"xfs") {
        return;
    }
    node_cycle(b, "xfs").await;
}

/// The same cycle with btrfs (mountinfo shows an anonymous device number).
pub async fn node_cycle_btrfs(b: BackendUnderTest) {
    if !b.filesystems.contains(&"btrfs") {
        return;
    }
    node_cycle(b, "btrfs").await;
}

/// NodeStage again at the same staging path with an incompatible
/// capability (another filesystem) is ALREADY_EXISTS.
pub async fn stage_with_another_filesystem_is_already_exists(b: BackendUnderTest) {
    require_node(&b);
    if b.filesystems.len() < 2 {
        return;
    }
    let s = Server::start(&b).await;
    let (fs, other) = (b.filesystems[0], b.filesystems[1]);
    let bytes = b.fs_bytes(fs).max(b.fs_bytes(other));
    let v = s.node_volume("conf-stage-fs", bytes, mount_cap(fs)).await;
    s.stage(&v).await;
    let mut r = s.stage_request(&v);
    r.volume_capability = Some(mount_cap(other));
    fails(
        "NodeStageVolume again with another filesystem",
        s.node().node_stage_volume(r).await,
        Code::AlreadyExists,
    );
    assert_eq!(
        mount_at(Path::new(&v.staging)).map(|m| m.fs_type),
        Some(fs.to_string())
    );
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// readonly=true publishes a mount that refuses writes (EROFS); the same
/// target with readonly=false is ALREADY_EXISTS.
pub async fn read_only_publish_refuses_writes(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-ro", b.fs_bytes("ext4"), shared_mount_cap("ext4"))
        .await;
    s.stage(&v).await;
    let rw = s.path_str("rw");
    let ro = s.path_str("ro");
    s.publish(&v, &rw, false).await;
    write_durably(&Path::new(&rw).join("seen"), b"visible read-only").unwrap();
    for _ in 0..3 {
        s.publish(&v, &ro, true).await;
    }
    assert!(mount_at(Path::new(&ro)).expect("ro mount").read_only());
    let err =
        std::fs::write(Path::new(&ro).join("x"), b"x").expect_err("write to a read-only publish");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "expected EROFS, got {err}"
    );
    assert_eq!(
        std::fs::read(Path::new(&ro).join("seen")).unwrap(),
        b"visible read-only"
    );
    fails(
        "NodePublishVolume same target with readonly=false",
        s.node()
            .node_publish_volume(s.publish_request(&v, &ro, false))
            .await,
        Code::AlreadyExists,
    );
    fails(
        "NodePublishVolume same target (read-write) with readonly=true",
        s.node()
            .node_publish_volume(s.publish_request(&v, &rw, true))
            .await,
        Code::AlreadyExists,
    );
    // The read-write publish is unaffected.
    write_durably(&Path::new(&rw).join("still-writable"), b"ok").unwrap();
    s.unpublish(&v, &ro).await;
    s.unpublish(&v, &rw).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Raw block: the target is a device file; bytes written through it are
/// read back, also after unstage and stage.
pub async fn raw_block_round_trip(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-block", b.sizes.small * 2, shared_block_cap())
        .await;
    for _ in 0..3 {
        s.stage(&v).await;
    }
    let t1 = s.path_str("block-1");
    let t2 = s.path_str("block-2");
    for _ in 0..3 {
        s.publish(&v, &t1, false).await;
    }
    s.publish(&v, &t2, false).await;
    let meta = std::fs::metadata(&t1).expect("block target");
    assert!(
        meta.file_type().is_block_device(),
        "the target is not a block device"
    );
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let offset = v.volume.capacity_bytes as u64 / 2;
    {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&t1)
            .unwrap();
        dev.write_all_at(&pattern, offset).unwrap();
        dev.sync_all().unwrap();
    }
    let mut back = vec![0u8; pattern.len()];
    std::fs::File::open(&t2)
        .unwrap()
        .read_exact_at(&mut back, offset)
        .unwrap();
    assert_eq!(
        back, pattern,
        "bytes written through one target differ through the other"
    );
    let stats = s.stats(&v.volume.volume_id, &t1).await;
    let bytes = usage(&stats, Unit::Bytes);
    assert_eq!(
        bytes.total, v.volume.capacity_bytes,
        "block stats total: {bytes:?}"
    );
    for _ in 0..3 {
        s.unpublish(&v, &t1).await;
    }
    assert!(
        !Path::new(&t1).exists(),
        "the target file the plugin made must be removed"
    );
    s.unpublish(&v, &t2).await;
    for _ in 0..3 {
        s.unstage(&v).await;
    }
    s.stage(&v).await;
    s.publish(&v, &t1, false).await;
    let mut back = vec![0u8; pattern.len()];
    std::fs::File::open(&t1)
        .unwrap()
        .read_exact_at(&mut back, offset)
        .unwrap();
    assert_eq!(back, pattern, "bytes lost across unstage/stage");
    s.unpublish(&v, &t1).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

async fn expand_online(b: BackendUnderTest, fs: &str) {
    require_node(&b);
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.controller(Rpc::ExpandVolume) {
        return;
    }
    let v = s
        .node_volume(&format!("conf-expand-{fs}"), b.fs_bytes(fs), mount_cap(fs))
        .await;
    s.stage(&v).await;
    let target = s.path_str("target");
    s.publish(&v, &target, false).await;
    write_durably(&Path::new(&target).join("before"), b"kept").unwrap();
    let before = usage(&s.stats(&v.volume.volume_id, &target).await, Unit::Bytes).total;
    let wanted = 2 * v.volume.capacity_bytes as u64;
    let reply = ok(
        "ControllerExpandVolume",
        s.controller()
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                capacity_range: range(wanted, 0),
                volume_capability: Some(v.cap.clone()),
                ..Default::default()
            })
            .await,
    );
    assert!(reply.capacity_bytes as u64 >= wanted);
    if fs == "ext4" && !can_resize_ext4_online() {
        // This host cannot grow a mounted ext4 (no CAP_SYS_RESOURCE): the
        // driver must fail and say what to do. The full check runs where
        // the node plugin is privileged (scripts/vm-test.sh).
        eprintln!("no CAP_SYS_RESOURCE here: checking the diagnosis, not the growth");
        let status = s
            .node()
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                volume_path: target.clone(),
                staging_target_path: v.staging.clone(),
                capacity_range: range(wanted, 0),
                volume_capability: Some(v.cap.clone()),
                ..Default::default()
            })
            .await
            .expect_err("NodeExpandVolume cannot grow ext4 without CAP_SYS_RESOURCE");
        assert!(
            status.message().contains("CAP_SYS_RESOURCE"),
            "the error must name the missing capability: {}",
            status.message()
        );
        assert_eq!(
            std::fs::read(Path::new(&target).join("before")).unwrap(),
            b"kept"
        );
        s.unpublish(&v, &target).await;
        s.teardown(&v).await;
        assert_no_leftovers(&s);
        return;
    }
    if adv.node(NodeRpc::ExpandVolume) {
        assert!(
            reply.node_expansion_required,
            "a filesystem volume needs node expansion"
        );
        for _ in 0..3 {
            let expanded = ok(
                "NodeExpandVolume",
                s.node()
                    .node_expand_volume(csi::NodeExpandVolumeRequest {
                        volume_id: v.volume.volume_id.clone(),
                        volume_path: target.clone(),
                        staging_target_path: v.staging.clone(),
                        capacity_range: range(wanted, 0),
                        volume_capability: Some(v.cap.clone()),
                        ..Default::default()
                    })
                    .await,
            );
            assert!(expanded.capacity_bytes == 0 || expanded.capacity_bytes as u64 >= wanted);
        }
        fails(
            "NodeExpandVolume of a path that does not exist",
            s.node()
                .node_expand_volume(csi::NodeExpandVolumeRequest {
                    volume_id: v.volume.volume_id.clone(),
                    volume_path: s.path_str("no-such-target"),
                    capacity_range: range(wanted, 0),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
        );
    }
    let after = usage(&s.stats(&v.volume.volume_id, &target).await, Unit::Bytes).total;
    assert!(
        after as u64 > before as u64 + (wanted - v.volume.capacity_bytes as u64) / 2,
        "the filesystem did not grow: {before} -> {after} bytes for a volume of {wanted}"
    );
    assert_eq!(
        std::fs::read(Path::new(&target).join("before")).unwrap(),
        b"kept"
    );
    write_durably(&Path::new(&target).join("after"), &vec![7u8; 4 << 20]).unwrap();
    s.unpublish(&v, &target).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Online expansion with ext4: controller then node; stats show the growth.
pub async fn expand_ext4_online(b: BackendUnderTest) {
    expand_online(b, "ext4").await;
}

/// Online expansion with xfs.
pub async fn expand_xfs_online(b: BackendUnderTest) {
    if !b.filesystems.contains(&"xfs") {
        return;
    }
    expand_online(b, "xfs").await;
}

/// Online expansion with btrfs.
pub async fn expand_btrfs_online(b: BackendUnderTest) {
    if !b.filesystems.contains(&"btrfs") {
        return;
    }
    expand_online(b, "btrfs").await;
}

async fn restore_keeps_snapshot_data(b: BackendUnderTest, fs: &str) {
    require_node(&b);
    let s = Server::start(&b).await;
    if !s.advertised().await.controller(Rpc::CreateDeleteSnapshot) {
        return;
    }
    let cap = mount_cap(fs);
    let v = s
        .node_volume(&format!("conf-snapdata-{fs}"), b.fs_bytes(fs), cap.clone())
        .await;
    s.stage(&v).await;
    let target = s.path_str("origin");
    s.publish(&v, &target, false).await;
    write_durably(&Path::new(&target).join("before"), b"in the snapshot").unwrap();
    let origin_total = usage(&s.stats(&v.volume.volume_id, &target).await, Unit::Bytes).total;
    let snap = s
        .snapshot(&format!("conf-snapdata-{fs}"), &v.volume.volume_id)
        .await;
    write_durably(&Path::new(&target).join("after"), b"not in the snapshot").unwrap();

    // Restore into a larger volume while the origin is still mounted: the
    // spec requires the larger size to be usable at publish.
    let larger = fs != "ext4" || can_resize_ext4_online();
    if !larger {
        // This host cannot grow a mounted ext4: staging the larger restore
        // must fail saying why, and leave nothing mounted; the data checks
        // below use a restore of the same size.
        eprintln!("no CAP_SYS_RESOURCE here: checking the diagnosis for a larger restore");
        let mut r = create_request(
            &format!("conf-restored-big-{fs}"),
            2 * v.volume.capacity_bytes as u64,
            cap.clone(),
        );
        r.volume_content_source = snapshot_source(&snap.snapshot_id);
        let big = s.create_with(r).await;
        let bv = s
            .attach(big, cap.clone(), &format!("restored-big-{fs}"))
            .await;
        let status = s
            .node()
            .node_stage_volume(s.stage_request(&bv))
            .await
            .expect_err("a larger ext4 restore cannot be grown without CAP_SYS_RESOURCE");
        assert!(
            status.message().contains("CAP_SYS_RESOURCE"),
            "the error must name the missing capability: {}",
            status.message()
        );
        assert!(
            mount_at(Path::new(&bv.staging)).is_none(),
            "a failed stage left a mount"
        );
        s.teardown(&bv).await;
    }
    let size = if larger {
        2 * v.volume.capacity_bytes as u64
    } else {
        v.volume.capacity_bytes as u64
    };
    let mut r = create_request(&format!("conf-restored-{fs}"), size, cap.clone());
    r.volume_content_source = snapshot_source(&snap.snapshot_id);
    let restored = s.create_with(r).await;
    let rv = s
        .attach(restored, cap.clone(), &format!("restored-{fs}"))
        .await;
    s.stage(&rv).await;
    let rtarget = s.path_str("restored");
    s.publish(&rv, &rtarget, false).await;
    assert_eq!(
        std::fs::read(Path::new(&rtarget).join("before")).unwrap_or_default(),
        b"in the snapshot",
        "the restored volume lacks what was written before the snapshot"
    );
    assert!(
        !Path::new(&rtarget).join("after").exists(),
        "the restored volume has what was written after the snapshot"
    );
    let restored_total = usage(&s.stats(&rv.volume.volume_id, &rtarget).await, Unit::Bytes).total;
    if larger {
        assert!(
            restored_total as u64 > origin_total as u64 + (v.volume.capacity_bytes as u64) / 2,
            "restored into a volume twice the size, the filesystem still has {restored_total} bytes (origin {origin_total})"
        );
    } else {
        assert_eq!(restored_total, origin_total);
    }

    write_durably(
        &Path::new(&rtarget).join("own"),
        b"restored volumes are writable",
    )
    .unwrap();
    assert!(
        !Path::new(&target).join("own").exists(),
        "restore shares data with its origin"
    );

    s.unpublish(&rv, &rtarget).await;
    s.teardown(&rv).await;
    s.unpublish(&v, &target).await;
    s.unstage(&v).await;
    s.controller_unpublish(&v.volume.volume_id).await;
    // CSI lets a plugin whose snapshots depend on their volume refuse to
    // delete it (FAILED_PRECONDITION) until the snapshots are gone.
    let deleted = s
        .controller()
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume.volume_id.clone(),
            ..Default::default()
        })
        .await;
    match deleted {
        Ok(_) => s.delete_snapshot(&snap.snapshot_id).await,
        Err(e) if e.code() == Code::FailedPrecondition => {
            s.delete_snapshot(&snap.snapshot_id).await;
            s.delete(&v.volume.volume_id).await;
        }
        Err(e) => panic!("DeleteVolume of a snapshot's origin: {e}"),
    }
    assert_no_leftovers(&s);
}

/// Snapshot, then restore (larger) with ext4: the data before the snapshot
/// is there, the data after is not, the larger size is usable.
pub async fn restore_ext4_keeps_snapshot_data(b: BackendUnderTest) {
    restore_keeps_snapshot_data(b, "ext4").await;
}

/// The same with xfs, restored while the origin is mounted on the node.
pub async fn restore_xfs_keeps_snapshot_data(b: BackendUnderTest) {
    if !b.filesystems.contains(&"xfs") {
        return;
    }
    restore_keeps_snapshot_data(b, "xfs").await;
}

/// A clone holds the source's data at clone time and is independent.
pub async fn clone_keeps_data(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    if !s.advertised().await.controller(Rpc::CloneVolume) {
        return;
    }
    let cap = mount_cap("ext4");
    let v = s
        .node_volume("conf-clone-src", b.fs_bytes("ext4"), cap.clone())
        .await;
    s.stage(&v).await;
    let target = s.path_str("origin");
    s.publish(&v, &target, false).await;
    write_durably(&Path::new(&target).join("data"), b"cloned").unwrap();
    let mut r = create_request("conf-clone", v.volume.capacity_bytes as u64, cap.clone());
    r.volume_content_source = volume_source(&v.volume.volume_id);
    let clone = s.create_with(r).await;
    write_durably(&Path::new(&target).join("data"), b"changed after the clone").unwrap();
    let cv = s.attach(clone, cap, "clone").await;
    s.stage(&cv).await;
    let ctarget = s.path_str("clone");
    s.publish(&cv, &ctarget, false).await;
    assert_eq!(
        std::fs::read(Path::new(&ctarget).join("data")).unwrap(),
        b"cloned"
    );
    s.unpublish(&cv, &ctarget).await;
    s.teardown(&cv).await;
    s.unpublish(&v, &target).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Stats of a published volume are healthy; when its mount disappears
/// behind the driver's back the condition is abnormal; unpublish still
/// cleans up.
pub async fn stats_report_abnormal_when_unmounted(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.node(NodeRpc::VolumeCondition) {
        return;
    }
    let v = s
        .node_volume("conf-condition", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    s.stage(&v).await;
    let target = s.path_str("target");
    s.publish(&v, &target, false).await;
    let healthy = s.stats(&v.volume.volume_id, &target).await;
    assert!(!healthy.volume_condition.expect("condition").abnormal);
    let c = std::ffi::CString::new(target.clone()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::umount2(c.as_ptr(), 0) },
        0,
        "umount behind the driver's back"
    );
    let sick = s.stats(&v.volume.volume_id, &target).await;
    let condition = sick
        .volume_condition
        .expect("VOLUME_CONDITION requires a condition");
    assert!(condition.abnormal, "an unmounted target reported healthy");
    assert!(
        !condition.message.is_empty(),
        "an abnormal condition must say what is wrong"
    );
    s.unpublish(&v, &target).await;
    assert!(!Path::new(&target).exists());
    fails(
        "NodeGetVolumeStats after unpublish",
        s.node()
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: v.volume.volume_id.clone(),
                volume_path: target.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

fn ok_or_aborted<T>(what: &str, r: Reply<T>) -> bool {
    match r {
        Ok(_) => true,
        Err(s) if s.code() == Code::Aborted => false,
        Err(s) => panic!(
            "{what}: expected OK or ABORTED, got {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

/// Concurrent stage/publish/unpublish/unstage of one volume: each call is
/// OK or ABORTED and the end state is exactly one mount per path.
pub async fn concurrent_node_calls_on_one_volume(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-node-race", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let mut n = s.node();
        let r = s.stage_request(&v);
        set.spawn(async move { ok_or_aborted("NodeStageVolume", n.node_stage_volume(r).await) });
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
    s.stage(&v).await;
    assert_eq!(
        mount_count(Path::new(&v.staging)),
        1,
        "concurrent stages stacked mounts"
    );
    let target = s.path_str("target");
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let mut n = s.node();
        let r = s.publish_request(&v, &target, false);
        set.spawn(
            async move { ok_or_aborted("NodePublishVolume", n.node_publish_volume(r).await) },
        );
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
    s.publish(&v, &target, false).await;
    assert_eq!(
        mount_count(Path::new(&target)),
        1,
        "concurrent publishes stacked mounts"
    );
    write_durably(&Path::new(&target).join("data"), b"intact").unwrap();
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let mut n = s.node();
        let r = csi::NodeUnpublishVolumeRequest {
            volume_id: v.volume.volume_id.clone(),
            target_path: target.clone(),
        };
        set.spawn(
            async move { ok_or_aborted("NodeUnpublishVolume", n.node_unpublish_volume(r).await) },
        );
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
    s.unpublish(&v, &target).await;
    assert!(mount_at(Path::new(&target)).is_none());
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let mut n = s.node();
        let r = csi::NodeUnstageVolumeRequest {
            volume_id: v.volume.volume_id.clone(),
            staging_target_path: v.staging.clone(),
        };
        set.spawn(
            async move { ok_or_aborted("NodeUnstageVolume", n.node_unstage_volume(r).await) },
        );
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
    s.unstage(&v).await;
    assert!(mount_at(Path::new(&v.staging)).is_none());
    // The data survived the races.
    s.stage(&v).await;
    s.publish(&v, &target, false).await;
    assert_eq!(
        std::fs::read(Path::new(&target).join("data")).unwrap(),
        b"intact"
    );
    s.unpublish(&v, &target).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Mounts a tmpfs named `source` at `dir` (created): a mount of something
/// else, made behind the driver's back.
fn mount_foreign(dir: &Path, source: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let c_source = std::ffi::CString::new(source).unwrap();
    // SAFETY: valid NUL-terminated strings; no data.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_dir.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    std::fs::write(dir.join("foreign"), b"not the volume").unwrap();
}

fn unmount_foreign(dir: &Path) {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0, "umount tmpfs");
}

/// Staging and target paths that lead through a symlink (here: out of the
/// directory the CO gave, into another one) are INVALID_ARGUMENT, for
/// stage, publish, unpublish and unstage; nothing is mounted or unmounted
/// where the link points.
pub async fn symlinked_paths_are_invalid(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-symlink", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    let outside = s.path("outside");
    std::fs::create_dir_all(outside.join("staging")).unwrap();
    // Links an unprivileged user made (a root-owned link in a root-only
    // directory is the node's own set-up: see symlinked_kubelet_root_is_followed).
    let link = s.path("link");
    untrusted_symlink(&outside, &link);
    let ia = Code::InvalidArgument;

    let mut r = s.stage_request(&v);
    r.staging_target_path = link.join("staging").display().to_string();
    let status = fails(
        "NodeStageVolume through a symlinked directory",
        s.node().node_stage_volume(r.clone()).await,
        ia,
    );
    assert!(status.message().contains("symlink"), "{}", status.message());
    let staging_link = s.path("staging-link");
    untrusted_symlink(&outside.join("staging"), &staging_link);
    r.staging_target_path = staging_link.display().to_string();
    fails(
        "NodeStageVolume at a symlink",
        s.node().node_stage_volume(r).await,
        ia,
    );
    assert!(
        mount_at(&outside.join("staging")).is_none(),
        "mounted where the symlink points"
    );

    s.stage(&v).await;
    let through = link.join("target").display().to_string();
    fails(
        "NodePublishVolume through a symlinked directory",
        s.node()
            .node_publish_volume(s.publish_request(&v, &through, false))
            .await,
        ia,
    );
    assert!(
        !outside.join("target").exists(),
        "the target was created where the symlink points"
    );

    // Published at the real path: unpublish through the symlink is refused
    // and the mount stays.
    let real = outside.join("target").display().to_string();
    s.publish(&v, &real, false).await;
    fails(
        "NodeUnpublishVolume through a symlinked directory",
        s.node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                target_path: through.clone(),
            })
            .await,
        ia,
    );
    assert!(
        mount_at(Path::new(&real)).is_some(),
        "unmounted through a symlink"
    );
    fails(
        "NodeUnstageVolume through a symlink",
        s.node()
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                staging_target_path: staging_link.display().to_string(),
            })
            .await,
        ia,
    );
    s.unpublish(&v, &real).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A symlink at `link` to `to`, owned by an unprivileged user (nobody).
fn untrusted_symlink(to: &Path, link: &Path) {
    use std::os::unix::ffi::OsStrExt;
    std::os::unix::fs::symlink(to, link).unwrap();
    let c = std::ffi::CString::new(link.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), 65534, 65534) }, 0);
}

/// A kubelet root that is a symlink made by root (moved to another disk):
/// stage, publish, stats, expand-free repeats and teardown all work through
/// it, the mounts are made once at the real paths, and nothing is left.
pub async fn symlinked_kubelet_root_is_followed(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let real_root = s.path("disk/kubelet");
    std::fs::create_dir_all(real_root.join("plugins")).unwrap();
    std::fs::create_dir_all(real_root.join("pods/p1")).unwrap();
    let root_link = s.path("kubelet");
    std::os::unix::fs::symlink(&real_root, &root_link).unwrap();
    let mut v = s
        .node_volume("conf-kubelet-link", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    v.staging = root_link.join("plugins/staging").display().to_string();
    let real_staging = real_root.join("plugins/staging");
    for _ in 0..3 {
        s.stage(&v).await;
    }
    assert_eq!(
        mount_count(&real_staging),
        1,
        "staged once, at the real path"
    );
    let target = root_link.join("pods/p1/mount").display().to_string();
    let real_target = real_root.join("pods/p1/mount");
    for _ in 0..3 {
        s.publish(&v, &target, false).await;
    }
    assert_eq!(
        mount_count(&real_target),
        1,
        "published once, at the real path"
    );
    write_durably(&Path::new(&target).join("through-the-link"), b"kept").unwrap();
    assert_eq!(
        std::fs::read(real_target.join("through-the-link")).unwrap(),
        b"kept"
    );
    let stats = s.stats(&v.volume.volume_id, &target).await;
    assert!(
        stats.volume_condition.as_ref().is_none_or(|c| !c.abnormal),
        "stats through the link: {stats:?}"
    );
    for _ in 0..2 {
        s.unpublish(&v, &target).await;
    }
    assert!(mount_at(&real_target).is_none(), "unpublished");
    s.teardown(&v).await;
    assert!(mount_at(&real_staging).is_none(), "unstaged");
    assert_no_leftovers(&s);
}

/// A target path that already has something else mounted is
/// ALREADY_EXISTS, with a message naming it; the foreign mount stays as it
/// was and nothing is stacked on it.
pub async fn publish_onto_a_foreign_mount_is_already_exists(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-foreign-target", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    s.stage(&v).await;
    let target = s.path("target");
    mount_foreign(&target, "tmpfs-of-someone-else");
    let status = fails(
        "NodePublishVolume onto a foreign mount",
        s.node()
            .node_publish_volume(s.publish_request(&v, &target.display().to_string(), false))
            .await,
        Code::AlreadyExists,
    );
    assert!(
        status.message().contains("tmpfs-of-someone-else"),
        "the message must name what is mounted: {}",
        status.message()
    );
    assert_eq!(
        mount_count(&target),
        1,
        "a mount was stacked on the foreign one"
    );
    assert_eq!(mount_at(&target).unwrap().fs_type, "tmpfs");
    assert_eq!(
        std::fs::read(target.join("foreign")).unwrap(),
        b"not the volume"
    );
    unmount_foreign(&target);
    std::fs::remove_dir_all(&target).unwrap();
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A staging path that already has something else mounted is
/// ALREADY_EXISTS; the volume is neither formatted nor mounted there.
pub async fn stage_onto_a_foreign_mount_is_already_exists(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume(
            "conf-foreign-staging",
            b.fs_bytes("ext4"),
            mount_cap("ext4"),
        )
        .await;
    let staging = Path::new(&v.staging).to_path_buf();
    mount_foreign(&staging, "tmpfs-not-this-volume");
    let status = fails(
        "NodeStageVolume onto a foreign mount",
        s.node().node_stage_volume(s.stage_request(&v)).await,
        Code::AlreadyExists,
    );
    assert!(
        status.message().contains("tmpfs-not-this-volume"),
        "{}",
        status.message()
    );
    assert_eq!(
        mount_count(&staging),
        1,
        "a mount was stacked on the foreign one"
    );
    assert_eq!(
        std::fs::read(staging.join("foreign")).unwrap(),
        b"not the volume"
    );
    unmount_foreign(&staging);
    // The volume was not formatted: staging now makes the filesystem and
    // the volume is empty.
    s.stage(&v).await;
    assert!(!staging.join("foreign").exists());
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// StorageClass mkfs settings reach mkfs, and mount flags reach the
/// staging mount, for ext4 and xfs.
pub async fn mkfs_options_and_mount_flags_reach_the_filesystem(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    // (filesystem, StorageClass parameters, lines the filesystem's report must show)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 2] = [
        (
            "ext4",
            &[
                ("multicsi.io/mkfs-inode-size", "512"),
                ("multicsi.io/mkfs-block-size", "1024"),
                ("multicsi.io/mkfs-reserved-percent", "0"),
            ],
            &[
                "Inode size:\t          512",
                "Block size:               1024",
                "Reserved block count:     0",
            ],
        ),
        (
            "xfs",
            &[
                ("multicsi.io/mkfs-inode-size", "1024"),
                ("multicsi.io/mkfs-block-size", "4096"),
            ],
            &["isize=1024", "bsize=4096"],
        ),
    ];
    for (fs, parameters, expected) in cases {
        let mut cap = mount_cap(fs);
        if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
            m.mount_flags = vec!["noatime".into()];
        }
        let mut request = create_request(&format!("conf-mkfs-{fs}"), b.fs_bytes(fs), cap.clone());
        request.parameters = params(parameters);
        let volume = s.create_with(request).await;
        let v = s.attach(volume, cap, &format!("conf-mkfs-{fs}")).await;
        s.stage(&v).await;
        let staged = mount_at(Path::new(&v.staging)).expect("staged");
        assert!(
            staged.options.split(',').any(|o| o == "noatime"),
            "{fs}: mount flag noatime not passed: {}",
            staged.options
        );
        let report = if fs == "ext4" {
            tool_stdout("tune2fs", &["-l", &staged.source])
        } else {
            tool_stdout("xfs_info", &[&v.staging])
        };
        for line in expected {
            assert!(
                report.contains(line),
                "{fs}: {line:?} missing in:\n{report}"
            );
        }
        s.teardown(&v).await;
    }
    assert_no_leftovers(&s);
}

fn tool_stdout(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An encrypted volume: CreateVolume carries the LUKS settings to the
/// node; NodeStage without the key is INVALID_ARGUMENT, and on a node
/// without device-mapper FAILED_PRECONDITION; neither touches the device.
/// (Where device-mapper exists the volume opens and unstage closes it; the
/// full LUKS checks are in the VM suite, scripts/vm/node-suite.sh.)
pub async fn luks_without_key_or_dm_crypt_touches_nothing(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let mut request = create_request("conf-luks", b.fs_bytes("ext4"), cap.clone());
    request.parameters = params(&[
        ("multicsi.io/luks-encrypted", "true"),
        ("csi.cloudscale.ch/luks-key-size", "256"),
    ]);
    let volume = s.create_with(request.clone()).await;
    let context = &volume.volume_context;
    assert_eq!(
        context
            .get("multicsi.io/luks-encrypted")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        context.get("multicsi.io/luks-cipher").map(String::as_str),
        Some("aes-xts-plain64")
    );
    assert_eq!(
        context.get("multicsi.io/luks-key-size").map(String::as_str),
        Some("256")
    );
    let mut bad = request.clone();
    bad.name = "conf-luks-bad".into();
    bad.parameters = params(&[
        ("multicsi.io/luks-encrypted", "true"),
        ("multicsi.io/luks-key-size", "384"),
    ]);
    let status = fails(
        "CreateVolume with a bad LUKS key size",
        s.controller().create_volume(bad).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("multicsi.io/luks-key-size"),
        "{}",
        status.message()
    );

    let v = s.attach(volume, cap, "conf-luks").await;
    // What ControllerPublish made present (a cloud's attached disk) stays;
    // the node itself must add nothing.
    let attached = s.host_leftovers();
    let status = fails(
        "NodeStageVolume of an encrypted volume without luksKey",
        s.node().node_stage_volume(s.stage_request(&v)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("luksKey"), "{}", status.message());
    assert_eq!(s.host_leftovers(), attached);

    let dm_present = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .is_ok();
    let mut with_key = s.stage_request(&v);
    let key = "conformance-secret-key-3f1c";
    with_key.secrets = params(&[("luksKey", key)]);
    let mapping = Path::new("/dev/mapper").join(format!("luks-{}", v.volume.volume_id));
    let message = if dm_present {
        // A node with dm-crypt: the volume opens, and unstage closes it.
        ok(
            "NodeStageVolume of an encrypted volume",
            s.node().node_stage_volume(with_key).await,
        );
        assert!(mapping.exists(), "no mapping {}", mapping.display());
        s.unstage(&v).await;
        assert!(!mapping.exists(), "NodeUnstage left {}", mapping.display());
        String::new()
    } else {
        let status = fails(
            "NodeStageVolume of an encrypted volume without dm-crypt",
            s.node().node_stage_volume(with_key).await,
            Code::FailedPrecondition,
        );
        assert!(
            status.message().contains("dm-crypt is unavailable"),
            "{}",
            status.message()
        );
        status.message().to_string()
    };
    assert!(!message.contains(key), "the key leaked into the error");
    assert_eq!(s.host_leftovers(), attached);
    assert!(
        !s.log_tail(10_000).contains(key),
        "the key leaked into the log"
    );
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Read-only raw block: the published device refuses writes (the kernel,
/// not only the mount flag), reads see what the read-write publish wrote,
/// and the read-only device goes away with its last read-only target.
pub async fn read_only_block_publish_refuses_writes(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-ro-block", b.sizes.small, shared_block_cap())
        .await;
    s.stage(&v).await;
    let rw = s.path_str("block-rw");
    let ro1 = s.path_str("block-ro-1");
    let ro2 = s.path_str("block-ro-2");
    s.publish(&v, &rw, false).await;
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 251) as u8).collect();
    {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&rw)
            .unwrap();
        dev.write_all_at(&pattern, 8192).unwrap();
        dev.sync_all().unwrap();
    }
    for _ in 0..2 {
        s.publish(&v, &ro1, true).await;
    }
    s.publish(&v, &ro2, true).await;
    let loops = |s: &Server| {
        s.host_leftovers()
            .iter()
            .filter(|l| l.starts_with("loop "))
            .count()
    };
    assert_eq!(
        loops(&s),
        2,
        "one read-write and one read-only device: {:?}",
        s.host_leftovers()
    );
    for target in [&ro1, &ro2] {
        let refused = std::fs::OpenOptions::new()
            .write(true)
            .open(target)
            .and_then(|dev| dev.write_all_at(&[0u8; 512], 8192));
        let err = refused.expect_err("a write through a read-only block publish");
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES)
            ),
            "expected EPERM/EROFS/EACCES, got {err}"
        );
        let mut back = vec![0u8; pattern.len()];
        std::fs::File::open(target)
            .unwrap()
            .read_exact_at(&mut back, 8192)
            .unwrap();
        assert_eq!(back, pattern, "the read-only device reads other data");
    }
    fails(
        "NodePublishVolume read-only target with readonly=false",
        s.node()
            .node_publish_volume(s.publish_request(&v, &ro1, false))
            .await,
        Code::AlreadyExists,
    );
    s.unpublish(&v, &ro1).await;
    let mut back = vec![0u8; pattern.len()];
    std::fs::File::open(&ro2)
        .unwrap()
        .read_exact_at(&mut back, 8192)
        .unwrap();
    assert_eq!(back, pattern, "the other read-only target lost its device");
    for _ in 0..2 {
        s.unpublish(&v, &ro2).await;
    }
    assert_eq!(
        loops(&s),
        1,
        "the read-only device outlived its last target: {:?}",
        s.host_leftovers()
    );
    // A read-only device left by a publish cut short goes at unstage.
    s.publish(&v, &ro1, true).await;
    s.unpublish(&v, &rw).await;
    s.unpublish(&v, &ro1).await;
    s.publish(&v, &ro2, true).await;
    std::process::Command::new("umount")
        .arg(&ro2)
        .status()
        .expect("umount");
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A snapshot of a volume that is mounted and being written holds what was
/// written before the call even when it was never flushed: the filesystem
/// is frozen for the copy, and thawed afterwards.
pub async fn snapshot_of_a_mounted_volume_holds_unflushed_writes(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let v = s
        .node_volume("conf-live-snap", b.fs_bytes("ext4"), cap.clone())
        .await;
    s.stage(&v).await;
    let target = s.path_str("live");
    s.publish(&v, &target, false).await;
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 241) as u8).collect();
    // No fsync: the data sits in the page cache, not yet in the image.
    std::fs::write(Path::new(&target).join("unflushed"), &data).unwrap();
    let snap = s.snapshot("conf-live-snap", &v.volume.volume_id).await;
    // Thawed: writing goes on (a frozen filesystem would block here).
    std::fs::write(Path::new(&target).join("later"), b"after the snapshot").unwrap();
    let mut r = create_request(
        "conf-live-restored",
        v.volume.capacity_bytes as u64,
        cap.clone(),
    );
    r.volume_content_source = snapshot_source(&snap.snapshot_id);
    let restored = s.create_with(r).await;
    let rv = s.attach(restored, cap, "live-restored").await;
    s.stage(&rv).await;
    let rtarget = s.path_str("live-restored");
    s.publish(&rv, &rtarget, false).await;
    assert_eq!(
        std::fs::read(Path::new(&rtarget).join("unflushed")).unwrap_or_default(),
        data,
        "the snapshot lacks data written (unflushed) before it"
    );
    assert!(!Path::new(&rtarget).join("later").exists());
    s.unpublish(&rv, &rtarget).await;
    s.teardown(&rv).await;
    s.unpublish(&v, &target).await;
    s.teardown(&v).await;
    s.delete_snapshot(&snap.snapshot_id).await;
    assert_no_leftovers(&s);
}

/// The size a block device (or a file bound onto it) reports.
fn block_size(path: &str) -> u64 {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .unwrap_or_else(|e| panic!("size of {path}: {e}"))
}

/// Online expansion of a raw block volume published read-write and
/// read-only: NodeExpandVolume grows the device and every read-only view
/// of it, and the views still read what was written at the new end.
pub async fn expand_grows_read_only_block_views(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-ro-grow", b.sizes.small, shared_block_cap())
        .await;
    s.stage(&v).await;
    let rw = s.path_str("grow-rw");
    let ro = s.path_str("grow-ro");
    s.publish(&v, &rw, false).await;
    s.publish(&v, &ro, true).await;
    let before = v.volume.capacity_bytes as u64;
    assert_eq!(block_size(&ro), before);
    let wanted = 2 * before;
    ok(
        "ControllerExpandVolume",
        s.controller()
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                capacity_range: range(wanted, 0),
                volume_capability: Some(v.cap.clone()),
                ..Default::default()
            })
            .await,
    );
    for _ in 0..2 {
        ok(
            "NodeExpandVolume of a raw block volume",
            s.node()
                .node_expand_volume(csi::NodeExpandVolumeRequest {
                    volume_id: v.volume.volume_id.clone(),
                    volume_path: rw.clone(),
                    capacity_range: range(wanted, 0),
                    volume_capability: Some(v.cap.clone()),
                    ..Default::default()
                })
                .await,
        );
    }
    assert_eq!(block_size(&rw), wanted, "the read-write device grew");
    assert_eq!(block_size(&ro), wanted, "the read-only view grew with it");
    let tail = b"written past the old end";
    {
        let dev = std::fs::OpenOptions::new().write(true).open(&rw).unwrap();
        dev.write_all_at(tail, wanted - 4096).unwrap();
        dev.sync_all().unwrap();
    }
    let mut back = vec![0u8; tail.len()];
    std::fs::File::open(&ro)
        .unwrap()
        .read_exact_at(&mut back, wanted - 4096)
        .unwrap();
    assert_eq!(back, tail, "the read-only view reads the grown part");
    s.unpublish(&v, &ro).await;
    s.unpublish(&v, &rw).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A NodeVolume of the same volume, asked for with another capability.
fn with_cap(v: &NodeVolume, cap: csi::VolumeCapability) -> NodeVolume {
    NodeVolume {
        volume: v.volume.clone(),
        cap,
        publish_context: v.publish_context.clone(),
        staging: v.staging.clone(),
    }
}

/// A mount capability with mount flags.
fn mount_cap_with_flags(fs: &str, flags: &[&str]) -> csi::VolumeCapability {
    use multicsi::csi::volume_capability::{AccessType, MountVolume};
    capability(
        AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            volume_mount_group: String::new(),
        }),
        csi::volume_capability::access_mode::Mode::SingleNodeWriter,
    )
}

/// Writes `data` at `offset` of the volume through a raw block stage and
/// publish, and undoes both.
async fn write_through_block(s: &Server, v: &NodeVolume, offset: u64, data: &[u8]) {
    let block = with_cap(v, block_cap());
    s.stage(&block).await;
    let target = s.path_str("writer-block");
    s.publish(&block, &target, false).await;
    {
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        dev.write_all_at(data, offset).unwrap();
        dev.sync_all().unwrap();
    }
    s.unpublish(&block, &target).await;
    s.unstage(&block).await;
}

/// Reads `len` bytes at `offset` of the volume through a raw block stage.
async fn read_through_block(s: &Server, v: &NodeVolume, offset: u64, len: usize) -> Vec<u8> {
    let block = with_cap(v, block_cap());
    s.stage(&block).await;
    let target = s.path_str("reader-block");
    s.publish(&block, &target, false).await;
    let mut back = vec![0u8; len];
    std::fs::File::open(&target)
        .unwrap()
        .read_exact_at(&mut back, offset)
        .unwrap();
    s.unpublish(&block, &target).await;
    s.unstage(&block).await;
    back
}

/// Staging, target and volume paths outside the kubelet directory (here:
/// the server's work/ directory) are INVALID_ARGUMENT naming the field,
/// also when a root-owned symlink inside leads out; nothing is created or
/// mounted there.
pub async fn node_paths_outside_the_kubelet_dir_are_invalid(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-confined", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    let attached = s.host_leftovers();
    let outside = s.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // A link the node's root made, leading out of the kubelet directory.
    let escape = s.path("escape");
    std::os::unix::fs::symlink(&outside, &escape).unwrap();
    let ia = Code::InvalidArgument;
    for (how, staging) in [
        ("outside", outside.join("staging")),
        ("through a link out", escape.join("staging")),
    ] {
        let mut r = s.stage_request(&v);
        r.staging_target_path = staging.display().to_string();
        let status = fails(
            &format!("NodeStageVolume {how} the kubelet dir"),
            s.node().node_stage_volume(r).await,
            ia,
        );
        assert!(
            status.message().contains("staging_target_path")
                && status.message().contains("kubelet"),
            "{}",
            status.message()
        );
        assert!(!outside.join("staging").exists(), "created outside");
        assert_eq!(s.host_leftovers(), attached, "something was attached");
    }
    s.stage(&v).await;
    for (how, target) in [
        ("outside", outside.join("target")),
        ("through a link out", escape.join("target")),
    ] {
        let target = target.display().to_string();
        let status = fails(
            &format!("NodePublishVolume {how} the kubelet dir"),
            s.node()
                .node_publish_volume(s.publish_request(&v, &target, false))
                .await,
            ia,
        );
        assert!(
            status.message().contains("target_path"),
            "{}",
            status.message()
        );
        assert!(!outside.join("target").exists(), "created outside");
    }
    // A foreign mount outside: unpublish there is refused, the mount stays.
    let foreign = outside.join("foreign");
    mount_foreign(&foreign, "tmpfs-outside-kubelet");
    fails(
        "NodeUnpublishVolume outside the kubelet dir",
        s.node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                target_path: foreign.display().to_string(),
            })
            .await,
        ia,
    );
    assert!(mount_at(&foreign).is_some(), "unmounted outside");
    unmount_foreign(&foreign);
    fails(
        "NodeGetVolumeStats outside the kubelet dir",
        s.node()
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: v.volume.volume_id.clone(),
                volume_path: outside.display().to_string(),
                ..Default::default()
            })
            .await,
        ia,
    );
    fails(
        "NodeUnstageVolume outside the kubelet dir",
        s.node()
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                staging_target_path: "/etc".into(),
            })
            .await,
        ia,
    );
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A publish whose staging path holds another volume is refused and
/// mounts nothing.
pub async fn publish_from_another_volumes_staging_is_refused(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let size = b.fs_bytes("ext4");
    let mine = s.node_volume("conf-mine", size, mount_cap("ext4")).await;
    let theirs = s.node_volume("conf-theirs", size, mount_cap("ext4")).await;
    s.stage(&mine).await;
    s.stage(&theirs).await;
    write_durably(&Path::new(&theirs.staging).join("theirs"), b"private").unwrap();
    let target = s.path_str("stolen");
    let mut r = s.publish_request(&mine, &target, false);
    r.staging_target_path = theirs.staging.clone();
    let status = fails(
        "NodePublishVolume from another volume's staging path",
        s.node().node_publish_volume(r).await,
        Code::FailedPrecondition,
    );
    assert!(
        status.message().contains("staging_target_path"),
        "{}",
        status.message()
    );
    assert!(mount_at(Path::new(&target)).is_none(), "published");
    s.teardown(&mine).await;
    s.teardown(&theirs).await;
    assert_no_leftovers(&s);
}

/// NodeUnstage while a target still has the volume is FAILED_PRECONDITION
/// and leaves both mounts; after the unpublish it succeeds.
pub async fn unstage_while_published_is_failed_precondition(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-busy", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    s.stage(&v).await;
    let target = s.path_str("busy-target");
    s.publish(&v, &target, false).await;
    let status = fails(
        "NodeUnstageVolume while published",
        s.node()
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                staging_target_path: v.staging.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains(&target), "{}", status.message());
    assert!(mount_at(Path::new(&v.staging)).is_some(), "unstaged");
    write_durably(&Path::new(&target).join("still"), b"here").unwrap();
    s.unpublish(&v, &target).await;
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Unpublish and unstage never unmount what is not the volume's: a
/// foreign mount at the target or staging path is FAILED_PRECONDITION and
/// stays, whether the volume is staged or not.
pub async fn foreign_mounts_are_never_unmounted(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-not-mine", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    let target = s.path("someone-elses-target");
    let staging = s.path("someone-elses-staging");
    mount_foreign(&target, "tmpfs-target-of-another");
    mount_foreign(&staging, "tmpfs-staging-of-another");
    for staged in [false, true] {
        if staged {
            s.stage(&v).await;
        }
        let status = fails(
            &format!("NodeUnpublishVolume of a foreign mount (staged: {staged})"),
            s.node()
                .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                    volume_id: v.volume.volume_id.clone(),
                    target_path: target.display().to_string(),
                })
                .await,
            Code::FailedPrecondition,
        );
        assert!(
            status.message().contains("tmpfs-target-of-another"),
            "{}",
            status.message()
        );
        fails(
            &format!("NodeUnstageVolume of a foreign mount (staged: {staged})"),
            s.node()
                .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                    volume_id: v.volume.volume_id.clone(),
                    staging_target_path: staging.display().to_string(),
                })
                .await,
            Code::FailedPrecondition,
        );
        for at in [&target, &staging] {
            assert_eq!(mount_count(at), 1, "{} was unmounted", at.display());
            assert_eq!(
                std::fs::read(at.join("foreign")).unwrap(),
                b"not the volume"
            );
        }
    }
    unmount_foreign(&target);
    unmount_foreign(&staging);
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A SINGLE_NODE_WRITER or SINGLE_NODE_SINGLE_WRITER volume published at
/// one target: a publish at a second target is FAILED_PRECONDITION and
/// mounts nothing; the first target stays idempotent.
pub async fn second_publish_of_a_single_writer_volume_is_failed_precondition(b: BackendUnderTest) {
    use csi::volume_capability::access_mode::Mode;
    require_node(&b);
    let s = Server::start(&b).await;
    for (n, mode) in [Mode::SingleNodeWriter, Mode::SingleNodeSingleWriter]
        .into_iter()
        .enumerate()
    {
        let cap = capability(mount_access("ext4"), mode);
        let v = s
            .node_volume(&format!("conf-single-{n}"), b.fs_bytes("ext4"), cap)
            .await;
        s.stage(&v).await;
        let first = s.path_str(&format!("single-{n}-first"));
        let second = s.path_str(&format!("single-{n}-second"));
        s.publish(&v, &first, false).await;
        let status = fails(
            &format!("a second NodePublishVolume of a {mode:?} volume"),
            s.node()
                .node_publish_volume(s.publish_request(&v, &second, false))
                .await,
            Code::FailedPrecondition,
        );
        assert!(status.message().contains(&first), "{}", status.message());
        assert!(mount_at(Path::new(&second)).is_none(), "published twice");
        s.publish(&v, &first, false).await;
        s.unpublish(&v, &first).await;
        s.publish(&v, &second, false).await;
        s.unpublish(&v, &second).await;
        s.teardown(&v).await;
    }
    assert_no_leftovers(&s);
}

/// A volume written as raw block (data in its first MiB, no signature) is
/// never formatted by a filesystem stage: FAILED_PRECONDITION, the data
/// stays and nothing is left attached by the refused stage.
pub async fn block_data_is_never_formatted(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-raw-data", b.fs_bytes("ext4"), block_cap())
        .await;
    let attached = s.host_leftovers();
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
    write_through_block(&s, &v, 4096, &data).await;
    let status = fails(
        "NodeStageVolume as a filesystem of a volume with raw data",
        s.node()
            .node_stage_volume(s.stage_request(&with_cap(&v, mount_cap("ext4"))))
            .await,
        Code::FailedPrecondition,
    );
    assert!(!status.message().is_empty(), "the refusal must say why");
    assert!(mount_at(Path::new(&v.staging)).is_none(), "mounted");
    refused_stage_kept(&s, &v, &attached, 4096, &data).await;
}

/// After a refused stage: nothing more attached than before it, `data`
/// still at `offset` of the volume; then the volume is torn down.
async fn refused_stage_kept(
    s: &Server,
    v: &NodeVolume,
    attached: &[String],
    offset: u64,
    data: &[u8],
) {
    assert_eq!(
        s.host_leftovers(),
        attached,
        "the refused stage left a device"
    );
    assert_eq!(
        read_through_block(s, v, offset, data.len()).await,
        data,
        "the volume's bytes at {offset} were overwritten"
    );
    s.teardown(v).await;
    assert_no_leftovers(s);
}

/// A `luksKey` in the node-stage secrets with a volume context that lacks
/// the encryption settings is INVALID_ARGUMENT, and nothing is formatted
/// or attached.
pub async fn luks_key_without_encryption_context_is_refused(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-key-no-context", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    let attached = s.host_leftovers();
    let mut r = s.stage_request(&v);
    r.secrets = params(&[("luksKey", "conformance-key-no-context")]);
    let status = fails(
        "NodeStageVolume with luksKey but no encryption context",
        s.node().node_stage_volume(r).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("encryption"),
        "{}",
        status.message()
    );
    assert!(mount_at(Path::new(&v.staging)).is_none(), "mounted");
    assert_eq!(s.host_leftovers(), attached, "something was attached");
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A LUKS1 header (as blkid recognises it) of 208 bytes.
fn luks_header() -> Vec<u8> {
    let mut h = b"LUKS\xba\xbe".to_vec();
    h.extend_from_slice(&1u16.to_be_bytes());
    for (text, len) in [("aes", 32), ("xts-plain64", 32), ("sha256", 32)] {
        let mut field = text.as_bytes().to_vec();
        field.resize(len, 0);
        h.extend(field);
    }
    h.extend_from_slice(&4096u32.to_be_bytes());
    h.extend_from_slice(&64u32.to_be_bytes());
    h.extend([0x11; 20]);
    h.extend([0x22; 32]);
    h.extend_from_slice(&1000u32.to_be_bytes());
    let mut uuid = b"6f1c2f5e-0000-4000-8000-000000000001".to_vec();
    uuid.resize(40, 0);
    h.extend(uuid);
    h
}

/// A device that carries a LUKS header is never formatted or mounted in
/// plaintext by a stage without encryption context; the refusal comes
/// before any device-mapper call. (hostpath: the header is written into
/// the volume's image.)
pub async fn a_luks_device_is_never_formatted_in_plaintext(b: BackendUnderTest) {
    let what = "NodeStageVolume without encryption of a LUKS device";
    refused_stage_keeps_image_bytes(&b, "conf-luks-header", 0, &luks_header(), what, "LUKS").await;
}

/// A filesystem volume whose device holds data no signature names (here
/// written into the hostpath image) is not formatted: known blank means
/// its first and last MiB are zero, not only that blkid finds nothing.
pub async fn unsigned_data_is_never_formatted(b: BackendUnderTest) {
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
    let what = "NodeStageVolume of a device with unsigned data";
    // 8 KiB before the end of the volume (its capacity, known once made).
    refused_stage_keeps_image_bytes(&b, "conf-unsigned", -8192, &data, what, "holds data").await;
}

/// Writes `data` into a hostpath volume's image at `at` (negative: from the
/// end), then checks that a filesystem stage is FAILED_PRECONDITION with
/// `says` in its message, attaches nothing and leaves the bytes as they
/// were.
async fn refused_stage_keeps_image_bytes(
    b: &BackendUnderTest,
    name: &str,
    at: i64,
    data: &[u8],
    what: &str,
    says: &str,
) {
    require_node(b);
    let s = Server::start(b).await;
    let v = s
        .node_volume(name, b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    let image = s
        .dir()
        .join(format!("state/volumes/{}.img", v.volume.volume_id));
    let at = if at < 0 {
        (v.volume.capacity_bytes + at) as u64
    } else {
        at as u64
    };
    {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        file.write_all_at(data, at).unwrap();
        file.sync_all().unwrap();
    }
    let attached = s.host_leftovers();
    let status = fails(
        what,
        s.node().node_stage_volume(s.stage_request(&v)).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains(says), "{}", status.message());
    assert_eq!(
        s.host_leftovers(),
        attached,
        "the refused stage left a device"
    );
    let mut back = vec![0u8; data.len()];
    std::fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut back, at)
        .unwrap();
    assert_eq!(back, data, "the bytes at {at} were overwritten");
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Input errors are INVALID_ARGUMENT naming the field, and touch nothing:
/// mount flags the filesystem refuses or that change the kind of mount, a
/// target that is a file where a directory is needed (and the reverse), a
/// missing parent, an over-long name.
pub async fn node_input_errors_are_invalid_argument(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let v = s
        .node_volume("conf-input", b.fs_bytes("ext4"), mount_cap("ext4"))
        .await;
    let attached = s.host_leftovers();
    let ia = Code::InvalidArgument;
    for flags in [&["bind"][..], &["no_such_ext4_option_xyz"][..]] {
        let status = fails(
            &format!("NodeStageVolume with mount flags {flags:?}"),
            s.node()
                .node_stage_volume(
                    s.stage_request(&with_cap(&v, mount_cap_with_flags("ext4", flags))),
                )
                .await,
            ia,
        );
        assert!(
            status.message().contains("mount_flags"),
            "{}",
            status.message()
        );
        assert!(mount_at(Path::new(&v.staging)).is_none(), "mounted");
        assert_eq!(s.host_leftovers(), attached, "a failed stage left a device");
    }
    let file = s.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut r = s.stage_request(&v);
    r.staging_target_path = file.display().to_string();
    let status = fails(
        "NodeStageVolume at a file",
        s.node().node_stage_volume(r).await,
        ia,
    );
    assert!(
        status.message().contains("staging_target_path"),
        "{}",
        status.message()
    );
    let mut r = s.stage_request(&v);
    r.staging_target_path = s.path("no/such/parent/staging").display().to_string();
    let status = fails(
        "NodeStageVolume without a parent directory",
        s.node().node_stage_volume(r).await,
        ia,
    );
    assert!(status.message().contains("parent"), "{}", status.message());
    let mut r = s.stage_request(&v);
    r.staging_target_path = s.path(&"n".repeat(300)).display().to_string();
    let status = fails(
        "NodeStageVolume with a name over 255 bytes",
        s.node().node_stage_volume(r).await,
        ia,
    );
    assert!(status.message().contains("255"), "{}", status.message());
    assert_eq!(s.host_leftovers(), attached);

    s.stage(&v).await;
    let status = fails(
        "NodePublishVolume of a filesystem at a file",
        s.node()
            .node_publish_volume(s.publish_request(&v, &file.display().to_string(), false))
            .await,
        ia,
    );
    assert!(
        status.message().contains("target_path"),
        "{}",
        status.message()
    );
    let status = fails(
        "NodePublishVolume without a parent directory",
        s.node()
            .node_publish_volume(s.publish_request(&v, &s.path_str("gone/target"), false))
            .await,
        ia,
    );
    assert!(status.message().contains("parent"), "{}", status.message());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// Every node call on a volume that does not exist is NOT_FOUND, before
/// its paths are looked at: a foreign mount at the target or staging path
/// stays, and no path is created.
pub async fn unknown_volumes_are_not_found_on_every_node_call(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let mut n = s.node();
    let id = b.unknown_volume_id.to_string();
    let target = s.path("foreign-target");
    let staging = s.path("foreign-staging");
    mount_foreign(&target, "tmpfs-foreign-target");
    mount_foreign(&staging, "tmpfs-foreign-staging");
    let nf = Code::NotFound;
    let (target_s, staging_s) = (target.display().to_string(), staging.display().to_string());
    fails(
        "NodeUnpublishVolume of an unknown volume",
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target_s.clone(),
        })
        .await,
        nf,
    );
    fails(
        "NodeUnstageVolume of an unknown volume",
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging_s.clone(),
        })
        .await,
        nf,
    );
    fails(
        "NodeGetVolumeStats of an unknown volume",
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target_s.clone(),
            ..Default::default()
        })
        .await,
        nf,
    );
    // Outside the kubelet directory too: the volume is looked up first.
    fails(
        "NodeStageVolume of an unknown volume outside the kubelet dir",
        n.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: "/etc/never".into(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await,
        nf,
    );
    assert!(!Path::new("/etc/never").exists());
    for at in [&target, &staging] {
        assert_eq!(mount_count(at), 1, "{} was unmounted", at.display());
        unmount_foreign(at);
    }
    assert_no_leftovers(&s);
}

/// hostpath keeps each volume's encryption in its own record: a stage
/// without the volume context (and without a key) is refused as an
/// encrypted volume's, and nothing is formatted in plaintext.
pub async fn encryption_comes_from_the_hostpath_record(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let mut request = create_request("conf-luks-record", b.fs_bytes("ext4"), cap.clone());
    request.parameters = params(&[("multicsi.io/luks-encrypted", "true")]);
    let volume = s.create_with(request).await;
    let mut v = s.attach(volume, cap, "conf-luks-record").await;
    v.volume.volume_context.clear();
    let status = fails(
        "NodeStageVolume of an encrypted volume without its context",
        s.node().node_stage_volume(s.stage_request(&v)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("luksKey"), "{}", status.message());
    assert!(
        mount_at(Path::new(&v.staging)).is_none(),
        "mounted in plaintext"
    );
    let image = s
        .dir()
        .join(format!("state/volumes/{}.img", v.volume.volume_id));
    let mut head = vec![0u8; 1 << 20];
    std::fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head.iter().all(|b| *b == 0), "the image was formatted");
    s.teardown(&v).await;
    assert_no_leftovers(&s);
}

/// A stage that fails at the mount (a mount option ext4 refuses) or at
/// mkfs (xfs on a volume too small for it) leaves no loop device on the
/// image (`losetup -j`), and DeleteVolume then succeeds.
pub async fn failed_stage_leaves_no_loop_device(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    for (n, (what, cap, code)) in [
        (
            "a mount option ext4 refuses",
            mount_cap_with_flags("ext4", &["no_such_ext4_option_xyz"]),
            Code::InvalidArgument,
        ),
        ("mkfs.xfs on 8 MiB", mount_cap("xfs"), Code::Internal),
    ]
    .into_iter()
    .enumerate()
    {
        let v = s
            .node_volume(&format!("conf-leak-{n}"), b.sizes.small, mount_cap("ext4"))
            .await;
        let image = s
            .dir()
            .join(format!("state/volumes/{}.img", v.volume.volume_id));
        let r = s.stage_request(&with_cap(&v, cap));
        let status = s.node().node_stage_volume(r).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        let loops = tool_stdout("losetup", &["-j", &image.display().to_string()]);
        assert_eq!(loops.trim(), "", "{what}: a loop device stayed attached");
        assert!(mount_at(Path::new(&v.staging)).is_none());
        s.controller_unpublish(&v.volume.volume_id).await;
        s.delete(&v.volume.volume_id).await;
    }
    assert_no_leftovers(&s);
}
