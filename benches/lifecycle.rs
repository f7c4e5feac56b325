//! Lifecycle benchmark of the `multicsi` server (hostpath backend), driven
//! over its unix socket like the CSI sidecars and kubelet do:
//!
//! - CreateVolume and DeleteVolume: throughput and p50/p99 latency at
//!   concurrency 1 and 16, 500 volumes each;
//! - NodePublishVolume / NodeUnpublishVolume: p50/p99 over 200 cycles to
//!   fresh target directories of one staged volume (needs root);
//! - the server's resident memory (VmRSS) idle and with 500 volumes;
//! - CreateVolumeGroupSnapshot of 2, 8 and 32 mounted ext4 volumes, each
//!   with unflushed writes: the freeze window the server reports (first
//!   freeze to last thaw) and the call's total time (needs root).
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench lifecycle`).
//! Options: `--volumes N`, `--cycles N`, `--skip-node`, `--thin` (the
//! volumes are thin; thick, the default, reserves each one's space),
//! `--groups N,N,..`, `--only-groups`. The state directory lives under
//! `$BENCH_DIR` (default /var/tmp), on local disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use multicsi::csi::controller_client::ControllerClient;
use multicsi::csi::node_client::NodeClient;
use multicsi::csi::volume_capability::access_mode::Mode;
use multicsi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use multicsi::csi::{self as csi, VolumeCapability};
use tonic::transport::Channel;

const MIB: i64 = 1 << 20;

struct Options {
    volumes: usize,
    cycles: usize,
    node: bool,
    /// StorageClass parameters of the benchmark's volumes (`--thin`).
    parameters: std::collections::HashMap<String, String>,
    /// Sizes of the group snapshots measured.
    groups: Vec<usize>,
    /// Only the group snapshots.
    only_groups: bool,
}

fn options() -> Options {
    let mut o = Options {
        volumes: 500,
        cycles: 200,
        node: true,
        parameters: Default::default(),
        groups: vec![2, 8, 32],
        only_groups: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--volumes" => o.volumes = args.next().and_then(|v| v.parse().ok()).unwrap_or(500),
            "--cycles" => o.cycles = args.next().and_then(|v| v.parse().ok()).unwrap_or(200),
            "--skip-node" => o.node = false,
            "--thin" => {
                o.parameters
                    .insert("multicsi.io/provisioning".into(), "thin".into());
            }
            "--groups" => {
                o.groups = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|n| n.parse().ok())
                    .collect()
            }
            "--only-groups" => o.only_groups = true,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    o
}

/// The server under test, in its own directory; killed and cleaned on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    channel: Channel,
}

impl Server {
    async fn start() -> Server {
        Self::start_logging("warn").await
    }

    /// Starts the server logging (JSON) at `level`.
    async fn start_logging(level: &str) -> Server {
        let base = std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = base.join(format!("multicsi-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("work")).expect("bench directory");
        let socket = dir.join("csi.sock");
        let binary = std::env::var_os("BENCH_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_multicsi")));
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let child = Command::new(binary)
            .arg("serve")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--node-id")
            .arg("bench-node")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--kubelet-dir")
            .arg(dir.join("work"))
            .env("MULTICSI_LOG_FORMAT", "json")
            .env("MULTICSI_LOG_LEVEL", level)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start multicsi");
        let channel = common::await_server(&format!("unix://{}", socket.display())).await;
        Server {
            child,
            dir,
            socket,
            channel,
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn threads(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("Threads:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unmount what is left under the directory (a failed run).
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| Path::new(p).starts_with(&self.dir))
                .collect();
            points.reverse();
            for p in points {
                if let Ok(c) = std::ffi::CString::new(p) {
                    // SAFETY: a valid NUL-terminated path.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        // Detach the loop devices backed by images under the directory.
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let backing = std::fs::read_to_string(entry.path().join("loop/backing_file"))
                    .unwrap_or_default();
                if name.starts_with("loop") && Path::new(backing.trim_end()).starts_with(&self.dir)
                {
                    let _ = Command::new("losetup")
                        .arg("-d")
                        .arg(format!("/dev/{name}"))
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Latencies of `n` operations run by `concurrency` workers, and the wall
/// time of the whole batch.
async fn run_batch<F, Fut>(n: usize, concurrency: usize, op: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return latencies;
                }
                let t = Instant::now();
                op(i).await;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = workers.join_next().await {
        all.extend(done.expect("worker"));
    }
    (all, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Row {
    what: String,
    ops: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn row(what: String, mut latencies: Vec<Duration>, wall: Duration) -> Row {
    latencies.sort();
    Row {
        what,
        ops: latencies.len(),
        per_sec: latencies.len() as f64 / wall.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

async fn create_delete(
    server: &Server,
    o: &Options,
    concurrency: usize,
    rows: &mut Vec<Row>,
) -> u64 {
    let n = o.volumes;
    let prefix = format!("bench-c{concurrency}");
    let client = server.controller();
    let p = prefix.clone();
    let parameters = o.parameters.clone();
    let (lat, wall) = run_batch(n, concurrency, move |i| {
        let mut c = client.clone();
        let name = format!("{p}-{i}");
        let parameters = parameters.clone();
        async move {
            c.create_volume(csi::CreateVolumeRequest {
                name,
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 64 * MIB,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_cap()],
                parameters,
                ..Default::default()
            })
            .await
            .expect("CreateVolume");
        }
    })
    .await;
    rows.push(row(format!("CreateVolume  c={concurrency}"), lat, wall));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_full = server.rss_kib();
    let ids: Vec<String> = {
        let mut c = server.controller();
        c.list_volumes(csi::ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.volume.map(|v| v.volume_id))
            .collect()
    };
    assert_eq!(ids.len(), n, "ListVolumes after the creates");
    let ids = Arc::new(ids);
    let client = server.controller();
    let (lat, wall) = run_batch(n, concurrency, move |i| {
        let mut c = client.clone();
        let id = ids[i].clone();
        async move {
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .expect("DeleteVolume");
        }
    })
    .await;
    rows.push(row(format!("DeleteVolume  c={concurrency}"), lat, wall));
    rss_full
}

async fn publish_cycles(server: &Server, cycles: usize, rows: &mut Vec<Row>) {
    let staged = staged_volume(server, "bench-publish", &[], "staging").await;
    let (id, context, volume) = (staged.id.clone(), staged.context.clone(), &staged.volume);
    let staging = staged.staging.display().to_string();
    let mut n = server.node();
    let mut publish = Vec::with_capacity(cycles);
    let mut unpublish = Vec::with_capacity(cycles);
    let started = Instant::now();
    for i in 0..cycles {
        let target = server.dir.join(format!("work/pods/{i}/mount"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("target parent");
        let target = target.display().to_string();
        let t = Instant::now();
        n.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            publish_context: context.clone(),
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            volume_capability: Some(mount_cap()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("NodePublishVolume");
        publish.push(t.elapsed());
        let t = Instant::now();
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target,
        })
        .await
        .expect("NodeUnpublishVolume");
        unpublish.push(t.elapsed());
    }
    let wall = started.elapsed();
    rows.push(row("NodePublishVolume".into(), publish, wall));
    rows.push(row("NodeUnpublishVolume".into(), unpublish, wall));
    tear_down(server, &id, &staging).await;
}

/// Unstages, controller-unpublishes and deletes a volume [`staged_volume`]
/// made.
async fn tear_down(server: &Server, id: &str, staging: &str) {
    server
        .node()
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.to_string(),
            staging_target_path: staging.to_string(),
        })
        .await
        .expect("NodeUnstageVolume");
    let mut c = server.controller();
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: id.to_string(),
        node_id: "bench-node".into(),
        ..Default::default()
    })
    .await
    .expect("ControllerUnpublishVolume");
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: id.to_string(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume");
}

/// A volume created, controller-published and staged (ext4, 64 MiB) for a
/// benchmark.
struct Staged {
    id: String,
    volume: csi::Volume,
    context: std::collections::HashMap<String, String>,
    staging: PathBuf,
}

/// Creates volume `name` with `parameters`, publishes it to the node and
/// stages it at `work/<staging>`.
async fn staged_volume(
    server: &Server,
    name: &str,
    parameters: &[(&str, &str)],
    staging: &str,
) -> Staged {
    let mut c = server.controller();
    let volume = c
        .create_volume(csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 64 * MIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap()],
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let id = volume.volume_id.clone();
    let context = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: "bench-node".into(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .expect("ControllerPublishVolume")
        .into_inner()
        .publish_context;
    let staging = server.dir.join("work").join(staging);
    std::fs::create_dir_all(&staging).expect("staging");
    server
        .node()
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            publish_context: context.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_cap()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("NodeStageVolume");
    Staged {
        id,
        volume,
        context,
        staging,
    }
}

/// `n` thin volumes staged for a group snapshot: their IDs and staging paths.
async fn staged_volumes(server: &Server, n: usize) -> Vec<(String, PathBuf)> {
    let mut staged = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-group-{n}-{i}");
        let v = staged_volume(
            server,
            &name,
            &[("multicsi.io/provisioning", "thin")],
            &name,
        )
        .await;
        staged.push((v.id, v.staging));
    }
    staged
}

/// The freeze windows (ms) the server logged for its group snapshots, in
/// order.
fn logged_freeze_windows(server: &Server) -> Vec<f64> {
    std::fs::read_to_string(server.dir.join("server.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "group snapshot created")
        .filter_map(|v| v["freeze_window_ms"].as_f64())
        .collect()
}

/// One measured group size.
struct GroupRow {
    volumes: usize,
    rounds: usize,
    freeze_ms: Vec<f64>,
    total: Vec<Duration>,
}

/// CreateVolumeGroupSnapshot of `n` mounted volumes, `rounds` times, each
/// volume holding 4 MiB of new unflushed writes before each round; the
/// group is deleted after each round.
async fn group_snapshots(server: &Server, n: usize, rounds: usize) -> GroupRow {
    let staged = staged_volumes(server, n).await;
    let ids: Vec<String> = staged.iter().map(|(id, _)| id.clone()).collect();
    let mut g =
        multicsi::csi::group_controller_client::GroupControllerClient::new(server.channel.clone());
    let seen = logged_freeze_windows(server).len();
    let mut total = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for (_, staging) in &staged {
            std::fs::write(
                staging.join(format!("data-{round}")),
                vec![round as u8; 4 << 20],
            )
            .expect("write");
        }
        let t = Instant::now();
        let group = g
            .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
                name: format!("bench-group-{n}-{round}"),
                source_volume_ids: ids.clone(),
                ..Default::default()
            })
            .await
            .expect("CreateVolumeGroupSnapshot")
            .into_inner()
            .group_snapshot
            .expect("group snapshot");
        total.push(t.elapsed());
        g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id,
            ..Default::default()
        })
        .await
        .expect("DeleteVolumeGroupSnapshot");
    }
    // The log is written asynchronously: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let freeze_ms = logged_freeze_windows(server).split_off(seen);
    for (id, staging) in staged {
        tear_down(server, &id, &staging.display().to_string()).await;
    }
    GroupRow {
        volumes: n,
        rounds,
        freeze_ms,
        total,
    }
}

fn print_groups(rows: &[GroupRow]) {
    println!();
    println!("group snapshots of mounted ext4 volumes (4 MiB unflushed writes each)");
    println!(
        "{:<10} {:>6} {:>16} {:>16} {:>14} {:>14}",
        "volumes", "rounds", "freeze p50 ms", "freeze max ms", "total p50 ms", "total max ms"
    );
    for r in rows {
        let mut freeze = r.freeze_ms.clone();
        freeze.sort_by(f64::total_cmp);
        let mut total = r.total.clone();
        total.sort();
        let median = |v: &[f64]| v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0);
        println!(
            "{:<10} {:>6} {:>16.3} {:>16.3} {:>14} {:>14}",
            r.volumes,
            r.rounds,
            median(&freeze),
            freeze.last().copied().unwrap_or(0.0),
            ms(percentile(&total, 50.0)),
            ms(total.last().copied().unwrap_or_default())
        );
    }
}

/// The disk's flush latency right now: p50 and p99 of 100 `fdatasync`s of a
/// small write into a preallocated file in `dir` (what one journal commit
/// costs at least; the machine may be shared, so it is measured around the
/// runs).
fn flush_latency(dir: &Path) -> (Duration, Duration) {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let path = dir.join("flush-probe");
    let mut file = std::fs::File::create(&path).expect("flush probe");
    file.write_all(&vec![0u8; 1 << 20]).expect("flush probe");
    file.sync_all().expect("flush probe");
    let mut times = Vec::with_capacity(100);
    for i in 0..100u64 {
        file.write_all_at(&[1u8; 512], i * 4096)
            .expect("flush probe");
        let t = Instant::now();
        file.sync_data().expect("flush probe");
        times.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    times.sort();
    (percentile(&times, 50.0), percentile(&times, 99.0))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn main() {
    let o = options();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let node = o.node && root;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        if node && !o.groups.is_empty() {
            // Its own server, logging at info: the freeze window is logged.
            let server = Server::start_logging("info").await;
            let mut rows = Vec::new();
            for &n in &o.groups {
                rows.push(group_snapshots(&server, n, 5).await);
            }
            print_groups(&rows);
        } else if !o.groups.is_empty() {
            println!("group snapshots          not measured (needs root; --skip-node)");
        }
        if o.only_groups {
            return;
        }
        let server = Server::start().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_idle = server.rss_kib();
        let threads_idle = server.threads();
        let flush_before = flush_latency(&server.dir);
        let mut rows = Vec::new();
        let rss_c1 = create_delete(&server, &o, 1, &mut rows).await;
        let rss_c16 = create_delete(&server, &o, 16, &mut rows).await;
        let threads_busy = server.threads();
        if node {
            publish_cycles(&server, o.cycles, &mut rows).await;
        }
        let rss_end = server.rss_kib();
        let flush_after = flush_latency(&server.dir);

        println!();
        println!(
            "multicsi lifecycle benchmark (hostpath, state on {})",
            server.dir.display()
        );
        println!(
            "{:<24} {:>6} {:>10} {:>10} {:>10}",
            "operation", "ops", "ops/s", "p50 ms", "p99 ms"
        );
        for r in &rows {
            println!(
                "{:<24} {:>6} {:>10.0} {:>10} {:>10}",
                r.what,
                r.ops,
                r.per_sec,
                ms(r.p50),
                ms(r.p99)
            );
        }
        if !node {
            println!("NodePublishVolume        not measured (needs root; --skip-node)");
        }
        println!(
            "disk flush (fdatasync) p50/p99 ms: before {}/{}, after {}/{}",
            ms(flush_before.0),
            ms(flush_before.1),
            ms(flush_after.0),
            ms(flush_after.1)
        );
        println!();
        println!("{:<40} {:>8}", "server memory", "VmRSS");
        println!(
            "{:<40} {:>5} KiB ({} threads)",
            "idle after start", rss_idle, threads_idle
        );
        println!(
            "{:<40} {:>5} KiB",
            format!("{} volumes (created at c=1)", o.volumes),
            rss_c1
        );
        println!(
            "{:<40} {:>5} KiB ({} threads)",
            format!("{} volumes (created at c=16)", o.volumes),
            rss_c16,
            threads_busy
        );
        println!("{:<40} {:>5} KiB", "at the end", rss_end);

        println!();
        println!("targets");
        let create16 = rows.iter().find(|r| r.what == "CreateVolume  c=16");
        if let Some(r) = create16 {
            println!(
                "  >= 5000 creates/s at c=16: {:.0}/s  {}",
                r.per_sec,
                verdict(r.per_sec >= 5000.0)
            );
            println!(
                "  create p99 <= 5 ms at c=16: {} ms  {}",
                ms(r.p99),
                verdict(r.p99 <= Duration::from_millis(5))
            );
        }
        if let Some(r) = rows.iter().find(|r| r.what == "NodePublishVolume") {
            println!(
                "  NodePublish p50 <= 1 ms: {} ms  {}",
                ms(r.p50),
                verdict(r.p50 <= Duration::from_millis(1))
            );
        }
        println!(
            "  RSS idle <= 10 MiB: {:.1} MiB  {}",
            rss_idle as f64 / 1024.0,
            verdict(rss_idle <= 10 * 1024)
        );
        let full = rss_c1.max(rss_c16);
        println!(
            "  RSS with {} volumes <= 13 MiB: {:.1} MiB  {}",
            o.volumes,
            full as f64 / 1024.0,
            verdict(full <= 13 * 1024)
        );
    });
}
