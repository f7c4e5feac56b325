//! Volume group snapshots (the GroupController service): advertised only
//! where the backend takes them; one point in time across the members;
//! idempotent by name; members are normal snapshots that restore like any
//! other; a kill -9 at any step leaves no frozen filesystem, no half group
//! and no copy behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use multicsi::csi::plugin_capability::service::Type as PluginService;
use multicsi::csi::{self as csi};
use tonic::Code;

use crate::api::*;
use crate::harness::{BackendUnderTest, Server, require_node};

const THIN: (&str, &str) = ("multicsi.io/provisioning", "thin");

fn group_request(name: &str, sources: &[&str]) -> csi::CreateVolumeGroupSnapshotRequest {
    csi::CreateVolumeGroupSnapshotRequest {
        name: name.to_string(),
        source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

impl Server {
    async fn group_snapshot(&self, name: &str, sources: &[&str]) -> csi::VolumeGroupSnapshot {
        let what = format!("CreateVolumeGroupSnapshot {name}");
        ok(
            &what,
            self.group_controller()
                .create_volume_group_snapshot(group_request(name, sources))
                .await,
        )
        .group_snapshot
        .unwrap_or_else(|| panic!("{what}: the response has no group snapshot"))
    }

    async fn delete_group_snapshot(&self, id: &str) {
        ok(
            &format!("DeleteVolumeGroupSnapshot {id}"),
            self.group_controller()
                .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
                    group_snapshot_id: id.to_string(),
                    ..Default::default()
                })
                .await,
        );
    }

    async fn listed_snapshots(&self) -> Vec<csi::Snapshot> {
        ok(
            "ListSnapshots",
            self.controller()
                .list_snapshots(csi::ListSnapshotsRequest::default())
                .await,
        )
        .entries
        .into_iter()
        .filter_map(|e| e.snapshot)
        .collect()
    }

    /// Snapshot images in the hostpath state.
    fn snapshot_images(&self) -> BTreeSet<String> {
        files_with(&self.dir().join("state/snapshots"), "img")
    }

    /// Freezes recorded in the hostpath state (a frozen filesystem).
    fn freeze_records(&self) -> BTreeSet<String> {
        files_with(&self.dir().join("state/frozen"), "frozen")
    }
}

