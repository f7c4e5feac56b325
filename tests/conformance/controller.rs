//! Controller service: request checks, error codes, idempotency, capacity,
//! paging, publish, snapshots, expansion and concurrency, all without the
//! node (no root needed).

use std::collections::{BTreeSet, HashMap};

use multicsi::csi::controller_service_capability::rpc::Type as Rpc;
use multicsi::csi::volume_capability::access_mode::Mode;
use multicsi::csi::{self as csi, VolumeCapability};
use tokio::task::JoinSet;
use tonic::Code;

use crate::api::*;
use crate::harness::{BackendUnderTest, Server};

const HOSTILE: &[&str] = &["../x", "/abs", "a\0b", "a/../../b"];

fn hostile_values() -> Vec<String> {
    let mut values: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    values.push("v".repeat(200));
    values
}

/// Every capability advertised is a known one, and the backend's expected
/// set is advertised.
pub async fn controller_capabilities_are_advertised(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    for rpc in &adv.controller {
        assert!(
            Rpc::try_from(*rpc).is_ok_and(|r| r != Rpc::Unknown),
            "unknown controller capability {rpc}"
        );
    }
    let expected: BTreeSet<i32> = b.controller_rpcs.iter().map(|r| *r as i32).collect();
    assert_eq!(
        adv.controller, expected,
        "advertised controller capabilities differ from the backend's"
    );
    if adv.controller(Rpc::PublishReadonly) || adv.controller(Rpc::ListVolumesPublishedNodes) {
        assert!(
            adv.controller(Rpc::PublishUnpublishVolume),
            "publish-related capabilities without PUBLISH_UNPUBLISH_VOLUME"
        );
    }
}

