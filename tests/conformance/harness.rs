//! The harness: starts the real `multicsi` binary on a private unix socket
//! with a private state directory, connects the CSI clients the way kubelet
//! and the sidecars do, and leaves nothing behind when it is dropped (even
//! when the test panicked): the process group is killed, every mount under
//! the private directory is unmounted and every loop device backed by a file
//! under it is detached.
//!
//! What differs between backends lives in [`BackendUnderTest`]; every test
//! takes one, so a backend that runs against an emulator runs the same suite.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use multicsi::csi::controller_client::ControllerClient;
use multicsi::csi::controller_service_capability::rpc::Type as CtrlRpc;
use multicsi::csi::group_controller_client::GroupControllerClient;
use multicsi::csi::identity_client::IdentityClient;
use multicsi::csi::node_client::NodeClient;
use multicsi::csi::node_service_capability::rpc::Type as NodeRpc;
use multicsi::csi::plugin_capability::service::Type as PluginService;
use multicsi::csi::snapshot_metadata_client::SnapshotMetadataClient;
use multicsi::csi::{self as csi};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Longest a single test may run before it fails (and cleans up).
const TEST_TIMEOUT: Duration = Duration::from_secs(100);
/// Longest a server may take to answer Probe after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Volume sizes a backend is tested with.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// The backend's allocation step: sizes are rounded up to a multiple.
    pub step: u64,
    /// A small volume for controller-only tests.
    pub small: u64,
    /// A volume that holds a filesystem of the given type.
    pub filesystem: fn(&str) -> u64,
}

/// How a backend is started and what it is expected to offer.
#[derive(Clone, Debug)]
pub struct BackendUnderTest {
    pub name: &'static str,
    /// Node id the server is started with.
    pub node_id: &'static str,
    /// Extra `multicsi serve` arguments; `{dir}` stands for the server's
    /// private directory.
    pub args: Vec<&'static str>,
    /// Extra environment of the server; `{dir}` as above.
    pub env: Vec<(&'static str, &'static str)>,
    pub plugin_services: Vec<PluginService>,
    pub controller_rpcs: Vec<CtrlRpc>,
    pub node_rpcs: Vec<NodeRpc>,
    pub sizes: Sizes,
    /// Filesystems the node tests format and mount.
    pub filesystems: Vec<&'static str>,
    /// Whether node tests (real loop devices, mounts) can run: a backend
    /// served against an emulator has no real disks.
    pub node_tests: bool,
    /// Topology key the node reports.
    pub topology_key: &'static str,
    /// Well-formed IDs that name nothing.
    pub unknown_volume_id: &'static str,
    pub unknown_snapshot_id: &'static str,
    /// Whether the cloud records a volume's content source, so that a
    /// repeated CreateVolume asking for another source is told apart
    /// (Civo's API records none: a repeat is checked by size and type).
    pub records_sources: bool,
    /// Valid StorageClass parameters that make a different volume than none.
    pub alt_parameters: Vec<(&'static str, &'static str)>,
    /// The volume IDs the backend's storage holds (for leak checks), given
    /// the server's private directory and the emulator's URL, if any.
    pub stored_volumes: fn(&Path, Option<&str>) -> Vec<String>,
    /// The cloud emulator the server talks to, if the backend is a cloud's.
    pub emulator: Option<Emulator>,
}

