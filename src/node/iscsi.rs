//! iSCSI volumes on the node: the initiator name, a session on every
//! portal of the target, the SCSI disk each session brings, and one
//! multipath map over them named after the volume.
//!
//! Every step looks at what is there first, so attaching again (after a
//! kubelet or driver restart) finds the sessions and the map and returns
//! the same device. A map is only used when its WWID is the one every path
//! reports; anything else is refused, never mounted.
//!
//! The tools are `iscsiadm` (open-iscsi, needs `iscsid`), `multipath` and
//! `multipathd` (multipath-tools) and `udevadm`; none of their arguments
//! carries a secret.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::HostError;
use crate::error::CsiError;
use crate::metrics;

/// The default iSCSI port, used when a portal gives none.
pub const DEFAULT_PORT: u16 = 3260;

/// `iscsiadm` exit status: the session already exists.
const ISCSI_ERR_SESS_EXISTS: i32 = 15;
/// `iscsiadm` exit status: no matching session or record.
const ISCSI_ERR_NO_OBJS_FOUND: i32 = 21;
/// `iscsiadm` exit status: the session exists but has no connection now
/// (it is being torn down, or reconnecting to a portal that answers late),
/// so it cannot take a logout at this moment.
const ISCSI_ERR_SESSION_NOT_CONNECTED: i32 = 32;
/// How long to wait between logouts of a session that is not connected.
const NOT_CONNECTED_RETRY: Duration = Duration::from_millis(250);

/// One iSCSI volume as the node must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiVolume {
    /// The target's IQN.
    pub target_iqn: String,
    /// Portals as `ip:port` (`ip` alone means port 3260).
    pub portals: Vec<String>,
    /// The LUN of the volume on the target.
    pub lun: u32,
    /// The multipath map's name: the device is `/dev/mapper/<alias>`.
    pub alias: String,
    /// This node's initiator IQN.
    pub initiator_iqn: String,
}

/// Where the host's files and devices are; the defaults are the real ones,
/// tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct IscsiHost {
    /// open-iscsi's initiator name file.
    pub initiator_file: PathBuf,
    /// multipath's drop-in configuration directory (`config_dir`).
    pub multipath_conf_dir: PathBuf,
    /// udev's `/dev/disk/by-path`.
    pub by_path_dir: PathBuf,
    /// device-mapper's `/dev/mapper`.
    pub mapper_dir: PathBuf,
    /// `/sys/block`, for a map's UUID.
    pub sys_block: PathBuf,
    /// How long to wait for the SCSI disks and the map to appear.
    pub device_timeout: Duration,
    /// How long one external command may run.
    pub command_timeout: Duration,
}

impl Default for IscsiHost {
    fn default() -> Self {
        IscsiHost {
            initiator_file: PathBuf::from("/etc/iscsi/initiatorname.iscsi"),
            multipath_conf_dir: PathBuf::from("/etc/multipath/conf.d"),
            by_path_dir: PathBuf::from("/dev/disk/by-path"),
            mapper_dir: PathBuf::from("/dev/mapper"),
            sys_block: PathBuf::from("/sys/block"),
            device_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(90),
        }
    }
}

/// What can go wrong with an iSCSI volume.
#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    /// An input that cannot be passed to the tools safely.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The host refused (a tool is missing or failed, a file is unwritable).
    #[error(transparent)]
    Host(#[from] HostError),
    /// Nothing appeared within the deadline.
    #[error("{0}")]
    Timeout(String),
    /// What is there is not what was asked for; it is left alone.
    #[error("{0}")]
    Mismatch(String),
}

impl From<IscsiError> for CsiError {
    fn from(e: IscsiError) -> Self {
        match e {
            IscsiError::Invalid { .. } => CsiError::InvalidArgument(e.to_string()),
            IscsiError::Host(_) => CsiError::Internal(e.to_string()),
            IscsiError::Timeout(_) => CsiError::DeadlineExceeded(e.to_string()),
            IscsiError::Mismatch(_) => CsiError::FailedPrecondition(e.to_string()),
        }
    }
}

type Result<T, E = IscsiError> = std::result::Result<T, E>;

// ------------------------------------------------------------------ input

fn invalid(field: &'static str, value: &str, reason: &'static str) -> IscsiError {
    IscsiError::Invalid {
        field,
        value: value.chars().take(100).collect(),
        reason,
    }
}

/// An iSCSI name (RFC 3720): `iqn.`, `eui.` or `naa.` followed by
/// lowercase letters, digits, `.`, `-` and `:`.
pub fn check_iqn(field: &'static str, name: &str) -> Result<()> {
    let prefixed = ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p));
    if !prefixed {
        return Err(invalid(
            field,
            name,
            "it must start with iqn., eui. or naa.",
        ));
    }
    if name.len() > 223 {
        return Err(invalid(field, name, "it is longer than 223 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b))
    {
        return Err(invalid(
            field,
            name,
            "only lowercase letters, digits, '.', '-' and ':' are allowed",
        ));
    }
    Ok(())
}

/// A portal as `ip:port`; a bare IP gets port 3260.
pub fn parse_portal(portal: &str) -> Result<SocketAddr> {
    if let Ok(addr) = portal.parse::<SocketAddr>() {
        return Ok(addr);
    }
    portal
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| {
            invalid(
                "portal",
                portal,
                "expected IP:PORT, e.g. 10.144.35.132:3260",
            )
        })
}

/// The way iscsiadm and udev write a portal: `1.2.3.4:3260`, `[fe80::1]:3260`.
fn portal_text(addr: &SocketAddr) -> String {
    addr.to_string()
}

/// A map name: lowercase letters, digits and '-', at most 64 bytes.
pub fn check_alias(alias: &str) -> Result<()> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !alias.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "multipath alias",
            alias,
            "use 1 to 64 lowercase letters, digits and '-', not starting with '-'",
        ))
    }
}

/// The multipath alias of a Packet volume: `volume-<first 8 hex of its id>`,
/// the name the provider gives the volume.
pub fn packet_alias(volume_id: &str) -> Result<String> {
    let hex: String = volume_id
        .chars()
        .filter(|c| *c != '-')
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(format!("volume-{hex}"))
    } else {
        Err(invalid(
            "volume id",
            volume_id,
            "a Packet volume id starts with 8 hex digits",
        ))
    }
}