/// The spec's error scheme: an RPC the plugin does not implement answers
/// UNIMPLEMENTED. Checked for each capability-gated RPC that is not
/// advertised, and for the services that are not offered.
pub async fn unadvertised_rpcs_are_unimplemented(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let mut c = s.controller();
    if !adv.controller(Rpc::ModifyVolume) {
        let r = c
            .controller_modify_volume(csi::ControllerModifyVolumeRequest {
                volume_id: b.unknown_volume_id.into(),
                mutable_parameters: params(&[("a", "b")]),
                ..Default::default()
            })
            .await;
        assert_eq!(
            r.err().map(|e| e.code()),
            Some(Code::Unimplemented),
            "ControllerModifyVolume without MODIFY_VOLUME"
        );
    }
    if !adv.controller(Rpc::PublishUnpublishVolume) {
        let r = c
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: b.unknown_volume_id.into(),
                node_id: b.node_id.into(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.controller(Rpc::GetCapacity) {
        let r = c.get_capacity(csi::GetCapacityRequest::default()).await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.controller(Rpc::CreateDeleteSnapshot) {
        let r = c
            .create_snapshot(csi::CreateSnapshotRequest {
                name: "x".into(),
                source_volume_id: b.unknown_volume_id.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.controller(Rpc::ListSnapshots) {
        let r = c.list_snapshots(csi::ListSnapshotsRequest::default()).await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.controller(Rpc::ExpandVolume) {
        let r = c
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: b.unknown_volume_id.into(),
                capacity_range: range(b.sizes.small, 0),
                ..Default::default()
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.controller(Rpc::ListVolumes) {
        let r = c.list_volumes(csi::ListVolumesRequest::default()).await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.controller(Rpc::GetVolume) {
        let r = c
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: b.unknown_volume_id.into(),
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.plugin(csi::plugin_capability::service::Type::GroupControllerService) {
        let r = csi::group_controller_client::GroupControllerClient::new(
            crate::harness::connect(s.socket()).await.expect("connect"),
        )
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await;
        assert_eq!(
            r.err().map(|e| e.code()),
            Some(Code::Unimplemented),
            "GroupController without GROUP_CONTROLLER_SERVICE"
        );
    }
    let mut n = s.node();
    use csi::node_service_capability::rpc::Type as NodeRpc;
    if !adv.node(NodeRpc::StageUnstageVolume) {
        let r = n
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: b.unknown_volume_id.into(),
                staging_target_path: s.path_str("staging"),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.node(NodeRpc::ExpandVolume) {
        let r = n
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: b.unknown_volume_id.into(),
                volume_path: s.path_str("target"),
                ..Default::default()
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
    if !adv.node(NodeRpc::GetVolumeStats) && !adv.node(NodeRpc::VolumeCondition) {
        let r = n
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: b.unknown_volume_id.into(),
                volume_path: s.path_str("target"),
                ..Default::default()
            })
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
    }
}

/// Missing required fields: INVALID_ARGUMENT for every controller RPC.
pub async fn missing_required_fields_are_invalid(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let ia = Code::InvalidArgument;

    fails(
        "CreateVolume without name",
        c.create_volume(create_request("", b.sizes.small, cap.clone()))
            .await,
        ia,
    );
    let mut r = create_request("conf-missing-caps", b.sizes.small, cap.clone());
    r.volume_capabilities.clear();
    fails(
        "CreateVolume without volume_capabilities",
        c.create_volume(r).await,
        ia,
    );
    let mut no_mode = cap.clone();
    no_mode.access_mode = None;
    fails(
        "CreateVolume with a capability without access_mode",
        c.create_volume(create_request(
            "conf-missing-mode",
            b.sizes.small,
            no_mode.clone(),
        ))
        .await,
        ia,
    );
    let mut unknown_mode = cap.clone();
    unknown_mode.access_mode = Some(csi::volume_capability::AccessMode {
        mode: Mode::Unknown as i32,
    });
    fails(
        "CreateVolume with access mode UNKNOWN",
        c.create_volume(create_request(
            "conf-unknown-mode",
            b.sizes.small,
            unknown_mode,
        ))
        .await,
        ia,
    );
    let mut no_type = cap.clone();
    no_type.access_type = None;
    fails(
        "CreateVolume with a capability without access_type",
        c.create_volume(create_request("conf-missing-type", b.sizes.small, no_type))
            .await,
        ia,
    );
    fails(
        "DeleteVolume without volume_id",
        c.delete_volume(csi::DeleteVolumeRequest::default()).await,
        ia,
    );

    let volume = s
        .create("conf-missing-fields", b.sizes.small, cap.clone())
        .await;
    let id = volume.volume_id.clone();

    if adv.controller(Rpc::PublishUnpublishVolume) {
        let publish = csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: b.node_id.into(),
            volume_capability: Some(cap.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        };
        let mut r = publish.clone();
        r.volume_id.clear();
        fails(
            "ControllerPublishVolume without volume_id",
            c.controller_publish_volume(r).await,
            ia,
        );
        let mut r = publish.clone();
        r.node_id.clear();
        fails(
            "ControllerPublishVolume without node_id",
            c.controller_publish_volume(r).await,
            ia,
        );
        let mut r = publish.clone();
        r.volume_capability = None;
        fails(
            "ControllerPublishVolume without volume_capability",
            c.controller_publish_volume(r).await,
            ia,
        );
        let mut r = publish.clone();
        r.volume_capability = Some(no_mode.clone());
        fails(
            "ControllerPublishVolume with a capability without access_mode",
            c.controller_publish_volume(r).await,
            ia,
        );
        fails(
            "ControllerUnpublishVolume without volume_id",
            c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                node_id: b.node_id.into(),
                ..Default::default()
            })
            .await,
            ia,
        );
    }

    fails(
        "ValidateVolumeCapabilities without volume_id",
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await,
        ia,
    );
    fails(
        "ValidateVolumeCapabilities without volume_capabilities",
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await,
        ia,
    );

    if adv.controller(Rpc::ExpandVolume) {
        fails(
            "ControllerExpandVolume without volume_id",
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                capacity_range: range(2 * b.sizes.small, 0),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            "ControllerExpandVolume without capacity_range",
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await,
            ia,
        );
    }
    if adv.controller(Rpc::GetVolume) {
        fails(
            "ControllerGetVolume without volume_id",
            c.controller_get_volume(csi::ControllerGetVolumeRequest::default())
                .await,
            ia,
        );
    }
    if adv.controller(Rpc::CreateDeleteSnapshot) {
        fails(
            "CreateSnapshot without name",
            c.create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: id.clone(),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            "CreateSnapshot without source_volume_id",
            c.create_snapshot(csi::CreateSnapshotRequest {
                name: "conf-missing-source".into(),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            "DeleteSnapshot without snapshot_id",
            c.delete_snapshot(csi::DeleteSnapshotRequest::default())
                .await,
            ia,
        );
    }
    if adv.controller(Rpc::GetSnapshot) {
        fails(
            "GetSnapshot without snapshot_id",
            c.get_snapshot(csi::GetSnapshotRequest::default()).await,
            ia,
        );
    }
    // Nothing was made by the refused calls.
    assert_eq!(s.list_volume_ids(0).await, vec![id.clone()]);
    s.delete(&id).await;
}

/// Path-like, NUL-carrying and over-long names and IDs are refused with
/// INVALID_ARGUMENT, and leave nothing behind.
pub async fn hostile_identifiers_are_invalid(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let ia = Code::InvalidArgument;
    let volume = s.create("conf-hostile", b.sizes.small, cap.clone()).await;
    let id = volume.volume_id.clone();
    for bad in hostile_values() {
        let shown = format!("{:?}", if bad.len() > 20 { "<200 bytes>" } else { &bad });
        let w = |rpc: &str| format!("{rpc} with {shown}");
        fails(
            &w("CreateVolume name"),
            c.create_volume(create_request(&bad, b.sizes.small, cap.clone()))
                .await,
            ia,
        );
        fails(
            &w("DeleteVolume volume_id"),
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: bad.clone(),
                ..Default::default()
            })
            .await,
            ia,
        );
        fails(
            &w("ValidateVolumeCapabilities volume_id"),
            c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: bad.clone(),
                volume_capabilities: vec![cap.clone()],
                ..Default::default()
            })
            .await,
            ia,
        );
        if adv.controller(Rpc::PublishUnpublishVolume) {
            fails(
                &w("ControllerPublishVolume volume_id"),
                c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                    volume_id: bad.clone(),
                    node_id: b.node_id.into(),
                    volume_capability: Some(cap.clone()),
                    ..Default::default()
                })
                .await,
                ia,
            );
            fails(
                &w("ControllerPublishVolume node_id"),
                c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                    volume_id: id.clone(),
                    node_id: bad.clone(),
                    volume_capability: Some(cap.clone()),
                    ..Default::default()
                })
                .await,
                ia,
            );
            fails(
                &w("ControllerUnpublishVolume volume_id"),
                c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                    volume_id: bad.clone(),
                    node_id: b.node_id.into(),
                    ..Default::default()
                })
                .await,
                ia,
            );
        }
        if adv.controller(Rpc::ExpandVolume) {
            fails(
                &w("ControllerExpandVolume volume_id"),
                c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                    volume_id: bad.clone(),
                    capacity_range: range(2 * b.sizes.small, 0),
                    ..Default::default()
                })
                .await,
                ia,
            );
        }
        if adv.controller(Rpc::GetVolume) {
            fails(
                &w("ControllerGetVolume volume_id"),
                c.controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: bad.clone(),
                })
                .await,
                ia,
            );
        }
        if adv.controller(Rpc::CreateDeleteSnapshot) {
            fails(
                &w("CreateSnapshot name"),
                c.create_snapshot(csi::CreateSnapshotRequest {
                    name: bad.clone(),
                    source_volume_id: id.clone(),
                    ..Default::default()
                })
                .await,
                ia,
            );
            fails(
                &w("CreateSnapshot source_volume_id"),
                c.create_snapshot(csi::CreateSnapshotRequest {
                    name: "conf-hostile-snap".into(),
                    source_volume_id: bad.clone(),
                    ..Default::default()
                })
                .await,
                ia,
            );
            fails(
                &w("DeleteSnapshot snapshot_id"),
                c.delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: bad.clone(),
                    ..Default::default()
                })
                .await,
                ia,
            );
            let mut r = create_request("conf-hostile-restore", b.sizes.small, cap.clone());
            r.volume_content_source = snapshot_source(&bad);
            fails(
                &w("CreateVolume snapshot source"),
                c.create_volume(r).await,
                ia,
            );
        }
        if adv.controller(Rpc::GetSnapshot) {
            fails(
                &w("GetSnapshot snapshot_id"),
                c.get_snapshot(csi::GetSnapshotRequest {
                    snapshot_id: bad.clone(),
                    ..Default::default()
                })
                .await,
                ia,
            );
        }
        if adv.controller(Rpc::CloneVolume) {
            let mut r = create_request("conf-hostile-clone", b.sizes.small, cap.clone());
            r.volume_content_source = volume_source(&bad);
            fails(
                &w("CreateVolume volume source"),
                c.create_volume(r).await,
                ia,
            );
        }
    }
    assert_eq!(s.list_volume_ids(0).await, vec![id.clone()]);
    assert_eq!(s.stored_volumes(), vec![id.clone()]);
    s.delete(&id).await;
}

/// Unknown StorageClass parameters are refused, naming the key.
pub async fn unknown_parameters_are_invalid(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let mut r = create_request("conf-params", b.sizes.small, mount_cap("ext4"));
    r.parameters = params(&[("conformance.example/no-such-key", "1")]);
    let status = fails(
        "CreateVolume with an unknown parameter",
        c.create_volume(r).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("conformance.example/no-such-key"),
        "the message must name the unknown key: {}",
        status.message()
    );
    // Kubernetes' own keys are always accepted.
    let mut r = create_request("conf-params", b.sizes.small, mount_cap("ext4"));
    r.parameters = params(&[
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "default"),
        ("csi.storage.k8s.io/pv/name", "pvc-1234"),
    ]);
    let volume = s.create_with(r).await;
    s.delete(&volume.volume_id).await;
    assert!(s.list_volume_ids(0).await.is_empty());
}