/// A `multicsi-emulator` started before the server, in the server's
/// private directory. `{dir}` in its arguments stands for that directory;
/// `{api}` in the server's arguments and environment for its URL.
#[derive(Clone, Debug)]
pub struct Emulator {
    pub provider: &'static str,
    pub args: Vec<&'static str>,
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// GETs `path` from an emulator (plain HTTP/1.1) and parses the JSON body;
/// injected faults (5xx, 429, dropped connections) are retried.
pub fn emulator_get(api: &str, path: &str, token: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let host = api.trim_start_matches("http://").trim_end_matches('/');
    let mut last = String::new();
    for _ in 0..50 {
        let mut stream = std::net::TcpStream::connect(host).expect("connect to the emulator");
        let sent = write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let mut answer = String::new();
        if sent.is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && let Some((head, body)) = answer.split_once("\r\n\r\n")
        {
            if head.starts_with("HTTP/1.1 200") {
                return serde_json::from_str(body).expect("a JSON body from the emulator");
            }
            let retry = head.starts_with("HTTP/1.1 5") || head.starts_with("HTTP/1.1 429");
            assert!(retry, "emulator answered GET {path}: {head}");
            last = head.lines().next().unwrap_or_default().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the emulator did not answer GET {path}: {last}");
}

/// The emulated Packet server this node runs on, and the project.
pub const PACKET_DEVICE_ID: &str = "5d0a1c7e-3f4b-4e8a-9c21-7b6e2f1d0a01";
pub const PACKET_PROJECT_ID: &str = "0f3c2b1a-9d8e-4f7a-8b6c-5d4e3f2a1b0c";

/// The ids of the volumes an emulated Packet project holds, read from the
/// emulator's API (plain HTTP/1.1, outside the test's runtime); answers
/// the emulator's fault injection spoils are asked again.
pub fn packet_volume_ids(api: &str) -> Vec<String> {
    use std::io::{Read, Write};
    let address = api.trim_start_matches("http://").trim_end_matches('/');
    let mut last = String::new();
    for _ in 0..50 {
        let Ok(mut stream) = std::net::TcpStream::connect(address) else {
            continue;
        };
        let ask = format!(
            "GET /projects/{PACKET_PROJECT_ID}/storage?per_page=1000 HTTP/1.1\r\nHost: {address}\r\nX-Auth-Token: conformance-token\r\nConnection: close\r\n\r\n"
        );
        let mut reply = String::new();
        if stream.write_all(ask.as_bytes()).is_err() || stream.read_to_string(&mut reply).is_err() {
            continue;
        }
        let Some((head, body)) = reply.split_once("\r\n\r\n") else {
            continue;
        };
        if !head.starts_with("HTTP/1.1 200") {
            last = head.lines().next().unwrap_or_default().to_string();
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(body).expect("JSON volume list");
        let mut ids: Vec<String> = value["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["id"].as_str().map(String::from))
            .collect();
        ids.sort();
        return ids;
    }
    panic!("the packet emulator did not list its volumes: {last}");
}

impl BackendUnderTest {
    /// The embedded hostpath backend: sparse images under the state
    /// directory, loop devices on the node.
    pub fn hostpath() -> Self {
        BackendUnderTest {
            name: "hostpath",
            node_id: "conformance-node",
            args: vec!["--backend", "hostpath", "--state-dir", "{dir}/state"],
            env: vec![],
            plugin_services: vec![
                PluginService::ControllerService,
                PluginService::VolumeAccessibilityConstraints,
                PluginService::GroupControllerService,
                PluginService::SnapshotMetadataService,
            ],
            controller_rpcs: vec![
                CtrlRpc::CreateDeleteVolume,
                CtrlRpc::PublishUnpublishVolume,
                CtrlRpc::ListVolumes,
                CtrlRpc::GetCapacity,
                CtrlRpc::CreateDeleteSnapshot,
                CtrlRpc::ListSnapshots,
                CtrlRpc::CloneVolume,
                CtrlRpc::PublishReadonly,
                CtrlRpc::ExpandVolume,
                CtrlRpc::ListVolumesPublishedNodes,
                CtrlRpc::VolumeCondition,
                CtrlRpc::GetVolume,
                CtrlRpc::SingleNodeMultiWriter,
                CtrlRpc::GetSnapshot,
            ],
            node_rpcs: vec![
                NodeRpc::StageUnstageVolume,
                NodeRpc::GetVolumeStats,
                NodeRpc::ExpandVolume,
                NodeRpc::VolumeCondition,
                NodeRpc::SingleNodeMultiWriter,
            ],
            sizes: Sizes {
                step: MIB,
                small: 8 * MIB,
                filesystem: |fs| match fs {
                    "xfs" => 300 * MIB,
                    "btrfs" => 128 * MIB,
                    _ => 48 * MIB,
                },
            },
            filesystems: vec!["ext4", "xfs", "btrfs"],
            node_tests: true,
            topology_key: "topology.multicsi.io/node",
            unknown_volume_id: "hp-00000000000000000000000000000000",
            unknown_snapshot_id: "hps-00000000000000000000000000000000",
            records_sources: true,
            alt_parameters: vec![("multicsi.io/mkfs-reserved-percent", "1")],
            emulator: None,
            stored_volumes: |dir, _| {
                let mut ids = Vec::new();
                if let Ok(entries) = std::fs::read_dir(dir.join("state/volumes")) {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        if path.extension().and_then(|e| e.to_str()) == Some("img")
                            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                        {
                            ids.push(stem.to_string());
                        }
                    }
                }
                ids.sort();
                ids
            },
        }
    }

    /// The cloudscale backend against its emulator: devices appear as loop
    /// devices linked in `{dir}/links`, the node's identity comes from the
    /// emulated metadata service.
    pub fn cloudscale() -> Self {
        BackendUnderTest {
            name: "cloudscale",
            node_id: multicsi::emulator::cloudscale::SERVER_UUID,
            args: vec![
                "--backend",
                "cloudscale",
                "--state-dir",
                "{dir}/state",
                "--device-dir",
                "{dir}/links",
            ],
            env: vec![
                ("CLOUDSCALE_ACCESS_TOKEN", "conformance-token"),
                ("CLOUDSCALE_API_URL", "{api}"),
                ("CLOUDSCALE_METADATA_URL", "{api}"),
            ],
            plugin_services: vec![
                PluginService::ControllerService,
                PluginService::VolumeAccessibilityConstraints,
            ],
            controller_rpcs: vec![
                CtrlRpc::CreateDeleteVolume,
                CtrlRpc::PublishUnpublishVolume,
                CtrlRpc::ListVolumes,
                CtrlRpc::CreateDeleteSnapshot,
                CtrlRpc::ListSnapshots,
                CtrlRpc::CloneVolume,
                CtrlRpc::PublishReadonly,
                CtrlRpc::ExpandVolume,
                CtrlRpc::ListVolumesPublishedNodes,
                CtrlRpc::GetVolume,
                CtrlRpc::SingleNodeMultiWriter,
                CtrlRpc::GetSnapshot,
            ],
            node_rpcs: vec![
                NodeRpc::StageUnstageVolume,
                NodeRpc::GetVolumeStats,
                NodeRpc::ExpandVolume,
                NodeRpc::VolumeCondition,
                NodeRpc::SingleNodeMultiWriter,
            ],
            sizes: Sizes {
                step: GIB,
                small: 2 * GIB,
                filesystem: |_| GIB,
            },
            filesystems: vec!["ext4", "xfs", "btrfs"],
            node_tests: true,
            topology_key: "csi.cloudscale.ch/zone",
            unknown_volume_id: "00000000-0000-4000-8000-000000000000",
            unknown_snapshot_id: "00000000-0000-4000-8000-000000000001",
            records_sources: true,
            alt_parameters: vec![("csi.cloudscale.ch/volume-type", "bulk")],
            emulator: Some(Emulator {
                provider: "cloudscale",
                args: vec![
                    "--transition-ms",
                    "20",
                    "--image-dir",
                    "{dir}/images",
                    "--link-dir",
                    "{dir}/links",
                ],
            }),
            stored_volumes: |_, api| {
                let api = api.expect("the cloudscale backend runs with its emulator");
                let mut ids: Vec<String> = emulator_get(api, "/v1/volumes", "conformance-token")
                    .as_array()
                    .expect("a JSON array of volumes")
                    .iter()
                    .filter_map(|v| v["uuid"].as_str().map(str::to_string))
                    .collect();
                ids.sort();
                ids
            },
        }
    }

    /// cloudscale with 10% of its API requests answered 5xx and 5% 429,
    /// API only (no devices): for the soak and the crash test.
    pub fn cloudscale_under_faults() -> Self {
        let mut b = Self::cloudscale();
        b.args = vec!["--backend", "cloudscale", "--state-dir", "{dir}/state"];
        b.env.push(("CLOUDSCALE_API_REQUESTS_PER_SECOND", "2000"));
        b.node_tests = false;
        b.emulator = Some(Emulator {
            provider: "cloudscale",
            args: vec![
                "--transition-ms",
                "20",
                "--error-share",
                "0.10",
                "--throttle-share",
                "0.05",
            ],
        });
        b
    }

    /// cloudscale (the default) and hostpath served by one driver.
    pub fn cloudscale_with_hostpath() -> Self {
        let mut b = Self::cloudscale();
        b.name = "cloudscale+hostpath";
        b.args = vec![
            "--backends",
            "cloudscale,hostpath",
            "--state-dir",
            "{dir}/state",
            "--device-dir",
            "{dir}/links",
        ];
        b.stored_volumes = |dir, api| {
            let mut ids = (Self::cloudscale().stored_volumes)(dir, api);
            ids.extend(
                (Self::hostpath().stored_volumes)(dir, None)
                    .into_iter()
                    .map(|id| format!("hostpath:{id}")),
            );
            ids.sort();
            ids
        };
        b
    }

    /// The packet backend against `multicsi-emulator packet`, API only:
    /// attached volumes do not appear as devices.
    pub fn packet() -> Self {
        BackendUnderTest {
            name: "packet",
            node_id: PACKET_DEVICE_ID,
            args: vec!["--backend", "packet", "--device-dir", "{dir}/links"],
            env: vec![
                ("PACKET_API_KEY", "conformance-token"),
                ("PACKET_PROJECT_ID", PACKET_PROJECT_ID),
                ("PACKET_FACILITY_ID", "ewr1"),
                ("PACKET_API_URL", "{api}"),
                ("PACKET_METADATA_URL", "{api}"),
                ("PACKET_ATTACH_MODE", "linked"),
            ],
            plugin_services: vec![
                PluginService::ControllerService,
                PluginService::VolumeAccessibilityConstraints,
            ],
            controller_rpcs: vec![
                CtrlRpc::CreateDeleteVolume,
                CtrlRpc::PublishUnpublishVolume,
                CtrlRpc::ListVolumes,
                CtrlRpc::PublishReadonly,
                CtrlRpc::ListVolumesPublishedNodes,
                CtrlRpc::VolumeCondition,
                CtrlRpc::GetVolume,
                CtrlRpc::SingleNodeMultiWriter,
            ],
            node_rpcs: vec![
                NodeRpc::StageUnstageVolume,
                NodeRpc::GetVolumeStats,
                NodeRpc::VolumeCondition,
                NodeRpc::SingleNodeMultiWriter,
            ],
            sizes: Sizes {
                step: GIB,
                small: 10 * GIB,
                filesystem: |_| 10 * GIB,
            },
            filesystems: vec!["ext4", "xfs", "btrfs"],
            node_tests: false,
            topology_key: "topology.multicsi.io/facility",
            unknown_volume_id: "00000000-0000-4000-8000-000000000000",
            unknown_snapshot_id: "00000000-0000-4000-8000-000000000001",
            records_sources: true,
            alt_parameters: vec![("multicsi.io/plan", "performance")],
            emulator: Some(Emulator {
                provider: "packet",
                args: vec!["--transition-ms", "20"],
            }),
            stored_volumes: |_, api| packet_volume_ids(api.expect("the packet emulator's URL")),
        }
    }

    /// The packet backend with the emulator's devices: an attached volume
    /// appears as a loop device linked under its multipath alias, so the
    /// node stages it for real (root only).
    pub fn packet_with_devices() -> Self {
        BackendUnderTest {
            node_tests: true,
            emulator: Some(Emulator {
                provider: "packet",
                args: vec![
                    "--transition-ms",
                    "20",
                    "--image-dir",
                    "{dir}/images",
                    "--link-dir",
                    "{dir}/links",
                ],
            }),
            ..Self::packet()
        }
    }

    /// The packet backend under faults: 10% of the emulator's answers are
    /// 5xx, 5% start a 429 (for the soak and crash under faults).
    pub fn packet_soak() -> Self {
        let mut backend = Self::packet();
        backend.env.push(("PACKET_REQUESTS_PER_SECOND", "1000"));
        backend.emulator = Some(Emulator {
            provider: "packet",
            args: vec![
                "--transition-ms",
                "20",
                "--error-share",
                "0.10",
                "--throttle-share",
                "0.05",
            ],
        });
        backend
    }

    pub fn fs_bytes(&self, fs: &str) -> u64 {
        (self.sizes.filesystem)(fs)
    }
}

/// Runs one async test body on its own runtime, with a deadline.
pub fn run<F, Fut>(test: F, backend: BackendUnderTest)
where
    F: FnOnce(BackendUnderTest) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    runtime.block_on(async {
        if tokio::time::timeout(TEST_TIMEOUT, test(backend))
            .await
            .is_err()
        {
            panic!("test did not finish within {TEST_TIMEOUT:?}");
        }
    });
}

/// Node tests need a backend whose node runs here, and root: they attach
/// loop devices and mount. Not being root is a failure, never a silent skip.
pub fn require_node(backend: &BackendUnderTest) {
    assert!(
        backend.node_tests,
        "the {} backend cannot run node tests here; do not instantiate them for it",
        backend.name
    );
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test attaches loop devices and mounts filesystems: run the conformance suite as root"
    );
}

/// Whether this process may grow a mounted ext4 (EXT4_IOC_RESIZE_FS needs
/// CAP_SYS_RESOURCE, which some container sandboxes drop even for root).
pub fn can_resize_ext4_online() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Connects a channel to a unix socket.
/// Waits until the driver `child` answers Probe on `socket`; the error
/// (it exited, or did not serve in time) carries the end of its `log`.
pub async fn serving(child: &mut Child, socket: &Path, log: &Path) -> Result<Channel, String> {
    let tail = || log_tail(log, 60);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "multicsi exited with {status} before serving; log:\n{}",
                tail()
            ));
        }
        if socket.exists()
            && let Ok(channel) = connect(socket).await
            && IdentityClient::new(channel.clone())
                .probe(csi::ProbeRequest {})
                .await
                .is_ok()
        {
            return Ok(channel);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "multicsi did not serve within {START_TIMEOUT:?}; log:\n{}",
                tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// A running driver with its private directory.
pub struct Server {
    pub backend: BackendUnderTest,
    dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    channel: Option<Channel>,
    emulator: Option<Child>,
    api_url: Option<String>,
    /// The crash point (`MULTICSI_CRASH_AT`) of the next spawn only.
    crash_at: Option<String>,
}

impl Server {
    /// Starts a server for `backend` in a fresh private directory and waits
    /// until it answers Probe.
    pub async fn start(backend: &BackendUnderTest) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("csi-conf-")
            .tempdir()
            .expect("temporary directory");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        std::fs::create_dir_all(root.join("work")).expect("work dir");
        let mut server = Server {
            backend: backend.clone(),
            socket: root.join("csi.sock"),
            log: root.join("server.log"),
            root,
            dir,
            child: None,
            channel: None,
            emulator: None,
            api_url: None,
            crash_at: None,
        };
        server.start_emulator();
        server.spawn().await;
        server
    }

    /// Starts the backend's emulator, if it has one, and notes its URL.
    fn start_emulator(&mut self) {
        let Some(emulator) = self.backend.emulator.clone() else {
            return;
        };
        let dir = self.root.display().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_multicsi-emulator"))
            .arg(emulator.provider)
            .args(emulator.args.iter().map(|a| a.replace("{dir}", &dir)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(self.root.join("emulator.log")).expect("emulator log"))
            .spawn()
            .expect("start multicsi-emulator");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("emulator stdout"))
            .read_line(&mut first)
            .expect("read the emulator's address");
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the emulator: {first:?}"))
            .to_string();
        self.api_url = Some(url);
        self.emulator = Some(child);
    }

    /// The emulator's base URL, when the backend has one.
    pub fn api_url(&self) -> Option<&str> {
        self.api_url.as_deref()
    }

    fn command(&self) -> Command {
        self.command_with_dir(&self.root)
    }

    /// The server's command line, on this server's socket, with `{dir}`
    /// standing for `dir`.
    pub fn command_with_dir(&self, dir: &Path) -> Command {
        self.command_at(dir, &self.socket)
    }

    /// The server's command line on `socket`, with `{dir}` standing for
    /// `dir`.
    pub fn command_at(&self, dir: &Path, socket: &Path) -> Command {
        let api = self.api_url.clone().unwrap_or_default();
        let expand = |text: &str| {
            text.replace("{dir}", &dir.display().to_string())
                .replace("{api}", &api)
        };
        let binary = std::env::var_os("CONFORMANCE_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_multicsi")));
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--node-id")
            .arg(self.backend.node_id);
        for arg in &self.backend.args {
            cmd.arg(expand(arg));
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("MULTICSI_") {
                cmd.env_remove(key);
            }
        }
        for (key, value) in &self.backend.env {
            cmd.env(key, expand(value));
        }
        // Node paths of the tests live under work/: the kubelet directory.
        if let Some(point) = &self.crash_at {
            cmd.env(multicsi::failpoint::CRASH_AT, point);
        }
        cmd.env("MULTICSI_KUBELET_DIR", self.root.join("work"))
            .env("MULTICSI_LOG_FORMAT", "text")
            .env("MULTICSI_LOG_LEVEL", "info")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Starts the process (on the same directory and socket as before) and
    /// waits until it serves.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own process group: a crash test kills the server with
            // every tool it started, like a container runtime would.
            .process_group(0)
            .spawn()
            .expect("start multicsi");
        self.child = Some(child);
        self.channel = Some(self.wait_ready().await);
    }

    /// Starts the process like [`Server::spawn`], set to die at crash
    /// point `point` (see `multicsi::failpoint`).
    pub async fn spawn_crashing_at(&mut self, point: &str) {
        self.crash_at = Some(point.to_string());
        self.spawn().await;
        self.crash_at = None;
    }

    /// Waits (at most 20 s) for the process to die at its crash point and
    /// kills what it started; the test fails when it does not die.
    pub fn wait_for_crash(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let child = self.child.as_mut().expect("server is not running");
        while child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the server did not reach its crash point; log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
    }

    async fn wait_ready(&mut self) -> Channel {
        let Some(child) = self.child.as_mut() else {
            panic!("server is not running");
        };
        let served = serving(child, &self.socket, &self.log).await;
        // An exited child is gone; one that did not serve is still killed on drop.
        if served.is_err() && matches!(child.try_wait(), Ok(Some(_))) {
            self.child = None;
        }
        served.unwrap_or_else(|e| panic!("{e}"))
    }

    fn channel(&self) -> Channel {
        self.channel.clone().expect("server is not running")
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel())
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel())
    }

    pub fn group_controller(&self) -> GroupControllerClient<Channel> {
        GroupControllerClient::new(self.channel())
    }

    pub fn snapshot_metadata(&self) -> SnapshotMetadataClient<Channel> {
        SnapshotMetadataClient::new(self.channel())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel())
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server's command once more (on `socket`, this server's own
    /// when `None`) and expects it to refuse: waits for its exit (at most
    /// 20 s; one still running then is killed and the test fails) and
    /// returns its status and output.
    pub fn start_expecting_refusal(&self, socket: Option<&Path>) -> (ExitStatus, String) {
        run_expecting_exit(self.command_at(&self.root, socket.unwrap_or(&self.socket)))
    }

    /// The server's private directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// A path for the test's own files (staging and target paths).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join("work").join(name)
    }

    /// A path string for a request.
    pub fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Kills the server and every process it started with SIGKILL, as a
    /// crash or an OOM kill of its container would.
    pub fn kill9(&mut self) {
        self.channel = None;
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions; the group
            // is the child's own (process_group(0)).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit (at most 20 s).
    pub fn terminate(&mut self) -> ExitStatus {
        self.channel = None;
        let mut child = self.child.take().expect("server is not running");
        // SAFETY: see kill9.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("multicsi did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Volume IDs the backend's storage holds right now.
    pub fn stored_volumes(&self) -> Vec<String> {
        (self.backend.stored_volumes)(&self.root, self.api_url.as_deref())
    }

    /// Mounts and loop devices that belong to this server's directory.
    pub fn host_leftovers(&self) -> Vec<String> {
        host_leftovers(&self.root)
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// The last `lines` lines of the log file at `path`.
fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return String::from("(no log)");
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Bytes of a file allocated on disk.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .blocks()
        * 512
}

/// Runs `cmd` (its own process group) and waits for it to exit, at most
/// 20 s; returns the status and what it printed.
pub fn run_expecting_exit(mut cmd: Command) -> (ExitStatus, String) {
    let out = tempfile::NamedTempFile::new().expect("output file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("output"))
        .stderr(out.reopen().expect("output"))
        .process_group(0)
        .spawn()
        .expect("start multicsi");
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill has no memory-safety preconditions; the group
            // is the child's own.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "the command was expected to refuse and exit, but it still runs after {START_TIMEOUT:?}; output:\n{}",
                std::fs::read_to_string(out.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(out.path()).unwrap_or_default(),
    )
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- multicsi log ({}) ---\n{}\n---",
                self.backend.name,
                self.log_tail(40)
            );
        }
        self.kill9();
        if let Some(mut emulator) = self.emulator.take() {
            // SIGTERM: the emulator detaches the loop devices it made.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(emulator.id() as i32, libc::SIGTERM) };
            let _ = emulator.wait();
        }
        let left = cleanup_host(&self.root);
        if !left.is_empty() {
            eprintln!(
                "conformance harness: could not clean up {}: {left:?}",
                self.dir.path().display()
            );
        }
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

impl MountInfo {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount of this process's namespace, in mount order.
pub fn mounts() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                options: left.get(5)?.to_string(),
                fs_type: right.first()?.to_string(),
                source: unescape(right.get(1)?),
            })
        })
        .collect()
}

