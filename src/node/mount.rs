//! Mounts: mount(2), bind mounts, umount2(2) and `/proc/self/mountinfo`.
//!
//! Nothing here executes a program: a bind mount is two or three system calls.

use std::ffi::{CStr, CString, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::{HostError, Result, c_path};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that is mounted here (not `/` for bind mounts of a
    /// subdirectory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`, `nosuid`, `relatime`, ...).
    pub options: Vec<String>,
    /// Optional fields (`shared:1`, `master:2`, ...).
    pub optional_fields: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options (`rw`, `errors=remount-ro`, ...).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether this mount is read-only (the mount itself or its filesystem).
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro") || self.super_options.iter().any(|o| o == "ro")
    }
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash) the
/// kernel uses in mountinfo fields.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn unescape_string(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn split_options(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter(|o| !o.is_empty())
        .map(unescape_string)
        .collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    if fields.len() < separator + 3 {
        return None;
    }
    let (major, minor) = fields[2].split_once(':')?;
    Some(MountEntry {
        mount_id: fields[0].parse().ok()?,
        parent_id: fields[1].parse().ok()?,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: unescape_path(fields[3]),
        mount_point: unescape_path(fields[4]),
        options: split_options(fields[5]),
        optional_fields: fields[6..separator]
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| unescape_string(f))
            .collect(),
        fs_type: unescape_string(fields[separator + 1]),
        source: unescape_string(fields[separator + 2]),
        super_options: fields
            .get(separator + 3)
            .map(|f| split_options(f))
            .unwrap_or_default(),
    })
}

/// Parses the text of `/proc/<pid>/mountinfo`; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

/// The mounts of this process's mount namespace, in kernel order.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path)
        .map_err(|e| HostError::os("read", path, e, "is /proc mounted in the node plugin?"))?;
    Ok(parse_mountinfo(&text))
}

/// The mount that is visible at `path`: of several mounts stacked on the same point, the top one
/// (the one no other mount at that point sits on; the last one if that cannot be told).
/// `path` is compared as given: pass a canonical absolute path.
pub fn find_mount<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let at: Vec<&MountEntry> = mounts.iter().filter(|m| m.mount_point == path).collect();
    at.iter()
        .rev()
        .find(|m| !at.iter().any(|other| other.parent_id == m.mount_id))
        .or(at.last())
        .copied()
}

/// The mount visible at `path` (canonicalized first), if `path` is a mount point. A missing
/// path is not a mount point.
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    lookup(&mounts()?, path)
}

/// Like [`mount_at`], in a mount table read once by the caller.
pub fn lookup(table: &[MountEntry], path: &Path) -> Result<Option<MountEntry>> {
    let canonical = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HostError::os("resolve", path, e, "check the path")),
    };
    Ok(find_mount(table, &canonical).cloned())
}

/// Mount options turned into mount(2) flags and the filesystem-specific data string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    /// Options for the filesystem itself, joined with ',' for mount(2).
    pub data: Vec<String>,
}

/// No flag.
const NONE: MsFlags = MsFlags::empty();
/// `MS_NOSYMFOLLOW` (Linux 5.10+): not among nix's named flags.
const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(0x100);

impl Default for ParsedOptions {
    fn default() -> Self {
        ParsedOptions {
            flags: MsFlags::empty(),
            data: Vec::new(),
        }
    }
}

/// (word, flag it sets, flag it clears)
const FLAG_WORDS: &[(&str, MsFlags, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY, NONE),
    ("rw", NONE, MsFlags::MS_RDONLY),
    ("nosuid", MsFlags::MS_NOSUID, NONE),
    ("suid", NONE, MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV, NONE),
    ("dev", NONE, MsFlags::MS_NODEV),
    ("noexec", MsFlags::MS_NOEXEC, NONE),
    ("exec", NONE, MsFlags::MS_NOEXEC),
    ("sync", MsFlags::MS_SYNCHRONOUS, NONE),
    ("async", NONE, MsFlags::MS_SYNCHRONOUS),
    ("dirsync", MsFlags::MS_DIRSYNC, NONE),
    ("noatime", MsFlags::MS_NOATIME, NONE),
    ("atime", NONE, MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME, NONE),
    ("diratime", NONE, MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME, NONE),
    ("norelatime", NONE, MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME, NONE),
    ("nostrictatime", NONE, MsFlags::MS_STRICTATIME),
    ("lazytime", MsFlags::MS_LAZYTIME, NONE),
    ("nolazytime", NONE, MsFlags::MS_LAZYTIME),
    ("mand", MsFlags::MS_MANDLOCK, NONE),
    ("nomand", NONE, MsFlags::MS_MANDLOCK),
    ("silent", MsFlags::MS_SILENT, NONE),
    ("loud", NONE, MsFlags::MS_SILENT),
    ("iversion", MsFlags::MS_I_VERSION, NONE),
    ("noiversion", NONE, MsFlags::MS_I_VERSION),
    ("nosymfollow", MS_NOSYMFOLLOW, NONE),
    ("symfollow", NONE, MS_NOSYMFOLLOW),
    ("defaults", NONE, NONE),
];

