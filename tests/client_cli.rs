//! `multicsi client` against a real `multicsi serve` (hostpath backend) on a
//! temporary unix socket and state directory.
//!
//! The binary is this package's, or the one `MULTICSI_BIN` names (e.g. a
//! release build).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> String {
    std::env::var("MULTICSI_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_multicsi").to_string())
}
const MIB: u64 = 1 << 20;

/// A running `multicsi serve`; stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = format!("unix://{}", dir.path().join("csi.sock").display());
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let child = Command::new(bin())
            .args(["serve", "--endpoint", &endpoint, "--node-id", "n1"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--kubelet-dir")
            .arg(dir.path())
            .args(["--log-format", "json", "--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start multicsi serve");
        let server = Server {
            child,
            dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = server.client(&["identity", "probe"]);
            if probe.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not come up: {}\nlog:\n{}",
                String::from_utf8_lossy(&probe.stderr),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    fn client(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(["client", "--endpoint", &self.endpoint])
            .args(args)
            .env_remove("CSI_ENDPOINT")
            .output()
            .expect("run multicsi client")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "multicsi client {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a command with --json that must succeed; returns its objects.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ok(&all)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Runs a command with --json that must print exactly one object.
    fn one(&self, args: &[&str]) -> Value {
        let mut objects = self.json(args);
        assert_eq!(objects.len(), 1, "{args:?} printed {objects:?}");
        objects.remove(0)
    }

    /// Runs a command that must fail with exit code 1 and this gRPC code;
    /// returns stderr.
    fn fails(&self, args: &[&str], code: &str) -> String {
        let out = self.client(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {code}: ")),
            "{args:?}: expected {code}, got {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        stderr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

fn u64_of(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn volume_ids(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| o["volume_id"].as_str().map(String::from))
        .collect()
}

#[test]
fn identity_commands() {
    let server = Server::start();
    let info = server.one(&["identity", "info"]);
    assert_eq!(str_of(&info, "name"), "multicsi.io");
    assert_eq!(str_of(&info, "vendor_version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(info["manifest"]["backend"], "hostpath");
    assert_eq!(
        server.ok(&["identity", "info"]),
        format!(
            "driver multicsi.io {}  backend=hostpath\n",
            env!("CARGO_PKG_VERSION")
        )
    );

    let caps = server.one(&["identity", "capabilities"]);
    let caps: Vec<&str> = caps["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(caps.contains(&"CONTROLLER_SERVICE"), "{caps:?}");
    assert!(
        caps.contains(&"VOLUME_ACCESSIBILITY_CONSTRAINTS"),
        "{caps:?}"
    );

    assert_eq!(server.one(&["identity", "probe"])["ready"], true);
    assert_eq!(server.ok(&["identity", "probe"]), "ready\n");

    let node = server.one(&["node", "info"]);
    assert_eq!(str_of(&node, "node_id"), "n1");
    assert_eq!(
        node["accessible_topology"]["topology.multicsi.io/node"],
        "n1"
    );
    let controller = server.ok(&["controller", "capabilities"]);
    assert!(
        controller.contains("capability CREATE_DELETE_SNAPSHOT\n"),
        "{controller}"
    );
}

#[test]
fn controller_volume_lifecycle() {
    let server = Server::start();
    let a = server.one(&["controller", "create", "pvc-a", "--size", "64Mi"]);
    let id_a = str_of(&a, "volume_id").to_string();
    assert!(is_id(&id_a, "hp-"), "{id_a}");
    assert_eq!(u64_of(&a, "capacity_bytes"), 64 * MIB);
    assert_eq!(
        a["accessible_topology"][0]["topology.multicsi.io/node"],
        "n1"
    );
    assert_eq!(a["content_source"], Value::Null);

    // The same name again is the same volume; an incompatible repeat is refused.
    let again = server.one(&["controller", "create", "pvc-a", "--size", "64Mi"]);
    assert_eq!(str_of(&again, "volume_id"), id_a);
    server.fails(
        &[
            "controller",
            "create",
            "pvc-a",
            "--size",
            "128Mi",
            "--limit",
            "128Mi",
        ],
        "AlreadyExists",
    );

    let text = server.ok(&[
        "controller",
        "create",
        "pvc-b",
        "--size",
        "1Gi",
        "--fs",
        "xfs",
    ]);
    assert!(text.starts_with("volume hp-"), "{text}");
    assert!(
        text.ends_with(
            " 1.0 GiB  topology.multicsi.io/node=n1  context multicsi.io/access-type=mount,multicsi.io/fs-type=xfs\n"
        ),
        "{text}"
    );
    let id_b = text
        .split_whitespace()
        .nth(1)
        .expect("volume id")
        .to_string();

    // Every page by default; one page with --max, then the rest by token.
    let mut all = volume_ids(&server.json(&["controller", "list"]));
    all.sort();
    let mut expected = vec![id_a.clone(), id_b.clone()];
    expected.sort();
    assert_eq!(all, expected);
    let first = server.json(&["controller", "list", "--max", "1"]);
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(volume_ids(&first).len(), 1);
    let token = str_of(&first[1], "next_token");
    let rest = server.json(&["controller", "list", "--token", token]);
    let mut paged = volume_ids(&first);
    paged.extend(volume_ids(&rest));
    paged.sort();
    assert_eq!(paged, expected);

    let got = server.one(&["controller", "get", &id_a]);
    assert_eq!(str_of(&got, "volume_id"), id_a);
    assert_eq!(got["published_node_ids"], serde_json::json!([]));
    assert_eq!(got["volume_condition"]["abnormal"], false);

    let published = server.one(&["controller", "publish", &id_a, "--node", "n1"]);
    assert_eq!(str_of(&published, "node_id"), "n1");
    let got = server.one(&["controller", "get", &id_a]);
    assert_eq!(got["published_node_ids"], serde_json::json!(["n1"]));
    server.fails(
        &["controller", "publish", &id_a, "--node", "elsewhere"],
        "NotFound",
    );
    server.ok(&["controller", "unpublish", &id_a, "--node", "n1"]);

    let validated = server.one(&["controller", "validate", &id_a, "--fs", "ext4"]);
    assert_eq!(validated["confirmed"], true);
    let refused = server.one(&["controller", "validate", &id_a, "--fs", "zfs"]);
    assert_eq!(refused["confirmed"], false);
    assert!(str_of(&refused, "message").contains("zfs"), "{refused}");

    let grown = server.one(&["controller", "expand", &id_a, "--size", "96Mi"]);
    assert_eq!(u64_of(&grown, "capacity_bytes"), 96 * MIB);
    assert_eq!(grown["node_expansion_required"], true);

    let capacity = server.one(&["controller", "capacity"]);
    assert!(u64_of(&capacity, "available_capacity") > 0, "{capacity}");

    let deleted = server.one(&["controller", "delete", &id_a]);
    assert_eq!(str_of(&deleted, "volume_id"), id_a);
    assert_eq!(
        server.ok(&["controller", "delete", &id_b]),
        format!("deleted {id_b}\n")
    );
    server.ok(&["controller", "delete", &id_a]);
    assert!(server.json(&["controller", "list"]).is_empty());
}

#[test]
fn unknown_volumes_are_not_found() {
    let server = Server::start();
    let missing = format!("hp-{}", "0".repeat(32));
    let stderr = server.fails(&["controller", "get", &missing], "NotFound");
    assert!(stderr.contains(&missing), "{stderr}");
    server.fails(&["--json", "controller", "get", &missing], "NotFound");
    server.fails(
        &["controller", "expand", &missing, "--size", "1Gi"],
        "NotFound",
    );
    server.fails(
        &[
            "controller",
            "snapshot",
            "create",
            "s",
            "--volume",
            &missing,
        ],
        "NotFound",
    );
    server.fails(&["controller", "get", "../etc"], "InvalidArgument");
}

#[test]
fn snapshots_create_list_restore_delete() {
    let server = Server::start();
    let volume = server.one(&["controller", "create", "pvc-s", "--size", "32Mi"]);
    let volume_id = str_of(&volume, "volume_id");

    let snap = server.one(&[
        "controller",
        "snapshot",
        "create",
        "snap-1",
        "--volume",
        volume_id,
    ]);
    let snap_id = str_of(&snap, "snapshot_id").to_string();
    assert!(is_id(&snap_id, "hps-"), "{snap_id}");
    assert_eq!(str_of(&snap, "source_volume_id"), volume_id);
    assert_eq!(u64_of(&snap, "size_bytes"), 32 * MIB);
    assert_eq!(snap["ready_to_use"], true);
    assert!(str_of(&snap, "creation_time").ends_with('Z'), "{snap}");

    let listed = server.json(&["controller", "snapshot", "list"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(str_of(&listed[0], "snapshot_id"), snap_id);
    assert_eq!(
        server
            .json(&["controller", "snapshot", "list", "--volume", volume_id])
            .len(),
        1
    );
    assert_eq!(
        server
            .json(&["controller", "snapshot", "list", "--id", &snap_id])
            .len(),
        1
    );
    let other = format!("hp-{}", "1".repeat(32));
    assert!(
        server
            .json(&["controller", "snapshot", "list", "--volume", &other])
            .is_empty()
    );
    let text = server.ok(&["controller", "snapshot", "list"]);
    assert!(
        text.starts_with(&format!(
            "snapshot {snap_id} 32.0 MiB  of {volume_id}  ready  created "
        )),
        "{text}"
    );

    let restored = server.one(&["controller", "create", "pvc-r", "--from-snapshot", &snap_id]);
    assert_eq!(restored["content_source"]["snapshot_id"], snap_id.as_str());
    assert!(u64_of(&restored, "capacity_bytes") >= 32 * MIB);

    let deleted = server.one(&["controller", "snapshot", "delete", &snap_id]);
    assert_eq!(str_of(&deleted, "snapshot_id"), snap_id);
    assert!(server.json(&["controller", "snapshot", "list"]).is_empty());
    server.ok(&["controller", "delete", str_of(&restored, "volume_id")]);
    server.ok(&["controller", "delete", volume_id]);
}

#[test]
fn group_snapshots_create_get_restore_delete() {
    let server = Server::start();
    let caps = server.one(&["group-snapshot", "capabilities"]);
    assert_eq!(
        caps["capabilities"][0], "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT",
        "{caps}"
    );
    let a = server.one(&["controller", "create", "pvc-ga", "--size", "16Mi"]);
    let b = server.one(&["controller", "create", "pvc-gb", "--size", "16Mi"]);
    let (a, b) = (str_of(&a, "volume_id"), str_of(&b, "volume_id"));
    let args = [
        "group-snapshot",
        "create",
        "g-1",
        "--volume",
        a,
        "--volume",
        b,
    ];
    let group = server.one(&args);
    let group_id = str_of(&group, "group_snapshot_id").to_string();
    assert!(is_id(&group_id, "hpg-"), "{group_id}");
    assert_eq!(group["ready_to_use"], true);
    let members = group["snapshots"].as_array().expect("snapshots");
    assert_eq!(members.len(), 2);
    for member in members {
        assert_eq!(str_of(member, "group_snapshot_id"), group_id);
    }
    assert_eq!(server.one(&args), group, "a repeat returns the same group");
    let text = server.ok(&["group-snapshot", "get", &group_id]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(&format!(
            "group-snapshot {group_id}  2 snapshots  ready  created "
        )),
        "{text}"
    );
    assert!(lines[1].starts_with("  snapshot hps-"), "{text}");
    let member = str_of(&members[0], "snapshot_id").to_string();
    let restored = server.one(&["controller", "create", "pvc-gr", "--from-snapshot", &member]);
    assert_eq!(restored["content_source"]["snapshot_id"], member.as_str());
    server.fails(
        &["group-snapshot", "create", "g-1", "--volume", a],
        "AlreadyExists",
    );
    server.fails(
        &["controller", "snapshot", "delete", &member],
        "InvalidArgument",
    );
    server.fails(
        &[
            "group-snapshot",
            "get",
            &group_id,
            "--snapshot",
            "hps-other",
        ],
        "InvalidArgument",
    );
    let deleted = server.one(&["group-snapshot", "delete", &group_id]);
    assert_eq!(str_of(&deleted, "group_snapshot_id"), group_id);
    assert!(server.json(&["controller", "snapshot", "list"]).is_empty());
    server.fails(&["group-snapshot", "get", &group_id], "NotFound");
    for id in [str_of(&restored, "volume_id"), a, b] {
        server.ok(&["controller", "delete", id]);
    }
}

#[test]
fn snapshot_allocated_and_delta() {
    use std::os::unix::fs::FileExt;
    let server = Server::start();
    let volume = server.one(&[
        "controller",
        "create",
        "pvc-m",
        "--size",
        "16Mi",
        "--param",
        "multicsi.io/provisioning=thin",
    ]);
    let volume_id = str_of(&volume, "volume_id").to_string();
    let image = server
        .path("state/volumes")
        .join(format!("{volume_id}.img"));
    let write = |offset: u64, len: usize, byte: u8| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .expect("image");
        file.write_all_at(&vec![byte; len], offset).expect("write");
        file.sync_all().expect("sync");
    };
    write(MIB, 8192, 1);
    let base = server.one(&[
        "controller",
        "snapshot",
        "create",
        "m-1",
        "--volume",
        &volume_id,
    ]);
    let base = str_of(&base, "snapshot_id").to_string();
    write(4 * MIB, 4096, 2);
    let target = server.one(&[
        "controller",
        "snapshot",
        "create",
        "m-2",
        "--volume",
        &volume_id,
    ]);
    let target = str_of(&target, "snapshot_id").to_string();

    let lines = server.json(&["snapshot", "delta", &base, &target]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(u64_of(&lines[0], "volume_capacity_bytes"), 16 * MIB);
    assert_eq!(str_of(&lines[0], "block_metadata_type"), "VARIABLE_LENGTH");
    assert_eq!(u64_of(&lines[1], "byte_offset"), 4 * MIB);
    assert_eq!(u64_of(&lines[1], "size_bytes"), 4096);
    assert_eq!(u64_of(&lines[2], "ranges"), 1);

    let text = server.ok(&["snapshot", "allocated", &target, "--max-results", "1"]);
    assert_eq!(
        text,
        "volume 16.0 MiB (16777216 bytes)  variable-length\n\
         range 1048576 8192  (8.0 KiB at 1.0 MiB)\n\
         range 4194304 4096  (4.0 KiB at 4.0 MiB)\n\
         total 2 ranges, 12.0 KiB (12288 bytes)\n"
    );
    // Continued after the first range.
    let rest = server.json(&["snapshot", "allocated", &target, "--from", "1056768"]);
    assert_eq!(u64_of(&rest[1], "byte_offset"), 4 * MIB);
    assert_eq!(rest.len(), 3);

    server.fails(&["snapshot", "delta", &target, &base], "InvalidArgument");
    server.fails(
        &["snapshot", "allocated", &format!("hps-{}", "0".repeat(32))],
        "NotFound",
    );
    server.fails(
        &["snapshot", "allocated", &target, "--from", "1Gi"],
        "OutOfRange",
    );
}

#[test]
fn secrets_are_never_printed() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("key");
    std::fs::write(&file, "from-a-file-4711\n").expect("secret file");
    let out = server.client(&[
        "controller",
        "create",
        "pvc-secret",
        "--secret",
        "token=hunter2-4711",
        "--secret-file",
        &format!("other={}", file.display()),
    ]);
    assert!(out.status.success());
    // A failing call with a secret must not echo it either.
    let failed = server.client(&[
        "controller",
        "create",
        "pvc-secret",
        "--size",
        "2Gi",
        "--limit",
        "2Gi",
        "--secret",
        "token=hunter2-4711",
    ]);
    assert_eq!(failed.status.code(), Some(1));
    let usage = server.client(&["controller", "delete", "x", "--secret", "hunter2-4711"]);
    assert_eq!(usage.status.code(), Some(2));
    for out in [&out, &failed, &usage] {
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains("4711"), "a secret was printed: {text}");
        }
    }
    let log = server.log();
    assert!(log.contains("CreateVolume"), "the log shows no call: {log}");
    assert!(!log.contains("4711"), "a secret reached the log: {log}");
}

#[test]
fn usage_errors_exit_2() {
    let run = |args: &[&str]| {
        Command::new(bin())
            .arg("client")
            .args(args)
            .env_remove("CSI_ENDPOINT")
            .output()
            .expect("run multicsi client")
    };
    for args in [
        &["identity", "info"][..],
        &["--endpoint", "csi.sock", "identity", "info"],
        &[
            "--endpoint",
            "unix:///x.sock",
            "controller",
            "create",
            "v",
            "--size",
            "1.5Gi",
        ],
        &[
            "--endpoint",
            "unix:///x.sock",
            "controller",
            "create",
            "v",
            "--block",
            "--fs",
            "xfs",
        ],
        &[
            "--endpoint",
            "unix:///x.sock",
            "controller",
            "create",
            "v",
            "--param",
            "a=1",
            "--param",
            "a=2",
        ],
        &["--endpoint", "unix:///x.sock", "node", "stage", "v"],
        &["--endpoint", "unix:///x.sock", "controller", "frobnicate"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}"
        );
    }
    // The endpoint may come from the environment.
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = format!("unix://{}", dir.path().join("none.sock").display());
    let out = Command::new(bin())
        .args(["client", "identity", "probe"])
        .env("CSI_ENDPOINT", &missing)
        .output()
        .expect("run multicsi client");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: Unavailable: cannot connect to"),
        "{stderr}"
    );
}

#[test]
fn a_silent_driver_times_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("silent.sock");
    // Accepts connections and never answers.
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["client", "--timeout", "1", "--endpoint"])
        .arg(format!("unix://{}", path.display()))
        .args(["identity", "info"])
        .output()
        .expect("run multicsi client");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: DeadlineExceeded: "), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test attaches loop devices and mounts filesystems: run it as root"
    );
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path.as_ref()))
}

/// Undoes node state a failed assertion left behind, before the server stops.
struct NodeCleanup<'a> {
    server: &'a Server,
    volumes: Vec<(String, String, String)>,
}

impl Drop for NodeCleanup<'_> {
    fn drop(&mut self) {
        for (id, staging, target) in &self.volumes {
            self.server
                .client(&["node", "unpublish", id, "--target", target]);
            self.server
                .client(&["node", "unstage", id, "--staging", staging]);
        }
    }
}

