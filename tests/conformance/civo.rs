//! The Civo backend under test: the driver talks real HTTP to
//! `multicsi-emulator civo`, whose attached volumes appear as loop devices
//! linked in the server's directory (the driver's device directory).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use multicsi::csi::controller_service_capability::rpc::Type as CtrlRpc;
use multicsi::csi::node_service_capability::rpc::Type as NodeRpc;
use multicsi::csi::plugin_capability::service::Type as PluginService;
use multicsi::csi::{self as csi, volume_usage::Unit};
use multicsi::emulator::civo::state::{CLUSTER_ID, INSTANCES, REGION};

use tonic::Code;

use crate::api::*;
use crate::harness::{BackendUnderTest, Emulator, Server, Sizes, require_node};

const GIB: u64 = 1 << 30;
/// The API key the tests use (any non-empty key is accepted).
pub const API_KEY: &str = "conformance-civo-key";

/// GETs `path` from the emulator at `url` (http://host:port); the body.
pub fn api_get(url: &str, path: &str) -> Result<String, String> {
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let mut stream = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {head}"));
    }
    Ok(body.to_string())
}

/// The IDs of every volume the emulated account holds. Injected faults
/// may answer some attempts; a few are made.
pub fn emulated_volumes(url: &str) -> Vec<String> {
    let mut last = String::new();
    for _ in 0..20 {
        match api_get(url, &format!("/v2/volumes?region={REGION}")) {
            Ok(body) => {
                let list: serde_json::Value =
                    serde_json::from_str(&body).expect("the volume list is JSON");
                let mut ids: Vec<String> = list
                    .as_array()
                    .expect("the volume list is an array")
                    .iter()
                    .map(|v| v["id"].as_str().expect("volume id").to_string())
                    .collect();
                ids.sort();
                return ids;
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot list the emulated volumes: {last}");
}

impl BackendUnderTest {
    /// Civo against its emulator.
    pub fn civo() -> Self {
        Self::civo_with(vec![])
    }

    /// Civo against an emulator that answers 10% of requests with 5xx
    /// and 5% with 429 (Retry-After 1 s), API only: the soak drives the
    /// controller, the node sections cover the disks. The driver may send
    /// 500 requests/s.
    pub fn civo_soak() -> Self {
        let mut b = Self::civo_with(vec!["--error-share", "0.10", "--throttle-share", "0.05"]);
        let emulator = b.emulator.as_mut().expect("emulator");
        emulator
            .args
            .retain(|a| !a.starts_with("--image-dir") && !a.starts_with("--link-dir"));
        emulator.args.retain(|a| !a.starts_with("{dir}/"));
        b.args = vec![
            "--backend",
            "civo",
            "--state-dir",
            "{dir}/state",
            "--device-dir",
            "{dir}",
        ];
        b.env.push(("CIVO_API_REQUESTS_PER_SECOND", "500"));
        b.node_tests = false;
        b
    }

    /// Civo (the default) and hostpath served by one driver.
    pub fn civo_with_hostpath() -> Self {
        let mut b = Self::civo();
        b.name = "civo+hostpath";
        b.node_id = INSTANCES[0].1;
        b.args = vec![
            "--backends",
            "civo,hostpath",
            "--state-dir",
            "{dir}/state",
            "--device-dir",
            "{dir}/links",
        ];
        b
    }

    /// Civo against its emulator, with extra emulator arguments (faults).
    pub fn civo_with(extra_emulator_args: Vec<&'static str>) -> Self {
        let mut emulator_args = vec![
            "--transition-ms",
            "20",
            "--image-dir",
            "{dir}/images",
            "--link-dir",
            "{dir}/links",
        ];
        emulator_args.extend(extra_emulator_args);
        BackendUnderTest {
            name: "civo",
            // The first instance of the emulated cluster: the driver finds
            // it among the cluster's instances by this name.
            node_id: INSTANCES[0].0,
            args: vec![
                "--backend",
                "civo",
                "--state-dir",
                "{dir}/state",
                "--device-dir",
                "{dir}/links",
            ],
            env: vec![
                ("CIVO_API_URL", "{api}"),
                ("CIVO_API_KEY", API_KEY),
                ("CIVO_REGION", REGION),
                ("CIVO_CLUSTER_ID", CLUSTER_ID),
                ("CIVO_STATSD_FILE", "{dir}/no-civostatsd"),
                ("CIVO_VOLUME_SNAPSHOTS", "true"),
            ],
            plugin_services: vec![
                PluginService::ControllerService,
                PluginService::VolumeAccessibilityConstraints,
            ],
            controller_rpcs: vec![
                CtrlRpc::CreateDeleteVolume,
                CtrlRpc::PublishUnpublishVolume,
                CtrlRpc::ListVolumes,
                CtrlRpc::GetCapacity,
                CtrlRpc::ExpandVolume,
                CtrlRpc::ListVolumesPublishedNodes,
                CtrlRpc::GetVolume,
                CtrlRpc::SingleNodeMultiWriter,
                CtrlRpc::CreateDeleteSnapshot,
                CtrlRpc::ListSnapshots,
                CtrlRpc::GetSnapshot,
            ],
            node_rpcs: vec![
                NodeRpc::StageUnstageVolume,
                NodeRpc::GetVolumeStats,
                NodeRpc::ExpandVolume,
                NodeRpc::SingleNodeMultiWriter,
            ],
            sizes: Sizes {
                step: GIB,
                small: 2 * GIB,
                filesystem: |_| GIB,
            },
            filesystems: vec!["ext4", "xfs", "btrfs"],
            node_tests: true,
            topology_key: "region",
            unknown_volume_id: "00000000-0000-4000-8000-000000000000",
            unknown_snapshot_id: "00000000-0000-4000-8000-000000000001",
            records_sources: false,
            alt_parameters: vec![("multicsi.io/volume-type", "ms-xfs-2-replicas")],
            stored_volumes: |_dir: &Path, url| {
                emulated_volumes(url.expect("the civo backend runs with its emulator"))
            },
            emulator: Some(Emulator {
                provider: "civo",
                args: emulator_args,
            }),
        }
    }
}

// Civo's own tests: node identity, offline expansion, quota.

async fn reported_node(b: &BackendUnderTest) -> csi::NodeGetInfoResponse {
    let s = Server::start(b).await;
    ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    )
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// NodeGetInfo reports the node's Civo instance: from the civostatsd file
/// first, then NODE_ID, then the cluster's instance whose hostname is the
/// Kubernetes node name; the topology carries the region.
pub async fn node_identity_sources(b: BackendUnderTest) {
    let (id_two, host_two) = INSTANCES[1];
    let mut by_hostname = b.clone();
    by_hostname.node_id = host_two;
    let info = reported_node(&by_hostname).await;
    assert_eq!(info.node_id, id_two, "looked up by hostname");
    let topology = info.accessible_topology.expect("topology");
    assert_eq!(
        topology.segments.get("region").map(String::as_str),
        Some(REGION)
    );

    let mut by_env = b.clone();
    by_env.node_id = "any-node-name";
    by_env
        .env
        .push(("NODE_ID", "11111111-2222-4333-8444-555555555555"));
    assert_eq!(
        reported_node(&by_env).await.node_id,
        "11111111-2222-4333-8444-555555555555"
    );

    // A node with NODE_ID needs no API key; a controller needs no identity.
    let mut node_only = by_env.clone();
    node_only.args.extend(["--mode", "node"]);
    node_only.env.retain(|(k, _)| *k != "CIVO_API_KEY");
    assert_eq!(
        reported_node(&node_only).await.node_id,
        "11111111-2222-4333-8444-555555555555"
    );
    let mut controller_only = b.clone();
    controller_only.node_id = "a-controller-pod-node";
    controller_only.args.extend(["--mode", "controller"]);
    let s = Server::start(&controller_only).await;
    let capacity = ok(
        "GetCapacity of a controller-only process",
        s.controller()
            .get_capacity(csi::GetCapacityRequest::default())
            .await,
    );
    assert!(capacity.available_capacity > 0);
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("civostatsd");
    std::fs::write(
        &file,
        "server = \"https://stats.example\"\ntoken = \"statsd-secret\"\ninstance_id = \"66666666-7777-4888-9999-000000000000\"\nregion = \"NYC1\"\n",
    )
    .unwrap();
    let mut by_file = by_env.clone();
    let path = leak(file.display().to_string());
    by_file
        .env
        .retain(|(k, _)| *k != "CIVO_STATSD_FILE" && *k != "NODE_ID");
    by_file.env.push(("CIVO_STATSD_FILE", path));
    by_file.env.push(("NODE_ID", "not-this-one"));
    let info = reported_node(&by_file).await;
    assert_eq!(info.node_id, "66666666-7777-4888-9999-000000000000");
    let topology = info.accessible_topology.expect("topology");
    assert_eq!(
        topology.segments.get("region").map(String::as_str),
        Some("NYC1")
    );
}

/// Civo and hostpath in one driver, started with the Kubernetes node name:
/// the node has one ID, the Civo instance's. NodeGetInfo reports it, a
/// hostpath volume lives on it (topology), and ControllerPublish with it
/// reaches the hostpath volume (a hostpath backend left with the node name
/// would answer NOT_FOUND).
pub async fn one_node_id_for_every_backend(b: BackendUnderTest) {
    let (instance_id, hostname) = INSTANCES[0];
    let mut mixed = b.clone();
    mixed.node_id = hostname;
    mixed.args = BackendUnderTest::civo_with_hostpath().args;
    let s = Server::start(&mixed).await;
    let info = ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    );
    assert_eq!(
        info.node_id, instance_id,
        "the Civo instance, found by hostname"
    );
    let mut request = create_request("one-node-local", 64 << 20, mount_cap("ext4"));
    request.parameters = params(&[("multicsi.io/backend", "hostpath")]);
    let local = s.create_with(request).await;
    let segments = &local.accessible_topology[0].segments;
    assert_eq!(
        segments
            .get("topology.multicsi.io/node")
            .map(String::as_str),
        Some(instance_id),
        "{segments:?}"
    );
    let mut c = s.controller();
    for _ in 0..2 {
        ok(
            "ControllerPublishVolume of a hostpath volume to the reported node",
            c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: local.volume_id.clone(),
                node_id: info.node_id.clone(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            })
            .await,
        );
    }
    ok(
        "ControllerUnpublishVolume from the reported node",
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: local.volume_id.clone(),
            node_id: info.node_id.clone(),
            ..Default::default()
        })
        .await,
    );
    s.delete(&local.volume_id).await;
}