/// Unknown IDs: NOT_FOUND wherever the spec lists "does not exist".
pub async fn unknown_ids_are_not_found(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let nf = Code::NotFound;
    let unknown = b.unknown_volume_id.to_string();
    fails(
        "ValidateVolumeCapabilities of an unknown volume",
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: unknown.clone(),
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await,
        nf,
    );
    if adv.controller(Rpc::PublishUnpublishVolume) {
        fails(
            "ControllerPublishVolume of an unknown volume",
            c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: unknown.clone(),
                node_id: b.node_id.into(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            nf,
        );
        let volume = s
            .create("conf-unknown-node", b.sizes.small, cap.clone())
            .await;
        fails(
            "ControllerPublishVolume to an unknown node",
            c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                node_id: "conformance-no-such-node".into(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            nf,
        );
        s.delete(&volume.volume_id).await;
    }
    if adv.controller(Rpc::ExpandVolume) {
        fails(
            "ControllerExpandVolume of an unknown volume",
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: unknown.clone(),
                capacity_range: range(2 * b.sizes.small, 0),
                ..Default::default()
            })
            .await,
            nf,
        );
    }
    if adv.controller(Rpc::GetVolume) {
        fails(
            "ControllerGetVolume of an unknown volume",
            c.controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: unknown.clone(),
            })
            .await,
            nf,
        );
    }
    if adv.controller(Rpc::CreateDeleteSnapshot) {
        let mut r = create_request("conf-from-unknown-snap", b.sizes.small, cap.clone());
        r.volume_content_source = snapshot_source(b.unknown_snapshot_id);
        fails(
            "CreateVolume from an unknown snapshot",
            c.create_volume(r).await,
            nf,
        );
        fails(
            "CreateSnapshot of an unknown volume",
            c.create_snapshot(csi::CreateSnapshotRequest {
                name: "conf-snap-of-unknown".into(),
                source_volume_id: unknown.clone(),
                ..Default::default()
            })
            .await,
            nf,
        );
    }
    if adv.controller(Rpc::GetSnapshot) {
        fails(
            "GetSnapshot of an unknown snapshot",
            c.get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: b.unknown_snapshot_id.into(),
                ..Default::default()
            })
            .await,
            nf,
        );
    }
    if adv.controller(Rpc::CloneVolume) {
        let mut r = create_request("conf-from-unknown-vol", b.sizes.small, cap.clone());
        r.volume_content_source = volume_source(&unknown);
        fails(
            "CreateVolume from an unknown volume",
            c.create_volume(r).await,
            nf,
        );
    }
    assert!(
        s.list_volume_ids(0).await.is_empty(),
        "a failed create left a volume"
    );
    assert!(
        s.stored_volumes().is_empty(),
        "a failed create left storage behind"
    );
}

/// Deleting what does not exist is OK, every time.
pub async fn deleting_unknown_ids_succeeds(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    for _ in 0..3 {
        s.delete(b.unknown_volume_id).await;
        if adv.controller(Rpc::CreateDeleteSnapshot) {
            s.delete_snapshot(b.unknown_snapshot_id).await;
        }
    }
}

/// CreateVolume with the same name and arguments returns the same volume;
/// DeleteVolume repeated is OK; the volume is then gone everywhere.
pub async fn create_and_delete_are_idempotent(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let cap = mount_cap("ext4");
    let mut request = create_request("conf-idem", b.sizes.small, cap.clone());
    request.parameters = params(&b.alt_parameters);
    let first = s.create_with(request.clone()).await;
    assert!(first.capacity_bytes as u64 >= b.sizes.small);
    for _ in 0..3 {
        let again = s.create_with(request.clone()).await;
        assert_eq!(
            again.volume_id, first.volume_id,
            "a repeated create made another volume"
        );
        assert_eq!(again.capacity_bytes, first.capacity_bytes);
        assert_eq!(again.volume_context, first.volume_context);
        assert_eq!(again.accessible_topology, first.accessible_topology);
    }
    // Without a capacity range, a repeat is compatible with any size.
    let mut unbounded = request.clone();
    unbounded.capacity_range = None;
    assert_eq!(s.create_with(unbounded).await.volume_id, first.volume_id);
    if adv.controller(Rpc::ListVolumes) {
        assert_eq!(s.list_volume_ids(0).await, vec![first.volume_id.clone()]);
    }
    assert_eq!(s.stored_volumes(), vec![first.volume_id.clone()]);
    if adv.controller(Rpc::GetVolume) {
        let got = ok(
            "ControllerGetVolume",
            s.controller()
                .controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: first.volume_id.clone(),
                })
                .await,
        );
        let volume = got.volume.expect("ControllerGetVolume without volume");
        assert_eq!(volume.volume_id, first.volume_id);
        assert_eq!(volume.capacity_bytes, first.capacity_bytes);
    }
    for _ in 0..3 {
        s.delete(&first.volume_id).await;
    }
    if adv.controller(Rpc::ListVolumes) {
        assert!(
            s.list_volume_ids(0).await.is_empty(),
            "deleted volume still listed"
        );
    }
    if adv.controller(Rpc::GetVolume) {
        fails(
            "ControllerGetVolume after delete",
            s.controller()
                .controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: first.volume_id.clone(),
                })
                .await,
            Code::NotFound,
        );
    }
    assert!(
        s.stored_volumes().is_empty(),
        "the deleted volume's storage is still there"
    );
    // The name is free again.
    let recreated = s.create_with(request).await;
    s.delete(&recreated.volume_id).await;
}

/// A repeat that does not fit the existing volume is ALREADY_EXISTS.
pub async fn incompatible_create_is_already_exists(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let request = create_request("conf-incompatible", b.sizes.small, cap.clone());
    let volume = s.create_with(request.clone()).await;
    let size = volume.capacity_bytes as u64;

    let mut bigger = request.clone();
    bigger.capacity_range = range(size + 4 * b.sizes.step, 0);
    fails(
        "CreateVolume same name, larger size",
        c.create_volume(bigger).await,
        Code::AlreadyExists,
    );
    let mut smaller = request.clone();
    smaller.capacity_range = range(b.sizes.step, size - b.sizes.step);
    fails(
        "CreateVolume same name, lower limit",
        c.create_volume(smaller).await,
        Code::AlreadyExists,
    );
    let mut other_params = request.clone();
    other_params.parameters = params(&b.alt_parameters);
    fails(
        "CreateVolume same name, other parameters",
        c.create_volume(other_params).await,
        Code::AlreadyExists,
    );
    if adv.controller(Rpc::CreateDeleteSnapshot) {
        let snap = s
            .snapshot("conf-incompatible-snap", &volume.volume_id)
            .await;
        let mut from_snap = request.clone();
        from_snap.volume_content_source = snapshot_source(&snap.snapshot_id);
        if b.records_sources {
            fails(
                "CreateVolume same name, with a snapshot source",
                c.create_volume(from_snap).await,
                Code::AlreadyExists,
            );
        }
        // And the other way round: restored first, then asked without source.
        let mut restore = create_request("conf-incompatible-restored", b.sizes.small, cap.clone());
        restore.volume_content_source = snapshot_source(&snap.snapshot_id);
        let restored = s.create_with(restore.clone()).await;
        for _ in 0..3 {
            assert_eq!(
                s.create_with(restore.clone()).await.volume_id,
                restored.volume_id
            );
        }
        let mut plain = restore.clone();
        plain.volume_content_source = None;
        if b.records_sources {
            fails(
                "CreateVolume same name, without the snapshot source",
                c.create_volume(plain).await,
                Code::AlreadyExists,
            );
        }
        if adv.controller(Rpc::CloneVolume) {
            let mut clone = restore.clone();
            clone.volume_content_source = volume_source(&volume.volume_id);
            fails(
                "CreateVolume same name, a volume source instead of a snapshot",
                c.create_volume(clone).await,
                Code::AlreadyExists,
            );
        }
        s.delete(&restored.volume_id).await;
        s.delete_snapshot(&snap.snapshot_id).await;
    }
    // The original is untouched.
    assert_eq!(s.create_with(request).await.capacity_bytes as u64, size);
    s.delete(&volume.volume_id).await;
}

