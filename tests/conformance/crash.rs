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
