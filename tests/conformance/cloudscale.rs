//! What only the cloudscale backend promises, against its emulator: volume
//! types and their size steps, restores that inherit type and zone, one
//! server per volume, the node limit and its override, and idempotency by
//! name that survives a duplicate left by an interrupted create.

use multicsi::csi::{self as csi};
use multicsi::emulator::cloudscale::{OTHER_SERVER_UUID, SERVER_UUID};
use serde_json::{Value, json};
use tonic::Code;

use crate::api::*;
use crate::harness::{BackendUnderTest, Server};

const GIB: i64 = 1 << 30;
const TOKEN: &str = "conformance-token";

/// A request straight to the emulated cloud (what another client, or an
/// earlier driver, would have done).
async fn cloud(s: &Server, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let url = format!("{}{path}", s.api_url().expect("emulator"));
    let mut request = multicsi::cloud::http::client_builder()
        .build()
        .expect("HTTP client")
        .request(method, url)
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.expect("emulator answers");
    assert!(reply.status().is_success(), "{path}: {}", reply.status());
    let text = reply.text().await.expect("body");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON")
    }
}

/// A volume as the emulated cloud stores it.
async fn stored_volume(s: &Server, id: &str) -> Value {
    cloud(s, reqwest::Method::GET, &format!("/v1/volumes/{id}"), None).await
}

fn zone(volume: &csi::Volume) -> String {
    volume.accessible_topology[0].segments["csi.cloudscale.ch/zone"].clone()
}

/// ssd rounds up to whole GiB, bulk to 100 GiB; both keys work; the two
/// keys must agree; the type is part of the volume's identity.
pub async fn volume_types_and_size_steps(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let mut ssd = create_request("cs-ssd", (GIB + 1) as u64, cap.clone());
    ssd.parameters = params(&[("multicsi.io/volume-type", "ssd")]);
    let ssd = s.create_with(ssd).await;
    assert_eq!(ssd.capacity_bytes, 2 * GIB);
    let mut bulk = create_request("cs-bulk", 0, cap.clone());
    bulk.capacity_range = None;
    bulk.parameters = params(&[("csi.cloudscale.ch/volume-type", "bulk")]);
    let bulk = s.create_with(bulk).await;
    assert_eq!(bulk.capacity_bytes, 100 * GIB, "bulk: one step by default");
    let stored = stored_volume(&s, &bulk.volume_id).await;
    assert_eq!(stored["type"], "bulk");
    assert_eq!(stored["size_gb"], 100);
    let mut tight = create_request("cs-bulk-tight", GIB as u64, cap.clone());
    tight.parameters = params(&[("multicsi.io/volume-type", "bulk")]);
    tight.capacity_range = range(GIB as u64, 50 * GIB as u64);
    fails(
        "bulk volume with a limit below 100 GiB",
        c.create_volume(tight).await,
        Code::OutOfRange,
    );
    let mut both = create_request("cs-both", GIB as u64, cap.clone());
    both.parameters = params(&[
        ("multicsi.io/volume-type", "ssd"),
        ("csi.cloudscale.ch/volume-type", "bulk"),
    ]);
    fails(
        "disagreeing type keys",
        c.create_volume(both).await,
        Code::InvalidArgument,
    );
    let mut nvme = create_request("cs-nvme", GIB as u64, cap.clone());
    nvme.parameters = params(&[("multicsi.io/volume-type", "nvme")]);
    fails(
        "unknown type",
        c.create_volume(nvme).await,
        Code::InvalidArgument,
    );
    // Expansion keeps the type's steps.
    let grown = ok(
        "ControllerExpandVolume bulk",
        c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: bulk.volume_id.clone(),
            capacity_range: range((101 * GIB) as u64, 0),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(grown.capacity_bytes, 200 * GIB);
    s.delete(&ssd.volume_id).await;
    s.delete(&bulk.volume_id).await;
    assert!(s.stored_volumes().is_empty());
}

/// A restore takes the snapshot's type and zone, then grows to the size
/// asked for; a requisite zone without the snapshot is RESOURCE_EXHAUSTED.
pub async fn restore_inherits_type_and_zone_then_grows(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let mut origin = create_request("cs-origin", 0, cap.clone());
    origin.capacity_range = None;
    origin.parameters = params(&[("multicsi.io/volume-type", "bulk")]);
    origin.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![],
        preferred: vec![csi::Topology {
            segments: [("csi.cloudscale.ch/zone".to_string(), "rma1".to_string())].into(),
        }],
    });
    let origin = s.create_with(origin).await;
    assert_eq!(zone(&origin), "rma1", "the preferred zone is used");
    let snap = s.snapshot("cs-origin-snap", &origin.volume_id).await;
    assert_eq!(snap.size_bytes, 100 * GIB);

    let mut restore = create_request("cs-restored", (150 * GIB) as u64, cap.clone());
    restore.volume_content_source = snapshot_source(&snap.snapshot_id);
    let restored = s.create_with(restore.clone()).await;
    assert_eq!(zone(&restored), "rma1", "zone from the snapshot");
    assert_eq!(restored.capacity_bytes, 200 * GIB, "grown in bulk steps");
    let stored = stored_volume(&s, &restored.volume_id).await;
    assert_eq!(
        (stored["type"].as_str(), stored["size_gb"].as_u64()),
        (Some("bulk"), Some(200))
    );
    assert_eq!(s.create_with(restore).await.volume_id, restored.volume_id);

    let mut wrong_zone = create_request("cs-restored-lpg1", 0, cap.clone());
    wrong_zone.capacity_range = None;
    wrong_zone.volume_content_source = snapshot_source(&snap.snapshot_id);
    wrong_zone.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: [("csi.cloudscale.ch/zone".to_string(), "lpg1".to_string())].into(),
        }],
        preferred: vec![],
    });
    fails(
        "restore outside the snapshot's zone",
        c.create_volume(wrong_zone).await,
        Code::ResourceExhausted,
    );
    fails(
        "DeleteVolume of a volume with snapshots",
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: origin.volume_id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    s.delete(&restored.volume_id).await;
    s.delete_snapshot(&snap.snapshot_id).await;
    s.delete(&origin.volume_id).await;
    assert!(s.stored_volumes().is_empty());
}

