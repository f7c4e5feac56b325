//! Filesystems: probe what is on a device, create, grow online, usage statistics.
//!
//! Probing, creating and growing run the standard tools (`blkid` from util-linux, `mkfs.ext4` /
//! `resize2fs` from e2fsprogs, `mkfs.xfs` / `xfs_growfs` from xfsprogs, `mkfs.btrfs` / `btrfs`
//! from btrfs-progs) with `LC_ALL=C`; their output goes into the error when they fail.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{HostError, Result, c_path};

/// The filesystems this driver creates, mounts and grows.
pub const SUPPORTED_FS: &[&str] = &["ext4", "xfs", "btrfs"];

/// Whether `fs_type` is one of [`SUPPORTED_FS`].
pub fn supported(fs_type: &str) -> bool {
    SUPPORTED_FS.contains(&fs_type)
}

/// What a device holds, as far as blkid can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No known signature: safe to format.
    Blank,
    /// A filesystem of this type (`ext4`, `xfs`, ...).
    Filesystem(String),
    /// A LUKS header.
    Luks,
    /// A partition table of this type (`gpt`, `dos`) on the whole device.
    PartitionTable(String),
    /// Anything else (swap, RAID member, several conflicting signatures, ...): not ours to touch.
    Other(String),
}

/// Reads the `KEY=value` lines of `blkid -p -o export`. A partition table wins over a filesystem
/// signature found next to it: the device is partitioned, and mounting or formatting it whole
/// would be wrong.
pub fn parse_blkid_export(text: &str) -> Signature {
    let mut fs_type = None;
    let mut usage = None;
    let mut pt_type = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "TYPE" => fs_type = Some(value.trim().to_string()),
            "USAGE" => usage = Some(value.trim().to_string()),
            "PTTYPE" => pt_type = Some(value.trim().to_string()),
            _ => {}
        }
    }
    if let Some(pt) = pt_type {
        return Signature::PartitionTable(pt);
    }
    match (fs_type, usage.as_deref()) {
        (None, _) => Signature::Blank,
        (Some(t), _) if t == "crypto_LUKS" => Signature::Luks,
        (Some(t), Some("filesystem")) => Signature::Filesystem(t),
        (Some(t), None) if supported(&t) => Signature::Filesystem(t),
        (Some(t), _) => Signature::Other(t),
    }
}

/// Probes `device` for signatures with `blkid -p` (low-level, bypassing the cache).
/// `Blank` only when blkid ran on a readable device and found nothing; a device that cannot be
/// opened, or blkid failing, is an error.
pub fn probe(device: &Path) -> Result<Signature> {
    // blkid says "nothing found" (exit 2) for a missing device too: rule that out first.
    File::open(device).map_err(|e| {
        HostError::os(
            "open device to probe",
            device,
            e,
            "check that the device exists and the node plugin runs privileged",
        )
    })?;
    let output = run(
        "blkid",
        "util-linux",
        [
            OsString::from("-p"),
            "-o".into(),
            "export".into(),
            device.into(),
        ],
    )?;
    match output.status.code() {
        Some(0) => Ok(parse_blkid_export(&String::from_utf8_lossy(&output.stdout))),
        Some(2) if output.stderr.iter().all(u8::is_ascii_whitespace) => Ok(Signature::Blank),
        // Ambivalent result: several signatures that contradict each other.
        Some(8) => Ok(Signature::Other("ambivalent".to_string())),
        _ => Err(tool_failed(
            "blkid",
            device,
            &output,
            "check the device and dmesg",
        )),
    }
}

/// Bytes at each end of a device that must read as zero before it counts
/// as blank.
pub const BLANK_CHECK_BYTES: u64 = 1 << 20;

/// The offset of the first byte that is not zero in the first or last
/// [`BLANK_CHECK_BYTES`] of `device`; `None` when both read all zero. Data
/// that no signature names (a raw block volume's) shows here.
///
/// A device-mapper device over one other device (a LUKS mapping, a
/// multipath map) is judged by what it is made of: a mapping that was
/// never written reads as noise through dm-crypt, but its ciphertext on the
/// device below is still zero. Its data starts where the mapping's size,
/// counted from the end, begins.
pub fn data_at_ends(device: &Path) -> Result<Option<u64>> {
    let size = device_bytes(device)?;
    match single_slave(device) {
        Some(below) => {
            let below_size = device_bytes(&below)?;
            let start = below_size.saturating_sub(size);
            Ok(data_in_ends(&below, start, below_size)?.map(|at| at - start))
        }
        None => data_in_ends(device, 0, size),
    }
}