/// Stems of the files in `dir` with extension `ext`.
fn files_with(dir: &Path, ext: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// The GroupController service and its capability are advertised exactly
/// when the backend takes group snapshots; elsewhere the service is not
/// served (its calls are UNIMPLEMENTED).
pub async fn group_controller_is_advertised_only_with_group_snapshots(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let supported = b
        .plugin_services
        .contains(&PluginService::GroupControllerService);
    assert_eq!(
        s.advertised()
            .await
            .plugin(PluginService::GroupControllerService),
        supported,
        "GROUP_CONTROLLER_SERVICE advertised: expected {supported}"
    );
    let caps = s
        .group_controller()
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await;
    if supported {
        let rpc =
            csi::group_controller_service_capability::rpc::Type::CreateDeleteGetVolumeGroupSnapshot;
        let caps = ok("GroupControllerGetCapabilities", caps);
        assert!(
            caps.capabilities.iter().any(|c| matches!(
                c.r#type,
                Some(csi::group_controller_service_capability::Type::Rpc(r)) if r.r#type == rpc as i32
            )),
            "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT not advertised: {caps:?}"
        );
    } else {
        // The service is not served at all.
        assert_eq!(caps.err().map(|e| e.code()), Some(Code::Unimplemented));
        let volume = s
            .create("group-none", b.sizes.small, mount_cap("ext4"))
            .await;
        let r = s
            .group_controller()
            .create_volume_group_snapshot(group_request("g", &[&volume.volume_id]))
            .await;
        assert_eq!(r.err().map(|e| e.code()), Some(Code::Unimplemented));
        s.delete(&volume.volume_id).await;
    }
}

/// Missing names and sources are INVALID_ARGUMENT, unknown volumes and
/// groups NOT_FOUND, a member snapshot cannot be deleted alone
/// (INVALID_ARGUMENT, per the spec), and a wrong member list is refused.
pub async fn group_snapshot_input_errors(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut g = s.group_controller();
    let thin = params(&[THIN]);
    let mut r = create_request("group-err", b.sizes.small, mount_cap("ext4"));
    r.parameters = thin;
    let v = s.create_with(r).await;
    let id = v.volume_id.as_str();
    for (what, request) in [
        ("no name", group_request("", &[id])),
        ("no source volumes", group_request("g", &[])),
        ("an empty source volume id", group_request("g", &[""])),
        ("a volume named twice", group_request("g", &[id, id])),
        ("a hostile volume id", group_request("g", &["../x"])),
    ] {
        fails(
            &format!("CreateVolumeGroupSnapshot with {what}"),
            g.create_volume_group_snapshot(request).await,
            Code::InvalidArgument,
        );
    }
    let many: Vec<String> = (0..257).map(|i| format!("hp-{i:032x}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    fails(
        "CreateVolumeGroupSnapshot of 257 volumes",
        g.create_volume_group_snapshot(group_request("g", &many))
            .await,
        Code::InvalidArgument,
    );
    fails(
        "CreateVolumeGroupSnapshot of an unknown volume",
        g.create_volume_group_snapshot(group_request("g", &[id, b.unknown_volume_id]))
            .await,
        Code::NotFound,
    );
    fails(
        "GetVolumeGroupSnapshot without an id",
        g.get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest::default())
            .await,
        Code::InvalidArgument,
    );
    fails(
        "GetVolumeGroupSnapshot of an unknown group",
        g.get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: "hpg-00000000000000000000000000000000".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    fails(
        "DeleteVolumeGroupSnapshot without an id",
        g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest::default())
            .await,
        Code::InvalidArgument,
    );
    ok(
        "DeleteVolumeGroupSnapshot of an unknown group",
        g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: "hpg-00000000000000000000000000000000".into(),
            ..Default::default()
        })
        .await,
    );

    let group = s.group_snapshot("group-err", &[id]).await;
    let member = group.snapshots[0].snapshot_id.clone();
    let err = fails(
        "DeleteSnapshot of a group member",
        s.controller()
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: member.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        err.message().contains("DeleteVolumeGroupSnapshot"),
        "the message says what to do instead: {}",
        err.message()
    );
    for (what, ids) in [
        ("a list without a member", vec!["hps-other".to_string()]),
        (
            "a list with one more",
            vec![member.clone(), "hps-other".into()],
        ),
    ] {
        fails(
            &format!("GetVolumeGroupSnapshot with {what}"),
            g.get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                snapshot_ids: ids.clone(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
        fails(
            &format!("DeleteVolumeGroupSnapshot with {what}"),
            g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                snapshot_ids: ids,
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
    }
    ok(
        "DeleteVolumeGroupSnapshot with its members",
        g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            snapshot_ids: vec![member],
            ..Default::default()
        })
        .await,
    );
    s.delete(id).await;
}