/// Capacity ranges: required is rounded up, the limit honoured, an
/// impossible range refused with the spec's codes.
pub async fn capacity_ranges_are_honoured(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let step = b.sizes.step;
    let base = b.sizes.small;

    let v = s
        .create_with(csi::CreateVolumeRequest {
            capacity_range: range(base + 1, 0),
            ..create_request("conf-cap-round", 0, cap.clone())
        })
        .await;
    let got = v.capacity_bytes as u64;
    assert!(got > base, "required_bytes {} not met: {got}", base + 1);
    assert_eq!(
        got % step,
        0,
        "{got} is not a multiple of the backend's step {step}"
    );
    assert_eq!(
        got,
        base + step,
        "required_bytes rounded further than the next step"
    );
    s.delete(&v.volume_id).await;

    let v = s
        .create_with(csi::CreateVolumeRequest {
            capacity_range: range(0, base),
            ..create_request("conf-cap-limit", 0, cap.clone())
        })
        .await;
    assert!(
        v.capacity_bytes > 0 && v.capacity_bytes as u64 <= base,
        "limit_bytes {base} not honoured: {}",
        v.capacity_bytes
    );
    s.delete(&v.volume_id).await;

    let v = s
        .create_with(csi::CreateVolumeRequest {
            capacity_range: range(base, base),
            ..create_request("conf-cap-exact", 0, cap.clone())
        })
        .await;
    assert_eq!(
        v.capacity_bytes as u64, base,
        "required == limit must give exactly that size"
    );
    s.delete(&v.volume_id).await;

    let v = s
        .create_with(csi::CreateVolumeRequest {
            capacity_range: None,
            ..create_request("conf-cap-default", 0, cap.clone())
        })
        .await;
    assert!(
        v.capacity_bytes > 0,
        "a volume without capacity_range must get a size"
    );
    s.delete(&v.volume_id).await;

    fails(
        "CreateVolume with limit_bytes < required_bytes",
        c.create_volume(csi::CreateVolumeRequest {
            capacity_range: range(2 * base, base),
            ..create_request("conf-cap-inverted", 0, cap.clone())
        })
        .await,
        Code::InvalidArgument,
    );
    fails(
        "CreateVolume with negative required_bytes",
        c.create_volume(csi::CreateVolumeRequest {
            capacity_range: Some(csi::CapacityRange {
                required_bytes: -1,
                limit_bytes: 0,
            }),
            ..create_request("conf-cap-negative", 0, cap.clone())
        })
        .await,
        Code::InvalidArgument,
    );
    fails(
        "CreateVolume where no multiple of the step fits the range",
        c.create_volume(csi::CreateVolumeRequest {
            capacity_range: range(base + 1, base + step - 1),
            ..create_request("conf-cap-nofit", 0, cap.clone())
        })
        .await,
        Code::OutOfRange,
    );
    fails(
        "CreateVolume of an exabyte",
        c.create_volume(csi::CreateVolumeRequest {
            capacity_range: range(1 << 60, 0),
            ..create_request("conf-cap-huge", 0, cap.clone())
        })
        .await,
        Code::OutOfRange,
    );
    assert!(s.list_volume_ids(0).await.is_empty());
    assert!(s.stored_volumes().is_empty());
}

/// ValidateVolumeCapabilities confirms what the volume supports, echoing
/// it, and does not confirm what it does not.
pub async fn validate_capabilities_confirms_only_supported(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let volume = s
        .create("conf-validate", b.sizes.small, mount_cap("ext4"))
        .await;
    // What the volume is (ext4, the default filesystem); a block volume
    // or another filesystem it is not (see volumes_keep_what_they_were_made_as).
    let supported: Vec<VolumeCapability> = vec![
        mount_cap("ext4"),
        capability(mount_access("ext4"), Mode::SingleNodeReaderOnly),
        capability(mount_access(""), Mode::SingleNodeWriter),
    ];
    for cap in supported {
        for _ in 0..2 {
            let reply = ok(
                "ValidateVolumeCapabilities",
                c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                    volume_id: volume.volume_id.clone(),
                    volume_context: volume.volume_context.clone(),
                    volume_capabilities: vec![cap.clone()],
                    ..Default::default()
                })
                .await,
            );
            let confirmed = reply
                .confirmed
                .unwrap_or_else(|| panic!("{cap:?} not confirmed: {}", reply.message));
            assert_eq!(confirmed.volume_capabilities, vec![cap.clone()]);
            assert_eq!(confirmed.volume_context, volume.volume_context);
        }
    }
    for mode in [Mode::MultiNodeMultiWriter, Mode::MultiNodeSingleWriter] {
        let reply = ok(
            "ValidateVolumeCapabilities",
            c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: volume.volume_id.clone(),
                volume_capabilities: vec![
                    mount_cap("ext4"),
                    capability(mount_access("ext4"), mode),
                ],
                ..Default::default()
            })
            .await,
        );
        assert!(
            reply.confirmed.is_none(),
            "{mode:?} was confirmed: a single-node volume cannot serve it"
        );
        assert!(
            !reply.message.is_empty(),
            "an unconfirmed reply should say why"
        );
    }
    s.delete(&volume.volume_id).await;
}