impl IscsiVolume {
    /// Checks every field; returns the portals as addresses.
    pub fn validate(&self) -> Result<Vec<SocketAddr>> {
        check_iqn("target IQN", &self.target_iqn)?;
        check_iqn("initiator IQN", &self.initiator_iqn)?;
        check_alias(&self.alias)?;
        if self.portals.is_empty() {
            return Err(invalid(
                "portals",
                "",
                "the volume has no portal: is it attached to this node?",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut portals = Vec::new();
        for p in &self.portals {
            let addr = parse_portal(p)?;
            if seen.insert(addr) {
                portals.push(addr);
            }
        }
        Ok(portals)
    }

    /// The `/dev/disk/by-path` name of this volume's disk through `portal`.
    pub fn by_path_name(&self, portal: &SocketAddr) -> String {
        format!(
            "ip-{}-iscsi-{}-lun-{}",
            portal_text(portal),
            self.target_iqn,
            self.lun
        )
    }
}

// ------------------------------------------------------------------ parsing

/// The `InitiatorName=` of an initiator name file.
pub fn parse_initiator_name(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("InitiatorName="))
        .map(str::trim)
}

/// One record of `iscsiadm -m discovery` / `-m node`: `portal,tpgt target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub portal: String,
    pub tpgt: u32,
    pub target: String,
}

/// Parses `iscsiadm -m discovery -t sendtargets -p P` output.
pub fn parse_discovery(text: &str) -> Vec<NodeRecord> {
    text.lines()
        .filter_map(|line| {
            let (portal_group, target) = line.trim().split_once(' ')?;
            let (portal, tpgt) = portal_group.rsplit_once(',')?;
            Some(NodeRecord {
                portal: portal.to_string(),
                tpgt: tpgt.parse().ok()?,
                target: target.trim().to_string(),
            })
        })
        .collect()
}

/// One line of `iscsiadm -m session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub transport: String,
    pub sid: u32,
    pub portal: String,
    pub tpgt: u32,
    pub target: String,
}

/// Parses `iscsiadm -m session`: `tcp: [1] 10.0.0.1:3260,1 iqn... (non-flash)`.
pub fn parse_sessions(text: &str) -> Vec<Session> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let transport = words.next()?.strip_suffix(':')?;
            let sid = words.next()?.strip_prefix('[')?.strip_suffix(']')?;
            let (portal, tpgt) = words.next()?.rsplit_once(',')?;
            let target = words.next()?;
            Some(Session {
                transport: transport.to_string(),
                sid: sid.parse().ok()?,
                portal: portal.to_string(),
                tpgt: tpgt.parse().ok()?,
                target: target.to_string(),
            })
        })
        .collect()
}

/// `ID_SERIAL` from `udevadm info --query=property`: the WWID multipath
/// groups paths by.
pub fn parse_udev_serial(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("ID_SERIAL="))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A map as `multipath -ll` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultipathMap {
    pub name: String,
    pub wwid: String,
    pub dm: String,
    /// Path devices (`sdb`) with their state words (`active ready running`).
    pub paths: Vec<(String, String)>,
}

impl MultipathMap {
    /// Paths that are `active ready`.
    pub fn active_paths(&self) -> usize {
        self.paths
            .iter()
            .filter(|(_, state)| state.starts_with("active ready"))
            .count()
    }
}

/// Parses `multipath -ll` output; several maps may follow each other.
///
/// ```text
/// volume-b7f8e13c (360000000000000000e00000000010001) dm-0 IET,VIRTUAL-DISK
/// size=512M features='0' hwhandler='1 alua' wp=rw
/// `-+- policy='service-time 0' prio=50 status=active
///   |- 2:0:0:1 sdb 8:16 active ready running
///   `- 3:0:0:1 sdc 8:32 active ready running
/// ```
pub fn parse_multipath_ll(text: &str) -> Vec<MultipathMap> {
    let mut maps: Vec<MultipathMap> = Vec::new();
    for line in text.lines() {
        let line = strip_ansi(line);
        let line = line.as_str();
        let trimmed = line.trim_start_matches([' ', '|', '`', '-', '+']);
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        let is_header = !line.starts_with([' ', '|', '`'])
            && !line.starts_with("size=")
            && words.iter().any(|w| w.starts_with("dm-"));
        if is_header {
            let mut map = MultipathMap {
                name: words[0].to_string(),
                ..Default::default()
            };
            for w in &words[1..] {
                if let Some(wwid) = w.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
                    map.wwid = wwid.to_string();
                } else if w.starts_with("dm-") && map.dm.is_empty() {
                    map.dm = w.to_string();
                }
            }
            if map.wwid.is_empty() {
                // Without friendly names or an alias, the name is the WWID.
                map.wwid = map.name.clone();
            }
            maps.push(map);
            continue;
        }
        // A path: H:C:T:L dev MAJ:MIN state...
        let is_hctl =
            |w: &str| w.split(':').count() == 4 && w.split(':').all(|n| n.parse::<u32>().is_ok());
        if words.len() >= 4
            && is_hctl(words[0])
            && words[2].contains(':')
            && let Some(map) = maps.last_mut()
        {
            map.paths.push((words[1].to_string(), words[3..].join(" ")));
        }
    }
    maps
}

/// `line` without terminal escape sequences (multipath prints its map
/// names in bold on a terminal).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The drop-in that names the map of `wwid` `alias`.
pub fn multipath_conf(alias: &str, wwid: &str) -> String {
    format!(
        "# multicsi: the multipath map of one iSCSI volume\nmultipaths {{\n    multipath {{\n        wwid \"{wwid}\"\n        alias \"{alias}\"\n    }}\n}}\n"
    )
}

/// A WWID as udev reports it: letters, digits and a few separators.
fn check_wwid(device: &Path, wwid: &str) -> Result<()> {
    if !wwid.is_empty()
        && wwid.len() <= 128
        && wwid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
    {
        Ok(())
    } else {
        Err(IscsiError::Mismatch(format!(
            "{} reports the WWID {wwid:?}, which cannot name a multipath map",
            device.display()
        )))
    }
}

// ------------------------------------------------------------------ tools

/// Runs the external tools; tests put a script in its place.
pub trait Tools: Send + Sync {
    /// Runs `program args`; `None` when it did not finish in time (it was killed).
    fn run(&self, program: &'static str, args: &[String]) -> Result<Option<Output>, HostError>;
}

/// The real tools, each run with a deadline.
#[derive(Debug, Clone)]
pub struct SystemTools {
    pub timeout: Duration,
}

fn package_of(program: &str) -> &'static str {
    match program {
        "iscsiadm" => "open-iscsi",
        "multipath" | "multipathd" => "multipath-tools",
        _ => "udev",
    }
}

