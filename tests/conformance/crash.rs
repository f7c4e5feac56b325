//! Crash safety: the server (with every tool it started) is killed with
//! SIGKILL while calls are in flight, restarted on the same state, and the
//! same calls repeated must all succeed idempotently; afterwards nothing has
//! leaked (storage, loop devices, mounts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use multicsi::csi::controller_service_capability::rpc::Type as Rpc;
use multicsi::csi::{self as csi};
use tokio::task::JoinSet;

use crate::api::*;
use crate::harness::{BackendUnderTest, Server, mount_at, mount_count, require_node};

/// Every volume the backend's storage holds is one ListVolumes reports.
async fn assert_storage_is_listed(s: &Server) {
    if !s.advertised().await.controller(Rpc::ListVolumes) {
        return;
    }
    let listed: BTreeSet<String> = s.list_volume_ids(0).await.into_iter().collect();
    for stored in s.stored_volumes() {
        assert!(
            listed.contains(&stored),
            "storage for {stored} exists but ListVolumes does not report it (leaked)"
        );
    }
}

/// SIGKILL while many CreateVolume calls are in flight; after a restart the
/// same calls succeed with the same volumes and nothing leaked.
pub async fn crash_during_create_volume(b: BackendUnderTest) {
    let mut s = Server::start(&b).await;
    const N: usize = 96;
    let requests: Vec<csi::CreateVolumeRequest> = (0..N)
        .map(|i| create_request(&name("crash", i), b.sizes.small, mount_cap("ext4")))
        .collect();
    let mut set = JoinSet::new();
    for r in requests.iter().cloned() {
        let mut c = s.controller();
        set.spawn(async move {
            let name = r.name.clone();
            (
                name,
                c.create_volume(r)
                    .await
                    .map(|v| v.into_inner().volume.expect("volume")),
            )
        });
    }
    let mut before: BTreeMap<String, csi::Volume> = BTreeMap::new();
    // Kill as soon as the first create is through: the rest are in flight.
    while let Some(done) = set.join_next().await {
        let (name, result) = done.expect("task");
        if let Ok(volume) = result {
            before.insert(name, volume);
            break;
        }
    }
    s.kill9();
    while let Some(done) = set.join_next().await {
        let (name, result) = done.expect("task");
        if let Ok(volume) = result {
            before.insert(name, volume);
        }
    }
    assert!(
        before.len() < N,
        "every create finished before the kill: the crash hit nothing in flight"
    );

    s.spawn().await;
    assert_storage_is_listed(&s).await;
    let mut ids = BTreeSet::new();
    for r in &requests {
        let volume = s.create_with(r.clone()).await;
        if let Some(earlier) = before.get(&r.name) {
            assert_eq!(
                volume.volume_id, earlier.volume_id,
                "{}: another volume after the crash",
                r.name
            );
            assert_eq!(volume.capacity_bytes, earlier.capacity_bytes);
        }
        ids.insert(volume.volume_id);
    }
    assert_eq!(ids.len(), N);
    // Repeats after the restart are idempotent too.
    for r in requests.iter().take(5) {
        assert!(ids.contains(&s.create_with(r.clone()).await.volume_id));
    }
    assert_storage_is_listed(&s).await;
    let stored: BTreeSet<String> = s.stored_volumes().into_iter().collect();
    assert_eq!(stored, ids, "storage and volumes differ after the crash");
    if s.advertised().await.controller(Rpc::ListVolumes) {
        let listed: BTreeSet<String> = s.list_volume_ids(10).await.into_iter().collect();
        assert_eq!(listed, ids);
    }
    for id in &ids {
        s.delete(id).await;
    }
    assert!(
        s.stored_volumes().is_empty(),
        "deleted volumes left storage behind"
    );
}