/// Words meaningful only to mount(8) or fstab; they never reach the kernel.
const USERSPACE_WORDS: &[&str] = &[
    "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
];

/// Words that would change the kind of mount instead of its options.
const REJECTED_WORDS: &[&str] = &[
    "bind",
    "rbind",
    "move",
    "remount",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "unbindable",
    "runbindable",
];

/// The per-mount flags a bind mount can carry (set with `MS_BIND | MS_REMOUNT`).
const BIND_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME)
    .union(MS_NOSYMFOLLOW);

/// Checks one option: no NUL or control characters, no ',' except inside a double-quoted value
/// (SELinux `context="a,b"`), balanced quotes.
fn check_option(option: &str) -> Result<()> {
    let invalid = |reason| HostError::InvalidMountOption {
        option: option.to_string(),
        reason,
    };
    if option.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if option.chars().any(char::is_control) {
        return Err(invalid("it contains a control character"));
    }
    let mut quoted = false;
    for c in option.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                return Err(invalid(
                    "it contains ','; give each option as its own list item",
                ));
            }
            _ => {}
        }
    }
    if quoted {
        return Err(invalid("it has an unbalanced '\"'"));
    }
    Ok(())
}

/// Translates mount option words into mount(2) flags; everything else is filesystem data.
/// `read_only` forces `MS_RDONLY` whatever the options say. Empty items are skipped, fstab-only
/// words (`auto`, `nofail`, `x-*`, ...) dropped, and words that change the kind of mount (`bind`,
/// `remount`, propagation) rejected.
pub fn parse_options(options: &[String], read_only: bool) -> Result<ParsedOptions> {
    let mut parsed = ParsedOptions::default();
    for raw in options {
        check_option(raw)?;
        let option = raw.trim();
        if option.is_empty()
            || USERSPACE_WORDS.contains(&option)
            || option.starts_with("x-")
            || option.starts_with("comment=")
        {
            continue;
        }
        if REJECTED_WORDS.contains(&option) {
            return Err(HostError::InvalidMountOption {
                option: option.to_string(),
                reason: "it changes the kind of mount, not its options; remove it",
            });
        }
        match FLAG_WORDS.iter().find(|(word, _, _)| *word == option) {
            Some((_, set, clear)) => {
                parsed.flags.remove(*clear);
                parsed.flags.insert(*set);
            }
            None => parsed.data.push(option.to_string()),
        }
    }
    if read_only {
        parsed.flags |= MsFlags::MS_RDONLY;
    }
    Ok(parsed)
}

fn mount_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT => "the source or the target does not exist; create the target first",
        Errno::ENOTDIR => "the target is not a directory (a filesystem needs a directory)",
        Errno::EBUSY => "the device is in use or the target is already mounted",
        Errno::ENODEV => "the kernel does not know this filesystem type; load its module",
        Errno::ENOTBLK => "the source is not a block device",
        Errno::EACCES | Errno::EROFS => "the device is read-only; mount it read-only",
        Errno::EINVAL => {
            "a mount option is not valid for this filesystem, or the filesystem is damaged; check dmesg"
        }
        Errno::EPERM => "the node plugin must run privileged (CAP_SYS_ADMIN)",
        _ => "check dmesg",
    }
}

fn sys_mount(
    op: &'static str,
    source: &CStr,
    target_path: &Path,
    target: &CStr,
    fs_type: Option<&CStr>,
    flags: MsFlags,
    data: Option<&CStr>,
) -> Result<()> {
    nix::mount::mount(Some(source), target, fs_type, flags, data)
        .map_err(|e| HostError::os(op, target_path, e.into(), mount_hint(e)))
}