impl Tools for SystemTools {
    fn run(&self, program: &'static str, args: &[String]) -> Result<Option<Output>, HostError> {
        let child = Command::new(program)
            .args(args.iter().map(OsString::from))
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HostError::ToolMissing {
                tool: program,
                package: package_of(program),
                source,
            })?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let finished = match rx.recv_timeout(self.timeout) {
            Ok(result) => Some(result),
            Err(_) => {
                // Not reaped yet (the reader thread is waiting on it), so
                // the pid is still this child's.
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = rx.recv();
                None
            }
        };
        match finished {
            Some(Ok(output)) => Ok(Some(output)),
            Some(Err(source)) => Err(HostError::ToolMissing {
                tool: program,
                package: package_of(program),
                source,
            }),
            None => Ok(None),
        }
    }
}

/// The text a failed tool printed, for an error message.
fn output_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&output.stdout)
    } else {
        stderr
    };
    let text = text.trim().replace('\n', " | ");
    let mut cut: String = text.chars().take(1000).collect();
    if cut.is_empty() {
        cut = "no output".into();
    }
    cut
}

fn hint_for(program: &str, output: &Output) -> &'static str {
    let text = output_text(output);
    if program == "iscsiadm" && text.contains("connect to iSCSI daemon") {
        "iscsid is not running: start it (systemctl start iscsid) on the node"
    } else if program == "iscsiadm" {
        "check that the portal is reachable from the node and the volume is attached to it"
    } else if text.contains("multipathd") || program == "multipathd" {
        "is multipathd running on the node? (systemctl start multipathd)"
    } else {
        "check the node's kernel log (dmesg)"
    }
}

struct Runner<'a> {
    tools: &'a dyn Tools,
}

impl Runner<'_> {
    /// Runs a tool; a status in `ok_codes` (besides 0) also counts as success.
    fn run(&self, program: &'static str, args: &[&str], ok_codes: &[i32]) -> Result<Output> {
        let argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let what = format!("{program} {}", argv.join(" "));
        let output = self.tools.run(program, &argv)?.ok_or_else(|| {
            IscsiError::Timeout(format!(
                "`{what}` did not finish in time and was stopped; check the portal's reachability and iscsid/multipathd"
            ))
        })?;
        let code = output.status.code();
        if output.status.success() || code.is_some_and(|c| ok_codes.contains(&c)) {
            return Ok(output);
        }
        Err(HostError::ToolFailed {
            tool: program,
            path: PathBuf::from(what),
            status: output.status.to_string(),
            output: output_text(&output),
            hint: hint_for(program, &output).to_string(),
        }
        .into())
    }
}

// ------------------------------------------------------------------ steps

/// Writes `InitiatorName=<iqn>` unless the file already says so; returns
/// whether it changed. iscsid reads the file when it starts: after a
/// change, restart it.
pub fn set_initiator_name(file: &Path, iqn: &str) -> Result<bool> {
    check_iqn("initiator IQN", iqn)?;
    match std::fs::read_to_string(file) {
        Ok(text) if parse_initiator_name(&text) == Some(iqn) => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(HostError::os("read", file, e, "the node plugin needs /etc/iscsi").into());
        }
    }
    let fail = |op, e| HostError::os(op, file, e, "the node plugin needs /etc/iscsi writable");
    let dir = file.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
    write_atomically(file, &format!("InitiatorName={iqn}\n")).map_err(|e| fail("write", e))?;
    tracing::info!(file = %file.display(), initiator = iqn, "iSCSI initiator name set");
    Ok(true)
}