/// A group of three volumes: its members are ready snapshots carrying the
/// group's ID, listed by ListSnapshots; a repeat (in any order) returns the
/// same group; other volumes under the name are ALREADY_EXISTS; deleting the
/// group deletes its members.
pub async fn group_snapshots_are_idempotent_and_listed(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut r = create_request(&name("group-vol", i), b.sizes.small, mount_cap("ext4"));
        r.parameters = params(&[THIN]);
        ids.push(s.create_with(r).await.volume_id);
    }
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    let group = s.group_snapshot("group-idem", &all).await;
    assert!(!group.group_snapshot_id.is_empty());
    assert!(group.ready_to_use);
    assert!(group.creation_time.is_some());
    assert_eq!(group.snapshots.len(), 3);
    let sources: BTreeSet<&str> = group
        .snapshots
        .iter()
        .map(|m| m.source_volume_id.as_str())
        .collect();
    assert_eq!(sources, all.iter().copied().collect());
    for member in &group.snapshots {
        assert_eq!(member.group_snapshot_id, group.group_snapshot_id);
        assert!(member.ready_to_use);
        assert!(member.size_bytes > 0);
    }

    let reversed: Vec<&str> = all.iter().rev().copied().collect();
    let again = s.group_snapshot("group-idem", &reversed).await;
    assert_eq!(again.group_snapshot_id, group.group_snapshot_id);
    let members = |g: &csi::VolumeGroupSnapshot| -> BTreeSet<String> {
        g.snapshots.iter().map(|m| m.snapshot_id.clone()).collect()
    };
    assert_eq!(members(&again), members(&group));
    assert_eq!(again.creation_time, group.creation_time);
    for other in [&all[..2], &all[..1]] {
        fails(
            "CreateVolumeGroupSnapshot of other volumes under the same name",
            s.group_controller()
                .create_volume_group_snapshot(group_request("group-idem", other))
                .await,
            Code::AlreadyExists,
        );
    }

    let got = ok(
        "GetVolumeGroupSnapshot",
        s.group_controller()
            .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                snapshot_ids: members(&group).into_iter().collect(),
                ..Default::default()
            })
            .await,
    )
    .group_snapshot
    .expect("group snapshot");
    assert_eq!(members(&got), members(&group));

    let listed = s.listed_snapshots().await;
    for member in &group.snapshots {
        let found = listed
            .iter()
            .find(|l| l.snapshot_id == member.snapshot_id)
            .unwrap_or_else(|| panic!("member {} not listed", member.snapshot_id));
        assert_eq!(found.group_snapshot_id, group.group_snapshot_id);
        let one = ok(
            "GetSnapshot of a member",
            s.controller()
                .get_snapshot(csi::GetSnapshotRequest {
                    snapshot_id: member.snapshot_id.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(
            one.snapshot.expect("snapshot").group_snapshot_id,
            group.group_snapshot_id
        );
    }
    // A plain snapshot beside the group stays when the group goes.
    let plain = s.snapshot("group-plain", all[0]).await;
    assert!(plain.group_snapshot_id.is_empty());

    for _ in 0..2 {
        s.delete_group_snapshot(&group.group_snapshot_id).await;
    }
    let listed: BTreeSet<String> = s
        .listed_snapshots()
        .await
        .into_iter()
        .map(|l| l.snapshot_id)
        .collect();
    assert_eq!(listed, BTreeSet::from([plain.snapshot_id.clone()]));
    assert_eq!(
        s.snapshot_images(),
        listed,
        "member images outlived the group"
    );
    fails(
        "GetVolumeGroupSnapshot of a deleted group",
        s.group_controller()
            .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    s.delete_snapshot(&plain.snapshot_id).await;
    for id in &ids {
        s.delete(id).await;
    }
}

/// Two mounted ext4 volumes with unflushed writes: the group snapshot holds
/// every write made before it and none made after it, in both members, and
/// each member restores like any snapshot. Nothing stays frozen.
pub async fn group_snapshot_of_mounted_volumes_is_one_point_in_time(b: BackendUnderTest) {
    require_node(&b);
    let s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let mut volumes = Vec::new();
    for i in 0..2 {
        let name = name("group-live", i);
        let mut r = create_request(&name, b.fs_bytes("ext4"), cap.clone());
        r.parameters = params(&[THIN]);
        let v = s.create_with(r).await;
        let v = s.attach(v, cap.clone(), &name).await;
        s.stage(&v).await;
        volumes.push(v);
    }
    let data =
        |i: usize| -> Vec<u8> { (0..300_000u32).map(|n| (n % 251) as u8 ^ i as u8).collect() };
    for (i, v) in volumes.iter().enumerate() {
        // No fsync: the data sits in the page cache, not yet in the image.
        std::fs::write(Path::new(&v.staging).join("before"), data(i)).unwrap();
    }
    let ids: Vec<&str> = volumes
        .iter()
        .map(|v| v.volume.volume_id.as_str())
        .collect();
    let group = s.group_snapshot("group-live", &ids).await;
    assert!(
        s.freeze_records().is_empty(),
        "a freeze outlived the group snapshot"
    );
    for v in &volumes {
        // Thawed: writing goes on (a frozen filesystem would block here).
        write_durably(&Path::new(&v.staging).join("after"), b"later").unwrap();
    }
    assert!(
        s.log_tail(50).contains("group snapshot created"),
        "the freeze window is not logged"
    );
    let mut restored = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let member = group
            .snapshots
            .iter()
            .find(|m| m.source_volume_id == v.volume.volume_id)
            .expect("a member per volume");
        let name = name("group-restored", i);
        let mut r = create_request(&name, v.volume.capacity_bytes as u64, cap.clone());
        r.parameters = params(&[THIN]);
        r.volume_content_source = snapshot_source(&member.snapshot_id);
        let rv = s.create_with(r).await;
        let rv = s.attach(rv, cap.clone(), &name).await;
        s.stage(&rv).await;
        let staging = Path::new(&rv.staging);
        assert_eq!(
            std::fs::read(staging.join("before")).unwrap_or_default(),
            data(i),
            "member of {} lacks what was written before the group snapshot",
            v.volume.volume_id
        );
        assert!(
            !staging.join("after").exists(),
            "member holds a write made after the group snapshot"
        );
        restored.push(rv);
    }
    for v in restored.iter().chain(&volumes) {
        s.teardown(v).await;
    }
    s.delete_group_snapshot(&group.group_snapshot_id).await;
    assert!(s.snapshot_images().is_empty());
    let left = s.host_leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(s.stored_volumes().is_empty());
}

/// Waits (at most 20 s) for a write with fsync into `dir` to complete: it
/// blocks while the filesystem is frozen.
fn write_completes(dir: &Path, file: &str) {
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg("echo written > \"$1\" && sync \"$1\"")
        .arg("sh")
        .arg(dir.join(file))
        .spawn()
        .expect("start a writer");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = writer.try_wait().unwrap() {
            assert!(status.success(), "the write into {} failed", dir.display());
            return;
        }
        if Instant::now() > deadline {
            let _ = std::process::Command::new("fsfreeze")
                .arg("-u")
                .arg(dir)
                .status();
            panic!("{} is still frozen after the restart", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kill -9 at every step of a group snapshot of two mounted volumes (its
/// intent written; all frozen; all copied, still frozen; committed): the
/// restarted driver thaws every filesystem before it serves, reports the
/// group whole (committed) or not at all, keeps no copy the journal does
/// not name (none kept aside either), and the repeated call succeeds.
pub async fn crash_during_group_snapshot(b: BackendUnderTest) {
    require_node(&b);
    let mut s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let mut volumes = Vec::new();
    for i in 0..2 {
        let name = name("group-crash", i);
        let mut r = create_request(&name, b.fs_bytes("ext4"), cap.clone());
        r.parameters = params(&[THIN]);
        let v = s.create_with(r).await;
        let v = s.attach(v, cap.clone(), &name).await;
        s.stage(&v).await;
        write_durably(&Path::new(&v.staging).join("data"), &[7u8; 1 << 20]).unwrap();
        volumes.push(v);
    }
    let ids: Vec<&str> = volumes
        .iter()
        .map(|v| v.volume.volume_id.as_str())
        .collect();
    let state = s.dir().join("state");
    for (n, (point, frozen, committed)) in [
        ("group-snapshot-intent", false, false),
        ("group-snapshot-frozen", true, false),
        ("group-snapshot-copied", true, false),
        ("group-snapshot-committed", false, true),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("group-crash-{n}");
        s.kill9();
        s.spawn_crashing_at(point).await;
        let reply = s
            .group_controller()
            .create_volume_group_snapshot(group_request(&name, &ids))
            .await;
        assert!(reply.is_err(), "{point}: the call outlived its crash point");
        s.wait_for_crash();
        assert_eq!(
            !s.freeze_records().is_empty(),
            frozen,
            "{point}: the killed driver's freeze records"
        );
        if point == "group-snapshot-copied" {
            assert_eq!(s.snapshot_images().len(), 2, "{point}: both copies made");
        }

        s.spawn().await;
        assert!(
            s.freeze_records().is_empty(),
            "{point}: freeze records outlived the restart"
        );
        for v in &volumes {
            write_completes(Path::new(&v.staging), &format!("after-{n}"));
        }
        let members: Vec<csi::Snapshot> = s
            .listed_snapshots()
            .await
            .into_iter()
            .filter(|l| !l.group_snapshot_id.is_empty())
            .collect();
        if committed {
            assert_eq!(members.len(), 2, "{point}: the committed group is whole");
            let got = ok(
                "GetVolumeGroupSnapshot of the committed group",
                s.group_controller()
                    .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                        group_snapshot_id: members[0].group_snapshot_id.clone(),
                        ..Default::default()
                    })
                    .await,
            );
            let group = got.group_snapshot.expect("group");
            assert!(group.ready_to_use);
            assert_eq!(group.snapshots.len(), 2);
        } else {
            assert!(
                members.is_empty(),
                "{point}: a group cut off before its commit is reported: {members:?}"
            );
        }
        let listed: BTreeSet<String> = s
            .listed_snapshots()
            .await
            .into_iter()
            .map(|l| l.snapshot_id)
            .collect();
        assert_eq!(
            s.snapshot_images(),
            listed,
            "{point}: snapshot images the journal does not name (leaked copies)"
        );
        let aside = all_files(&state.join("kept-aside"));
        assert!(aside.is_empty(), "{point}: copies kept aside: {aside:?}");
        let intents = all_files(&state.join("group-intents"));
        assert!(intents.is_empty(), "{point}: intents left: {intents:?}");

        let group = s.group_snapshot(&name, &ids).await;
        assert_eq!(group.snapshots.len(), 2);
        s.delete_group_snapshot(&group.group_snapshot_id).await;
        assert!(s.snapshot_images().is_empty());
    }
    assert!(
        s.log_tail(400)
            .contains("removed a copy of a group snapshot whose create was cut off"),
        "the removal of the cut-off copies is not logged"
    );
    for v in &volumes {
        s.teardown(v).await;
    }
    let left = s.host_leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(s.stored_volumes().is_empty());
}

/// With a cloud backend (default) and hostpath: group snapshots are
/// advertised, a group of hostpath volumes is taken (its IDs carry the
/// backend's name), and a group with a cloud volume is FAILED_PRECONDITION
/// with a message that names the backends.
pub async fn group_snapshots_take_one_capable_backend(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    assert!(
        s.advertised()
            .await
            .plugin(PluginService::GroupControllerService)
    );
    let cap = mount_cap("ext4");
    let cloud = s.create("group-cloud", 1 << 30, cap.clone()).await;
    let mut local = Vec::new();
    for i in 0..2 {
        let mut r = create_request(&name("group-local", i), 8 << 20, cap.clone());
        r.parameters = params(&[("multicsi.io/backend", "hostpath"), THIN]);
        local.push(s.create_with(r).await.volume_id);
    }
    for (what, ids) in [
        (
            "hostpath and cloud volumes",
            vec![local[0].as_str(), cloud.volume_id.as_str()],
        ),
        ("cloud volumes", vec![cloud.volume_id.as_str()]),
    ] {
        let err = fails(
            &format!("CreateVolumeGroupSnapshot of {what}"),
            s.group_controller()
                .create_volume_group_snapshot(group_request("group-mixed", &ids))
                .await,
            Code::FailedPrecondition,
        );
        assert!(
            err.message().contains("cloudscale"),
            "the message names the backend: {}",
            err.message()
        );
    }
    let ids: Vec<&str> = local.iter().map(String::as_str).collect();
    let group = s.group_snapshot("group-local", &ids).await;
    assert!(
        group.group_snapshot_id.starts_with("hostpath:hpg-"),
        "{}",
        group.group_snapshot_id
    );
    for member in &group.snapshots {
        assert!(member.snapshot_id.starts_with("hostpath:"));
        assert_eq!(member.group_snapshot_id, group.group_snapshot_id);
    }
    let got = ok(
        "GetVolumeGroupSnapshot through the router",
        s.group_controller()
            .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                snapshot_ids: group
                    .snapshots
                    .iter()
                    .map(|m| m.snapshot_id.clone())
                    .collect(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(got.group_snapshot.expect("group").snapshots.len(), 2);
    s.delete_group_snapshot(&group.group_snapshot_id).await;
    for id in local.iter().chain([&cloud.volume_id]) {
        s.delete(id).await;
    }
}
