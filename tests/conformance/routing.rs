//! Several backends in one driver: the StorageClass parameter
//! `multicsi.io/backend` chooses where a volume is made, and every later
//! call (controller and node) finds its backend from the volume ID alone.
//! Run against cloudscale (default, emulated) and hostpath.

use std::collections::BTreeSet;
use std::path::Path;

use multicsi::csi::{self as csi};
use tonic::Code;

use crate::api::*;
use crate::harness::{BackendUnderTest, Server, require_node};

const BACKEND: &str = "multicsi.io/backend";

/// A create via each backend, the IDs routing every call back to it, and a
/// real filesystem staged on each.
pub async fn two_backends_route_by_id(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let info = ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    );
    assert_eq!(info.node_id, b.node_id, "node ID from the metadata service");
    let segments = info.accessible_topology.expect("topology").segments;
    assert!(
        segments.contains_key("csi.cloudscale.ch/zone"),
        "{segments:?}"
    );
    assert!(
        segments.contains_key("topology.multicsi.io/node"),
        "{segments:?}"
    );

    let cap = mount_cap("ext4");
    let cloud = s.create("route-cloud", 1 << 30, cap.clone()).await;
    assert!(
        !cloud.volume_id.contains(':'),
        "the default backend keeps its own IDs: {}",
        cloud.volume_id
    );
    let mut local_request = create_request("route-local", 64 << 20, cap.clone());
    local_request.parameters = params(&[(BACKEND, "hostpath")]);
    let local = s.create_with(local_request.clone()).await;
    assert!(
        local.volume_id.starts_with("hostpath:hp-"),
        "other backends' IDs carry their name: {}",
        local.volume_id
    );
    assert_eq!(
        s.create_with(local_request).await.volume_id,
        local.volume_id
    );
    assert_eq!(local.capacity_bytes, 64 << 20, "hostpath size steps apply");
    assert_eq!(cloud.capacity_bytes, 1 << 30);

    let mut mixed = create_request("route-mixed", 1 << 30, cap.clone());
    mixed.parameters = params(&[
        (BACKEND, "hostpath"),
        ("csi.cloudscale.ch/volume-type", "ssd"),
    ]);
    fails(
        "CreateVolume on hostpath with a cloudscale parameter",
        c.create_volume(mixed).await,
        Code::InvalidArgument,
    );
    let mut elsewhere = create_request("route-nowhere", 1 << 30, cap.clone());
    elsewhere.parameters = params(&[(BACKEND, "civo")]);
    fails(
        "CreateVolume on a backend that is not served",
        c.create_volume(elsewhere).await,
        Code::InvalidArgument,
    );

    // Each ID reaches its own backend.
    for (volume, key) in [
        (&cloud, "csi.cloudscale.ch/zone"),
        (&local, "topology.multicsi.io/node"),
    ] {
        let got = ok(
            "ControllerGetVolume",
            c.controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: volume.volume_id.clone(),
            })
            .await,
        )
        .volume
        .expect("volume");
        assert_eq!(got.volume_id, volume.volume_id);
        assert!(got.accessible_topology[0].segments.contains_key(key));
    }
    let listed: BTreeSet<String> = s.list_volume_ids(1).await.into_iter().collect();
    assert_eq!(
        listed,
        BTreeSet::from([cloud.volume_id.clone(), local.volume_id.clone()])
    );
    let stored: BTreeSet<String> = s.stored_volumes().into_iter().collect();
    assert_eq!(stored, listed);

    // Snapshots stay in their backend, and so do restores. A snapshot class
    // that names a backend takes snapshots of that backend's volumes only.
    fails(
        "CreateSnapshot of a hostpath volume with a cloudscale snapshot class",
        c.create_snapshot(csi::CreateSnapshotRequest {
            name: "route-wrong-class".into(),
            source_volume_id: local.volume_id.clone(),
            parameters: params(&[(BACKEND, "cloudscale")]),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    let snap = s.snapshot("route-local-snap", &local.volume_id).await;
    assert!(
        snap.snapshot_id.starts_with("hostpath:"),
        "{}",
        snap.snapshot_id
    );
    let mut across = create_request("route-across", 1 << 30, cap.clone());
    across.volume_content_source = snapshot_source(&snap.snapshot_id);
    fails(
        "restoring a hostpath snapshot on cloudscale",
        c.create_volume(across).await,
        Code::InvalidArgument,
    );
    s.delete_snapshot(&snap.snapshot_id).await;

    // The node stages both: a loop device for hostpath, the emulated
    // cloud disk (found by its by-id link and serial) for cloudscale.
    for (volume, name) in [
        (cloud.clone(), "route-cloud"),
        (local.clone(), "route-local"),
    ] {
        let v = s.attach(volume, cap.clone(), name).await;
        if name == "route-cloud" {
            assert_eq!(
                v.publish_context
                    .get("multicsi.io/cloudscale-server")
                    .map(String::as_str),
                Some(b.node_id)
            );
        }
        s.stage(&v).await;
        let target = s.path_str(&format!("{name}-target"));
        s.publish(&v, &target, false).await;
        std::fs::write(Path::new(&target).join("hello"), name).expect("write to the volume");
        s.unpublish(&v, &target).await;
        s.teardown(&v).await;
    }
    assert!(s.stored_volumes().is_empty(), "volumes left behind");
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

fn capacity_request(parameters: &[(&str, &str)]) -> csi::GetCapacityRequest {
    csi::GetCapacityRequest {
        parameters: params(parameters),
        ..Default::default()
    }
}

/// GetCapacity answers for the backend the StorageClass selects: hostpath
/// reports its space, the default cloudscale (whose API reports none)
/// says so instead of lending hostpath's figure.
pub async fn capacity_follows_the_storage_class(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let local = ok(
        "GetCapacity for hostpath",
        c.get_capacity(capacity_request(&[(BACKEND, "hostpath")]))
            .await,
    );
    assert!(local.available_capacity > 0, "{local:?}");
    let status = fails(
        "GetCapacity for cloudscale (the default)",
        c.get_capacity(capacity_request(&[])).await,
        Code::Unimplemented,
    );
    assert!(
        status.message().contains("cloudscale"),
        "{}",
        status.message()
    );
    fails(
        "GetCapacity for a backend this driver does not serve",
        c.get_capacity(capacity_request(&[(BACKEND, "nowhere")]))
            .await,
        Code::InvalidArgument,
    );
}

/// Civo (offline expansion, no read-only attach) beside hostpath: only what
/// both offer is advertised, and GetCapacity answers for each backend.
pub async fn only_shared_capabilities_are_advertised(b: BackendUnderTest) {
    use multicsi::csi::controller_service_capability::rpc::Type as Rpc;
    let s = Server::start(&b).await;
    let advertised = s.advertised().await;
    assert!(
        !advertised.online_expansion,
        "Civo expands detached volumes only: expansion must be OFFLINE"
    );
    assert!(
        !advertised.controller(Rpc::PublishReadonly),
        "Civo attaches read-write only: PUBLISH_READONLY must not be advertised"
    );
    let mut c = s.controller();
    let civo = ok(
        "GetCapacity for civo (the default)",
        c.get_capacity(capacity_request(&[])).await,
    );
    let local = ok(
        "GetCapacity for hostpath",
        c.get_capacity(capacity_request(&[(BACKEND, "hostpath")]))
            .await,
    );
    assert_eq!(
        civo.available_capacity as u64,
        multicsi::emulator::civo::state::DISK_GB_LIMIT << 30,
        "civo answers with its quota"
    );
    assert_ne!(
        local.maximum_volume_size, civo.maximum_volume_size,
        "hostpath answers for itself: {local:?} {civo:?}"
    );
}

/// A node plugin of one cloud in a multi-cloud driver (`--mode=node
/// --node-backends=hostpath` beside cloudscale): it starts although
/// cloudscale's metadata service cannot be reached, reports hostpath's
/// topology only, and refuses to stage a cloudscale volume with
/// FAILED_PRECONDITION, mounting nothing.
pub async fn a_node_plugin_serves_only_its_own_backends(b: BackendUnderTest) {
    use std::fs::File;
    use std::process::Stdio;

    use multicsi::csi::node_client::NodeClient;

    let s = Server::start(&b).await;
    let dir = tempfile::Builder::new()
        .prefix("csi-conf-node-")
        .tempdir()
        .expect("temporary directory");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("kubelet dir");
    let socket = root.join("node.sock");
    let log = root.join("node.log");
    let mut child = s
        .command_at(&root, &socket)
        .args(["--mode", "node", "--node-backends", "hostpath"])
        .env("CLOUDSCALE_METADATA_URL", "http://127.0.0.1:9")
        .env("MULTICSI_KUBELET_DIR", &work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("node log"))
        .spawn()
        .expect("start the node plugin");
    let channel = crate::harness::serving(&mut child, &socket, &log)
        .await
        .unwrap_or_else(|e| panic!("the node plugin: {e}"));
    let mut node = NodeClient::new(channel);
    let info = ok(
        "NodeGetInfo",
        node.node_get_info(csi::NodeGetInfoRequest {}).await,
    );
    let keys: Vec<String> = info
        .accessible_topology
        .expect("topology")
        .segments
        .into_keys()
        .collect();
    assert_eq!(
        keys,
        ["topology.multicsi.io/node"],
        "only hostpath's topology"
    );
    let staging = work.join("staging");
    std::fs::create_dir(&staging).expect("staging dir");
    let status = fails(
        "NodeStageVolume of a cloudscale volume on a hostpath-only node",
        node.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: "00000000-0000-4000-8000-00000000abcd".into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(
        status.message().contains("cloudscale"),
        "{}",
        status.message()
    );
    assert!(
        crate::harness::mount_at(&staging).is_none(),
        "the refused stage mounted {staging:?}"
    );
    child.kill().expect("stop the node plugin");
    child.wait().expect("node plugin exit");
}
