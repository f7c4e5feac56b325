//! `multicsi doctor`: checks that this node can serve the configured
//! backend and says, for everything missing, what to install or run.
//!
//! It reads the same settings as `multicsi serve` (flags, environment,
//! config file). The exit status is 0 only when nothing required is
//! missing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::config::{Endpoint, ServeArgs, Settings};
use crate::node::mount::{self, MountEntry};

/// The flags of `multicsi doctor`.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// The serve settings; `--kubelet-dir` among them names the kubelet's
    /// root directory, where volumes are staged and published.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// This node never stages encrypted (LUKS) volumes: dm-crypt and
    /// libcryptsetup are then optional.
    #[arg(long)]
    pub without_encryption: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and working.
    Ok,
    /// Required and missing: the node cannot serve.
    Missing,
    /// Missing but optional (a feature is unavailable).
    Warning,
    /// Does not apply to this backend.
    Skipped,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it, when it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn missing(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Missing,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn skipped(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Skipped,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A missing check that is only required when `required`.
    fn required(mut self, required: bool) -> Self {
        if !required && self.status == Status::Missing {
            self.status = Status::Warning;
        }
        self
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub backend: String,
    /// True when the node can serve the backend.
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// The node can serve when no check is `Missing`.
pub fn verdict(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Missing)
}

// ------------------------------------------------------------------ propagation

/// The mount propagation of a mount (`/proc/self/mountinfo` optional fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// `shared:N`: mounts made below it reach the other namespaces of its peer group.
    Shared,
    /// `master:N` only: receives mounts from its master but sends none back.
    Slave,
    /// No propagation fields.
    Private,
}

/// The propagation of one mount.
pub fn propagation(entry: &MountEntry) -> Propagation {
    if entry
        .optional_fields
        .iter()
        .any(|f| f.starts_with("shared:"))
    {
        Propagation::Shared
    } else if entry
        .optional_fields
        .iter()
        .any(|f| f.starts_with("master:"))
    {
        Propagation::Slave
    } else {
        Propagation::Private
    }
}

/// The mount `path` (canonical, absolute) lives on: the visible mount whose
/// mount point is the longest prefix of it.
pub fn containing_mount<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let best = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .map(|m| m.mount_point.as_os_str().len())
        .max()?;
    let point = mounts
        .iter()
        .find(|m| m.mount_point.as_os_str().len() == best && path.starts_with(&m.mount_point))?
        .mount_point
        .clone();
    mount::find_mount(mounts, &point)
}

fn kubelet_check(dir: &Path, mounts: &[MountEntry]) -> Check {
    const NAME: &str = "kubelet directory propagation";
    let canonical = match std::fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) => {
            return Check::missing(
                NAME,
                format!("{}: {e}", dir.display()),
                "mount the kubelet directory into the node plugin (hostPath, mountPropagation: Bidirectional), or pass --kubelet-dir",
            );
        }
    };
    let Some(entry) = containing_mount(mounts, &canonical) else {
        return Check::missing(
            NAME,
            format!("no mount contains {}", canonical.display()),
            "is /proc mounted?",
        );
    };
    let at = entry.mount_point.display();
    match propagation(entry) {
        Propagation::Shared => Check::ok(
            NAME,
            format!("{} is on {at}, a shared mount", canonical.display()),
        ),
        other => Check::missing(
            NAME,
            format!(
                "{} is on {at}, a {} mount: mounts the plugin makes would not reach the kubelet",
                canonical.display(),
                if other == Propagation::Slave {
                    "slave"
                } else {
                    "private"
                }
            ),
            "give the kubelet directory volume mountPropagation: Bidirectional in the node DaemonSet; on the host, `mount --make-rshared /`",
        ),
    }
}

// ------------------------------------------------------------------ host checks

fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/local/sbin", "/usr/sbin", "/sbin"]
            .iter()
            .map(PathBuf::from),
    );
    dirs.map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn program_check(name: &'static str, program: &str, package: &str) -> Check {
    match find_program(program) {
        Some(path) => Check::ok(name, format!("{}", path.display())),
        None => Check::missing(
            name,
            format!("{program} is not installed"),
            format!("install {package} (apt-get install {package}) in the node plugin image"),
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn device_mapper_check() -> Check {
    const NAME: &str = "device-mapper";
    let control = Path::new("/dev/mapper/control");
    // Opening the control node also loads dm_mod on demand.
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control)
    {
        Ok(_) => Check::ok(NAME, "/dev/mapper/control answers"),
        Err(e) if !control.exists() => Check::missing(
            NAME,
            format!("{}: {e}", control.display()),
            "load device-mapper (modprobe dm_mod) and mount the host's /dev into the node plugin",
        ),
        Err(e) => Check::missing(
            NAME,
            format!(
                "{} cannot be opened: {e}; the kernel has no device-mapper",
                control.display()
            ),
            "load it (modprobe dm_mod; add dm_mod to /etc/modules-load.d/), or use a kernel with CONFIG_BLK_DEV_DM",
        ),
    }
}

/// Where the running kernel's modules are listed.
fn modules_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Path::new("/lib/modules").join(release.trim())
}

/// Whether a kernel module is loaded, built in, or loadable.
fn module_state(module: &str, file_stem: &str) -> Option<&'static str> {
    if Path::new("/sys/module").join(module).exists() {
        return Some("loaded");
    }
    let dir = modules_dir();
    let listed = |file: &str| {
        std::fs::read_to_string(dir.join(file)).is_ok_and(|text| {
            text.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                Path::new(path)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{file_stem}.ko")))
            })
        })
    };
    if listed("modules.builtin") {
        Some("built into the kernel")
    } else if listed("modules.dep") {
        Some("available as a module (loaded on first use)")
    } else {
        None
    }
}

fn dm_crypt_check() -> Check {
    const NAME: &str = "dm-crypt";
    match module_state("dm_crypt", "dm-crypt") {
        Some(state) => Check::ok(NAME, format!("dm_crypt is {state}")),
        None => Check::missing(
            NAME,
            format!(
                "the kernel has no dm_crypt (not in /sys/module, nor in {}); encrypted volumes cannot be staged",
                modules_dir().display()
            ),
            "install the kernel's modules (linux-image / linux-modules-extra) and `modprobe dm_crypt`; on a node that never stages encrypted volumes pass --without-encryption",
        ),
    }
}

/// The LUKS helper runs and loads libcryptsetup: asked the status of a
/// mapping name nobody uses, it answers (whatever the answer).
fn libcryptsetup_check() -> Check {
    use crate::node::luks::LuksError;
    use crate::node::luks_helper::{self, Request};
    let request = Request::Status {
        name: "luks-multicsi-doctor".to_string(),
    };
    match luks_helper::call(&request) {
        Ok(_) | Err(LuksError::Crypt { .. }) => Check::ok(
            "libcryptsetup",
            format!(
                "the LUKS helper {} runs and loads libcryptsetup",
                luks_helper::HELPER
            ),
        ),
        Err(e) => Check::missing(
            "libcryptsetup",
            e.to_string(),
            "install multicsi-luks beside multicsi and the package libcryptsetup12 (the driver's image has both); on a node that never stages encrypted volumes pass --without-encryption",
        ),
    }
}

/// Whether an abstract unix socket (`@name`) or a path socket is bound.
fn socket_listening(name: &str) -> bool {
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|text| {
        text.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(7) == Some(name))
    })
}

fn daemon_check(name: &'static str, socket: &str, daemon: &str, package: &str) -> Check {
    if socket_listening(socket) {
        Check::ok(name, format!("{daemon} listens on {socket}"))
    } else {
        Check::missing(
            name,
            format!("{daemon} is not running (nothing listens on {socket})"),
            format!(
                "install {package} on the node and start {daemon} (systemctl enable --now {daemon}); the node plugin needs hostNetwork to reach it"
            ),
        )
    }
}

fn socket_dir_check(endpoint: &Endpoint) -> Check {
    const NAME: &str = "CSI socket directory";
    let Endpoint::Unix(socket) = endpoint else {
        return Check::skipped(NAME, format!("endpoint {endpoint} is TCP"));
    };
    let dir = socket.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Check::missing(
            NAME,
            format!("{} does not exist", dir.display()),
            "create it, or mount the kubelet's plugin directory (/var/lib/kubelet/plugins/<driver>) there",
        );
    }
    let probe = dir.join(format!(".multicsi-doctor-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Check::ok(NAME, format!("{} is writable", dir.display()))
        }
        Err(e) => Check::missing(
            NAME,
            format!("{} is not writable: {e}", dir.display()),
            "run the node plugin as root and mount the directory read-write",
        ),
    }
}

