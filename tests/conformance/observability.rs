//! What the driver tells about itself: its logs (at trace level) and its
//! metrics never carry a secret, whether it came in a request (LUKS key,
//! controller and node secrets) or from the environment (cloud tokens).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use multicsi::csi;
use multicsi::csi::controller_service_capability::rpc::Type as Rpc;
use tonic::Code;

use crate::api::{fails, mount_cap, ok, range};
use crate::harness::{BackendUnderTest, Server, require_node};

/// The filesystem of the lifecycle: xfs grows online without the
/// CAP_SYS_RESOURCE that some sandboxes drop (ext4 needs it).
const FS: &str = "xfs";

/// The cloud providers' token variables.
const TOKEN_VARIABLES: &[&str] = &["CLOUDSCALE_ACCESS_TOKEN", "CIVO_API_KEY", "PACKET_API_KEY"];

/// A value no log line or metric could hold by chance.
fn random_secret(kind: &str) -> String {
    let random: String = (0..28).map(|_| fastrand::alphanumeric()).collect();
    format!("{kind}-{random}")
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// The address the metrics listener reports in the log (JSON or text); the
/// latest start's.
pub fn metrics_address(server: &Server) -> SocketAddr {
    let log = server.log_tail(usize::MAX);
    let from_json = |line: &str| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        (event["message"] == "metrics listening")
            .then(|| event["address"].as_str()?.parse().ok())?
    };
    let from_text = |line: &str| {
        let (_, rest) = line.split_once("metrics listening address=")?;
        rest.split_whitespace().next()?.parse().ok()
    };
    log.lines()
        .rev()
        .find_map(|line| from_json(line).or_else(|| from_text(line)))
        .unwrap_or_else(|| panic!("no \"metrics listening\" line in the log:\n{log}"))
}

/// GET `path` over HTTP/1.1; returns the status line and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// A whole lifecycle with secrets in every request that takes them and
/// tokens in the driver's environment, logged at trace level, as JSON and
/// as text: no secret value appears in the log or in a scrape of /metrics.
pub async fn secrets_stay_out_of_logs_and_metrics(b: BackendUnderTest) {
    require_node(&b);
    for format in ["json", "text"] {
        lifecycle_with_secrets(b.clone(), format).await;
    }
}