/// A volume attached to another server is never moved: FAILED_PRECONDITION
/// until it is unpublished there. An unknown server is NOT_FOUND.
pub async fn a_volume_attaches_to_one_server(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let volume = s.create("cs-one-server", GIB as u64, cap.clone()).await;
    let publish = |node: &str| csi::ControllerPublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        node_id: node.to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    fails(
        "publish to a server that does not exist",
        c.controller_publish_volume(publish("11111111-2222-4333-8444-555555555555"))
            .await,
        Code::NotFound,
    );
    let context = s.controller_publish(&volume.volume_id, &cap, false).await;
    assert_eq!(context["multicsi.io/cloudscale-server"], SERVER_UUID);
    let reply = c
        .controller_publish_volume(publish(OTHER_SERVER_UUID))
        .await;
    fails(
        "publish while attached to another server",
        reply,
        Code::FailedPrecondition,
    );
    s.controller_unpublish(&volume.volume_id).await;
    let info = stored_volume(&s, &volume.volume_id).await;
    assert_eq!(info["server_uuids"], json!([]));
    s.delete(&volume.volume_id).await;
}

/// NodeGetInfo: the server UUID from the metadata service, its zone, and
/// 125 volumes unless CLOUDSCALE_MAX_CSI_VOLUMES_PER_NODE says otherwise.
pub async fn node_identity_and_volume_limit(mut b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let info = ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    );
    assert_eq!(info.node_id, SERVER_UUID);
    assert_eq!(info.max_volumes_per_node, 125);
    assert_eq!(
        info.accessible_topology.expect("topology").segments["csi.cloudscale.ch/zone"],
        "lpg1"
    );
    drop(s);
    b.env.push(("CLOUDSCALE_MAX_CSI_VOLUMES_PER_NODE", "7"));
    let s = Server::start(&b).await;
    let info = ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    );
    assert_eq!(info.max_volumes_per_node, 7);
}

/// Two volumes of one name (an interrupted create that went through twice,
/// or an earlier driver's crash): CreateVolume keeps the oldest, deletes the
/// younger unattached one, and answers the same from then on.
pub async fn a_duplicate_left_by_a_crash_is_resolved(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let body = json!({"name": "cs-dup", "size_gb": 2, "type": "ssd", "tags": {}});
    let first = cloud(&s, reqwest::Method::POST, "/v1/volumes", Some(body.clone())).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = cloud(&s, reqwest::Method::POST, "/v1/volumes", Some(body)).await;
    assert_ne!(first["uuid"], second["uuid"]);
    assert_eq!(s.stored_volumes().len(), 2);
    let request = create_request("cs-dup", 2 * GIB as u64, mount_cap("ext4"));
    let adopted = s.create_with(request.clone()).await;
    assert_eq!(
        adopted.volume_id,
        first["uuid"].as_str().unwrap(),
        "the oldest is kept"
    );
    assert_eq!(
        s.stored_volumes(),
        vec![adopted.volume_id.clone()],
        "the duplicate is deleted"
    );
    for _ in 0..3 {
        assert_eq!(
            s.create_with(request.clone()).await.volume_id,
            adopted.volume_id
        );
    }
    s.delete(&adopted.volume_id).await;
    assert!(s.stored_volumes().is_empty());
}