/// The topmost mount at exactly `path`.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// How many mounts are stacked at exactly `path`.
pub fn mount_count(path: &Path) -> usize {
    mounts().iter().filter(|m| m.mount_point == path).count()
}

/// Loop devices whose backing file lies under `dir`: (device, backing file).
pub fn loops_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        let path = backing.trim_end_matches(" (deleted)");
        if Path::new(path).starts_with(dir) {
            found.push((PathBuf::from(format!("/dev/{name}")), backing.to_string()));
        }
    }
    found.sort();
    found
}

/// Mounts and loop devices that belong to `dir`, described.
pub fn host_leftovers(dir: &Path) -> Vec<String> {
    let mut left: Vec<String> = mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| format!("mount {} ({})", m.mount_point.display(), m.source))
        .collect();
    left.extend(
        loops_under(dir)
            .into_iter()
            .map(|(dev, file)| format!("loop {} -> {file}", dev.display())),
    );
    left
}

/// Unmounts everything under `dir` and detaches loop devices backed by files
/// under it; returns what could not be removed.
pub fn cleanup_host(dir: &Path) -> Vec<String> {
    const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
    for _ in 0..50 {
        let under: Vec<MountInfo> = mounts()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(dir))
            .collect();
        for mount in under.iter().rev() {
            if let Ok(c) = std::ffi::CString::new(mount.mount_point.as_os_str().as_encoded_bytes())
            {
                // SAFETY: c is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for (device, _) in loops_under(dir) {
            if let Ok(file) = File::open(&device) {
                // SAFETY: LOOP_CLR_FD takes no argument.
                unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD, 0) };
            }
        }
        let left = host_leftovers(dir);
        if left.is_empty() {
            return left;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    host_leftovers(dir)
}