/// Writes `text` into `file` through a temporary file and a rename.
fn write_atomically(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension("multicsi-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// The attachment of one iSCSI volume on this host.
pub struct Iscsi<'a> {
    pub host: &'a IscsiHost,
    pub tools: &'a dyn Tools,
}

impl<'a> Iscsi<'a> {
    fn runner(&self) -> Runner<'a> {
        Runner { tools: self.tools }
    }

    /// The sessions of this host (none is not an error).
    pub fn sessions(&self) -> Result<Vec<Session>> {
        let out = self
            .runner()
            .run("iscsiadm", &["-m", "session"], &[ISCSI_ERR_NO_OBJS_FOUND])?;
        if out.status.code() == Some(ISCSI_ERR_NO_OBJS_FOUND) {
            return Ok(Vec::new());
        }
        Ok(parse_sessions(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Logs in to the target on every portal that has no session yet.
    /// Returns the portals with a session; fails only when none has one.
    pub fn login(&self, volume: &IscsiVolume, portals: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
        let sessions = self.sessions()?;
        let mut up = Vec::new();
        let mut failures = Vec::new();
        for portal in portals {
            let text = portal_text(portal);
            if sessions
                .iter()
                .any(|s| s.target == volume.target_iqn && s.portal == text)
            {
                up.push(*portal);
                continue;
            }
            match self.login_one(volume, &text) {
                Ok(()) => up.push(*portal),
                Err(e) => {
                    tracing::warn!(portal = %text, target = %volume.target_iqn, error = %e, "iSCSI login failed");
                    failures.push(format!("{text}: {e}"));
                }
            }
        }
        if up.is_empty() {
            return Err(IscsiError::Timeout(format!(
                "no iSCSI session to {} on any portal: {}",
                volume.target_iqn,
                failures.join("; ")
            )));
        }
        Ok(up)
    }

    fn login_one(&self, volume: &IscsiVolume, portal: &str) -> Result<()> {
        let out = self.runner().run(
            "iscsiadm",
            &["-m", "discovery", "-t", "sendtargets", "-p", portal],
            &[],
        )?;
        let offered = parse_discovery(&String::from_utf8_lossy(&out.stdout));
        if !offered.iter().any(|r| r.target == volume.target_iqn) {
            let names: Vec<&str> = offered.iter().map(|r| r.target.as_str()).collect();
            return Err(IscsiError::Mismatch(format!(
                "portal {portal} does not offer target {} (it offers: {}); is the volume attached to this node?",
                volume.target_iqn,
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        self.runner().run(
            "iscsiadm",
            &[
                "-m",
                "node",
                "-T",
                &volume.target_iqn,
                "-p",
                portal,
                "--login",
            ],
            &[ISCSI_ERR_SESS_EXISTS],
        )?;
        tracing::info!(portal, target = %volume.target_iqn, "iSCSI login");
        Ok(())
    }

    /// The SCSI disks of the volume's LUN, one per portal with a session,
    /// waiting (udev settle and trigger, session rescan) up to the deadline.
    /// Returns as soon as every portal has its disk; at the deadline, what
    /// was found if anything, else an error naming the links looked for.
    pub fn wait_for_disks(
        &self,
        volume: &IscsiVolume,
        portals: &[SocketAddr],
    ) -> Result<Vec<PathBuf>> {
        let names: Vec<String> = portals.iter().map(|p| volume.by_path_name(p)).collect();
        let deadline = Instant::now() + self.host.device_timeout;
        let mut round = 0u32;
        loop {
            let found: Vec<PathBuf> = names
                .iter()
                .filter_map(|n| std::fs::canonicalize(self.host.by_path_dir.join(n)).ok())
                .collect();
            if found.len() == names.len() {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                if !found.is_empty() {
                    tracing::warn!(target = %volume.target_iqn, found = found.len(), wanted = names.len(), "not every iSCSI path has its disk; going on with the ones there");
                    return Ok(found);
                }
                return Err(IscsiError::Timeout(format!(
                    "no SCSI disk for LUN {} of {} appeared within {} s; looked for {} in {}; check `iscsiadm -m session -P 3` and the LUN number",
                    volume.lun,
                    volume.target_iqn,
                    self.host.device_timeout.as_secs(),
                    names.join(", "),
                    self.host.by_path_dir.display()
                )));
            }
            if round % 4 == 1 {
                // The LUN may have been added after the login.
                let _ = self.runner().run(
                    "iscsiadm",
                    &["-m", "node", "-T", &volume.target_iqn, "--rescan"],
                    &[ISCSI_ERR_NO_OBJS_FOUND],
                );
            }
            if round % 4 == 2 {
                let _ = self.runner().run(
                    "udevadm",
                    &["trigger", "--subsystem-match=block", "--action=add"],
                    &[],
                );
            }
            let _ = self
                .runner()
                .run("udevadm", &["settle", "--timeout=5"], &[]);
            std::thread::sleep(Duration::from_millis(200));
            round += 1;
        }
    }

    /// The WWID every one of `disks` reports; disks that disagree are refused.
    pub fn common_wwid(&self, disks: &[PathBuf]) -> Result<String> {
        let mut wwids = Vec::new();
        for disk in disks {
            let name = disk.to_string_lossy().into_owned();
            let out = self.runner().run(
                "udevadm",
                &["info", "--query=property", &format!("--name={name}")],
                &[],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let wwid = parse_udev_serial(&text).ok_or_else(|| {
                IscsiError::Mismatch(format!(
                    "{name} has no ID_SERIAL in udev: cannot tell which volume it is, so it is not used"
                ))
            })?;
            check_wwid(disk, wwid)?;
            wwids.push((name, wwid.to_string()));
        }
        let first = wwids[0].1.clone();
        if let Some((name, other)) = wwids.iter().find(|(_, w)| *w != first) {
            return Err(IscsiError::Mismatch(format!(
                "the paths of one volume disagree: {} has WWID {first}, {name} has {other}; nothing is mounted",
                wwids[0].0
            )));
        }
        Ok(first)
    }

    /// The device-mapper UUID of `/dev/mapper/<alias>`, if it exists.
    fn map_uuid(&self, alias: &str) -> Result<Option<String>> {
        let link = self.host.mapper_dir.join(alias);
        let dm = match std::fs::canonicalize(&link) {
            Ok(dm) => dm,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::os("resolve", &link, e, "check /dev/mapper").into()),
        };
        let name = dm.file_name().unwrap_or_default();
        let uuid_file = self.host.sys_block.join(name).join("dm").join("uuid");
        let uuid = std::fs::read_to_string(&uuid_file)
            .map_err(|e| HostError::os("read", &uuid_file, e, "is it a device-mapper device?"))?;
        Ok(Some(uuid.trim().to_string()))
    }

    /// `Some(true)` when `/dev/mapper/<alias>` is the multipath map of
    /// `wwid`, `Some(false)` when it is something else, `None` when absent.
    fn map_matches(&self, alias: &str, wwid: &str) -> Result<Option<bool>> {
        Ok(self
            .map_uuid(alias)?
            .map(|uuid| uuid == format!("mpath-{wwid}")))
    }

    /// Makes (or finds) the map `alias` over the paths of `wwid`.
    pub fn ensure_map(&self, alias: &str, wwid: &str) -> Result<PathBuf> {
        let device = self.host.mapper_dir.join(alias);
        let refuse = |uuid: Option<String>| {
            IscsiError::Mismatch(format!(
                "{} exists but is not the multipath map of WWID {wwid} (its device-mapper UUID is {}); it is not used: remove it, or check the volume's alias",
                device.display(),
                uuid.unwrap_or_else(|| "unknown".into())
            ))
        };
        match self.map_matches(alias, wwid)? {
            Some(true) => return Ok(device),
            Some(false) => return Err(refuse(self.map_uuid(alias)?)),
            None => {}
        }
        let conf = self
            .host
            .multipath_conf_dir
            .join(format!("multicsi-{alias}.conf"));
        let text = multipath_conf(alias, wwid);
        if std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
            let fail = |op, e| {
                HostError::os(
                    op,
                    &conf,
                    e,
                    "the node plugin needs /etc/multipath writable",
                )
            };
            std::fs::create_dir_all(&self.host.multipath_conf_dir)
                .map_err(|e| fail("create the directory of", e))?;
            write_atomically(&conf, &text).map_err(|e| fail("write", e))?;
        }
        // multipathd may have made a map of its own over these paths: it
        // takes the new alias when it reads its configuration again.
        let _ = self.runner().run("multipathd", &["reconfigure"], &[]);
        let deadline = Instant::now() + self.host.device_timeout;
        let mut last_error = None;
        loop {
            match self.map_matches(alias, wwid)? {
                Some(true) => {
                    tracing::info!(alias, wwid, "multipath map ready");
                    return Ok(device);
                }
                Some(false) => return Err(refuse(self.map_uuid(alias)?)),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(IscsiError::Timeout(format!(
                    "the multipath map {} of WWID {wwid} did not appear within {} s{}; check `multipath -ll` and multipathd",
                    device.display(),
                    self.host.device_timeout.as_secs(),
                    last_error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )));
            }
            if let Err(e) = self.runner().run("multipath", &[wwid], &[]) {
                last_error = Some(e.to_string());
            }
            let _ = self
                .runner()
                .run("udevadm", &["settle", "--timeout=5"], &[]);
            if self.map_matches(alias, wwid)? != Some(true) {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    /// `multipath -ll <alias>`, parsed.
    pub fn describe_map(&self, alias: &str) -> Result<Option<MultipathMap>> {
        let out = self.runner().run("multipath", &["-ll", alias], &[1])?;
        Ok(parse_multipath_ll(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .find(|m| m.name == alias))
    }

    /// Logs in on every portal, waits for the disks, checks they are one
    /// volume and returns its multipath map `/dev/mapper/<alias>`.
    pub fn attach(&self, volume: &IscsiVolume) -> Result<PathBuf> {
        let portals = volume.validate()?;
        let changed = set_initiator_name(&self.host.initiator_file, &volume.initiator_iqn)?;
        if changed {
            tracing::warn!(
                "the iSCSI initiator name changed; iscsid must be restarted to log in with it"
            );
        }
        let up = metrics::node_op("iscsi_login", || self.login(volume, &portals))?;
        let disks = metrics::node_op("discover", || self.wait_for_disks(volume, &up))?;
        let wwid = self.common_wwid(&disks)?;
        metrics::node_op("multipath", || self.ensure_map(&volume.alias, &wwid))
    }

    /// Flushes the map and logs out of every portal; what is already gone
    /// is fine.
    pub fn detach(&self, volume: &IscsiVolume) -> Result<()> {
        let portals = volume.validate()?;
        metrics::node_op("multipath", || self.flush_map(&volume.alias))?;
        metrics::node_op("iscsi_logout", || {
            for portal in &portals {
                let text = portal_text(portal);
                let node = [
                    "-m",
                    "node",
                    "-T",
                    volume.target_iqn.as_str(),
                    "-p",
                    text.as_str(),
                ];
                self.logout(&volume.target_iqn, &text)?;
                // The record would log in again when iscsid restarts.
                self.runner().run(
                    "iscsiadm",
                    &[&node[..], &["-o", "delete"]].concat(),
                    &[ISCSI_ERR_NO_OBJS_FOUND],
                )?;
            }
            Ok::<(), IscsiError>(())
        })?;
        let conf = self
            .host
            .multipath_conf_dir
            .join(format!("multicsi-{}.conf", volume.alias));
        match std::fs::remove_file(&conf) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(HostError::os("remove", &conf, e, "check /etc/multipath").into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Logs out of the target's session on one portal. A session that is
    /// not connected at the moment (its teardown or a reconnect is under
    /// way) is asked again until it is gone or takes the logout; the end
    /// state is read back from the session list, not assumed.
    fn logout(&self, target: &str, portal: &str) -> Result<()> {
        let args = ["-m", "node", "-T", target, "-p", portal, "--logout"];
        let deadline = Instant::now() + self.host.device_timeout;
        loop {
            let out = self.runner().run(
                "iscsiadm",
                &args,
                &[ISCSI_ERR_NO_OBJS_FOUND, ISCSI_ERR_SESSION_NOT_CONNECTED],
            )?;
            if out.status.code() != Some(ISCSI_ERR_SESSION_NOT_CONNECTED) {
                return Ok(());
            }
            let open = self
                .sessions()?
                .iter()
                .any(|s| s.target == target && s.portal == portal);
            if !open {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(IscsiError::Timeout(format!(
                    "the iSCSI session to {target} on {portal} stayed without a connection for {} s and could not be logged out; check the portal's network and `iscsiadm -m session -P 1`",
                    self.host.device_timeout.as_secs()
                )));
            }
            tracing::info!(%target, %portal, "iSCSI session not connected; logging out again");
            std::thread::sleep(NOT_CONNECTED_RETRY);
        }
    }

    /// `multipath -f <alias>` until the map is gone; busy for a moment
    /// (udev probing after a change) is retried up to the deadline.
    fn flush_map(&self, alias: &str) -> Result<()> {
        let device = self.host.mapper_dir.join(alias);
        if let Some(uuid) = self.map_uuid(alias)?
            && !uuid.starts_with("mpath-")
        {
            return Err(IscsiError::Mismatch(format!(
                "{} is not a multipath map (its device-mapper UUID is {uuid:?}); it is left alone",
                device.display()
            )));
        }
        let deadline = Instant::now() + self.host.device_timeout;
        while self.map_uuid(alias)?.is_some() {
            match self.runner().run("multipath", &["-f", alias], &[]) {
                Ok(_) => continue,
                Err(e) if Instant::now() >= deadline => {
                    return Err(IscsiError::Timeout(format!(
                        "the multipath map {} could not be removed: {e}; is it still mounted or open?",
                        device.display()
                    )));
                }
                Err(_) => {
                    let _ = self
                        .runner()
                        .run("udevadm", &["settle", "--timeout=5"], &[]);
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        Ok(())
    }
}

/// Attaches `volume` with the host's own tools (blocking: call it on the
/// blocking pool); returns `/dev/mapper/<alias>`.
pub fn attach(host: &IscsiHost, volume: &IscsiVolume) -> Result<PathBuf> {
    let tools = SystemTools {
        timeout: host.command_timeout,
    };
    Iscsi {
        host,
        tools: &tools,
    }
    .attach(volume)
}

/// Detaches `volume` with the host's own tools (blocking).
pub fn detach(host: &IscsiHost, volume: &IscsiVolume) -> Result<()> {
    let tools = SystemTools {
        timeout: host.command_timeout,
    };
    Iscsi {
        host,
        tools: &tools,
    }
    .detach(volume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::Mutex;

    fn volume() -> IscsiVolume {
        IscsiVolume {
            target_iqn: "iqn.2013-05.com.daterainc:tc:01:sn:60448a8a63a20a82".into(),
            portals: vec!["10.144.35.132".into(), "10.144.51.11:3260".into()],
            lun: 0,
            alias: "volume-b7f8e13c".into(),
            initiator_iqn: "iqn.2018-06.net.packet:device.9307dc37".into(),
        }
    }

    #[test]
    fn inputs_are_checked_before_any_tool_runs() {
        let v = volume();
        let portals = v.validate().unwrap();
        assert_eq!(portals[0].to_string(), "10.144.35.132:3260");
        assert_eq!(portals[1].to_string(), "10.144.51.11:3260");
        for (field, change) in [
            (
                "target IQN",
                (|v: &mut IscsiVolume| v.target_iqn = "iqn.x -o delete".into())
                    as fn(&mut IscsiVolume),
            ),
            ("target IQN", |v| v.target_iqn = "IQN.upper".into()),
            ("initiator IQN", |v| {
                v.initiator_iqn = "iqn.a\nInitiatorName=evil".into()
            }),
            ("multipath alias", |v| v.alias = "../mapper".into()),
            ("multipath alias", |v| v.alias = "-f".into()),
            ("portal", |v| v.portals = vec!["10.0.0.1:3260; rm".into()]),
            ("portals", |v| v.portals.clear()),
        ] {
            let mut v = volume();
            change(&mut v);
            match v.validate() {
                Err(IscsiError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected invalid, got {other:?}"),
            }
        }
        let mut v = volume();
        v.portals = vec![
            "[fe80::1]:3260".into(),
            "10.0.0.1".into(),
            "10.0.0.1:3260".into(),
        ];
        assert_eq!(v.validate().unwrap().len(), 2, "duplicates are dropped");
    }

    #[test]
    fn packet_alias_is_volume_and_eight_hex_digits() {
        assert_eq!(
            packet_alias("b7f8e13c-4c2d-4e2a-9f0b-1f2e3d4c5b6a").unwrap(),
            "volume-b7f8e13c"
        );
        assert_eq!(packet_alias("B7F8E13C-x").unwrap(), "volume-b7f8e13c");
        assert!(packet_alias("b7f8").is_err());
        assert!(packet_alias("zzzzzzzz-1").is_err());
    }

    #[test]
    fn by_path_name_matches_udev() {
        let v = volume();
        let p = v.validate().unwrap();
        assert_eq!(
            v.by_path_name(&p[0]),
            "ip-10.144.35.132:3260-iscsi-iqn.2013-05.com.daterainc:tc:01:sn:60448a8a63a20a82-lun-0"
        );
    }

    #[test]
    fn initiator_file_is_parsed() {
        let text = "## DO NOT EDIT OR REMOVE THIS FILE!\n## If you remove this file, the iSCSI daemon will not start.\n#InitiatorName=iqn.commented\nInitiatorName=iqn.1993-08.org.debian:01:8a1b2c3d4e5f\n";
        assert_eq!(
            parse_initiator_name(text),
            Some("iqn.1993-08.org.debian:01:8a1b2c3d4e5f")
        );
        assert_eq!(parse_initiator_name("# nothing\n"), None);
    }

    #[test]
    fn initiator_name_is_written_only_when_different() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("iscsi/initiatorname.iscsi");
        let iqn = "iqn.2018-06.net.packet:device.9307dc37";
        assert!(
            set_initiator_name(&file, iqn).unwrap(),
            "a missing file is written"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("InitiatorName={iqn}\n")
        );
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !set_initiator_name(&file, iqn).unwrap(),
            "same name: untouched"
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            before
        );
        std::fs::write(
            &file,
            "## comment\nInitiatorName=iqn.1993-08.org.debian:01:old\n",
        )
        .unwrap();
        assert!(set_initiator_name(&file, iqn).unwrap());
        assert_eq!(
            parse_initiator_name(&std::fs::read_to_string(&file).unwrap()),
            Some(iqn)
        );
        assert!(set_initiator_name(&file, "not-an-iqn").is_err());
    }

    #[test]
    fn discovery_output_is_parsed() {
        // The first two lines as open-iscsi 2.1.8 prints them.
        let text = "127.0.0.1:3260,1 iqn.2024-01.io.multicsi:suite\n127.0.0.2:3260,1 iqn.2024-01.io.multicsi:suite\n[fe80::1]:3260,2 iqn.2024-01.io.multicsi:other\n";
        let records = parse_discovery(text);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].portal, "127.0.0.1:3260");
        assert_eq!(records[0].tpgt, 1);
        assert_eq!(records[0].target, "iqn.2024-01.io.multicsi:suite");
        assert_eq!(records[2].portal, "[fe80::1]:3260");
        assert_eq!(records[2].tpgt, 2);
        assert!(parse_discovery("iscsiadm: No portals found\n").is_empty());
    }

    #[test]
    fn session_output_is_parsed() {
        let text = "tcp: [1] 127.0.0.1:3260,1 iqn.2024-01.io.multicsi:suite (non-flash)\ntcp: [12] 127.0.0.2:3260,1 iqn.2024-01.io.multicsi:suite (non-flash)\n";
        let s = parse_sessions(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].sid, 12);
        assert_eq!(s[1].portal, "127.0.0.2:3260");
        assert_eq!(s[1].transport, "tcp");
        assert_eq!(s[1].target, "iqn.2024-01.io.multicsi:suite");
        assert!(parse_sessions("iscsiadm: No active sessions.\n").is_empty());
    }

    #[test]
    fn udev_serial_is_parsed() {
        let text = "DEVPATH=/devices/platform/host2/session1/target2:0:0/2:0:0:1/block/sdb\nDEVNAME=/dev/sdb\nDEVTYPE=disk\nID_SCSI=1\nID_VENDOR=IET\nID_MODEL=VIRTUAL-DISK\nID_SERIAL=360000000000000000e00000000010001\nID_SERIAL_SHORT=60000000000000000e00000000010001\nID_PATH=ip-127.0.0.1:3260-iscsi-iqn.2024-01.io.multicsi:suite-lun-1\n";
        assert_eq!(
            parse_udev_serial(text),
            Some("360000000000000000e00000000010001")
        );
        assert_eq!(parse_udev_serial("ID_SERIAL=\nDEVNAME=/dev/sdb\n"), None);
    }

    #[test]
    fn multipath_ll_is_parsed() {
        // Captured from multipath-tools 0.9.4 over tgt (on a terminal: bold name).
        let captured = "\
\u{1b}[1mvolume-b7f8e13c (360000000000000000e00000000010001) dm-0 IET,VIRTUAL-DISK\u{1b}[0m
size=64M features='0' hwhandler='0' wp=rw
|-+- policy='service-time 0' prio=1 status=active
| `- 0:0:0:1 sda 8:0  active ready running
`-+- policy='service-time 0' prio=1 status=enabled
  `- 1:0:0:1 sdb 8:16 active ready running
";
        let maps = parse_multipath_ll(captured);
        assert_eq!(maps.len(), 1, "{maps:#?}");
        assert_eq!(maps[0].name, "volume-b7f8e13c");
        assert_eq!(maps[0].wwid, "360000000000000000e00000000010001");
        assert_eq!(maps[0].dm, "dm-0");
        assert_eq!(
            maps[0].paths[0],
            ("sda".to_string(), "active ready running".to_string())
        );
        assert_eq!(maps[0].active_paths(), 2);

        let text = "\
volume-b7f8e13c (360000000000000000e00000000010001) dm-0 IET,VIRTUAL-DISK
size=512M features='0' hwhandler='1 alua' wp=rw
`-+- policy='service-time 0' prio=50 status=active
  |- 2:0:0:1 sdb 8:16 active ready running
  `- 3:0:0:1 sdc 8:32 failed faulty running
mpatha (360000000000000000e00000000020001) dm-1 IET,VIRTUAL-DISK
size=1.0G features='0' hwhandler='0' wp=rw
|-+- policy='service-time 0' prio=1 status=active
| `- 4:0:0:1 sdd 8:48 active ready running
`-+- policy='service-time 0' prio=1 status=enabled
  `- 5:0:0:1 sde 8:64 active ready running
";
        let maps = parse_multipath_ll(text);
        assert_eq!(maps.len(), 2, "{maps:#?}");
        assert_eq!(maps[0].name, "volume-b7f8e13c");
        assert_eq!(maps[0].wwid, "360000000000000000e00000000010001");
        assert_eq!(maps[0].dm, "dm-0");
        assert_eq!(maps[0].paths.len(), 2);
        assert_eq!(
            maps[0].paths[1],
            ("sdc".to_string(), "failed faulty running".to_string())
        );
        assert_eq!(maps[0].active_paths(), 1);
        assert_eq!(maps[1].name, "mpatha");
        assert_eq!(maps[1].active_paths(), 2);
        let bare = parse_multipath_ll(
            "360000000000000000e00000000030001 dm-2 IET,VIRTUAL-DISK\nsize=1.0G features='0' hwhandler='0' wp=rw\n",
        );
        assert_eq!(bare[0].wwid, "360000000000000000e00000000030001");
        assert!(parse_multipath_ll("").is_empty());
    }

    #[test]
    fn multipath_conf_names_the_wwid() {
        let text = multipath_conf("volume-b7f8e13c", "3600a");
        assert!(text.contains("wwid \"3600a\""), "{text}");
        assert!(text.contains("alias \"volume-b7f8e13c\""), "{text}");
        assert!(check_wwid(Path::new("/dev/sdb"), "36000\"\n}").is_err());
    }

    /// Answers commands from a script of (argv prefix, exit code, stdout),
    /// and records every call.
    struct Script {
        answers: Vec<(&'static str, i32, &'static str)>,
        /// Answered once each, in order, before `answers`.
        first: Mutex<Vec<(&'static str, i32, &'static str)>>,
        calls: Mutex<Vec<String>>,
    }

    impl Tools for Script {
        fn run(&self, program: &'static str, args: &[String]) -> Result<Option<Output>, HostError> {
            let line = format!("{program} {}", args.join(" "));
            self.calls.lock().unwrap().push(line.clone());
            let mut first = self.first.lock().unwrap();
            let once = first
                .iter()
                .position(|(prefix, _, _)| line.starts_with(prefix))
                .map(|i| first.remove(i));
            let (_, code, stdout) = once
                .or_else(|| {
                    self.answers
                        .iter()
                        .find(|(prefix, _, _)| line.starts_with(prefix))
                        .copied()
                })
                .unwrap_or(("", 0, ""));
            Ok(Some(Output {
                status: std::process::ExitStatus::from_raw(code << 8),
                stdout: stdout.as_bytes().to_vec(),
                stderr: Vec::new(),
            }))
        }
    }

    fn script(answers: Vec<(&'static str, i32, &'static str)>) -> Script {
        script_after(vec![], answers)
    }

    /// A script whose `first` answers are each given once, in order.
    fn script_after(
        first: Vec<(&'static str, i32, &'static str)>,
        answers: Vec<(&'static str, i32, &'static str)>,
    ) -> Script {
        Script {
            answers,
            first: Mutex::new(first),
            calls: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn login_skips_portals_with_a_session_and_accepts_an_existing_one() {
        let mut v = volume();
        v.target_iqn = "iqn.2024-01.io.multicsi:suite".into();
        v.portals = vec!["127.0.0.1:3260".into(), "127.0.0.2:3260".into()];
        let tools = script(vec![
            (
                "iscsiadm -m session",
                0,
                "tcp: [1] 127.0.0.1:3260,1 iqn.2024-01.io.multicsi:suite (non-flash)\n",
            ),
            (
                "iscsiadm -m discovery",
                0,
                "127.0.0.2:3260,1 iqn.2024-01.io.multicsi:suite\n",
            ),
            ("iscsiadm -m node", ISCSI_ERR_SESS_EXISTS, ""),
        ]);
        let host = IscsiHost::default();
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        let up = iscsi.login(&v, &v.validate().unwrap()).unwrap();
        assert_eq!(up.len(), 2);
        let calls = tools.calls.lock().unwrap();
        assert!(
            !calls.iter().any(|c| c.contains("-p 127.0.0.1:3260")),
            "logged in again where a session exists: {calls:?}"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.ends_with("-p 127.0.0.2:3260 --login")),
            "{calls:?}"
        );
    }

    #[test]
    fn a_portal_that_does_not_offer_the_target_is_no_path() {
        let mut v = volume();
        v.portals = vec!["127.0.0.1:3260".into()];
        let tools = script(vec![
            ("iscsiadm -m session", ISCSI_ERR_NO_OBJS_FOUND, ""),
            (
                "iscsiadm -m discovery",
                0,
                "127.0.0.1:3260,1 iqn.2024-01.io.multicsi:someone-else\n",
            ),
        ]);
        let host = IscsiHost::default();
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        let err = iscsi
            .login(&v, &v.validate().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not offer target"), "{err}");
        assert!(err.contains("someone-else"), "{err}");
        assert!(
            !tools
                .calls
                .lock()
                .unwrap()
                .iter()
                .any(|c| c.contains("--login")),
            "logged in to a target that was not offered"
        );
    }

    #[test]
    fn paths_with_different_wwids_are_refused() {
        let tools = script(vec![
            (
                "udevadm info --query=property --name=/dev/sdb",
                0,
                "ID_SERIAL=3600a\n",
            ),
            (
                "udevadm info --query=property --name=/dev/sdc",
                0,
                "ID_SERIAL=3600b\n",
            ),
        ]);
        let host = IscsiHost::default();
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        let disks = [PathBuf::from("/dev/sdb"), PathBuf::from("/dev/sdc")];
        let err = iscsi.common_wwid(&disks).unwrap_err();
        assert!(matches!(err, IscsiError::Mismatch(_)), "{err}");
        assert_eq!(iscsi.common_wwid(&disks[..1]).unwrap(), "3600a");
    }

    #[test]
    fn missing_disks_time_out_naming_the_links() {
        let dir = tempfile::tempdir().unwrap();
        let host = IscsiHost {
            by_path_dir: dir.path().to_path_buf(),
            device_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let tools = script(vec![]);
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        let v = volume();
        let err = iscsi
            .wait_for_disks(&v, &v.validate().unwrap())
            .unwrap_err();
        assert!(matches!(err, IscsiError::Timeout(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&v.by_path_name(&parse_portal("10.144.51.11").unwrap())),
            "{msg}"
        );
        let calls = tools.calls.lock().unwrap();
        assert!(
            calls.iter().any(|c| c.starts_with("udevadm settle")),
            "{calls:?}"
        );
        assert!(calls.iter().any(|c| c.contains("--rescan")), "{calls:?}");

        // A disk that appears is found.
        std::os::unix::fs::symlink(
            "/dev/null",
            dir.path()
                .join(v.by_path_name(&parse_portal("10.144.35.132").unwrap())),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/dev/null",
            dir.path()
                .join(v.by_path_name(&parse_portal("10.144.51.11").unwrap())),
        )
        .unwrap();
        let found = iscsi.wait_for_disks(&v, &v.validate().unwrap()).unwrap();
        assert_eq!(
            found,
            [PathBuf::from("/dev/null"), PathBuf::from("/dev/null")]
        );
    }

    #[test]
    fn a_map_of_another_device_under_the_alias_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mapper = dir.path().join("mapper");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(&mapper).unwrap();
        std::fs::create_dir_all(sys.join("dm-3/dm")).unwrap();
        std::fs::write(sys.join("dm-3/dm/uuid"), "CRYPT-LUKS2-abc-x\n").unwrap();
        std::fs::write(dir.path().join("dm-3"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("dm-3"), mapper.join("volume-b7f8e13c"))
            .unwrap();
        let host = IscsiHost {
            mapper_dir: mapper,
            sys_block: sys.clone(),
            multipath_conf_dir: dir.path().join("conf.d"),
            ..Default::default()
        };
        let tools = script(vec![]);
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        let err = iscsi.ensure_map("volume-b7f8e13c", "3600a").unwrap_err();
        assert!(matches!(err, IscsiError::Mismatch(_)), "{err}");
        assert!(err.to_string().contains("CRYPT-LUKS2"), "{err}");
        assert!(tools.calls.lock().unwrap().is_empty(), "nothing may run");

        let err = iscsi.flush_map("volume-b7f8e13c").unwrap_err();
        assert!(matches!(err, IscsiError::Mismatch(_)), "{err}");
        assert!(
            tools.calls.lock().unwrap().is_empty(),
            "no flush of a foreign device"
        );

        // The right map is found without running anything.
        std::fs::write(sys.join("dm-3/dm/uuid"), "mpath-3600a\n").unwrap();
        let device = iscsi.ensure_map("volume-b7f8e13c", "3600a").unwrap();
        assert!(device.ends_with("volume-b7f8e13c"));
        assert!(tools.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn detach_of_nothing_is_ok_and_logs_out_of_every_portal() {
        let dir = tempfile::tempdir().unwrap();
        let host = IscsiHost {
            mapper_dir: dir.path().to_path_buf(),
            multipath_conf_dir: dir.path().join("conf.d"),
            ..Default::default()
        };
        let tools = script(vec![("iscsiadm -m node", ISCSI_ERR_NO_OBJS_FOUND, "")]);
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        iscsi.detach(&volume()).unwrap();
        let calls = tools.calls.lock().unwrap();
        assert!(
            !calls.iter().any(|c| c.starts_with("multipath -f")),
            "no map, no flush: {calls:?}"
        );
        assert_eq!(
            calls.iter().filter(|c| c.ends_with("--logout")).count(),
            2,
            "{calls:?}"
        );
    }

    fn detach_host(dir: &Path) -> IscsiHost {
        IscsiHost {
            mapper_dir: dir.to_path_buf(),
            multipath_conf_dir: dir.join("conf.d"),
            device_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    const SUITE_SESSION: &str =
        "tcp: [2] 127.0.0.2:3260,1 iqn.2024-01.io.multicsi:suite (non-flash)\n";

    fn suite_volume() -> IscsiVolume {
        let mut v = volume();
        v.target_iqn = "iqn.2024-01.io.multicsi:suite".into();
        v.portals = vec!["127.0.0.2:3260".into()];
        v
    }

    #[test]
    fn a_logout_racing_the_sessions_own_teardown_is_done_when_the_session_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let host = detach_host(dir.path());
        // The session is between connections when the logout comes, and
        // gone when the list is read.
        let tools = script_after(
            vec![("iscsiadm -m node -T", ISCSI_ERR_SESSION_NOT_CONNECTED, "")],
            vec![("iscsiadm -m session", ISCSI_ERR_NO_OBJS_FOUND, "")],
        );
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        iscsi.detach(&suite_volume()).unwrap();
        let calls = tools.calls.lock().unwrap();
        assert!(calls.iter().any(|c| c.ends_with("-o delete")), "{calls:?}");
    }

    #[test]
    fn a_session_that_reconnects_late_is_logged_out_once_it_takes_the_logout() {
        let dir = tempfile::tempdir().unwrap();
        let host = detach_host(dir.path());
        let tools = script_after(
            vec![
                ("iscsiadm -m node -T", ISCSI_ERR_SESSION_NOT_CONNECTED, ""),
                ("iscsiadm -m node -T", ISCSI_ERR_SESSION_NOT_CONNECTED, ""),
            ],
            vec![("iscsiadm -m session", 0, SUITE_SESSION)],
        );
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        iscsi.detach(&suite_volume()).unwrap();
        let calls = tools.calls.lock().unwrap();
        assert_eq!(
            calls.iter().filter(|c| c.ends_with("--logout")).count(),
            3,
            "{calls:?}"
        );
    }

    #[test]
    fn a_session_that_never_takes_the_logout_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = detach_host(dir.path());
        host.device_timeout = Duration::from_millis(600);
        let tools = script(vec![
            ("iscsiadm -m session", 0, SUITE_SESSION),
            (
                "iscsiadm -m node -T iqn.2024-01.io.multicsi:suite -p 127.0.0.2:3260 --logout",
                ISCSI_ERR_SESSION_NOT_CONNECTED,
                "",
            ),
        ]);
        let iscsi = Iscsi {
            host: &host,
            tools: &tools,
        };
        let err = iscsi.detach(&suite_volume()).unwrap_err().to_string();
        assert!(err.contains("could not be logged out"), "{err}");
        let calls = tools.calls.lock().unwrap();
        assert!(!calls.iter().any(|c| c.ends_with("-o delete")), "{calls:?}");
    }
}