/// ListVolumes: max_entries bounds a page, next_token continues, every
/// volume is seen once; a token the driver did not issue is ABORTED.
pub async fn list_volumes_pages(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.controller(Rpc::ListVolumes) {
        return;
    }
    let mut c = s.controller();
    let mut ids = BTreeSet::new();
    for i in 0..7 {
        ids.insert(
            s.create(&name("page", i), b.sizes.small, mount_cap("ext4"))
                .await
                .volume_id,
        );
    }
    for page in [0, 1, 2, 3, 7, 100] {
        let listed = s.list_volume_ids(page).await;
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "page size {page}: an entry was listed twice"
        );
        assert_eq!(unique, ids, "page size {page}: listed volumes differ");
    }
    let first = ok(
        "ListVolumes",
        c.list_volumes(csi::ListVolumesRequest {
            max_entries: 3,
            starting_token: String::new(),
        })
        .await,
    );
    assert_eq!(first.entries.len(), 3);
    assert!(
        !first.next_token.is_empty(),
        "more entries remain: next_token is required"
    );
    for entry in &first.entries {
        let v = entry.volume.as_ref().expect("volume");
        assert!(v.capacity_bytes > 0);
        if adv.controller(Rpc::ListVolumesPublishedNodes) {
            assert!(
                entry.status.is_some(),
                "LIST_VOLUMES_PUBLISHED_NODES requires status"
            );
        }
        if adv.controller(Rpc::VolumeCondition) {
            let condition = entry
                .status
                .as_ref()
                .and_then(|s| s.volume_condition.as_ref());
            assert!(
                condition.is_some_and(|c| !c.abnormal),
                "VOLUME_CONDITION requires a condition"
            );
        }
    }
    for bad in ["not-a-token", "after:zz", "\u{0}", &"x".repeat(300)] {
        fails(
            "ListVolumes with a token the driver did not issue",
            c.list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: bad.to_string(),
            })
            .await,
            Code::Aborted,
        );
    }
    fails(
        "ListVolumes with negative max_entries",
        c.list_volumes(csi::ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    for id in &ids {
        s.delete(id).await;
    }
}

/// Volumes added and removed between pages: no entry is seen twice, and
/// every volume that existed throughout is seen.
pub async fn list_volumes_paging_survives_changes(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    if !s.advertised().await.controller(Rpc::ListVolumes) {
        return;
    }
    let mut c = s.controller();
    let mut all = Vec::new();
    for i in 0..9 {
        all.push(
            s.create(&name("churn", i), b.sizes.small, mount_cap("ext4"))
                .await
                .volume_id,
        );
    }
    let mut seen: Vec<String> = Vec::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut token = String::new();
    let mut round = 0;
    loop {
        let page = ok(
            "ListVolumes",
            c.list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await,
        );
        assert!(page.entries.len() <= 2);
        let ids: Vec<String> = page
            .entries
            .into_iter()
            .map(|e| e.volume.expect("volume").volume_id)
            .collect();
        seen.extend(ids.iter().cloned());
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
        // Between pages: add volumes, remove the last one just returned
        // (where an index-based token would skip) and one not yet seen.
        round += 1;
        for j in 0..2 {
            s.create(
                &name("churn-new", round * 10 + j),
                b.sizes.small,
                mount_cap("ext4"),
            )
            .await;
        }
        if let Some(last) = ids.last()
            && removed.insert(last.clone())
        {
            s.delete(last).await;
        }
        if let Some(unseen) = all
            .iter()
            .find(|id| !seen.contains(id) && !removed.contains(*id))
            .cloned()
            && round == 2
        {
            removed.insert(unseen.clone());
            s.delete(&unseen).await;
        }
        assert!(round < 100, "paging does not end");
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an entry was listed twice: {seen:?}"
    );
    for id in &all {
        if !removed.contains(id) {
            assert!(
                seen.contains(id),
                "{id} existed throughout but was not listed"
            );
        }
    }
}

/// ControllerPublish/Unpublish: repeats are OK with the same context, a
/// different readonly flag is ALREADY_EXISTS, a published volume cannot be
/// deleted, status reports the node.
pub async fn controller_publish_is_idempotent(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.controller(Rpc::PublishUnpublishVolume) {
        return;
    }
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let volume = s.create("conf-publish", b.sizes.small, cap.clone()).await;
    let id = volume.volume_id.clone();
    let context = s.controller_publish(&id, &cap, false).await;
    for _ in 0..3 {
        assert_eq!(s.controller_publish(&id, &cap, false).await, context);
    }
    if adv.controller(Rpc::PublishReadonly) {
        fails(
            "ControllerPublishVolume again with readonly=true",
            c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: b.node_id.into(),
                volume_capability: Some(cap.clone()),
                readonly: true,
                ..Default::default()
            })
            .await,
            Code::AlreadyExists,
        );
    }
    let published_nodes = |c: &mut multicsi::csi::controller_client::ControllerClient<_>| {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let reply = ok(
                "ControllerGetVolume",
                c.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id })
                    .await,
            );
            reply
                .status
                .expect("ControllerGetVolume status")
                .published_node_ids
        }
    };
    if adv.controller(Rpc::GetVolume) && adv.controller(Rpc::ListVolumesPublishedNodes) {
        assert_eq!(published_nodes(&mut c).await, vec![b.node_id.to_string()]);
    }
    if adv.controller(Rpc::ListVolumesPublishedNodes) {
        let list = ok(
            "ListVolumes",
            c.list_volumes(csi::ListVolumesRequest::default()).await,
        );
        let entry = list
            .entries
            .iter()
            .find(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == id))
            .expect("published volume listed");
        assert_eq!(
            entry.status.as_ref().expect("status").published_node_ids,
            vec![b.node_id.to_string()]
        );
    }
    fails(
        "DeleteVolume of a published volume",
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    for _ in 0..3 {
        s.controller_unpublish(&id).await;
    }
    if adv.controller(Rpc::GetVolume) && adv.controller(Rpc::ListVolumesPublishedNodes) {
        assert!(published_nodes(&mut c).await.is_empty());
    }
    // Read-only publish works once the read-write one is gone.
    if adv.controller(Rpc::PublishReadonly) {
        for _ in 0..3 {
            ok(
                "ControllerPublishVolume readonly",
                c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                    volume_id: id.clone(),
                    node_id: b.node_id.into(),
                    volume_capability: Some(capability(
                        mount_access("ext4"),
                        Mode::SingleNodeReaderOnly,
                    )),
                    readonly: true,
                    ..Default::default()
                })
                .await,
            );
        }
        s.controller_unpublish(&id).await;
    }
    // Unpublish from every node (node_id empty) is OK too.
    ok(
        "ControllerUnpublishVolume without node_id",
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await,
    );
    s.delete(&id).await;
}