/// Capabilities a running server advertises.
pub struct Advertised {
    pub plugin: BTreeSet<i32>,
    pub controller: BTreeSet<i32>,
    pub node: BTreeSet<i32>,
    pub online_expansion: bool,
}

impl Advertised {
    pub fn controller(&self, rpc: CtrlRpc) -> bool {
        self.controller.contains(&(rpc as i32))
    }
    pub fn node(&self, rpc: NodeRpc) -> bool {
        self.node.contains(&(rpc as i32))
    }
    pub fn plugin(&self, service: PluginService) -> bool {
        self.plugin.contains(&(service as i32))
    }
}

impl Server {
    /// Reads the advertised capabilities; everything the backend description
    /// expects must be among them (so a lost capability fails instead of
    /// skipping the tests that depend on it).
    pub async fn advertised(&self) -> Advertised {
        use csi::controller_service_capability::Type as C;
        use csi::node_service_capability::Type as N;
        use csi::plugin_capability::Type as P;
        let plugin = self
            .identity()
            .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await
            .expect("GetPluginCapabilities")
            .into_inner();
        let mut advertised = Advertised {
            plugin: BTreeSet::new(),
            controller: BTreeSet::new(),
            node: BTreeSet::new(),
            online_expansion: false,
        };
        for cap in plugin.capabilities {
            match cap.r#type {
                Some(P::Service(s)) => {
                    advertised.plugin.insert(s.r#type);
                }
                Some(P::VolumeExpansion(e)) => {
                    advertised.online_expansion =
                        e.r#type == csi::plugin_capability::volume_expansion::Type::Online as i32;
                }
                None => {}
            }
        }
        if advertised.plugin(PluginService::ControllerService) {
            let caps = self
                .controller()
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
                .await
                .expect("ControllerGetCapabilities")
                .into_inner();
            for cap in caps.capabilities {
                if let Some(C::Rpc(rpc)) = cap.r#type {
                    advertised.controller.insert(rpc.r#type);
                }
            }
        }
        let caps = self
            .node()
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await
            .expect("NodeGetCapabilities")
            .into_inner();
        for cap in caps.capabilities {
            if let Some(N::Rpc(rpc)) = cap.r#type {
                advertised.node.insert(rpc.r#type);
            }
        }
        for s in &self.backend.plugin_services {
            assert!(
                advertised.plugin(*s),
                "plugin capability {s:?} not advertised"
            );
        }
        for r in &self.backend.controller_rpcs {
            assert!(
                advertised.controller(*r),
                "controller capability {r:?} not advertised"
            );
        }
        for r in &self.backend.node_rpcs {
            assert!(advertised.node(*r), "node capability {r:?} not advertised");
        }
        advertised
    }
}
