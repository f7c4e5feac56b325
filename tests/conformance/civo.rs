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
use multicsi::emulator::civo::state::{CLUSTER_ID, INSTANCES, REGION};

use crate::harness::{BackendUnderTest, Emulator, Sizes};

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
        b.env.push(("CIVO_API_RATE_LIMIT", "500"));
        b.node_tests = false;
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
            alt_parameters: vec![("multicsi.io/civo-volume-type", "ms-xfs-2-replicas")],
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