/// Mounts the filesystem on `device` at the directory `target`.
pub fn mount_fs(
    device: &Path,
    target: &Path,
    fs_type: &str,
    options: &[String],
    read_only: bool,
) -> Result<()> {
    crate::metrics::node_op("mount", || {
        mount_fs_unmetered(device, target, fs_type, options, read_only)
    })
}

fn mount_fs_unmetered(
    device: &Path,
    target: &Path,
    fs_type: &str,
    options: &[String],
    read_only: bool,
) -> Result<()> {
    let parsed = parse_options(options, read_only)?;
    let c_source = c_path("mount", device)?;
    let c_target = c_path("mount", target)?;
    let c_type = CString::new(fs_type).map_err(|_| HostError::UnsupportedFs {
        fs_type: fs_type.to_string(),
    })?;
    let data = parsed.data.join(",");
    let c_data = CString::new(data).map_err(|_| HostError::InvalidMountOption {
        option: parsed.data.join(","),
        reason: "it contains a NUL byte",
    })?;
    let op = "mount filesystem at";
    sys_mount(
        op,
        &c_source,
        target,
        &c_target,
        Some(c_type.as_c_str()),
        parsed.flags,
        Some(c_data.as_c_str()),
    )
}

/// `ST_NOSYMFOLLOW` from `<sys/statvfs.h>` (Linux 5.10+): not among nix's named flags.
const ST_NOSYMFOLLOW: FsFlags = FsFlags::from_bits_retain(0x2000);

/// The per-mount flags a mount has now, as `MS_*` flags (from statvfs's `ST_*`), so a remount
/// adds to them and never loosens them (a bind of a read-only mount stays read-only).
fn current_bind_flags(target: &Path, c_target: &CStr) -> Result<MsFlags> {
    let f = statvfs(c_target)
        .map_err(|e| HostError::os("statvfs", target, e.into(), "check the mount"))?
        .flags();
    let mut flags = MsFlags::empty();
    for (st_flag, ms_flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (ST_NOSYMFOLLOW, MS_NOSYMFOLLOW),
    ] {
        if f.contains(st_flag) {
            flags |= ms_flag;
        }
    }
    if !f.intersects(FsFlags::ST_NOATIME | FsFlags::ST_RELATIME) {
        flags |= MsFlags::MS_STRICTATIME;
    }
    Ok(flags)
}

/// Bind-mounts `source` onto `target`: a directory onto a directory, or a device node (or any
/// file) onto a regular file for raw block volumes. With `read_only`, or with per-mount flag
/// words in `options` (`nosuid`, `noexec`, `noatime`, ...), the bind is then remounted with
/// those flags added to the ones it inherited; if that fails, the bind is undone. Filesystem
/// specific options cannot change on a bind mount and are ignored (they apply when the
/// filesystem itself is mounted).
///
/// A read-only bind of a *device node* only makes the node's inode read-only: the device can
/// still be opened for writing through it. A read-only raw block volume needs a read-only
/// device (for example a read-only loop device or `BLKROSET`).
pub fn bind(source: &Path, target: &Path, read_only: bool, options: &[String]) -> Result<()> {
    crate::metrics::node_op("bind_mount", || {
        bind_unmetered(source, target, read_only, options)
    })
}