fn metadata_check(backend: &str, settings: &Settings) -> Check {
    const NAME: &str = "metadata service";
    let clouds = &settings.clouds;
    let url = match backend {
        "cloudscale" => clouds
            .cloudscale
            .metadata_url
            .clone()
            .unwrap_or_else(|| "http://169.254.169.254".into()),
        "civo" => match &clouds.civo.metadata_url {
            Some(url) => url.clone(),
            None => {
                return Check::skipped(NAME, "no CIVO_METADATA_URL configured");
            }
        },
        "packet" => format!(
            "{}/metadata",
            clouds
                .packet
                .metadata_url
                .as_deref()
                .unwrap_or("https://metadata.packet.net")
                .trim_end_matches('/')
        ),
        _ => return Check::skipped(NAME, format!("the {backend} backend uses none")),
    };
    match http_reachable(&url, Duration::from_secs(3)) {
        Ok(status) => Check::ok(NAME, format!("{url} answered {status}")),
        Err(e) => Check::missing(
            NAME,
            format!("{url} did not answer: {e}"),
            "the node must reach its cloud's metadata service (hostNetwork: true; no firewall rule against 169.254.169.254); or set the provider's *_METADATA_URL",
        ),
    }
}

fn http_reachable(url: &str, timeout: Duration) -> Result<u16, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = crate::cloud::http::client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(url).send().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        })?;
        Ok(response.status().as_u16())
    })
}

/// Runs every check that applies to the configured backend.
pub fn run_checks(settings: &Settings, args: &DoctorArgs) -> Vec<Check> {
    let backend = settings.backend.as_str();
    let encryption = !args.without_encryption;
    let mut checks = Vec::new();
    checks.push(if is_root() {
        Check::ok("privileges", "running as root")
    } else {
        Check::missing(
            "privileges",
            "not running as root: mounts and devices need CAP_SYS_ADMIN",
            "run the node plugin privileged (securityContext.privileged: true)",
        )
    });
    checks.push(device_mapper_check().required(encryption || backend == "packet"));
    checks.push(dm_crypt_check().required(encryption));
    checks.push(libcryptsetup_check().required(encryption));
    checks.push(program_check("blkid", "blkid", "util-linux"));
    checks.push(program_check("mkfs.ext4", "mkfs.ext4", "e2fsprogs"));
    checks.push(program_check("resize2fs", "resize2fs", "e2fsprogs"));
    checks.push(program_check("mkfs.xfs", "mkfs.xfs", "xfsprogs"));
    checks.push(program_check("xfs_growfs", "xfs_growfs", "xfsprogs"));
    checks.push(program_check("mkfs.btrfs", "mkfs.btrfs", "btrfs-progs").required(false));
    if backend == "hostpath" {
        checks.push(if Path::new("/dev/loop-control").exists() {
            Check::ok("loop devices", "/dev/loop-control is present")
        } else {
            Check::missing(
                "loop devices",
                "/dev/loop-control is missing",
                "load the loop module (modprobe loop) and mount the host's /dev into the node plugin",
            )
        });
    }
    if backend == "hostpath" {
        checks.push(hostpath_state_check(&settings.state_dir));
    }
    if backend == "packet" {
        checks.push(program_check("iscsiadm", "iscsiadm", "open-iscsi"));
        checks.push(daemon_check(
            "iscsid",
            "@ISCSIADM_ABSTRACT_NAMESPACE",
            "iscsid",
            "open-iscsi",
        ));
        checks.push(program_check("multipath", "multipath", "multipath-tools"));
        checks.push(match module_state("dm_multipath", "dm-multipath") {
            Some(state) => Check::ok("dm-multipath", format!("dm_multipath is {state}")),
            None => Check::missing(
                "dm-multipath",
                "the kernel has no dm_multipath: iSCSI volumes cannot get a multipath map",
                "install the kernel's modules and `modprobe dm_multipath` (add it to /etc/modules-load.d/)",
            ),
        });
        checks.push(daemon_check(
            "multipathd",
            "@/org/kernel/linux/storage/multipathd",
            "multipathd",
            "multipath-tools",
        ));
    } else {
        checks.push(Check::skipped(
            "iscsid and multipathd",
            format!("the {backend} backend does not use iSCSI"),
        ));
    }
    checks.push(metadata_check(backend, settings));
    let mounts = mount::mounts().unwrap_or_default();
    checks.push(kubelet_check(&settings.kubelet_dir, &mounts));
    checks.push(socket_dir_check(&settings.endpoint));
    checks
}