/// A clone goes through a snapshot of its source, which is gone once the
/// clone exists; the clone inherits the source's type and zone.
pub async fn a_clone_leaves_no_snapshot_behind(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let mut source = create_request("cs-clone-source", 0, cap.clone());
    source.capacity_range = None;
    source.parameters = params(&[("multicsi.io/volume-type", "bulk")]);
    let source = s.create_with(source).await;
    let mut clone = create_request("cs-clone", (100 * GIB) as u64, cap.clone());
    clone.volume_content_source = volume_source(&source.volume_id);
    let made = s.create_with(clone.clone()).await;
    assert_eq!(made.content_source, volume_source(&source.volume_id));
    let stored = stored_volume(&s, &made.volume_id).await;
    assert_eq!(stored["type"], "bulk");
    let snapshots = cloud(&s, reqwest::Method::GET, "/v1/volume-snapshots", None).await;
    assert!(
        snapshots
            .as_array()
            .expect("list")
            .iter()
            .all(|snap| snap["status"] == "deleting"),
        "the clone's snapshot is left: {snapshots}"
    );
    assert!(s.list_snapshot_ids(0).await.is_empty());
    assert_eq!(s.create_with(clone).await.volume_id, made.volume_id);
    s.delete(&made.volume_id).await;
    s.delete(&source.volume_id).await;
    assert!(s.stored_volumes().is_empty());
}

/// A node serves without an API token: its identity comes from the
/// metadata service, attaching is the controller's job.
pub async fn a_node_needs_no_token(mut b: BackendUnderTest) {
    b.env.retain(|(key, _)| *key != "CLOUDSCALE_ACCESS_TOKEN");
    b.args.extend(["--mode", "node"]);
    b.plugin_services =
        vec![multicsi::csi::plugin_capability::service::Type::VolumeAccessibilityConstraints];
    b.controller_rpcs = vec![];
    let s = Server::start(&b).await;
    let info = ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    );
    assert_eq!(info.node_id, SERVER_UUID);
    let probe = ok("Probe", s.identity().probe(csi::ProbeRequest {}).await);
    assert_eq!(probe.ready, Some(true));
}

/// The provisioner's PVC name and namespace and PV name, and the
/// StorageClass's own `multicsi.io/tags`, are kept as tags on the cloud
/// volume (restores too), so an operator finds a PVC's volume with a tag
/// filter; reserved or malformed class tags are refused.
pub async fn volumes_carry_their_pvc_and_class_tags(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let metadata = [
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "shop"),
        ("csi.storage.k8s.io/pv/name", "pvc-6f1c"),
    ];
    let mut with_tags: Vec<(&str, &str)> = metadata.to_vec();
    with_tags.push(("multicsi.io/tags", "team=storage, env=test"));
    let mut request = create_request("cs-tagged", GIB as u64, cap.clone());
    request.parameters = params(&with_tags);
    let volume = s.create_with(request.clone()).await;
    let stored = stored_volume(&s, &volume.volume_id).await;
    let expected = json!({
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "shop",
        "csi.storage.k8s.io/pv/name": "pvc-6f1c",
        "team": "storage",
        "env": "test",
        "multicsi.io/access-type": "mount",
        "multicsi.io/fs-type": "ext4",
    });
    assert_eq!(stored["tags"], expected);
    assert_eq!(
        s.create_with(request).await.volume_id,
        volume.volume_id,
        "a repeat is the same volume"
    );
    let found = cloud(
        &s,
        reqwest::Method::GET,
        "/v1/volumes?tag:csi.storage.k8s.io/pvc/namespace=shop",
        None,
    )
    .await;
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");

    let snap = s.snapshot("cs-tagged-snap", &volume.volume_id).await;
    let mut restore = create_request("cs-tagged-restored", GIB as u64, cap.clone());
    restore.parameters = params(&metadata);
    restore.volume_content_source = snapshot_source(&snap.snapshot_id);
    let restored = s.create_with(restore).await;
    let stored = stored_volume(&s, &restored.volume_id).await;
    assert_eq!(stored["tags"]["csi.storage.k8s.io/pvc/name"], "data");
    assert_eq!(
        stored["tags"]["multicsi.io/source-snapshot"],
        snap.snapshot_id.as_str()
    );

    for bad in ["team", "multicsi.io/source-snapshot=x"] {
        let mut request = create_request("cs-bad-tags", GIB as u64, cap.clone());
        request.parameters = params(&[("multicsi.io/tags", bad)]);
        fails(
            "CreateVolume with bad class tags",
            c.create_volume(request).await,
            Code::InvalidArgument,
        );
    }
    s.delete(&restored.volume_id).await;
    s.delete_snapshot(&snap.snapshot_id).await;
    s.delete(&volume.volume_id).await;
}
