//! `multicsi doctor` run for real on this machine. Needs root (it checks
//! privileges and makes a shared bind mount); fails, does not skip, without.
//!
//! The build machines' kernel has no dm-crypt, so the default check must
//! fail there and name it; with `--without-encryption` and a kubelet
//! directory on a shared mount the hostpath node is ready.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> String {
    std::env::var("MULTICSI_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_multicsi").to_string())
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "tests/doctor.rs checks privileges and makes bind mounts: run it as root"
    );
}

fn doctor(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("doctor")
        .args(args)
        .env_remove("MULTICSI_CONFIG")
        .env_remove("MULTICSI_BACKEND")
        .output()
        .expect("run multicsi doctor")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether the running kernel has dm-crypt in any form.
fn kernel_has_dm_crypt() -> bool {
    if Path::new("/sys/module/dm_crypt").exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release.trim());
    ["modules.builtin", "modules.dep"]
        .iter()
        .any(|f| std::fs::read_to_string(dir.join(f)).is_ok_and(|t| t.contains("/dm-crypt.ko")))
}

/// A directory bind-mounted onto itself with shared propagation, like the
/// kubelet directory of a node; unmounted when dropped.
struct SharedDir {
    dir: tempfile::TempDir,
}

impl SharedDir {
    fn new() -> SharedDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: valid C strings, NULL type and data.
        unsafe {
            assert_eq!(
                libc::mount(
                    c.as_ptr(),
                    c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null()
                ),
                0,
                "bind mount: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::mount(
                    std::ptr::null(),
                    c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_SHARED,
                    std::ptr::null()
                ),
                0,
                "make shared: {}",
                std::io::Error::last_os_error()
            );
        }
        SharedDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = multicsi::node::mount::unmount(&self.dir.path().canonicalize().unwrap());
    }
}

#[test]
fn doctor_fails_without_dm_crypt_and_names_it() {
    require_root();
    let socket_dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/csi.sock", socket_dir.path().display());
    let out = doctor(&["--endpoint", &endpoint, "--backend", "hostpath"]);
    let all = text(&out);
    assert!(all.contains("multicsi doctor: backend hostpath"), "{all}");
    if kernel_has_dm_crypt() {
        assert!(all.contains("ok       dm-crypt"), "{all}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains("MISSING  dm-crypt: the kernel has no dm_crypt"),
            "{all}"
        );
        assert!(
            all.contains("--without-encryption"),
            "the fix is named: {all}"
        );
        assert!(
            all.lines()
                .last()
                .unwrap()
                .starts_with("this node cannot serve hostpath volumes: missing")
                && all.lines().last().unwrap().contains("dm-crypt"),
            "{all}"
        );
    }
    assert!(all.contains("ok       CSI socket directory"), "{all}");
    assert_eq!(
        std::fs::read_dir(socket_dir.path()).unwrap().count(),
        0,
        "doctor must leave nothing in the socket directory"
    );
}

#[test]
fn the_luks_helper_is_checked() {
    require_root();
    let socket_dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/csi.sock", socket_dir.path().display());
    let args = ["--endpoint", &endpoint, "--backend", "hostpath"];
    let all = text(&doctor(&args));
    assert!(
        all.contains("ok       libcryptsetup: the LUKS helper multicsi-luks runs"),
        "{all}"
    );
    let out = Command::new(bin())
        .arg("doctor")
        .args(args)
        .env("MULTICSI_LUKS_HELPER", "/nonexistent/multicsi-luks")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("MISSING  libcryptsetup: the LUKS helper /nonexistent/multicsi-luks failed"),
        "{all}"
    );
}

#[test]
fn doctor_json_agrees_with_the_exit_status() {
    require_root();
    let kubelet = SharedDir::new();
    let socket_dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/csi.sock", socket_dir.path().display());
    let kubelet_dir = kubelet.path().to_str().unwrap();
    let out = doctor(&[
        "--endpoint",
        &endpoint,
        "--backend",
        "hostpath",
        "--kubelet-dir",
        kubelet_dir,
        "--json",
    ]);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let checks = report["checks"].as_array().unwrap();
    let status = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("kubelet directory propagation"), "ok", "{report}");
    assert_eq!(status("iscsid and multipathd"), "skipped");
    assert_eq!(status("loop devices"), "ok");
    let any_missing = checks.iter().any(|c| c["status"] == "missing");
    assert_eq!(report["ready"], !any_missing);
    assert_eq!(out.status.success(), !any_missing, "{report}");
    for c in checks.iter().filter(|c| c["status"] == "missing") {
        assert!(
            c["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "a missing check without a fix: {c}"
        );
    }
    if !kernel_has_dm_crypt() {
        assert_eq!(status("dm-crypt"), "missing");
        assert_eq!(out.status.code(), Some(1));
    }
}

#[test]
fn a_node_without_encryption_and_a_shared_kubelet_dir_is_ready() {
    require_root();
    let kubelet = SharedDir::new();
    let socket_dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/csi.sock", socket_dir.path().display());
    let out = doctor(&[
        "--endpoint",
        &endpoint,
        "--backend",
        "hostpath",
        "--kubelet-dir",
        kubelet.path().to_str().unwrap(),
        "--without-encryption",
    ]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.ends_with("this node can serve hostpath volumes\n"),
        "{all}"
    );
    if !kernel_has_dm_crypt() {
        assert!(
            all.contains("warning  dm-crypt"),
            "optional now, still reported: {all}"
        );
    }
}

#[test]
fn a_private_kubelet_dir_and_a_missing_socket_dir_fail() {
    require_root();
    let private = tempfile::tempdir().unwrap();
    let out = doctor(&[
        "--endpoint",
        "unix:///nonexistent-multicsi-dir/csi.sock",
        "--backend",
        "hostpath",
        "--kubelet-dir",
        private.path().to_str().unwrap(),
        "--without-encryption",
    ]);
    let all = text(&out);
    // The temporary directory sits on a mount that is not shared here.
    let mounts = multicsi::node::mount::mounts().unwrap();
    let on = multicsi::doctor::containing_mount(&mounts, &private.path().canonicalize().unwrap())
        .unwrap();
    if multicsi::doctor::propagation(on) != multicsi::doctor::Propagation::Shared {
        assert!(
            all.contains("MISSING  kubelet directory propagation"),
            "{all}"
        );
        assert!(all.contains("mountPropagation: Bidirectional"), "{all}");
    }
    assert!(
        all.contains("MISSING  CSI socket directory: /nonexistent-multicsi-dir does not exist"),
        "{all}"
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
}

#[test]
fn an_unknown_backend_is_a_usage_error() {
    let out = doctor(&["--endpoint", "unix:///tmp/x.sock", "--backend", "floppy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("unknown backend \"floppy\""),
        "{}",
        text(&out)
    );
}