/// The hostpath state directory: who serves it, whether its journal is
/// there, and what start-up kept aside.
fn hostpath_state_check(dir: &Path) -> Check {
    const NAME: &str = "hostpath state";
    let state = crate::backend::hostpath::inspect(dir);
    let served = match &state.holder {
        Some(holder) => format!("served by {holder}"),
        None => "not served right now".to_string(),
    };
    if state.images > 0 && !state.journal {
        return Check::missing(
            NAME,
            format!(
                "{}: {} image(s) but no journal; the driver refuses to start",
                dir.display(),
                state.images
            ),
            format!(
                "rebuild the journal from the images' own records: multicsi recover --state-dir {}",
                dir.display()
            ),
        );
    }
    if !state.kept_aside.is_empty() {
        let listed: Vec<String> = state
            .kept_aside
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Check::missing(
            NAME,
            format!(
                "{} ({served}): {} file(s) kept aside because the journal did not name them: {}",
                dir.display(),
                listed.len(),
                listed.join(", ")
            ),
            "check them: move a volume's image and record back into volumes/ (as <id>.img and <id>.record) and run `multicsi recover` with the driver stopped, or delete them",
        )
        .required(false);
    }
    Check::ok(
        NAME,
        format!(
            "{} ({served}): {} image(s), journal {}",
            dir.display(),
            state.images,
            if state.journal {
                "present"
            } else {
                "not made yet"
            }
        ),
    )
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Missing => "MISSING",
        Status::Warning => "warning",
        Status::Skipped => "skipped",
    }
}

/// The human-readable report.
pub fn render(report: &Report) -> String {
    let mut out = format!("multicsi doctor: backend {}\n", report.backend);
    for c in &report.checks {
        out.push_str(&format!(
            "  {:<8} {}: {}\n",
            label(c.status),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("  {:<8}   fix: {fix}\n", ""));
        }
    }
    let missing: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .map(|c| c.name)
        .collect();
    if missing.is_empty() {
        out.push_str(&format!("this node can serve {} volumes\n", report.backend));
    } else {
        out.push_str(&format!(
            "this node cannot serve {} volumes: missing {}\n",
            report.backend,
            missing.join(", ")
        ));
    }
    out
}