/// Snapshots: idempotent create/delete, ALREADY_EXISTS for another source,
/// listing by id and by source volume, GetSnapshot.
pub async fn snapshots_are_idempotent_and_listed(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.controller(Rpc::CreateDeleteSnapshot) {
        return;
    }
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let a = s.create("conf-snap-a", b.sizes.small, cap.clone()).await;
    let other = s.create("conf-snap-b", b.sizes.small, cap.clone()).await;
    let snap = s.snapshot("conf-snap", &a.volume_id).await;
    assert!(!snap.snapshot_id.is_empty());
    assert_eq!(snap.source_volume_id, a.volume_id);
    assert!(snap.creation_time.is_some(), "creation_time is required");
    assert!(snap.size_bytes >= 0);
    for _ in 0..3 {
        let again = s.snapshot("conf-snap", &a.volume_id).await;
        assert_eq!(
            again.snapshot_id, snap.snapshot_id,
            "a repeated snapshot made another one"
        );
        assert_eq!(again.creation_time, snap.creation_time);
        assert_eq!(again.source_volume_id, a.volume_id);
    }
    fails(
        "CreateSnapshot same name, other source volume",
        c.create_snapshot(csi::CreateSnapshotRequest {
            name: "conf-snap".into(),
            source_volume_id: other.volume_id.clone(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
    );
    let snap2 = s.snapshot("conf-snap-2", &other.volume_id).await;
    if adv.controller(Rpc::ListSnapshots) {
        let by_id = ok(
            "ListSnapshots by snapshot_id",
            c.list_snapshots(csi::ListSnapshotsRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await,
        );
        let ids: Vec<String> = by_id
            .entries
            .iter()
            .map(|e| e.snapshot.as_ref().expect("snapshot").snapshot_id.clone())
            .collect();
        assert_eq!(ids, vec![snap.snapshot_id.clone()]);
        let by_unknown = ok(
            "ListSnapshots by an unknown snapshot_id",
            c.list_snapshots(csi::ListSnapshotsRequest {
                snapshot_id: b.unknown_snapshot_id.into(),
                ..Default::default()
            })
            .await,
        );
        assert!(
            by_unknown.entries.is_empty(),
            "an unknown snapshot_id lists nothing"
        );
        let by_source = ok(
            "ListSnapshots by source_volume_id",
            c.list_snapshots(csi::ListSnapshotsRequest {
                source_volume_id: other.volume_id.clone(),
                ..Default::default()
            })
            .await,
        );
        let ids: Vec<String> = by_source
            .entries
            .iter()
            .map(|e| e.snapshot.as_ref().expect("snapshot").snapshot_id.clone())
            .collect();
        assert_eq!(ids, vec![snap2.snapshot_id.clone()]);
        let all: BTreeSet<String> = s.list_snapshot_ids(0).await.into_iter().collect();
        assert_eq!(
            all,
            BTreeSet::from([snap.snapshot_id.clone(), snap2.snapshot_id.clone()])
        );
    }
    if adv.controller(Rpc::GetSnapshot) {
        let got = ok(
            "GetSnapshot",
            c.get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await,
        )
        .snapshot
        .expect("GetSnapshot without snapshot");
        assert_eq!(got.snapshot_id, snap.snapshot_id);
        assert_eq!(got.source_volume_id, a.volume_id);
    }
    for _ in 0..3 {
        s.delete_snapshot(&snap.snapshot_id).await;
    }
    if adv.controller(Rpc::ListSnapshots) {
        assert_eq!(
            s.list_snapshot_ids(0).await,
            vec![snap2.snapshot_id.clone()]
        );
    }
    if adv.controller(Rpc::GetSnapshot) {
        fails(
            "GetSnapshot after delete",
            c.get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await,
            Code::NotFound,
        );
    }
    s.delete_snapshot(&snap2.snapshot_id).await;
    s.delete(&a.volume_id).await;
    s.delete(&other.volume_id).await;
}

/// ListSnapshots paging, with snapshots added between pages.
pub async fn list_snapshots_pages(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.controller(Rpc::ListSnapshots) || !adv.controller(Rpc::CreateDeleteSnapshot) {
        return;
    }
    let mut c = s.controller();
    let volume = s
        .create("conf-snappage", b.sizes.small, mount_cap("ext4"))
        .await;
    let mut ids = BTreeSet::new();
    for i in 0..5 {
        ids.insert(
            s.snapshot(&name("snappage", i), &volume.volume_id)
                .await
                .snapshot_id,
        );
    }
    for page in [0, 1, 2, 5, 9] {
        let listed = s.list_snapshot_ids(page).await;
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(unique.len(), listed.len(), "page size {page}: listed twice");
        assert_eq!(unique, ids, "page size {page}");
    }
    // Added between pages.
    let first = ok(
        "ListSnapshots",
        c.list_snapshots(csi::ListSnapshotsRequest {
            max_entries: 2,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(first.entries.len(), 2);
    assert!(!first.next_token.is_empty());
    let mut seen: Vec<String> = first
        .entries
        .into_iter()
        .map(|e| e.snapshot.expect("snapshot").snapshot_id)
        .collect();
    let mut token = first.next_token;
    let mut extra = 0;
    while !token.is_empty() {
        s.snapshot(&name("snappage-new", extra), &volume.volume_id)
            .await;
        extra += 1;
        let page = ok(
            "ListSnapshots",
            c.list_snapshots(csi::ListSnapshotsRequest {
                max_entries: 2,
                starting_token: token.clone(),
                ..Default::default()
            })
            .await,
        );
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.snapshot.expect("snapshot").snapshot_id),
        );
        token = page.next_token;
        assert!(extra < 50, "paging does not end");
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a snapshot was listed twice");
    for id in &ids {
        assert!(
            seen.contains(id),
            "{id} existed throughout but was not listed"
        );
    }
    fails(
        "ListSnapshots with a token the driver did not issue",
        c.list_snapshots(csi::ListSnapshotsRequest {
            max_entries: 2,
            starting_token: "not-a-token".into(),
            ..Default::default()
        })
        .await,
        Code::Aborted,
    );
    for id in s.list_snapshot_ids(0).await {
        s.delete_snapshot(&id).await;
    }
    s.delete(&volume.volume_id).await;
}

/// Volumes from a snapshot or a volume: at least the source's size, the
/// source recorded, a limit below the source's size is OUT_OF_RANGE.
pub async fn restore_and_clone_respect_source_size(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let source = s.create("conf-src", 2 * b.sizes.small, cap.clone()).await;
    let size = source.capacity_bytes as u64;
    let mut sources = Vec::new();
    if adv.controller(Rpc::CreateDeleteSnapshot) {
        let snap = s.snapshot("conf-src-snap", &source.volume_id).await;
        sources.push(("snapshot", snapshot_source(&snap.snapshot_id)));
    }
    if adv.controller(Rpc::CloneVolume) {
        sources.push(("volume", volume_source(&source.volume_id)));
    }
    for (kind, content) in sources {
        let mut r = create_request(&format!("conf-from-{kind}"), 0, cap.clone());
        r.capacity_range = None;
        r.volume_content_source = content.clone();
        let made = s.create_with(r.clone()).await;
        assert!(
            made.capacity_bytes as u64 >= size,
            "from a {kind}: smaller than its source"
        );
        assert_eq!(
            made.content_source, content,
            "from a {kind}: content_source not reported"
        );
        for _ in 0..3 {
            assert_eq!(s.create_with(r.clone()).await.volume_id, made.volume_id);
        }
        let mut bigger = create_request(&format!("conf-from-{kind}-big"), 2 * size, cap.clone());
        bigger.volume_content_source = content.clone();
        let big = s.create_with(bigger).await;
        assert!(big.capacity_bytes as u64 >= 2 * size);
        let mut small = create_request(&format!("conf-from-{kind}-small"), 0, cap.clone());
        small.capacity_range = range(0, size - b.sizes.step);
        small.volume_content_source = content;
        fails(
            &format!("CreateVolume from a {kind} with limit below its size"),
            c.create_volume(small).await,
            Code::OutOfRange,
        );
        s.delete(&made.volume_id).await;
        s.delete(&big.volume_id).await;
    }
    if adv.controller(Rpc::ListSnapshots) {
        for id in s.list_snapshot_ids(0).await {
            s.delete_snapshot(&id).await;
        }
    }
    s.delete(&source.volume_id).await;
    assert!(s.stored_volumes().is_empty());
}

/// ControllerExpandVolume: grows, repeats are OK, a smaller size is OK
/// without shrinking.
pub async fn controller_expand_is_idempotent(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.controller(Rpc::ExpandVolume) {
        return;
    }
    let mut c = s.controller();
    let cap = mount_cap("ext4");
    let volume = s.create("conf-expand", b.sizes.small, cap.clone()).await;
    let target = 2 * volume.capacity_bytes as u64;
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let reply = ok(
            "ControllerExpandVolume",
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: volume.volume_id.clone(),
                capacity_range: range(target, 0),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
        );
        assert!(reply.capacity_bytes as u64 >= target);
        sizes.push(reply.capacity_bytes);
    }
    assert!(
        sizes.windows(2).all(|w| w[0] == w[1]),
        "repeats gave other sizes: {sizes:?}"
    );
    let smaller = ok(
        "ControllerExpandVolume to a smaller size",
        c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: range(b.sizes.step, 0),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        smaller.capacity_bytes, sizes[0],
        "a volume must never shrink"
    );
    fails(
        "ControllerExpandVolume with limit < required",
        c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: range(4 * target, 2 * target),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    fails(
        "ControllerExpandVolume to an exabyte",
        c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: range(1 << 60, 0),
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
    );
    if adv.controller(Rpc::GetVolume) {
        let got = ok(
            "ControllerGetVolume",
            c.controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: volume.volume_id.clone(),
            })
            .await,
        );
        assert_eq!(got.volume.expect("volume").capacity_bytes, sizes[0]);
    }
    s.delete(&volume.volume_id).await;
}

/// GetCapacity reports free space for supported capabilities.
pub async fn get_capacity_reports_space(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    if !s.advertised().await.controller(Rpc::GetCapacity) {
        return;
    }
    let mut c = s.controller();
    let topology = ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    )
    .accessible_topology;
    for request in [
        csi::GetCapacityRequest::default(),
        csi::GetCapacityRequest {
            volume_capabilities: vec![mount_cap("ext4")],
            ..Default::default()
        },
        csi::GetCapacityRequest {
            volume_capabilities: vec![block_cap()],
            accessible_topology: topology.clone(),
            ..Default::default()
        },
    ] {
        let reply = ok("GetCapacity", c.get_capacity(request).await);
        assert!(
            reply.available_capacity > 0,
            "no capacity reported: {reply:?}"
        );
        if let (Some(min), Some(max)) = (reply.minimum_volume_size, reply.maximum_volume_size) {
            assert!(min <= max, "minimum_volume_size above maximum: {reply:?}");
        }
    }
}

/// CreateVolume honours requisite topology: a volume where the node is,
/// RESOURCE_EXHAUSTED where nothing can be provisioned.
pub async fn create_volume_honours_topology(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    if !adv.plugin(csi::plugin_capability::service::Type::VolumeAccessibilityConstraints) {
        return;
    }
    let mut c = s.controller();
    let node = ok(
        "NodeGetInfo",
        s.node().node_get_info(csi::NodeGetInfoRequest {}).await,
    )
    .accessible_topology
    .expect("VOLUME_ACCESSIBILITY_CONSTRAINTS requires the node's topology");
    let mut r = create_request("conf-topo", b.sizes.small, mount_cap("ext4"));
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![node.clone()],
        preferred: vec![node.clone()],
    });
    let volume = s.create_with(r.clone()).await;
    assert!(
        !volume.accessible_topology.is_empty(),
        "the volume's topology is not reported"
    );
    for t in &volume.accessible_topology {
        for (k, v) in &t.segments {
            if let Some(mine) = node.segments.get(k) {
                assert_eq!(
                    mine, v,
                    "the volume is not accessible from the requested node"
                );
            }
        }
    }
    assert_eq!(s.create_with(r).await.volume_id, volume.volume_id);
    let mut elsewhere = create_request("conf-topo-elsewhere", b.sizes.small, mount_cap("ext4"));
    elsewhere.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: HashMap::from([(
                b.topology_key.to_string(),
                "conformance-nowhere".to_string(),
            )]),
        }],
        preferred: vec![],
    });
    fails(
        "CreateVolume with an unreachable requisite topology",
        c.create_volume(elsewhere).await,
        Code::ResourceExhausted,
    );
    s.delete(&volume.volume_id).await;
}