fn bind_unmetered(source: &Path, target: &Path, read_only: bool, options: &[String]) -> Result<()> {
    let parsed = parse_options(options, read_only)?;
    let c_source = c_path("bind mount", source)?;
    let c_target = c_path("bind mount", target)?;
    sys_mount(
        "bind mount onto",
        &c_source,
        target,
        &c_target,
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    let requested = parsed.flags & BIND_FLAGS;
    if requested.is_empty() {
        return Ok(());
    }
    let remount = current_bind_flags(target, &c_target).and_then(|inherited| {
        let mut flags = inherited | requested;
        let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
        if requested.intersects(atime) {
            flags.remove(atime);
            flags |= requested & atime;
        }
        sys_mount(
            "remount bind mount with flags",
            &c_target,
            target,
            &c_target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None,
        )
    });
    if let Err(e) = remount {
        // Never leave a writable mount where a read-only one was asked for.
        let _ = umount_once(&c_target, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

fn umount_once(c_target: &CStr, flags: MntFlags) -> nix::Result<()> {
    umount2(c_target, flags | MntFlags::UMOUNT_NOFOLLOW)
}

/// How many mounts stacked on one point `unmount` removes at most.
const MAX_STACKED: usize = 32;
/// Pauses between attempts while the mount is busy (about 0.3 s in all).
const BUSY_BACKOFF_MS: &[u64] = &[10, 20, 40, 80, 160];

/// Unmounts `target`, and every mount stacked on it, until it is no mount point. Not mounted or
/// missing is fine. Symlinks at `target` are not followed. While the mount is busy (EBUSY) it
/// tries a few more times over about 0.3 s, then fails: it does not fall back to a lazy
/// unmount, which would hide the mount and keep the device in use (a later detach or LUKS
/// close would fail instead, far from the cause). Use [`unmount_lazy`] when that is wanted.
pub fn unmount(target: &Path) -> Result<()> {
    unmount_with(target, MntFlags::empty())
}

/// Like [`unmount`] but detaches lazily (`MNT_DETACH`): the mounts disappear from the tree at
/// once and the filesystems are released when their last user goes away.
pub fn unmount_lazy(target: &Path) -> Result<()> {
    unmount_with(target, MntFlags::MNT_DETACH)
}

fn unmount_with(target: &Path, flags: MntFlags) -> Result<()> {
    crate::metrics::node_op("unmount", || unmount_with_unmetered(target, flags))
}

fn unmount_with_unmetered(target: &Path, flags: MntFlags) -> Result<()> {
    let c_target = c_path("unmount", target)?;
    let mut busy = 0;
    let mut layers = 0;
    loop {
        match umount_once(&c_target, flags) {
            Ok(()) => {
                layers += 1;
                if layers >= MAX_STACKED {
                    return Err(HostError::os(
                        "unmount",
                        target,
                        Errno::EBUSY.into(),
                        format!("more than {MAX_STACKED} mounts are stacked here; check mountinfo"),
                    ));
                }
            }
            Err(e) => match e {
                Errno::EINVAL | Errno::ENOENT => return Ok(()),
                Errno::EBUSY if busy < BUSY_BACKOFF_MS.len() => {
                    sleep(Duration::from_millis(BUSY_BACKOFF_MS[busy]));
                    busy += 1;
                }
                errno => {
                    let hint = match errno {
                        Errno::EBUSY => {
                            "a process still uses it (open file or working directory); stop it, then retry"
                        }
                        Errno::EPERM => "the node plugin must run privileged (CAP_SYS_ADMIN)",
                        _ => "check mountinfo and dmesg",
                    };
                    return Err(HostError::os("unmount", target, e.into(), hint));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 22 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:35 / /with\\040space ro,nosuid,nodev - tmpfs my\\040tmp rw,size=1024k
41 40 7:3 /sub\\134dir /var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv\\011tab/mount rw shared:5 master:7 propagate_from:2 - xfs /dev/loop3 rw,attr2
garbage line
";

    #[test]
    fn parses_fields_escapes_and_optional_fields() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4, "the garbage line is skipped: {m:#?}");

        assert_eq!(m[0].mount_id, 22);
        assert_eq!(m[0].parent_id, 1);
        assert_eq!((m[0].major, m[0].minor), (8, 1));
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert_eq!(m[0].options, ["rw", "relatime"]);
        assert_eq!(m[0].optional_fields, ["shared:1"]);
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[0].source, "/dev/sda1");
        assert_eq!(m[0].super_options, ["rw", "errors=remount-ro"]);

        assert_eq!(m[1].root, Path::new("/mnt1"));
        assert_eq!(m[1].optional_fields, ["master:1"]);

        assert_eq!(m[2].mount_point, Path::new("/with space"));
        assert!(m[2].optional_fields.is_empty());
        assert_eq!(m[2].source, "my tmp");
        assert!(m[2].is_read_only());
        assert!(!m[0].is_read_only());

        assert_eq!(m[3].root, Path::new("/sub\\dir"));
        assert_eq!(
            m[3].mount_point,
            Path::new("/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv\ttab/mount")
        );
        assert_eq!(
            m[3].optional_fields,
            ["shared:5", "master:7", "propagate_from:2"]
        );
        assert_eq!(m[3].fs_type, "xfs");
        assert_eq!((m[3].major, m[3].minor), (7, 3));
    }

    #[test]
    fn a_dash_in_a_path_is_not_the_separator() {
        let line = "50 22 0:40 / /- rw - tmpfs - rw\n";
        let m = parse_mountinfo(line);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, Path::new("/-"));
        assert_eq!(m[0].fs_type, "tmpfs");
        assert_eq!(m[0].source, "-");
    }

    #[test]
    fn empty_source_and_missing_super_options_are_tolerated() {
        let m = parse_mountinfo("51 22 0:41 / /x rw - fuse  rw\n52 22 0:42 / /y rw - proc proc\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].source, "");
        assert_eq!(m[0].super_options, ["rw"]);
        assert!(m[1].super_options.is_empty());
    }

    #[test]
    fn invalid_escapes_are_kept_literally() {
        assert_eq!(unescape("a\\9b"), b"a\\9b");
        assert_eq!(unescape("end\\04"), b"end\\04");
        assert_eq!(unescape("\\777"), b"\\777", "above 255 is not a byte");
        assert_eq!(unescape("\\101\\102"), b"AB");
    }

    #[test]
    fn find_mount_returns_the_top_of_a_stack() {
        let text = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
60 22 7:1 / /mnt/a rw - ext4 /dev/loop1 rw
70 22 0:50 / /mnt/b rw - tmpfs t rw
61 60 7:2 / /mnt/a rw - xfs /dev/loop2 rw
";
        let m = parse_mountinfo(text);
        let top = find_mount(&m, Path::new("/mnt/a")).map(|e| e.mount_id);
        assert_eq!(top, Some(61));
        assert_eq!(
            find_mount(&m, Path::new("/mnt/a/")).map(|e| e.mount_id),
            Some(61),
            "a trailing slash names the same point"
        );
        assert!(find_mount(&m, Path::new("/mnt")).is_none());

        // Listed in the other order, the stacking still decides.
        let reordered: Vec<MountEntry> = [m[0].clone(), m[3].clone(), m[1].clone()].into();
        assert_eq!(
            find_mount(&reordered, Path::new("/mnt/a")).map(|e| e.mount_id),
            Some(61)
        );
    }

    fn opts(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn option_words_become_flags_and_the_rest_data() {
        let p = parse_options(
            &opts(&[
                "noatime",
                "nodev",
                "nosuid",
                "noexec",
                "discard",
                "data=ordered",
                "sync",
                "dirsync",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            p.flags,
            MsFlags::MS_NOATIME
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_SYNCHRONOUS
                | MsFlags::MS_DIRSYNC
        );
        assert_eq!(p.data, ["discard", "data=ordered"]);
    }

    #[test]
    fn later_words_override_earlier_ones_and_read_only_wins() {
        let p = parse_options(&opts(&["ro", "rw", "nodev", "dev"]), false).unwrap();
        assert_eq!(p.flags, MsFlags::empty());
        let p = parse_options(&opts(&["rw"]), true).unwrap();
        assert_eq!(p.flags, MsFlags::MS_RDONLY);
        let p = parse_options(&opts(&["relatime", "nodiratime", "defaults"]), false).unwrap();
        assert_eq!(p.flags, MsFlags::MS_RELATIME | MsFlags::MS_NODIRATIME);
        assert!(p.data.is_empty());
    }

    #[test]
    fn fstab_words_and_empty_items_are_dropped() {
        let p = parse_options(
            &opts(&["", " ", "nofail", "_netdev", "x-systemd.automount", "auto"]),
            false,
        )
        .unwrap();
        assert_eq!(p, ParsedOptions::default());
    }

    #[test]
    fn smuggled_and_kind_changing_options_are_rejected() {
        for bad in [
            "noatime,dev",
            "ro,exec",
            "a\0b",
            "x\ny",
            "context=\"a,b",
            "bind",
            "remount",
            "rshared",
        ] {
            let err = parse_options(&opts(&[bad]), false).unwrap_err();
            assert!(
                matches!(err, HostError::InvalidMountOption { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_comma_inside_a_quoted_value_is_allowed() {
        let opt = "context=\"system_u:object_r:container_file_t:s0:c1,c2\"";
        let p = parse_options(&opts(&[opt]), false).unwrap();
        assert_eq!(p.data, [opt]);
    }

    #[test]
    fn an_error_names_the_option_and_the_fix() {
        let err = parse_options(&opts(&["noatime,nodev"]), false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("noatime,nodev"), "{msg}");
        assert!(msg.contains("own list item"), "{msg}");
    }
}