/// `multicsi doctor`.
pub fn main(mut args: DoctorArgs) -> ExitCode {
    // The node id does not matter here; serve requires one.
    if args.serve.node_id.is_none() {
        args.serve.node_id = Some("doctor".into());
    }
    let settings = match Settings::resolve(args.serve.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("multicsi doctor: {e}");
            return ExitCode::from(2);
        }
    };
    if !["hostpath", "cloudscale", "civo", "packet"].contains(&settings.backend.as_str()) {
        eprintln!(
            "multicsi doctor: unknown backend {:?}; use hostpath, cloudscale, civo or packet",
            settings.backend
        );
        return ExitCode::from(2);
    }
    let checks = run_checks(&settings, &args);
    let report = Report {
        backend: settings.backend.clone(),
        ready: verdict(&checks),
        checks,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("multicsi doctor: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render(&report));
    }
    if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 8:2 / /var rw,relatime master:3 - ext4 /dev/sda2 rw
31 30 8:3 / /var/lib/kubelet rw,relatime shared:7 master:3 - ext4 /dev/sda3 rw
40 22 0:40 / /srv rw,relatime - tmpfs tmpfs rw
41 40 0:41 / /srv rw,relatime shared:9 - tmpfs tmpfs rw
";

    #[test]
    fn propagation_comes_from_the_optional_fields() {
        let m = mount::parse_mountinfo(MOUNTINFO);
        assert_eq!(propagation(&m[0]), Propagation::Shared);
        assert_eq!(propagation(&m[1]), Propagation::Slave);
        assert_eq!(
            propagation(&m[2]),
            Propagation::Shared,
            "shared wins over master"
        );
        assert_eq!(propagation(&m[3]), Propagation::Private);
    }

    #[test]
    fn the_containing_mount_is_the_longest_prefix_and_the_top_of_a_stack() {
        let m = mount::parse_mountinfo(MOUNTINFO);
        let at = |p: &str| containing_mount(&m, Path::new(p)).map(|e| e.mount_id);
        assert_eq!(at("/var/lib/kubelet/pods/x"), Some(31));
        assert_eq!(at("/var/lib/kubelet"), Some(31));
        assert_eq!(
            at("/var/lib/kubeletx"),
            Some(30),
            "a path prefix, not a string prefix"
        );
        assert_eq!(at("/var/log"), Some(30));
        assert_eq!(at("/home"), Some(22));
        assert_eq!(at("/srv/a"), Some(41), "the visible mount of a stack");
    }

    #[test]
    fn a_private_or_slave_kubelet_dir_is_missing_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        let line = |fields: &str| format!("22 1 8:1 / / rw {fields}- ext4 /dev/sda1 rw\n");
        let check = kubelet_check(&path, &mount::parse_mountinfo(&line("")));
        assert_eq!(check.status, Status::Missing);
        assert!(check.detail.contains("private"), "{}", check.detail);
        assert!(check.fix.unwrap().contains("Bidirectional"));
        let check = kubelet_check(&path, &mount::parse_mountinfo(&line("master:2 ")));
        assert_eq!(check.status, Status::Missing);
        assert!(check.detail.contains("slave"), "{}", check.detail);
        let check = kubelet_check(&path, &mount::parse_mountinfo(&line("shared:2 ")));
        assert_eq!(check.status, Status::Ok, "{}", check.detail);
        let check = kubelet_check(
            &path.join("absent"),
            &mount::parse_mountinfo(&line("shared:2 ")),
        );
        assert_eq!(check.status, Status::Missing);
        assert!(check.fix.unwrap().contains("--kubelet-dir"));
    }

    #[test]
    fn the_verdict_fails_only_on_missing_requirements() {
        let ok = Check::ok("a", "fine");
        let warn = Check::missing("b", "gone", "install b").required(false);
        let skipped = Check::skipped("c", "n/a");
        assert_eq!(warn.status, Status::Warning);
        assert!(verdict(&[ok.clone(), warn.clone(), skipped.clone()]));
        let missing = Check::missing("d", "gone", "install d");
        assert!(!verdict(&[ok.clone(), missing.clone(), warn]));
        assert_eq!(
            Check::missing("e", "x", "y").required(true).status,
            Status::Missing
        );
        assert!(verdict(&[]));
        let report = Report {
            backend: "packet".into(),
            ready: false,
            checks: vec![ok, missing],
        };
        let text = render(&report);
        assert!(text.contains("MISSING  d: gone"), "{text}");
        assert!(text.contains("fix: install d"), "{text}");
        assert!(
            text.ends_with("this node cannot serve packet volumes: missing d\n"),
            "{text}"
        );
    }

    #[test]
    fn the_socket_directory_must_exist_and_be_writable() {
        let dir = tempfile::tempdir().unwrap();
        let ok = socket_dir_check(&Endpoint::Unix(dir.path().join("csi.sock")));
        assert_eq!(ok.status, Status::Ok, "{}", ok.detail);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe file is removed"
        );
        let gone = socket_dir_check(&Endpoint::Unix(dir.path().join("nope/csi.sock")));
        assert_eq!(gone.status, Status::Missing);
        let tcp = socket_dir_check(&Endpoint::Tcp("127.0.0.1:1".parse().unwrap()));
        assert_eq!(tcp.status, Status::Skipped);
    }

    #[test]
    fn an_unreachable_metadata_service_is_missing() {
        // A port nothing listens on: refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut settings = Settings::resolve(ServeArgs {
            endpoint: Some("unix:///tmp/x.sock".into()),
            node_id: Some("n".into()),
            ..Default::default()
        })
        .unwrap();
        settings.clouds.packet.metadata_url = Some(format!("http://127.0.0.1:{port}"));
        let check = metadata_check("packet", &settings);
        assert_eq!(check.status, Status::Missing, "{}", check.detail);
        assert!(check.detail.contains("/metadata"), "{}", check.detail);
        assert_eq!(
            metadata_check("hostpath", &settings).status,
            Status::Skipped
        );

        // A service that answers, whatever the status, is reachable.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).unwrap();
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        settings.clouds.cloudscale.metadata_url = Some(format!("http://{addr}"));
        let check = metadata_check("cloudscale", &settings);
        assert_eq!(check.status, Status::Ok, "{}", check.detail);
        assert!(check.detail.contains("404"), "{}", check.detail);
        assert!(server.join().unwrap().starts_with("GET / HTTP/1.1"));
    }
}