fn ok_or_aborted<T>(what: &str, r: Reply<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v.into_inner()),
        Err(s) if s.code() == Code::Aborted => None,
        Err(s) => panic!(
            "{what}: expected OK or ABORTED, got {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

/// Concurrent calls on one volume: each is OK or ABORTED, and the result is
/// one intact volume.
pub async fn concurrent_calls_on_one_volume(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let cap = mount_cap("ext4");
    let request = create_request("conf-race", b.sizes.small, cap.clone());
    let mut set = JoinSet::new();
    for _ in 0..12 {
        let mut c = s.controller();
        let r = request.clone();
        set.spawn(async move { ok_or_aborted("CreateVolume", c.create_volume(r).await) });
    }
    let mut ids = BTreeSet::new();
    let mut sizes = BTreeSet::new();
    while let Some(done) = set.join_next().await {
        if let Some(reply) = done.expect("task") {
            let v = reply.volume.expect("volume");
            ids.insert(v.volume_id);
            sizes.insert(v.capacity_bytes);
        }
    }
    // Whatever was aborted, a retry now succeeds with the same volume.
    let volume = s.create_with(request.clone()).await;
    ids.insert(volume.volume_id.clone());
    sizes.insert(volume.capacity_bytes);
    assert_eq!(
        ids.len(),
        1,
        "concurrent creates made several volumes: {ids:?}"
    );
    assert_eq!(
        sizes.len(),
        1,
        "concurrent creates reported several sizes: {sizes:?}"
    );
    if adv.controller(Rpc::ListVolumes) {
        assert_eq!(s.list_volume_ids(0).await, vec![volume.volume_id.clone()]);
    }
    assert_eq!(s.stored_volumes(), vec![volume.volume_id.clone()]);

    if adv.controller(Rpc::PublishUnpublishVolume) {
        let mut set = JoinSet::new();
        for i in 0..12 {
            let mut c = s.controller();
            let id = volume.volume_id.clone();
            let node = b.node_id.to_string();
            let cap = cap.clone();
            set.spawn(async move {
                if i % 2 == 0 {
                    ok_or_aborted(
                        "ControllerPublishVolume",
                        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                            volume_id: id,
                            node_id: node,
                            volume_capability: Some(cap),
                            ..Default::default()
                        })
                        .await,
                    )
                    .map(|_| ())
                } else {
                    ok_or_aborted(
                        "ControllerUnpublishVolume",
                        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                            volume_id: id,
                            node_id: node,
                            ..Default::default()
                        })
                        .await,
                    )
                    .map(|_| ())
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("task");
        }
        s.controller_unpublish(&volume.volume_id).await;
    }
    if adv.controller(Rpc::ExpandVolume) {
        let target = 2 * volume.capacity_bytes as u64;
        let mut set = JoinSet::new();
        for _ in 0..8 {
            let mut c = s.controller();
            let id = volume.volume_id.clone();
            set.spawn(async move {
                ok_or_aborted(
                    "ControllerExpandVolume",
                    c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                        volume_id: id,
                        capacity_range: range(target, 0),
                        ..Default::default()
                    })
                    .await,
                )
                .map(|r| r.capacity_bytes)
            });
        }
        while let Some(done) = set.join_next().await {
            if let Some(size) = done.expect("task") {
                assert!(size as u64 >= target);
            }
        }
    }
    let mut set = JoinSet::new();
    for _ in 0..12 {
        let mut c = s.controller();
        let id = volume.volume_id.clone();
        set.spawn(async move {
            ok_or_aborted(
                "DeleteVolume",
                c.delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id,
                    ..Default::default()
                })
                .await,
            )
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
    s.delete(&volume.volume_id).await;
    if adv.controller(Rpc::ListVolumes) {
        assert!(s.list_volume_ids(0).await.is_empty());
    }
    assert!(s.stored_volumes().is_empty());
}