fn expand_request(v: &NodeVolume, bytes: u64) -> csi::ControllerExpandVolumeRequest {
    csi::ControllerExpandVolumeRequest {
        volume_id: v.volume.volume_id.clone(),
        capacity_range: range(bytes, 0),
        volume_capability: Some(v.cap.clone()),
        ..Default::default()
    }
}

/// Offline expansion: an attached volume does not grow
/// (FAILED_PRECONDITION); detached it grows, and staged again its
/// filesystem fills the larger disk with the data kept.
pub async fn offline_expansion_keeps_data(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let fs = "xfs";
    let v = s
        .node_volume("conf-civo-offline", 2 * GIB, mount_cap(fs))
        .await;
    s.stage(&v).await;
    let target = s.path_str("target");
    s.publish(&v, &target, false).await;
    write_durably(&Path::new(&target).join("before"), b"kept").unwrap();
    let before = usage(&s.stats(&v.volume.volume_id, &target).await, Unit::Bytes).total;
    let status = fails(
        "ControllerExpandVolume of an attached volume",
        s.controller()
            .controller_expand_volume(expand_request(&v, 4 * GIB))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        status.message().contains("detached"),
        "{}",
        status.message()
    );
    s.unpublish(&v, &target).await;
    s.unstage(&v).await;
    s.controller_unpublish(&v.volume.volume_id).await;

    let reply = ok(
        "ControllerExpandVolume of a detached volume",
        s.controller()
            .controller_expand_volume(expand_request(&v, 4 * GIB))
            .await,
    );
    assert_eq!(reply.capacity_bytes as u64, 4 * GIB);

    let v = s
        .attach(v.volume.clone(), v.cap.clone(), "conf-civo-offline")
        .await;
    s.stage(&v).await;
    s.publish(&v, &target, false).await;
    let expanded = ok(
        "NodeExpandVolume after the offline growth",
        s.node()
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: v.volume.volume_id.clone(),
                volume_path: target.clone(),
                staging_target_path: v.staging.clone(),
                capacity_range: range(4 * GIB, 0),
                volume_capability: Some(v.cap.clone()),
                ..Default::default()
            })
            .await,
    );
    assert!(expanded.capacity_bytes == 0 || expanded.capacity_bytes as u64 >= 4 * GIB);
    let after = usage(&s.stats(&v.volume.volume_id, &target).await, Unit::Bytes).total;
    assert!(
        after as u64 > before as u64 + GIB,
        "the filesystem did not grow: {before} -> {after} bytes"
    );
    assert_eq!(
        std::fs::read(Path::new(&target).join("before")).unwrap(),
        b"kept"
    );
    s.unpublish(&v, &target).await;
    s.teardown(&v).await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    assert!(s.stored_volumes().is_empty());
}