#[test]
fn node_stage_publish_expand_unstage() {
    require_root();
    let server = Server::start();
    let staging = server.path("staging");
    let target = server.path("target");
    let (staging_s, target_s) = (
        staging.to_string_lossy().to_string(),
        target.to_string_lossy().to_string(),
    );
    // xfs: ext4 online growth needs CAP_SYS_RESOURCE, which some sandboxes lack.
    let created = server.one(&[
        "controller",
        "create",
        "pvc-n",
        "--size",
        "300Mi",
        "--fs",
        "xfs",
    ]);
    let id = str_of(&created, "volume_id").to_string();
    let mut cleanup = NodeCleanup {
        server: &server,
        volumes: Vec::new(),
    };
    cleanup
        .volumes
        .push((id.clone(), staging_s.clone(), target_s.clone()));

    server.ok(&["controller", "publish", &id, "--node", "n1", "--fs", "xfs"]);
    let staged = server.one(&["node", "stage", &id, "--staging", &staging_s, "--fs", "xfs"]);
    assert_eq!(staged["action"], "staged");
    assert!(is_mounted(&staging));
    server.ok(&[
        "node",
        "publish",
        &id,
        "--staging",
        &staging_s,
        "--target",
        &target_s,
        "--fs",
        "xfs",
    ]);
    assert!(is_mounted(&target));
    std::fs::write(target.join("hello"), "hello from the client test").expect("write");

    let before = server.one(&["node", "stats", &id, "--path", &target_s]);
    assert_eq!(before["usage"][0]["unit"], "BYTES");
    let total_before = u64_of(&before["usage"][0], "total");
    assert!(total_before > 0 && total_before <= 300 * MIB, "{before}");
    assert_eq!(before["volume_condition"]["abnormal"], false);

    server.ok(&["controller", "expand", &id, "--size", "600Mi"]);
    let grown = server.one(&[
        "node",
        "expand",
        &id,
        "--path",
        &target_s,
        "--staging",
        &staging_s,
        "--size",
        "600Mi",
    ]);
    assert_eq!(u64_of(&grown, "capacity_bytes"), 600 * MIB);
    let after = server.one(&["node", "stats", &id, "--path", &target_s]);
    let total_after = u64_of(&after["usage"][0], "total");
    assert!(
        total_after > total_before + 200 * MIB,
        "{before} -> {after}"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("hello")).expect("read"),
        "hello from the client test"
    );

    server.ok(&["node", "unpublish", &id, "--target", &target_s]);
    assert!(!is_mounted(&target));
    server.ok(&["node", "unstage", &id, "--staging", &staging_s]);
    assert!(!is_mounted(&staging));
    server.ok(&["controller", "unpublish", &id, "--node", "n1"]);
    server.ok(&["controller", "delete", &id]);
    server.fails(&["controller", "get", &id], "NotFound");
}

#[test]
fn node_block_volume() {
    require_root();
    let server = Server::start();
    let staging = server.path("staging").to_string_lossy().to_string();
    let target = server.path("device").to_string_lossy().to_string();
    let created = server.one(&[
        "controller",
        "create",
        "pvc-blk",
        "--size",
        "16Mi",
        "--block",
    ]);
    let id = str_of(&created, "volume_id").to_string();
    let _cleanup = NodeCleanup {
        server: &server,
        volumes: vec![(id.clone(), staging.clone(), target.clone())],
    };
    server.ok(&["node", "stage", &id, "--staging", &staging, "--block"]);
    server.ok(&[
        "node",
        "publish",
        &id,
        "--staging",
        &staging,
        "--target",
        &target,
        "--block",
    ]);
    let stats = server.one(&["node", "stats", &id, "--path", &target]);
    assert_eq!(u64_of(&stats["usage"][0], "total"), 16 * MIB, "{stats}");
    server.ok(&["node", "unpublish", &id, "--target", &target]);
    server.ok(&["node", "unstage", &id, "--staging", &staging]);
    server.ok(&["controller", "delete", &id]);
}
