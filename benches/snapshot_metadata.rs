//! SnapshotMetadata benchmark of the `multicsi` server (hostpath backend),
//! over its unix socket like the snapshot-metadata sidecar:
//!
//! - a 1 GiB thin volume with 16 MiB of data, snapshotted, then a few
//!   thousand (`--blocks N`, default 3000) scattered 4 KiB blocks changed
//!   and snapshotted again: GetMetadataDelta and GetMetadataAllocated, wall
//!   time, ranges per second and the server's peak resident memory during
//!   the call;
//! - the same with many more changed blocks (`--many N`, default 50000) for
//!   the throughput in ranges per second, variable-length and in fixed
//!   64 KiB blocks;
//! - as root, the delta on an xfs state filesystem where snapshots are
//!   reflinked copies: 512 MiB of data the snapshots share, which the delta
//!   skips by FIEMAP instead of reading it.
//!
//! Run with `scripts/bench.sh metadata` (or `cargo bench --bench
//! snapshot_metadata`). The state lives under `$BENCH_DIR` (default
//! /var/tmp).

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use multicsi::csi::controller_client::ControllerClient;
use multicsi::csi::snapshot_metadata_client::SnapshotMetadataClient;
use multicsi::csi::volume_capability::access_mode::Mode;
use multicsi::csi::volume_capability::{AccessMode, AccessType, BlockVolume};
use multicsi::csi::{self as csi, VolumeCapability};
use tonic::transport::Channel;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const BLOCK: u64 = 4 * KIB;

struct Options {
    blocks: usize,
    many: usize,
}

fn options() -> Options {
    let mut o = Options {
        blocks: 3000,
        many: 50_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--blocks" => o.blocks = args.next().and_then(|v| v.parse().ok()).unwrap_or(3000),
            "--many" => o.many = args.next().and_then(|v| v.parse().ok()).unwrap_or(50_000),
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    o
}

/// A server on a state directory of its own; killed and removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    state: PathBuf,
    channel: Channel,
}

impl Server {
    async fn start(dir: PathBuf, state: PathBuf, extra: &[&str]) -> Server {
        std::fs::create_dir_all(&dir).expect("bench directory");
        let socket = dir.join("csi.sock");
        let endpoint = format!("unix://{}", socket.display());
        let binary = std::env::var_os("BENCH_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_multicsi")));
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let child = Command::new(binary)
            .args(["serve", "--endpoint", &endpoint, "--node-id", "bench-node"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--kubelet-dir")
            .arg(&dir)
            .args(extra)
            .env("MULTICSI_LOG_FORMAT", "json")
            // The delta's cost (bytes compared, bytes shared) is logged at info.
            .env(
                "MULTICSI_LOG_LEVEL",
                "warn,multicsi::backend::hostpath::metadata=info",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start multicsi");
        let channel = common::await_server(&endpoint).await;
        Server {
            child,
            dir,
            state,
            channel,
        }
    }

    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    fn metadata(&self) -> SnapshotMetadataClient<Channel> {
        SnapshotMetadataClient::new(self.channel.clone())
    }

    async fn thin_volume(&self, name: &str, size: u64) -> String {
        let reply = self
            .controller()
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: size as i64,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![VolumeCapability {
                    access_type: Some(AccessType::Block(BlockVolume {})),
                    access_mode: Some(AccessMode {
                        mode: Mode::SingleNodeWriter as i32,
                    }),
                }],
                parameters: [("multicsi.io/provisioning".into(), "thin".into())].into(),
                ..Default::default()
            })
            .await
            .expect("CreateVolume")
            .into_inner();
        reply.volume.expect("volume").volume_id
    }

    async fn snapshot(&self, volume: &str, name: &str) -> (String, Duration) {
        let started = Instant::now();
        let reply = self
            .controller()
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: volume.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("CreateSnapshot")
            .into_inner();
        (
            reply.snapshot.expect("snapshot").snapshot_id,
            started.elapsed(),
        )
    }

    fn image(&self, volume: &str) -> PathBuf {
        self.state.join("volumes").join(format!("{volume}.img"))
    }
}