fn device_bytes(device: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    File::open(device)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| HostError::os("read the size of", device, e, "check the device and dmesg"))
}

/// The one device below a device-mapper device, if it has exactly one.
fn single_slave(device: &Path) -> Option<PathBuf> {
    let name = std::fs::canonicalize(device)
        .ok()?
        .file_name()?
        .to_os_string();
    let mut slaves = std::fs::read_dir(Path::new("/sys/class/block").join(name).join("slaves"))
        .ok()?
        .flatten();
    let first = slaves.next()?;
    slaves
        .next()
        .is_none()
        .then(|| Path::new("/dev").join(first.file_name()))
}

/// The first byte that is not zero in `[start, start + 1 MiB)` or the last
/// MiB before `end` of `device`.
fn data_in_ends(device: &Path, start: u64, end: u64) -> Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let fail = |e| HostError::os("read", device, e, "check the device and dmesg");
    let file = File::open(device).map_err(fail)?;
    let head = (start + BLANK_CHECK_BYTES).min(end);
    let tail = end.saturating_sub(BLANK_CHECK_BYTES).max(head);
    let mut buffer = vec![0u8; 64 << 10];
    for (from, to) in [(start, head), (tail, end)] {
        let mut at = from;
        while at < to {
            let len = (to - at).min(buffer.len() as u64) as usize;
            file.read_exact_at(&mut buffer[..len], at).map_err(fail)?;
            if let Some(i) = buffer[..len].iter().position(|b| *b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += len as u64;
        }
    }
    Ok(None)
}

/// Options for creating a filesystem; `None` leaves the tool's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Bytes per inode (ext4 `-I`, xfs `-i size=`).
    pub inode_size: Option<u32>,
    /// Filesystem block size in bytes (ext4 `-b`, xfs `-b size=`).
    pub block_size: Option<u32>,
    /// Blocks reserved for root, in percent (ext4 `-m`).
    pub reserved_percent: Option<u8>,
}