/// The account quota: GetCapacity reports what is free; a create that
/// does not fit is RESOURCE_EXHAUSTED; the largest volume is 1000 GB.
pub async fn quota_limits_creates(b: BackendUnderTest) {
    use multicsi::emulator::civo::state::{DISK_GB_LIMIT, MAX_VOLUME_GB};
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let capacity = |reply: csi::GetCapacityResponse| reply.available_capacity as u64;
    let free = capacity(ok(
        "GetCapacity",
        c.get_capacity(csi::GetCapacityRequest::default()).await,
    ));
    assert_eq!(free, DISK_GB_LIMIT * GIB);
    let big = MAX_VOLUME_GB * GIB;
    fails(
        "CreateVolume above the largest volume",
        c.create_volume(create_request(
            "conf-civo-huge",
            big + GIB,
            mount_cap("ext4"),
        ))
        .await,
        Code::OutOfRange,
    );
    let mut made = Vec::new();
    for i in 0..(DISK_GB_LIMIT / MAX_VOLUME_GB) {
        let name = format!("conf-civo-quota-{i}");
        made.push(s.create(&name, big, mount_cap("ext4")).await.volume_id);
    }
    let free = capacity(ok(
        "GetCapacity with the quota used up",
        c.get_capacity(csi::GetCapacityRequest::default()).await,
    ));
    assert_eq!(free, 0);
    let status = fails(
        "CreateVolume beyond the quota",
        c.create_volume(create_request("conf-civo-over", GIB, mount_cap("ext4")))
            .await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("quota"), "{}", status.message());
    for id in &made {
        s.delete(id).await;
    }
    let free = capacity(ok(
        "GetCapacity after the deletes",
        c.get_capacity(csi::GetCapacityRequest::default()).await,
    ));
    assert_eq!(free, DISK_GB_LIMIT * GIB);
}

/// Volume snapshots are used only where the operator turned them on
/// (CIVO_VOLUME_SNAPSHOTS): without the setting they are neither
/// advertised nor served.
pub async fn snapshots_need_the_setting(mut b: BackendUnderTest) {
    b.env.retain(|(key, _)| *key != "CIVO_VOLUME_SNAPSHOTS");
    b.controller_rpcs.retain(|r| {
        !matches!(
            r,
            CtrlRpc::CreateDeleteSnapshot | CtrlRpc::ListSnapshots | CtrlRpc::GetSnapshot
        )
    });
    let s = Server::start(&b).await;
    let advertised = s.advertised().await;
    assert!(!advertised.controller(CtrlRpc::CreateDeleteSnapshot));
    assert!(!advertised.controller(CtrlRpc::ListSnapshots));
    let volume = s.create("conf-civo-nosnap", GIB, mount_cap("ext4")).await;
    fails(
        "CreateSnapshot without CIVO_VOLUME_SNAPSHOTS",
        s.controller()
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: volume.volume_id.clone(),
                name: "conf-civo-nosnap".into(),
                ..Default::default()
            })
            .await,
        Code::Unimplemented,
    );
    s.delete(&volume.volume_id).await;
}