/// A KiB field of a process's /proc status, e.g. `VmRSS:`; 0 when unknown.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One measured call: ranges, bytes they cover, wall time, the server's
/// peak VmRSS while it ran, and for a delta the bytes it read and compared.
struct Measured {
    ranges: u64,
    bytes: u64,
    wall: Duration,
    peak_rss_kib: u64,
    compared_bytes: Option<u64>,
}

/// `compared_bytes` of the server's last "snapshot delta computed" line.
fn last_compared_bytes(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rfind(|l| l.contains("snapshot delta computed"))?;
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value["compared_bytes"].as_u64()
}

/// Samples the server's VmRSS every 2 ms until stopped; returns the peak.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let peak = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        peak.load(Ordering::Relaxed)
    })
}

async fn measure(server: &Server, base: Option<&str>, target: &str) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(server.child.id(), stop.clone());
    let started = Instant::now();
    let (mut ranges, mut bytes) = (0u64, 0u64);
    let mut count = |tuples: &[csi::BlockMetadata]| {
        ranges += tuples.len() as u64;
        bytes += tuples.iter().map(|t| t.size_bytes as u64).sum::<u64>();
    };
    match base {
        Some(base) => {
            let mut stream = server
                .metadata()
                .get_metadata_delta(csi::GetMetadataDeltaRequest {
                    base_snapshot_id: base.into(),
                    target_snapshot_id: target.into(),
                    ..Default::default()
                })
                .await
                .expect("GetMetadataDelta")
                .into_inner();
            while let Some(reply) = stream.message().await.expect("delta stream") {
                count(&reply.block_metadata);
            }
        }
        None => {
            let mut stream = server
                .metadata()
                .get_metadata_allocated(csi::GetMetadataAllocatedRequest {
                    snapshot_id: target.into(),
                    ..Default::default()
                })
                .await
                .expect("GetMetadataAllocated")
                .into_inner();
            while let Some(reply) = stream.message().await.expect("allocated stream") {
                count(&reply.block_metadata);
            }
        }
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak_rss_kib = sampler.join().unwrap_or(0);
    // The producer logs its cost as it ends, just before the stream does.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Measured {
        ranges,
        bytes,
        wall,
        peak_rss_kib,
        compared_bytes: base.and_then(|_| last_compared_bytes(&server.dir.join("server.log"))),
    }
}

/// Writes `count` distinct random blocks of `[0, size)` (never adjacent
/// to each other, so each is a range of its own) with random data.
fn scatter(path: &Path, rng: &mut fastrand::Rng, size: u64, count: usize) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("image");
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < count {
        let b = rng.u64(0..size / BLOCK / 2) * 2;
        chosen.insert(b);
    }
    let mut data = vec![0u8; BLOCK as usize];
    for b in chosen {
        rng.fill(&mut data);
        file.write_all_at(&data, b * BLOCK).expect("write");
    }
    file.sync_all().expect("sync");
}

/// Writes `len` bytes of random data from `offset`.
fn fill(path: &Path, rng: &mut fastrand::Rng, offset: u64, len: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("image");
    let mut data = vec![0u8; MIB as usize];
    let mut at = offset;
    while at < offset + len {
        rng.fill(&mut data);
        file.write_all_at(&data, at).expect("write");
        at += MIB;
    }
    file.sync_all().expect("sync");
}

fn row(what: &str, m: &Measured) {
    let per_sec = m.ranges as f64 / m.wall.as_secs_f64().max(1e-9);
    let read = m.compared_bytes.map_or("-".to_string(), |b| {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    });
    println!(
        "{:<44} {:>7} {:>10} {:>9.1} {:>12.0} {:>9} {:>10}",
        what,
        m.ranges,
        format!("{:.1} MiB", m.bytes as f64 / MIB as f64),
        m.wall.as_secs_f64() * 1000.0,
        per_sec,
        m.peak_rss_kib,
        read
    );
}