impl MkfsOptions {
    /// Checks the options against what `fs_type` accepts.
    pub fn validate(&self, fs_type: &str) -> Result<()> {
        let invalid = |option: &'static str, value: u64, reason: String| {
            Err(HostError::InvalidMkfsOption {
                fs_type: fs_type.to_string(),
                option,
                value,
                reason,
            })
        };
        let (inode_range, takes_block_size, takes_reserved) = match fs_type {
            "ext4" => (Some(128..=4096), true, true),
            // v5 (CRC) XFS, the default, needs inodes of at least 512 bytes.
            "xfs" => (Some(512..=2048), true, false),
            "btrfs" => (None, false, false),
            _ => {
                return Err(HostError::UnsupportedFs {
                    fs_type: fs_type.to_string(),
                });
            }
        };
        if let Some(size) = self.inode_size {
            match &inode_range {
                None => {
                    return invalid(
                        "inode size",
                        size.into(),
                        "btrfs has no fixed inode size; remove the option".into(),
                    );
                }
                Some(range) if !range.contains(&size) || !size.is_power_of_two() => {
                    return invalid(
                        "inode size",
                        size.into(),
                        format!(
                            "use a power of two from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(size) = self.block_size {
            if !takes_block_size {
                return invalid(
                    "block size",
                    size.into(),
                    "btrfs picks its sector size from the page size; remove the option".into(),
                );
            }
            if !(1024..=65536).contains(&size) || !size.is_power_of_two() {
                return invalid(
                    "block size",
                    size.into(),
                    "use a power of two from 1024 to 65536".into(),
                );
            }
            if let Some(inode) = self.inode_size
                && fs_type == "ext4"
                && inode > size
            {
                return invalid(
                    "inode size",
                    inode.into(),
                    format!("it must not exceed the block size {size}"),
                );
            }
        }
        if let Some(percent) = self.reserved_percent {
            if !takes_reserved {
                return invalid(
                    "reserved percentage",
                    percent.into(),
                    "only ext4 reserves blocks for root; remove the option".into(),
                );
            }
            if percent > 50 {
                return invalid("reserved percentage", percent.into(), "use 0 to 50".into());
            }
        }
        Ok(())
    }
}

/// The program and arguments that create `fs_type` on `device`, after validating `opts`.
pub fn mkfs_command(
    device: &Path,
    fs_type: &str,
    opts: &MkfsOptions,
) -> Result<(&'static str, Vec<OsString>)> {
    opts.validate(fs_type)?;
    let mut args: Vec<OsString> = Vec::new();
    let program = match fs_type {
        "ext4" => {
            args.extend(["-F".into(), "-q".into()]);
            if let Some(p) = opts.reserved_percent {
                args.extend(["-m".into(), p.to_string().into()]);
            }
            if let Some(i) = opts.inode_size {
                args.extend(["-I".into(), i.to_string().into()]);
            }
            if let Some(b) = opts.block_size {
                args.extend(["-b".into(), b.to_string().into()]);
            }
            "mkfs.ext4"
        }
        "xfs" => {
            args.extend(["-f".into(), "-q".into()]);
            if let Some(i) = opts.inode_size {
                args.extend(["-i".into(), format!("size={i}").into()]);
            }
            if let Some(b) = opts.block_size {
                args.extend(["-b".into(), format!("size={b}").into()]);
            }
            "mkfs.xfs"
        }
        "btrfs" => {
            args.extend(["-f".into(), "-q".into()]);
            "mkfs.btrfs"
        }
        _ => {
            return Err(HostError::UnsupportedFs {
                fs_type: fs_type.to_string(),
            });
        }
    };
    args.push(device.into());
    Ok((program, args))
}

fn package_of(tool: &str) -> &'static str {
    match tool {
        "mkfs.ext4" | "resize2fs" => "e2fsprogs",
        "mkfs.xfs" | "xfs_growfs" => "xfsprogs",
        "mkfs.btrfs" | "btrfs" => "btrfs-progs",
        _ => "util-linux",
    }
}

/// Creates a `fs_type` filesystem on `device`, overwriting whatever is there: probe first.
pub fn mkfs(device: &Path, fs_type: &str, opts: &MkfsOptions) -> Result<()> {
    crate::metrics::node_op("mkfs", || mkfs_unmetered(device, fs_type, opts))
}

fn mkfs_unmetered(device: &Path, fs_type: &str, opts: &MkfsOptions) -> Result<()> {
    let (program, args) = mkfs_command(device, fs_type, opts)?;
    let output = run(program, package_of(program), args)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(tool_failed(
            program,
            device,
            &output,
            "check the device size (xfs needs at least 300 MiB, btrfs about 115 MiB) and the options",
        ))
    }
}

/// Grows the mounted filesystem on `device` to the size of the device, online. The device must
/// already have its new size (after [`super::loopdev::refresh_capacity`] for a loop device).
pub fn grow(device: &Path, mount_point: &Path, fs_type: &str) -> Result<()> {
    crate::metrics::node_op("grow", || grow_unmetered(device, mount_point, fs_type))
}

fn grow_unmetered(device: &Path, mount_point: &Path, fs_type: &str) -> Result<()> {
    // btrfs refuses a resize to its current size (EINVAL); its statvfs total
    // is the device size, so a filesystem that already fills it is done.
    if fs_type == "btrfs" && stats(mount_point)?.total_bytes >= super::loopdev::device_size(device)?
    {
        return Ok(());
    }
    let (program, args, path): (&'static str, Vec<OsString>, &Path) = match fs_type {
        "ext4" => ("resize2fs", vec![device.into()], device),
        "xfs" => (
            "xfs_growfs",
            vec!["-d".into(), mount_point.into()],
            mount_point,
        ),
        "btrfs" => (
            "btrfs",
            vec![
                "filesystem".into(),
                "resize".into(),
                "max".into(),
                mount_point.into(),
            ],
            mount_point,
        ),
        _ => {
            return Err(HostError::UnsupportedFs {
                fs_type: fs_type.to_string(),
            });
        }
    };
    let output = run(program, package_of(program), args)?;
    if output.status.success() {
        Ok(())
    } else {
        let hint = if fs_type == "ext4" {
            "online ext4 resize needs the filesystem mounted and CAP_SYS_RESOURCE (run the node plugin privileged); check dmesg"
        } else {
            "the filesystem must be mounted for an online resize; check dmesg"
        };
        Err(tool_failed(program, path, &output, hint))
    }
}

/// Usage of the filesystem that holds `path`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    pub total_bytes: u64,
    /// Free bytes an unprivileged user can use.
    pub available_bytes: u64,
    pub used_bytes: u64,
    /// 0 on filesystems without a fixed inode count (btrfs).
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// Usage statistics of the filesystem that holds `path` (statvfs).
// The statvfs field types are 64-bit here but 32-bit on some targets.
#[allow(clippy::useless_conversion)]
pub fn stats(path: &Path) -> Result<FsStats> {
    let c = c_path("statvfs", path)?;
    let st = nix::sys::statvfs::statvfs(c.as_c_str()).map_err(|e| {
        HostError::os(
            "statvfs",
            path,
            e.into(),
            "check that the volume is still mounted there",
        )
    })?;
    let fragment = u64::from(st.fragment_size());
    let blocks = u64::from(st.blocks());
    let free = u64::from(st.blocks_free());
    let files = u64::from(st.files());
    let ffree = u64::from(st.files_free());
    Ok(FsStats {
        total_bytes: blocks.saturating_mul(fragment),
        available_bytes: u64::from(st.blocks_available()).saturating_mul(fragment),
        used_bytes: blocks.saturating_sub(free).saturating_mul(fragment),
        total_inodes: files,
        free_inodes: ffree,
        used_inodes: files.saturating_sub(ffree),
    })
}

fn run(
    tool: &'static str,
    package: &'static str,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Output> {
    Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostError::ToolMissing {
            tool,
            package,
            source,
        })
}