/// SIGKILL while several NodeStage calls (mkfs, mount) are in flight; after
/// a restart the same calls succeed, every volume is mounted once with its
/// filesystem, and after teardown no loop device or mount remains. Three
/// rounds, so that the kill lands inside an mkfs at least once.
pub async fn crash_during_node_stage(b: BackendUnderTest) {
    require_node(&b);
    let mut s = Server::start(&b).await;
    for round in 0..3 {
        let mut volumes = Vec::new();
        for i in 0..8 {
            let fs = b.filesystems[i % b.filesystems.len()];
            let name = name(&format!("crash-stage-{round}"), i);
            volumes.push(s.node_volume(&name, b.fs_bytes(fs), mount_cap(fs)).await);
        }
        let mut set = JoinSet::new();
        for v in &volumes {
            let mut n = s.node();
            let r = s.stage_request(v);
            set.spawn(async move { n.node_stage_volume(r).await.is_ok() });
        }
        let mut staged = 0;
        while let Some(done) = set.join_next().await {
            if done.expect("task") {
                staged += 1;
                break;
            }
        }
        s.kill9();
        while let Some(done) = set.join_next().await {
            if done.expect("task") {
                staged += 1;
            }
        }
        assert!(
            staged < volumes.len(),
            "every stage finished before the kill"
        );

        s.spawn().await;
        for v in &volumes {
            for _ in 0..2 {
                s.stage(v).await;
            }
            let staging = Path::new(&v.staging);
            let mount = mount_at(staging).expect("not staged after the restart");
            let fs = match v.cap.access_type.as_ref() {
                Some(csi::volume_capability::AccessType::Mount(m)) => m.fs_type.clone(),
                _ => unreachable!(),
            };
            let id = &v.volume.volume_id;
            assert_eq!(mount.fs_type, fs, "{id}: wrong filesystem after the crash");
            assert_eq!(
                mount_count(staging),
                1,
                "{id}: mounts stacked after the crash"
            );
            write_durably(&staging.join("after-crash"), b"usable").unwrap();
            let target = s.path_str(&format!("{id}-target"));
            s.publish(v, &target, false).await;
            assert_eq!(
                std::fs::read(Path::new(&target).join("after-crash")).unwrap(),
                b"usable"
            );
            s.unpublish(v, &target).await;
        }
        for v in &volumes {
            s.unstage(v).await;
            s.unstage(v).await;
            s.controller_unpublish(&v.volume.volume_id).await;
            s.delete(&v.volume.volume_id).await;
        }
        let left = s.host_leftovers();
        assert!(left.is_empty(), "left behind after teardown: {left:?}");
        assert!(s.stored_volumes().is_empty());
    }
}

/// Thaws `mount_point` when dropped, so that a failing test does not leave
/// a frozen filesystem behind (thawing a thawed one only fails).
struct ThawOnDrop(std::path::PathBuf);

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// SIGKILL while CreateSnapshot copies a mounted volume, its filesystem
/// frozen for the copy: the killed driver leaves writers blocked, the
/// restarted one thaws the filesystem before it serves, the blocked write
/// completes, the repeated snapshot succeeds and nothing leaks.
pub async fn crash_during_snapshot_of_a_mounted_volume(b: BackendUnderTest) {
    require_node(&b);
    let mut s = Server::start(&b).await;
    let cap = mount_cap("ext4");
    let v = s.node_volume("crash-snap", 512 << 20, cap).await;
    s.stage(&v).await;
    let staging = Path::new(&v.staging).to_path_buf();
    let _thaw = ThawOnDrop(staging.clone());
    // Data, so that the copy takes long enough to be caught under way.
    let data: Vec<u8> = (0..192u32 << 20).map(|i| (i % 251) as u8).collect();
    write_durably(&staging.join("data"), &data).unwrap();
    let records = s.dir().join("state/frozen");
    let frozen_now = || std::fs::read_dir(&records).is_ok_and(|mut d| d.next().is_some());

    // A writer started while the filesystem is frozen blocks until the thaw.
    let start_writer = |file: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg("echo written > \"$1\" && sync \"$1\"")
            .arg("sh")
            .arg(staging.join(file))
            .spawn()
            .expect("start a writer")
    };
    let mut caught = None;
    for attempt in 0..20 {
        let name = format!("crash-snap-{attempt}");
        let request = csi::CreateSnapshotRequest {
            name: name.clone(),
            source_volume_id: v.volume.volume_id.clone(),
            ..Default::default()
        };
        let mut controller = s.controller();
        let call = tokio::spawn(async move { controller.create_snapshot(request).await });
        while !call.is_finished() && !frozen_now() {
            tokio::time::sleep(std::time::Duration::from_micros(100)).await;
        }
        // The record is written just before the freeze: give it a moment.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if !frozen_now() {
            let done = call.await.expect("task").expect("CreateSnapshot");
            let id = done.into_inner().snapshot.expect("snapshot").snapshot_id;
            s.delete_snapshot(&id).await;
            continue;
        }
        s.kill9();
        let _ = call.await;
        let mut writer = start_writer(&format!("while-frozen-{attempt}"));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if writer.try_wait().unwrap().is_none() {
            caught = Some((name, writer));
            break;
        }
        // The kill landed just after the thaw: try again.
        s.spawn().await;
    }
    let (name, mut writer) =
        caught.expect("no kill landed while a snapshot copy held the filesystem frozen");

    s.spawn().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = writer.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted driver did not thaw {}",
            staging.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "the blocked write failed after the thaw");
    assert!(!frozen_now(), "the freeze record outlived the thaw");
    assert!(
        s.log_tail(200)
            .contains("thawed a filesystem frozen by a copy that was cut off"),
        "the thaw is not logged"
    );

    // The cut-off snapshot, asked for again, is made whole.
    let snap = s.snapshot(&name, &v.volume.volume_id).await;
    assert!(snap.ready_to_use);
    assert!(!frozen_now());
    s.delete_snapshot(&snap.snapshot_id).await;
    s.teardown(&v).await;
    let left = s.host_leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(s.stored_volumes().is_empty());
}