async fn lifecycle_with_secrets(b: BackendUnderTest, format: &'static str) {
    let mut b = b;
    b.args.extend([
        "--metrics-address",
        "127.0.0.1:0",
        "--log-level",
        "trace",
        "--log-format",
        format,
    ]);
    let mut secrets: Vec<String> = Vec::new();
    for name in TOKEN_VARIABLES {
        match b.env.iter().find(|(key, _)| key == name) {
            // A backend served against an emulator keeps its own token.
            Some((_, value)) => secrets.push(value.to_string()),
            None => {
                let token = random_secret("token");
                secrets.push(token.clone());
                b.env.push((name, leak(token)));
            }
        }
    }
    let luks_key = random_secret("luks");
    let controller_secret = random_secret("ctrl");
    let node_secret = random_secret("node");
    secrets.extend([
        luks_key.clone(),
        controller_secret.clone(),
        node_secret.clone(),
    ]);
    let controller_secrets: HashMap<String, String> =
        [("apiToken".to_string(), controller_secret.clone())].into();
    let node_secrets: HashMap<String, String> = [
        ("luksKey".to_string(), luks_key.clone()),
        ("nodeToken".to_string(), node_secret.clone()),
    ]
    .into();

    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let snapshots = adv.controller(Rpc::CreateDeleteSnapshot);
    // Expansion while published: where it is ONLINE (Civo grows detached
    // volumes only).
    let expansion = adv.controller(Rpc::ExpandVolume) && adv.online_expansion;
    let metrics = metrics_address(&s);
    let mut c = s.controller();
    let mut n = s.node();
    let bytes = b.fs_bytes(FS);

    let volume = ok(
        "CreateVolume with secrets",
        c.create_volume(csi::CreateVolumeRequest {
            name: "obs-secrets".into(),
            capacity_range: range(bytes, 0),
            volume_capabilities: vec![mount_cap(FS)],
            secrets: controller_secrets.clone(),
            ..Default::default()
        })
        .await,
    )
    .volume
    .expect("a volume");
    let id = volume.volume_id.clone();
    fails(
        "CreateVolume with secrets and an unknown parameter",
        c.create_volume(csi::CreateVolumeRequest {
            name: "obs-secrets-bad".into(),
            capacity_range: range(bytes, 0),
            volume_capabilities: vec![mount_cap(FS)],
            parameters: [("no-such-parameter".to_string(), "x".to_string())].into(),
            secrets: controller_secrets.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    let published = ok(
        "ControllerPublishVolume with secrets",
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: b.node_id.into(),
            volume_capability: Some(mount_cap(FS)),
            secrets: controller_secrets.clone(),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await,
    );
    let staging = s.path_str("staging");
    let target = s.path_str("target");
    std::fs::create_dir_all(&staging).unwrap();
    let stage = csi::NodeStageVolumeRequest {
        volume_id: id.clone(),
        publish_context: published.publish_context.clone(),
        staging_target_path: staging.clone(),
        volume_capability: Some(mount_cap(FS)),
        secrets: node_secrets.clone(),
        volume_context: volume.volume_context.clone(),
    };
    // The volume is not encrypted: a LUKS key with it is refused (and
    // kept out of the error).
    fails(
        "NodeStageVolume of a plain volume with a LUKS key",
        n.node_stage_volume(stage.clone()).await,
        Code::InvalidArgument,
    );
    let mut plain = stage.clone();
    plain.secrets.remove("luksKey");
    ok(
        "NodeStageVolume with secrets",
        n.node_stage_volume(plain.clone()).await,
    );
    let mut unknown = plain;
    unknown.volume_id = b.unknown_volume_id.into();
    fails(
        "NodeStageVolume of an unknown volume with secrets",
        n.node_stage_volume(unknown).await,
        Code::NotFound,
    );
    ok(
        "NodePublishVolume with secrets",
        n.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            publish_context: published.publish_context.clone(),
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            volume_capability: Some(mount_cap(FS)),
            secrets: node_secrets.clone(),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await,
    );
    std::fs::write(Path::new(&target).join("data"), b"observed").unwrap();
    ok(
        "NodeGetVolumeStats",
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.clone(),
            ..Default::default()
        })
        .await,
    );
    let snapshot = if snapshots {
        Some(
            ok(
                "CreateSnapshot with secrets",
                c.create_snapshot(csi::CreateSnapshotRequest {
                    name: "obs-secrets-snap".into(),
                    source_volume_id: id.clone(),
                    secrets: controller_secrets.clone(),
                    ..Default::default()
                })
                .await,
            )
            .snapshot
            .expect("a snapshot"),
        )
    } else {
        None
    };
    if expansion {
        ok(
            "ControllerExpandVolume with secrets",
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: range(bytes * 2, 0),
                secrets: controller_secrets.clone(),
                volume_capability: Some(mount_cap(FS)),
            })
            .await,
        );
        ok(
            "NodeExpandVolume with secrets",
            n.node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: target.clone(),
                capacity_range: range(bytes * 2, 0),
                staging_target_path: staging.clone(),
                volume_capability: Some(mount_cap(FS)),
                secrets: node_secrets.clone(),
            })
            .await,
        );
    }
    if let Some(snapshot) = &snapshot {
        ok(
            "DeleteSnapshot with secrets",
            c.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snapshot.snapshot_id.clone(),
                secrets: controller_secrets.clone(),
            })
            .await,
        );
    }
    ok(
        "NodeUnpublishVolume",
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.clone(),
        })
        .await,
    );
    ok(
        "NodeUnstageVolume",
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
        })
        .await,
    );
    ok(
        "ControllerUnpublishVolume with secrets",
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: b.node_id.into(),
            secrets: controller_secrets.clone(),
        })
        .await,
    );
    ok(
        "DeleteVolume with secrets",
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            secrets: controller_secrets.clone(),
        })
        .await,
    );

    let (status, scrape) = http_get(metrics, "/metrics");
    assert!(status.contains(" 200 "), "/metrics: {status}");
    let log = s.log_tail(usize::MAX);
    // The capture is real: trace events with the RPC spans were logged, and
    // the scrape counted the RPCs made.
    let (trace, request_id) = match format {
        "json" => ("\"level\":\"TRACE\"", "\"request_id\":"),
        _ => (" TRACE ", "request{request_id="),
    };
    assert!(
        log.contains(trace) && log.contains(request_id),
        "the {format} log has no trace events with request ids"
    );
    assert!(log.contains(&id), "the log does not mention the volume");
    let mut counted = vec!["NodeStageVolume"];
    if snapshots {
        counted.push("CreateSnapshot");
    }
    if expansion {
        counted.push("NodeExpandVolume");
    }
    for method in counted {
        assert!(
            scrape.contains(&format!(
                "multicsi_csi_requests_total{{method=\"{method}\",code=\"OK\"}} 1\n"
            )),
            "{method} is not counted once in:\n{scrape}"
        );
    }
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret value is in the {format} log"
        );
        assert!(
            !scrape.contains(secret.as_str()),
            "a secret value is in the metrics ({format} run)"
        );
    }
    let (ready, body) = http_get(metrics, "/readyz");
    assert!(ready.contains(" 200 "), "/readyz: {ready} {body}");
    let (health, _) = http_get(metrics, "/healthz");
    assert!(health.contains(" 200 "), "/healthz: {health}");
}

/// A request field with control characters (a volume name or id with a
/// newline and an escape sequence) cannot forge a line of the text log:
/// the driver's log keeps it on the request's own line, escaped.
pub async fn control_characters_cannot_forge_log_lines(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let forged = "2026-01-01T00:00:00.000000Z  INFO forged: volume deleted";
    let hostile = format!("pvc-1\n{forged}\u{1b}[2J");
    fails(
        "CreateVolume with a newline in the name",
        s.controller()
            .create_volume(csi::CreateVolumeRequest {
                name: hostile.clone(),
                capacity_range: range(b.sizes.small, 0),
                volume_capabilities: vec![mount_cap("ext4")],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    fails(
        "NodeUnpublishVolume with a newline in the volume id",
        s.node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: hostile.clone(),
                target_path: s.path_str("target"),
            })
            .await,
        Code::InvalidArgument,
    );
    let log = s.log_tail(10_000);
    assert!(
        log.lines().all(|line| !line.starts_with(forged)),
        "a request forged a log line:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
    assert!(
        log.contains("pvc-1\\n2026-01-01"),
        "the hostile name is not in the log, escaped:\n{log}"
    );
}