/// A base and a target snapshot of a 1 GiB thin volume: `before` bytes of
/// data, then `changed` scattered blocks.
async fn pair(
    server: &Server,
    name: &str,
    rng: &mut fastrand::Rng,
    before: u64,
    changed: usize,
) -> (String, String) {
    let volume = server.thin_volume(name, GIB).await;
    let image = server.image(&volume);
    fill(&image, rng, 0, before);
    let (base, _) = server.snapshot(&volume, &format!("{name}-base")).await;
    scatter(&image, rng, GIB, changed);
    let (target, took) = server.snapshot(&volume, &format!("{name}-target")).await;
    println!(
        "  ({name}: the target snapshot took {:.0} ms)",
        took.as_secs_f64() * 1000.0
    );
    (base, target)
}

fn header(title: &str) {
    println!();
    println!("{title}");
    println!(
        "{:<44} {:>7} {:>10} {:>9} {:>12} {:>9} {:>10}",
        "call", "ranges", "covering", "ms", "ranges/s", "peak KiB", "compared"
    );
}

/// Mounts a fresh xfs (reflink on) backed by a sparse file under `dir`.
fn xfs_at(dir: &Path) -> Option<PathBuf> {
    let backing = dir.join("xfs.img");
    let mount_point = dir.join("xfs");
    std::fs::create_dir_all(&mount_point).ok()?;
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(4 * GIB))
        .ok()?;
    let ok = |cmd: &mut Command| cmd.status().is_ok_and(|s| s.success());
    if !ok(Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&backing))
        || !ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&backing)
            .arg(&mount_point))
    {
        return None;
    }
    Some(mount_point)
}

fn main() {
    let o = options();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let base_dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        .join(format!("multicsi-bench-metadata-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut rng = fastrand::Rng::with_seed(15);
        {
            let dir = base_dir.join("plain");
            let server = Server::start(dir.clone(), dir.join("state"), &[]).await;
            let idle = status_kib(server.child.id(), "VmRSS:");
            header(&format!(
                "SnapshotMetadata, 1 GiB thin volume, state on {} (server idle {idle} KiB)",
                dir.display()
            ));
            let (base, target) = pair(&server, "few", &mut rng, 16 * MIB, o.blocks).await;
            row(
                &format!("delta, {} changed blocks", o.blocks),
                &measure(&server, Some(&base), &target).await,
            );
            row(
                "allocated of the target",
                &measure(&server, None, &target).await,
            );
            let (base, target) = pair(&server, "many", &mut rng, 0, o.many).await;
            row(
                &format!("delta, {} changed blocks", o.many),
                &measure(&server, Some(&base), &target).await,
            );
            row(
                "allocated of the target",
                &measure(&server, None, &target).await,
            );
            // The reflink case below, without reflinks: every data block of
            // both snapshots is read.
            let (base, target) = pair(&server, "copied", &mut rng, 512 * MIB, o.blocks).await;
            row(
                &format!("delta, {} changed in 512 MiB of data", o.blocks),
                &measure(&server, Some(&base), &target).await,
            );
        }
        {
            let dir = base_dir.join("fixed");
            let server = Server::start(
                dir.clone(),
                dir.join("state"),
                &["--metadata-block-size", "65536"],
            )
            .await;
            header("the same in fixed 64 KiB blocks");
            let (base, target) = pair(&server, "many", &mut rng, 0, o.many).await;
            row(
                &format!("delta, {} changed blocks", o.many),
                &measure(&server, Some(&base), &target).await,
            );
        }
        if root {
            let dir = base_dir.join("reflink");
            std::fs::create_dir_all(&dir).expect("bench directory");
            match xfs_at(&dir) {
                Some(mount_point) => {
                    {
                        let server =
                            Server::start(dir.join("server"), mount_point.join("state"), &[]).await;
                        header("on xfs with reflinked snapshots: 512 MiB shared data");
                        let (base, target) =
                            pair(&server, "shared", &mut rng, 512 * MIB, o.blocks).await;
                        row(
                            &format!("delta, {} changed in 512 MiB of data", o.blocks),
                            &measure(&server, Some(&base), &target).await,
                        );
                    }
                    let _ = Command::new("umount").arg(&mount_point).status();
                }
                None => println!("\nxfs with reflinks: not measured (mkfs.xfs or mount failed)"),
            }
        } else {
            println!("\nxfs with reflinks: not measured (needs root to mount)");
        }
    });
    let _ = std::fs::remove_dir_all(&base_dir);
}
