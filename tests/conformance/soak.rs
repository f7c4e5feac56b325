//! Soak: many create -> publish -> unpublish -> delete cycles at once, with
//! the backend's cloud answering a share of requests with 5xx and 429 (the
//! emulator's fault injection). Every cycle must end done, every name must
//! map to one volume, and nothing may be left in the backend's storage.
//!
//! The caller retries a failed RPC the way the CSI sidecars do (with
//! backoff, same request), and only for the codes they retry on; the
//! figures (operations, retries, injected faults, duration) are printed and
//! written to `<target tmp>/soak-<backend>.txt`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use multicsi::csi::controller_service_capability::rpc::Type as Rpc;
use multicsi::csi::{self as csi};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tonic::Code;

use crate::api::*;
use crate::harness::{BackendUnderTest, Server};

const CONCURRENCY: usize = 32;

/// Cycles per run: 1,000 unless SOAK_CYCLES says otherwise.
fn cycles() -> usize {
    std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Codes a sidecar retries the same request on.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// Calls `rpc` until it succeeds or fails with a code a sidecar would not
/// retry (which fails the test); counts the retries.
async fn until_done<T, F, Fut>(what: &str, retries: &AtomicU64, mut rpc: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut wait = Duration::from_millis(50);
    for _ in 0..30 {
        match rpc().await {
            Ok(reply) => return reply.into_inner(),
            Err(status) if retryable(status.code()) => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(status) => panic!("{what}: {:?}: {}", status.code(), status.message()),
        }
    }
    panic!("{what}: still failing after 30 attempts")
}

/// The node id ControllerPublish takes: what NodeGetInfo reports, when the
/// server serves the node too.
async fn node_id(s: &Server) -> String {
    match s.node().node_get_info(csi::NodeGetInfoRequest {}).await {
        Ok(info) => info.into_inner().node_id,
        Err(_) => s.backend.node_id.to_string(),
    }
}

/// The emulator's fault counters, if the backend has an emulator.
async fn emulator_stats(s: &Server) -> Option<serde_json::Value> {
    let url = format!("{}{}", s.api_url()?, multicsi::emulator::STATS_PATH);
    let client = multicsi::cloud::http::client_builder().build().ok()?;
    let body = client.get(url).send().await.ok()?.text().await.ok()?;
    serde_json::from_str(&body).ok()
}

pub async fn soak_cycles(b: BackendUnderTest) {
    let s = Arc::new(Server::start(&b).await);
    let publish = s.advertised().await.controller(Rpc::PublishUnpublishVolume);
    let node = node_id(&s).await;
    let cycles = cycles();
    let retries = Arc::new(AtomicU64::new(0));
    let ids: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..cycles {
        let (s, retries, ids, gate, node) = (
            s.clone(),
            retries.clone(),
            ids.clone(),
            gate.clone(),
            node.clone(),
        );
        let size = b.sizes.small;
        set.spawn(async move {
            let _slot = gate.acquire().await.expect("semaphore");
            let name = name("soak", i);
            let request = create_request(&name, size, mount_cap("ext4"));
            let volume = until_done(&format!("CreateVolume {name}"), &retries, || {
                let (mut c, r) = (s.controller(), request.clone());
                async move { c.create_volume(r).await }
            })
            .await
            .volume
            .expect("volume");
            let id = volume.volume_id;
            ids.lock()
                .await
                .entry(name.clone())
                .or_default()
                .insert(id.clone());
            if publish {
                let request = csi::ControllerPublishVolumeRequest {
                    volume_id: id.clone(),
                    node_id: node.clone(),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                };
                until_done(&format!("ControllerPublishVolume {id}"), &retries, || {
                    let (mut c, r) = (s.controller(), request.clone());
                    async move { c.controller_publish_volume(r).await }
                })
                .await;
                let request = csi::ControllerUnpublishVolumeRequest {
                    volume_id: id.clone(),
                    node_id: node.clone(),
                    ..Default::default()
                };
                until_done(&format!("ControllerUnpublishVolume {id}"), &retries, || {
                    let (mut c, r) = (s.controller(), request.clone());
                    async move { c.controller_unpublish_volume(r).await }
                })
                .await;
            }
            let request = csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            };
            until_done(&format!("DeleteVolume {id}"), &retries, || {
                let (mut c, r) = (s.controller(), request.clone());
                async move { c.delete_volume(r).await }
            })
            .await;
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("a soak cycle failed");
    }
    let elapsed = started.elapsed();

    let ids = ids.lock().await;
    let duplicates: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        duplicates.is_empty(),
        "names that got more than one volume: {duplicates:?}"
    );
    assert_eq!(ids.len(), cycles);
    let stored = s.stored_volumes();
    assert!(stored.is_empty(), "volumes left behind: {stored:?}");
    if s.advertised().await.controller(Rpc::ListVolumes) {
        let listed = s.list_volume_ids(0).await;
        assert!(listed.is_empty(), "volumes still listed: {listed:?}");
    }

    let operations = cycles * if publish { 4 } else { 2 };
    let stats = emulator_stats(&s).await;
    let report = format!(
        "soak {}: {cycles} cycles, {operations} operations at concurrency {CONCURRENCY} in {:.1} s ({:.0} ops/s); RPCs retried by the caller: {}; emulator: {}\n",
        b.name,
        elapsed.as_secs_f64(),
        operations as f64 / elapsed.as_secs_f64(),
        retries.load(Ordering::Relaxed),
        stats.map_or_else(|| "none".to_string(), |v| v.to_string()),
    );
    eprint!("{report}");
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{}.txt", b.name));
    std::fs::write(&path, &report).expect("write the soak figures");
}