/// Calls on different volumes in parallel all succeed.
pub async fn parallel_calls_on_different_volumes(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    const N: usize = 32;
    let mut set = JoinSet::new();
    for i in 0..N {
        let mut c = s.controller();
        let r = create_request(&name("parallel", i), b.sizes.small, mount_cap("ext4"));
        set.spawn(async move { ok("CreateVolume in parallel", c.create_volume(r).await) });
    }
    let mut ids = BTreeSet::new();
    while let Some(done) = set.join_next().await {
        ids.insert(done.expect("task").volume.expect("volume").volume_id);
    }
    assert_eq!(
        ids.len(),
        N,
        "parallel creates of distinct names gave {} volumes",
        ids.len()
    );
    if adv.controller(Rpc::ListVolumes) {
        let listed: BTreeSet<String> = s.list_volume_ids(5).await.into_iter().collect();
        assert_eq!(listed, ids);
    }
    let stored: BTreeSet<String> = s.stored_volumes().into_iter().collect();
    assert_eq!(stored, ids);
    if adv.controller(Rpc::CreateDeleteSnapshot) {
        let mut set = JoinSet::new();
        for (i, id) in ids.iter().take(8).enumerate() {
            let mut c = s.controller();
            let id = id.clone();
            set.spawn(async move {
                ok(
                    "CreateSnapshot in parallel",
                    c.create_snapshot(csi::CreateSnapshotRequest {
                        name: name("parallel-snap", i),
                        source_volume_id: id,
                        ..Default::default()
                    })
                    .await,
                )
            });
        }
        let mut snaps = Vec::new();
        while let Some(done) = set.join_next().await {
            snaps.push(done.expect("task").snapshot.expect("snapshot").snapshot_id);
        }
        for id in snaps {
            s.delete_snapshot(&id).await;
        }
    }
    let mut set = JoinSet::new();
    for id in ids {
        let mut c = s.controller();
        set.spawn(async move {
            ok(
                "DeleteVolume in parallel",
                c.delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id,
                    ..Default::default()
                })
                .await,
            )
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
    if adv.controller(Rpc::ListVolumes) {
        assert!(s.list_volume_ids(0).await.is_empty());
    }
    assert!(s.stored_volumes().is_empty());
}

/// A volume keeps what it was made as: the volume context records it, a
/// repeated CreateVolume that asks for another access type or filesystem is
/// ALREADY_EXISTS, and ValidateVolumeCapabilities confirms only what the
/// volume is. (For backends that record the volume context.)
pub async fn volumes_keep_what_they_were_made_as(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let fs_request = create_request("conf-made-fs", b.sizes.small, mount_cap("ext4"));
    let fs_volume = s.create_with(fs_request.clone()).await;
    let block_request = create_request("conf-made-block", b.sizes.small, block_cap());
    let block_volume = s.create_with(block_request.clone()).await;
    assert_eq!(
        fs_volume
            .volume_context
            .get("multicsi.io/access-type")
            .map(String::as_str),
        Some("mount")
    );
    assert_eq!(
        fs_volume
            .volume_context
            .get("multicsi.io/fs-type")
            .map(String::as_str),
        Some("ext4")
    );
    assert_eq!(
        block_volume
            .volume_context
            .get("multicsi.io/access-type")
            .map(String::as_str),
        Some("block")
    );
    let repeats = [
        (
            "the filesystem volume asked as block",
            &fs_request,
            block_cap(),
        ),
        (
            "the filesystem volume asked as xfs",
            &fs_request,
            mount_cap("xfs"),
        ),
        (
            "the block volume asked as ext4",
            &block_request,
            mount_cap("ext4"),
        ),
    ];
    for (what, request, cap) in repeats {
        let mut again = request.clone();
        again.volume_capabilities = vec![cap];
        fails(what, c.create_volume(again).await, Code::AlreadyExists);
    }
    // Both at once cannot be made.
    let mut both = create_request("conf-made-both", b.sizes.small, block_cap());
    both.volume_capabilities.push(mount_cap("ext4"));
    fails(
        "block and mount at once",
        c.create_volume(both).await,
        Code::InvalidArgument,
    );
    // The same repeats are idempotent.
    assert_eq!(
        s.create_with(fs_request).await.volume_id,
        fs_volume.volume_id
    );
    assert_eq!(
        s.create_with(block_request).await.volume_id,
        block_volume.volume_id
    );
    let cases = [
        (&fs_volume, mount_cap("ext4"), true),
        (&fs_volume, block_cap(), false),
        (&fs_volume, mount_cap("xfs"), false),
        (&block_volume, block_cap(), true),
        (&block_volume, mount_cap("ext4"), false),
    ];
    for (volume, cap, confirmed) in cases {
        let reply = ok(
            "ValidateVolumeCapabilities",
            c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: volume.volume_id.clone(),
                volume_capabilities: vec![cap.clone()],
                ..Default::default()
            })
            .await,
        );
        assert_eq!(
            reply.confirmed.is_some(),
            confirmed,
            "{cap:?} for {}: {}",
            volume.volume_id,
            reply.message
        );
        if !confirmed {
            assert!(!reply.message.is_empty(), "an unconfirmed reply says why");
        }
    }
    s.delete(&fs_volume.volume_id).await;
    s.delete(&block_volume.volume_id).await;
}

/// StorageClass mkfs parameters that the volume's filesystem can never
/// take are INVALID_ARGUMENT at CreateVolume, naming the parameter, and
/// nothing is created.
pub async fn mkfs_parameters_are_checked_at_create(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut c = s.controller();
    let cases = [
        ("ext4", "multicsi.io/mkfs-block-size", "3000"),
        ("ext4", "multicsi.io/mkfs-inode-size", "100"),
        ("xfs", "multicsi.io/mkfs-reserved-percent", "5"),
        ("xfs", "multicsi.io/mkfs-inode-size", "256"),
        ("btrfs", "multicsi.io/mkfs-block-size", "4096"),
        ("ext4", "multicsi.io/mkfs-reserved-percent", "80"),
    ];
    for (i, (fs, key, value)) in cases.into_iter().enumerate() {
        let mut request = create_request(&name("conf-mkfs", i), b.fs_bytes(fs), mount_cap(fs));
        request.parameters = params(&[(key, value)]);
        let status = fails(
            &format!("CreateVolume {fs} with {key}={value}"),
            c.create_volume(request).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().contains(key),
            "the refusal does not name {key}: {}",
            status.message()
        );
    }
    assert!(
        s.stored_volumes().is_empty(),
        "a refused create left storage behind"
    );
    let mut fine = create_request("conf-mkfs-ok", b.fs_bytes("ext4"), mount_cap("ext4"));
    fine.parameters = params(&[
        ("multicsi.io/mkfs-block-size", "4096"),
        ("multicsi.io/mkfs-reserved-percent", "1"),
    ]);
    let volume = s.create_with(fine).await;
    s.delete(&volume.volume_id).await;
}

/// ControllerPublishVolume beyond the node's volume limit is
/// RESOURCE_EXHAUSTED; a repeat of a publish that is there is not.
pub async fn publish_beyond_the_node_limit_is_resource_exhausted(b: BackendUnderTest) {
    let mut b = b;
    b.args.extend(["--max-volumes-per-node", "2"]);
    let s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            s.create(&name("conf-limit", i), b.sizes.small, cap.clone())
                .await
                .volume_id,
        );
    }
    s.controller_publish(&ids[0], &cap, false).await;
    s.controller_publish(&ids[1], &cap, false).await;
    let status = fails(
        "ControllerPublishVolume of a third volume",
        s.controller()
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: ids[2].clone(),
                node_id: b.node_id.to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("limit"), "{}", status.message());
    s.controller_publish(&ids[0], &cap, false).await;
    s.controller_unpublish(&ids[1]).await;
    s.controller_publish(&ids[2], &cap, false).await;
    for id in [&ids[0], &ids[2]] {
        s.controller_unpublish(id).await;
    }
    for id in &ids {
        s.delete(id).await;
    }
}