/// At most this many bytes of a tool's output go into an error.
const MAX_OUTPUT: usize = 2000;

fn tool_failed(tool: &'static str, path: &Path, output: &Output, hint: &str) -> HostError {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&output.stdout)
    } else {
        stderr
    };
    let mut text = text.trim().replace('\n', " | ");
    if text.len() > MAX_OUTPUT {
        let mut cut = MAX_OUTPUT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    if text.is_empty() {
        text = "no output".to_string();
    }
    HostError::ToolFailed {
        tool,
        path: PathBuf::from(path),
        status: output.status.to_string(),
        output: text,
        hint: hint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_at_either_end_is_found() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let file = File::create(&image).unwrap();
        file.set_len(8 * BLANK_CHECK_BYTES).unwrap();
        assert_eq!(data_at_ends(&image).unwrap(), None);
        // The middle is not looked at.
        file.write_all_at(b"x", 4 * BLANK_CHECK_BYTES).unwrap();
        assert_eq!(data_at_ends(&image).unwrap(), None);
        let last = 8 * BLANK_CHECK_BYTES - 1;
        file.write_all_at(b"y", last).unwrap();
        assert_eq!(data_at_ends(&image).unwrap(), Some(last));
        file.write_all_at(b"z", 4096).unwrap();
        assert_eq!(data_at_ends(&image).unwrap(), Some(4096));
        // Smaller than both ends together.
        let small = dir.path().join("small");
        std::fs::write(&small, [0, 0, 1]).unwrap();
        assert_eq!(data_at_ends(&small).unwrap(), Some(2));
    }

    #[test]
    fn blkid_output_is_classified() {
        let ext4 = "DEVNAME=/dev/loop0\nUUID=1234\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(
            parse_blkid_export(ext4),
            Signature::Filesystem("ext4".into())
        );
        let luks = "DEVNAME=/dev/vdb\nVERSION=2\nUUID=ab\nTYPE=crypto_LUKS\nUSAGE=crypto\n";
        assert_eq!(parse_blkid_export(luks), Signature::Luks);
        let gpt = "DEVNAME=/dev/sdb\nPTUUID=x\nPTTYPE=gpt\n";
        assert_eq!(
            parse_blkid_export(gpt),
            Signature::PartitionTable("gpt".into())
        );
        let swap = "DEVNAME=/dev/sdc\nTYPE=swap\nUSAGE=other\n";
        assert_eq!(parse_blkid_export(swap), Signature::Other("swap".into()));
        let raid = "TYPE=linux_raid_member\nUSAGE=raid\n";
        assert_eq!(
            parse_blkid_export(raid),
            Signature::Other("linux_raid_member".into())
        );
        assert_eq!(parse_blkid_export("DEVNAME=/dev/sdd\n"), Signature::Blank);
        assert_eq!(
            parse_blkid_export("TYPE=xfs\n"),
            Signature::Filesystem("xfs".into()),
            "without USAGE a known filesystem is still a filesystem"
        );
    }

    #[test]
    fn a_partition_table_wins_over_a_stale_filesystem_signature() {
        let both = "TYPE=btrfs\nUSAGE=filesystem\nPTUUID=x\nPTTYPE=gpt\n";
        assert_eq!(
            parse_blkid_export(both),
            Signature::PartitionTable("gpt".into())
        );
    }

    #[test]
    fn supported_filesystems() {
        for fs in ["ext4", "xfs", "btrfs"] {
            assert!(supported(fs), "{fs}");
        }
        for fs in ["ext3", "vfat", "", "EXT4"] {
            assert!(!supported(fs), "{fs}");
        }
    }

    fn opts(inode: Option<u32>, block: Option<u32>, reserved: Option<u8>) -> MkfsOptions {
        MkfsOptions {
            inode_size: inode,
            block_size: block,
            reserved_percent: reserved,
        }
    }

    #[test]
    fn valid_mkfs_options_are_accepted() {
        assert!(MkfsOptions::default().validate("btrfs").is_ok());
        assert!(
            opts(Some(256), Some(4096), Some(0))
                .validate("ext4")
                .is_ok()
        );
        assert!(
            opts(Some(128), Some(1024), Some(50))
                .validate("ext4")
                .is_ok()
        );
        assert!(opts(Some(4096), Some(65536), None).validate("ext4").is_ok());
        assert!(opts(Some(512), Some(1024), None).validate("xfs").is_ok());
        assert!(opts(Some(2048), Some(65536), None).validate("xfs").is_ok());
    }

    #[test]
    fn invalid_mkfs_options_are_rejected() {
        let cases = [
            ("ext4", opts(Some(100), None, None)),
            ("ext4", opts(Some(8192), None, None)),
            ("ext4", opts(Some(384), None, None)),
            ("ext4", opts(Some(2048), Some(1024), None)),
            ("ext4", opts(None, Some(512), None)),
            ("ext4", opts(None, Some(131072), None)),
            ("ext4", opts(None, Some(3000), None)),
            ("ext4", opts(None, None, Some(51))),
            ("xfs", opts(Some(256), None, None)),
            ("xfs", opts(Some(4096), None, None)),
            ("xfs", opts(None, None, Some(5))),
            ("btrfs", opts(Some(256), None, None)),
            ("btrfs", opts(None, Some(4096), None)),
            ("btrfs", opts(None, None, Some(1))),
        ];
        for (fs, o) in cases {
            let err = o.validate(fs).unwrap_err();
            assert!(
                matches!(err, HostError::InvalidMkfsOption { .. }),
                "{fs} {o:?}: {err}"
            );
        }
    }

    #[test]
    fn an_unsupported_filesystem_is_an_error() {
        let err = MkfsOptions::default().validate("vfat").unwrap_err();
        assert!(matches!(err, HostError::UnsupportedFs { .. }));
        assert!(err.to_string().contains("ext4, xfs, btrfs"), "{err}");
        let err = mkfs_command(Path::new("/dev/x"), "ntfs", &MkfsOptions::default()).unwrap_err();
        assert!(matches!(err, HostError::UnsupportedFs { .. }));
    }

    #[test]
    fn mkfs_commands_carry_the_options() {
        let dev = Path::new("/dev/loop9");
        let (p, a) = mkfs_command(dev, "ext4", &opts(Some(256), Some(4096), Some(1))).unwrap();
        assert_eq!(p, "mkfs.ext4");
        assert_eq!(
            a,
            [
                "-F",
                "-q",
                "-m",
                "1",
                "-I",
                "256",
                "-b",
                "4096",
                "/dev/loop9"
            ]
        );
        let (p, a) = mkfs_command(dev, "xfs", &opts(Some(512), Some(4096), None)).unwrap();
        assert_eq!(p, "mkfs.xfs");
        assert_eq!(
            a,
            [
                "-f",
                "-q",
                "-i",
                "size=512",
                "-b",
                "size=4096",
                "/dev/loop9"
            ]
        );
        let (p, a) = mkfs_command(dev, "btrfs", &MkfsOptions::default()).unwrap();
        assert_eq!(p, "mkfs.btrfs");
        assert_eq!(a, ["-f", "-q", "/dev/loop9"]);
        let (_, a) = mkfs_command(dev, "ext4", &MkfsOptions::default()).unwrap();
        assert_eq!(a, ["-F", "-q", "/dev/loop9"]);
    }

    #[test]
    fn a_failing_tool_reports_its_output() {
        let output = Command::new("sh")
            .args(["-c", "echo 'first line' >&2; echo 'second' >&2; exit 3"])
            .output()
            .unwrap();
        let err = tool_failed("mkfs.ext4", Path::new("/dev/loop9"), &output, "do this");
        let msg = err.to_string();
        assert!(msg.contains("mkfs.ext4 on /dev/loop9 failed"), "{msg}");
        assert!(msg.contains("first line | second"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("do this"), "{msg}");
    }

    #[test]
    fn a_missing_device_is_an_error_not_blank() {
        let err = probe(Path::new("/dev/does-not-exist-multicsi")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::ENOENT as i32));
        assert!(err.to_string().contains("/dev/does-not-exist-multicsi"));
    }
}
