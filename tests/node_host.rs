//! The node's host primitives against the real kernel: loop devices, mkfs, mounts, binds,
//! online growth. Needs root; fails (does not skip) without it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use multicsi::node::HostError;
use multicsi::node::fs::{self as nodefs, MkfsOptions, Signature};
use multicsi::node::{freeze, loopdev, mount};

const MIB: u64 = 1 << 20;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "tests/node_host.rs attaches loop devices and mounts filesystems: run it as root \
         (e.g. `sudo -E cargo test --test node_host`)"
    );
}

/// A temporary directory whose loop devices and mounts are removed when it is dropped, even if
/// the test panicked half way.
struct Scratch {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Scratch {
    fn new() -> Self {
        require_root();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        Scratch {
            dir,
            mounts: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .canonicalize()
            .expect("canonical tempdir")
            .join(name)
    }

    fn image(&self, name: &str, size: u64) -> PathBuf {
        let path = self.path(name);
        File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("create sparse image");
        path
    }

    fn dir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        fs::create_dir(&path).expect("create directory");
        path
    }

    /// Remembers `target` for unmounting on drop.
    fn track(&mut self, target: &Path) {
        self.mounts.push(target.to_path_buf());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            if mount::unmount(target).is_err() {
                let _ = mount::unmount_lazy(target);
            }
        }
        // Detach every loop device whose backing file lives in this directory (also deleted ones)
        // and nothing else: another process may be using loop devices at the same time.
        let root = self.dir.path().canonicalize().unwrap_or_default();
        let Ok(entries) = fs::read_dir("/sys/block") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
                continue;
            };
            let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
                continue;
            };
            let backing = backing.trim_end_matches('\n');
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            if Path::new(backing).starts_with(&root) {
                let _ = loopdev::detach(&Path::new("/dev").join(name));
            }
        }
    }
}

const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has a capability in its effective set.
fn has_capability(cap: u32) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

fn errno(result: io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn tool_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; install it to run these tests"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn attach_is_idempotent_and_detach_leaves_no_device() {
    let scratch = Scratch::new();
    let image = scratch.image("disk.img", 64 * MIB);

    assert_eq!(loopdev::find(&image).unwrap(), None);
    let device = loopdev::attach(&image).unwrap();
    assert!(loopdev::is_block_device(&device), "{}", device.display());
    assert_eq!(
        loopdev::attach(&image).unwrap(),
        device,
        "attaching again returns the same device"
    );
    // Another spelling of the same path finds it too.
    let indirect = scratch.path(".").join("disk.img");
    assert_eq!(loopdev::find(&indirect).unwrap(), Some(device.clone()));
    assert_eq!(loopdev::device_size(&device).unwrap(), 64 * MIB);
    let sys = Path::new("/sys/block")
        .join(device.file_name().unwrap())
        .join("loop");
    assert_eq!(
        fs::read_to_string(sys.join("autoclear")).unwrap().trim(),
        "0"
    );
    assert_eq!(fs::read_to_string(sys.join("dio")).unwrap().trim(), "0");

    loopdev::detach(&device).unwrap();
    assert_eq!(loopdev::find(&image).unwrap(), None);
    // A node that does not exist has nothing attached.
    loopdev::detach(Path::new("/dev/loop987654")).unwrap();
    assert!(!loopdev::is_block_device(&image));
    assert!(!loopdev::is_block_device(&scratch.path("missing")));
}

#[test]
fn a_recreated_image_is_not_confused_with_the_deleted_one() {
    let scratch = Scratch::new();
    let image = scratch.image("disk.img", 16 * MIB);
    let old = loopdev::attach(&image).unwrap();

    fs::remove_file(&image).unwrap();
    assert_eq!(
        loopdev::find(&image).unwrap(),
        None,
        "a missing image has no device"
    );
    scratch.image("disk.img", 16 * MIB);
    assert_eq!(
        loopdev::find(&image).unwrap(),
        None,
        "the old device holds the deleted file, not the new one"
    );
    let new = loopdev::attach(&image).unwrap();
    assert_ne!(new, old);
    assert_eq!(loopdev::find(&image).unwrap(), Some(new.clone()));
    loopdev::detach(&old).unwrap();
    loopdev::detach(&new).unwrap();
    assert_eq!(loopdev::find(&image).unwrap(), None);
}

#[test]
fn attaching_a_missing_image_names_it() {
    let scratch = Scratch::new();
    let missing = scratch.path("nope.img");
    let err = loopdev::attach(&missing).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    assert!(err.to_string().contains("nope.img"), "{err}");
}

#[test]
fn probe_tells_blank_partitioned_and_luks_devices_apart() {
    let scratch = Scratch::new();

    let blank = loopdev::attach(&scratch.image("blank.img", 32 * MIB)).unwrap();
    assert_eq!(nodefs::probe(&blank).unwrap(), Signature::Blank);

    // A GPT written by sfdisk.
    let gpt_image = scratch.image("gpt.img", 32 * MIB);
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", gpt_image.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot run sfdisk; install fdisk to run these tests");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\n,16M\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
    let gpt = loopdev::attach(&gpt_image).unwrap();
    assert_eq!(
        nodefs::probe(&gpt).unwrap(),
        Signature::PartitionTable("gpt".into())
    );

    // A DOS partition table written byte by byte: one Linux partition from sector 2048.
    let dos_image = scratch.image("dos.img", 32 * MIB);
    let file = OpenOptions::new().write(true).open(&dos_image).unwrap();
    let mut entry = vec![0u8, 0, 0x21, 0, 0x83, 0, 0, 0];
    entry.extend_from_slice(&2048u32.to_le_bytes());
    entry.extend_from_slice(&8192u32.to_le_bytes());
    file.write_all_at(&entry, 446).unwrap();
    file.write_all_at(&[0x55, 0xaa], 510).unwrap();
    drop(file);
    let dos = loopdev::attach(&dos_image).unwrap();
    assert_eq!(
        nodefs::probe(&dos).unwrap(),
        Signature::PartitionTable("dos".into())
    );

    // A LUKS2 header written by cryptsetup on the image file (needs no device-mapper).
    let luks_image = scratch.image("luks.img", 32 * MIB);
    let key = scratch.path("key");
    fs::write(&key, b"not-a-real-secret").unwrap();
    tool_output(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            key.to_str().unwrap(),
            luks_image.to_str().unwrap(),
        ],
    );
    let luks = loopdev::attach(&luks_image).unwrap();
    assert_eq!(nodefs::probe(&luks).unwrap(), Signature::Luks);

    for device in [blank, gpt, dos, luks] {
        loopdev::detach(&device).unwrap();
    }
}

/// Attach, mkfs, mount, write, bind read-only, grow online, unmount, detach.
fn filesystem_lifecycle(fs_type: &str, opts: MkfsOptions) -> (PathBuf, Scratch) {
    let mut scratch = Scratch::new();
    let image = scratch.image("volume.img", 512 * MIB);
    let device = loopdev::attach(&image).unwrap();

    assert_eq!(nodefs::probe(&device).unwrap(), Signature::Blank);
    nodefs::mkfs(&device, fs_type, &opts).unwrap();
    assert_eq!(
        nodefs::probe(&device).unwrap(),
        Signature::Filesystem(fs_type.into())
    );

    // Stage.
    let staging = scratch.dir("staging");
    scratch.track(&staging);
    mount::mount_fs(&device, &staging, fs_type, &strings(&["noatime"]), false).unwrap();
    let staged = mount::mount_at(&staging)
        .unwrap()
        .expect("staging is mounted");
    assert_eq!(staged.fs_type, fs_type);
    assert_eq!(Path::new(&staged.source), device);
    assert!(staged.options.iter().any(|o| o == "noatime"), "{staged:?}");
    assert!(!staged.is_read_only());
    fs::write(staging.join("hello"), b"hello").unwrap();

    // Publish read-only.
    let publish = scratch.dir("publish");
    scratch.track(&publish);
    mount::bind(&staging, &publish, true, &strings(&["nosuid"])).unwrap();
    assert_eq!(fs::read(publish.join("hello")).unwrap(), b"hello");
    assert_eq!(
        errno(fs::write(publish.join("other"), b"x")),
        Some(libc::EROFS)
    );
    let published = mount::mount_at(&publish)
        .unwrap()
        .expect("publish is mounted");
    assert!(published.is_read_only(), "{published:?}");
    assert!(published.options.iter().any(|o| o == "nosuid"));
    assert!(
        published.options.iter().any(|o| o == "noatime"),
        "the remount keeps the flags the bind inherited: {published:?}"
    );
    assert_eq!(
        (published.major, published.minor),
        (staged.major, staged.minor)
    );
    fs::write(staging.join("still-writable"), b"y").expect("staging stays writable");

    // Grow online.
    let before = nodefs::stats(&staging).unwrap();
    assert!(before.total_bytes > 256 * MIB && before.total_bytes <= 512 * MIB);
    assert!(before.used_bytes > 0 && before.available_bytes < before.total_bytes);
    File::options()
        .write(true)
        .open(&image)
        .and_then(|f| f.set_len(1024 * MIB))
        .unwrap();
    assert_eq!(loopdev::device_size(&device).unwrap(), 512 * MIB);
    loopdev::refresh_capacity(&device).unwrap();
    assert_eq!(loopdev::device_size(&device).unwrap(), 1024 * MIB);
    if fs_type == "ext4" && !has_capability(CAP_SYS_RESOURCE) {
        // The kernel refuses online ext4 resizes without CAP_SYS_RESOURCE; some sandboxes drop
        // it even for root. Then the failure must say so.
        let err = nodefs::grow(&device, &staging, fs_type).unwrap_err();
        assert!(err.to_string().contains("CAP_SYS_RESOURCE"), "{err}");
        // Straight to stderr, past the test harness's capture, so it is seen.
        let _ = writeln!(
            io::stderr(),
            "NOTE: ext4 online grow NOT verified: this process lacks CAP_SYS_RESOURCE ({err})"
        );
        mount::unmount(&publish).unwrap();
        mount::unmount(&staging).unwrap();
        loopdev::detach(&device).unwrap();
        return (image, scratch);
    }
    nodefs::grow(&device, &staging, fs_type).unwrap();
    let after = nodefs::stats(&staging).unwrap();
    assert!(
        after.total_bytes > before.total_bytes + 400 * MIB,
        "grew from {} to {}",
        before.total_bytes,
        after.total_bytes
    );
    assert_eq!(
        nodefs::stats(&publish).unwrap().total_bytes,
        after.total_bytes
    );
    assert_eq!(fs::read(publish.join("hello")).unwrap(), b"hello");

    // Tear down.
    mount::unmount(&publish).unwrap();
    assert!(mount::mount_at(&publish).unwrap().is_none());
    mount::unmount(&staging).unwrap();
    assert!(mount::mount_at(&staging).unwrap().is_none());
    mount::unmount(&staging).unwrap();
    loopdev::detach(&device).unwrap();
    assert_eq!(loopdev::find(&image).unwrap(), None);
    (image, scratch)
}

#[test]
fn ext4_lifecycle() {
    let opts = MkfsOptions {
        inode_size: Some(512),
        block_size: Some(4096),
        reserved_percent: Some(0),
    };
    let (image, _scratch) = filesystem_lifecycle("ext4", opts);
    let info = tool_output("tune2fs", &["-l", image.to_str().unwrap()]);
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("Inode size"), "512");
    assert_eq!(field("Block size"), "4096");
    assert_eq!(field("Reserved block count"), "0");
}

#[test]
fn xfs_lifecycle() {
    let opts = MkfsOptions {
        inode_size: Some(1024),
        block_size: Some(4096),
        reserved_percent: None,
    };
    let (image, _scratch) = filesystem_lifecycle("xfs", opts);
    // xfs_db reads the superblock of the unmounted image.
    let info = tool_output(
        "xfs_db",
        &[
            "-r",
            "-c",
            "sb 0",
            "-c",
            "p inodesize blocksize",
            image.to_str().unwrap(),
        ],
    );
    assert!(info.contains("inodesize = 1024"), "{info}");
    assert!(info.contains("blocksize = 4096"), "{info}");
}

#[test]
fn btrfs_lifecycle() {
    assert!(
        Command::new("mkfs.btrfs").arg("--version").output().is_ok(),
        "mkfs.btrfs is missing: install btrfs-progs to run this test"
    );
    filesystem_lifecycle("btrfs", MkfsOptions::default());
}

#[test]
fn mkfs_rejects_bad_options_before_touching_the_device() {
    let scratch = Scratch::new();
    let image = scratch.image("volume.img", 64 * MIB);
    let device = loopdev::attach(&image).unwrap();
    let bad = MkfsOptions {
        inode_size: Some(300),
        ..Default::default()
    };
    let err = nodefs::mkfs(&device, "ext4", &bad).unwrap_err();
    assert!(matches!(err, HostError::InvalidMkfsOption { .. }), "{err}");
    let err = nodefs::mkfs(&device, "vfat", &MkfsOptions::default()).unwrap_err();
    assert!(matches!(err, HostError::UnsupportedFs { .. }), "{err}");
    assert_eq!(nodefs::probe(&device).unwrap(), Signature::Blank);

    // A tool failure carries the tool's own message: 64 MiB is too small for xfs.
    let err = nodefs::mkfs(&device, "xfs", &MkfsOptions::default()).unwrap_err();
    match &err {
        HostError::ToolFailed { tool, output, .. } => {
            assert_eq!(*tool, "mkfs.xfs");
            assert!(!output.is_empty() && output != "no output", "{err}");
        }
        other => panic!("expected a tool failure, got {other}"),
    }
    loopdev::detach(&device).unwrap();
}

#[test]
fn mounting_a_blank_device_fails_with_the_target_in_the_message() {
    let scratch = Scratch::new();
    let device = loopdev::attach(&scratch.image("blank.img", 32 * MIB)).unwrap();
    let target = scratch.dir("target");
    let err = mount::mount_fs(&device, &target, "ext4", &[], false).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert!(err.to_string().contains("target"), "{err}");
    assert!(mount::mount_at(&target).unwrap().is_none());

    let err = mount::mount_fs(&device, &target, "ext4", &strings(&["ro,dev"]), false).unwrap_err();
    assert!(matches!(err, HostError::InvalidMountOption { .. }), "{err}");
    loopdev::detach(&device).unwrap();
}

#[test]
fn raw_block_bind_of_a_device_onto_a_regular_file() {
    let mut scratch = Scratch::new();
    let image = scratch.image("block.img", 32 * MIB);
    let device = loopdev::attach(&image).unwrap();
    let target = scratch.path("block");
    File::create(&target).unwrap();
    scratch.track(&target);

    mount::bind(&device, &target, false, &[]).unwrap();
    assert!(loopdev::is_block_device(&target));
    assert_eq!(loopdev::device_size(&target).unwrap(), 32 * MIB);
    assert!(mount::mount_at(&target).unwrap().is_some());

    // What goes in through the published file lands on the device and in the image.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut published = OpenOptions::new().write(true).open(&target).unwrap();
    published.seek(SeekFrom::Start(MIB)).unwrap();
    published.write_all(&pattern).unwrap();
    published.sync_all().unwrap();
    drop(published);
    let mut read_back = vec![0u8; 4096];
    let mut dev = File::open(&device).unwrap();
    dev.seek(SeekFrom::Start(MIB)).unwrap();
    dev.read_exact(&mut read_back).unwrap();
    assert_eq!(read_back, pattern);

    drop(dev);

    mount::unmount(&target).unwrap();
    assert!(!loopdev::is_block_device(&target));
    assert!(fs::metadata(&target).unwrap().is_file());
    loopdev::detach(&device).unwrap();
    assert_eq!(loopdev::find(&image).unwrap(), None);
}

#[test]
fn unmount_removes_stacked_mounts_and_tolerates_unmounted_targets() {
    let mut scratch = Scratch::new();
    let a = scratch.dir("a");
    let b = scratch.dir("b");
    fs::write(a.join("from-a"), b"a").unwrap();
    fs::write(b.join("from-b"), b"b").unwrap();
    let target = scratch.dir("target");
    scratch.track(&target);

    mount::bind(&a, &target, false, &[]).unwrap();
    mount::bind(&b, &target, false, &[]).unwrap();
    let all = mount::mounts().unwrap();
    assert_eq!(
        all.iter().filter(|m| m.mount_point == target).count(),
        2,
        "two mounts stacked"
    );
    assert!(target.join("from-b").exists(), "the top mount is visible");
    let top = mount::find_mount(&all, &target).unwrap();
    assert!(top.root.ends_with("b"), "{top:?}");

    mount::unmount(&target).unwrap();
    assert!(mount::mount_at(&target).unwrap().is_none());
    assert!(fs::read_dir(&target).unwrap().next().is_none());
    mount::unmount(&target).unwrap();
    mount::unmount(&scratch.path("missing")).unwrap();
}

#[test]
fn unmount_of_a_busy_mount_fails_and_succeeds_once_released() {
    let mut scratch = Scratch::new();
    let a = scratch.dir("a");
    fs::write(a.join("file"), b"a").unwrap();
    let target = scratch.dir("target");
    scratch.track(&target);
    mount::bind(&a, &target, false, &[]).unwrap();

    let held = File::open(target.join("file")).unwrap();
    let err = mount::unmount(&target).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    assert!(err.to_string().contains("still uses it"), "{err}");
    assert!(mount::mount_at(&target).unwrap().is_some());
    drop(held);
    mount::unmount(&target).unwrap();
    assert!(mount::mount_at(&target).unwrap().is_none());
}

#[test]
fn a_bind_of_a_read_only_mount_stays_read_only_when_other_flags_are_added() {
    let mut scratch = Scratch::new();
    let a = scratch.dir("a");
    let ro = scratch.dir("ro");
    let target = scratch.dir("target");
    scratch.track(&ro);
    scratch.track(&target);

    mount::bind(&a, &ro, true, &[]).unwrap();
    mount::bind(&ro, &target, false, &strings(&["nodev", "noexec"])).unwrap();
    let m = mount::mount_at(&target).unwrap().unwrap();
    assert!(m.is_read_only(), "{m:?}");
    assert!(m.options.iter().any(|o| o == "nodev"), "{m:?}");
    assert!(m.options.iter().any(|o| o == "noexec"), "{m:?}");
    assert_eq!(errno(fs::write(target.join("x"), b"x")), Some(libc::EROFS));
    // The source directory itself is untouched.
    fs::write(a.join("x"), b"x").unwrap();
}

fn block_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ext4_capability() -> multicsi::csi::validate::Capability {
    multicsi::csi::validate::Capability {
        access: multicsi::csi::validate::Access::Mount {
            fs_type: "ext4".into(),
            flags: Vec::new(),
        },
        mode: multicsi::csi::volume_capability::access_mode::Mode::SingleNodeWriter,
    }
}

#[test]
fn staging_a_device_that_is_not_a_block_device_formats_and_mounts_nothing() {
    use multicsi::error::CsiError;
    use multicsi::node::volume;
    let scratch = Scratch::new();
    // A regular file mkfs.ext4 would happily format, and a character device.
    let file = scratch.image("not-a-device", 64 * MIB);
    let staging = scratch.dir("staging");
    let runtime = block_runtime();
    for device in [file.clone(), PathBuf::from("/dev/null")] {
        let result = runtime.block_on(volume::stage_filesystem(
            device.clone(),
            staging.clone(),
            &ext4_capability(),
            &Default::default(),
            scratch.path("mkfs-marker"),
        ));
        match result {
            Err(CsiError::FailedPrecondition(msg)) => {
                assert!(msg.contains("not a block device"), "{msg}");
                assert!(msg.contains(&device.display().to_string()), "{msg}");
            }
            other => panic!(
                "{}: expected FAILED_PRECONDITION, got {other:?}",
                device.display()
            ),
        }
        assert!(
            mount::mount_at(&staging).unwrap().is_none(),
            "something was mounted"
        );
    }
    assert_eq!(
        nodefs::probe(&file).unwrap(),
        Signature::Blank,
        "the regular file was formatted"
    );
    assert!(!scratch.path("mkfs-marker").exists());
}

#[test]
fn publishing_a_raw_block_volume_from_a_regular_file_binds_nothing() {
    use multicsi::error::CsiError;
    use multicsi::node::volume;
    let scratch = Scratch::new();
    let file = scratch.image("not-a-device", MIB);
    let target = scratch.path("block-target");
    let result = block_runtime().block_on(volume::publish(
        file.clone(),
        target.clone(),
        true,
        false,
        Vec::new(),
        multicsi::node::ownership::Owner::of(&file).unwrap(),
    ));
    assert!(
        matches!(&result, Err(CsiError::FailedPrecondition(m)) if m.contains("not a block device")),
        "{result:?}"
    );
    assert!(!target.exists(), "the target was created");
}

/// Discovery finds an emulated cloud disk (a loop device linked under its cloud name) by its
/// serial, and refuses a link that leads to a disk with another serial.
#[test]
fn discovery_verifies_the_serial_of_a_linked_loop_device() {
    use multicsi::emulator::DeviceHost;
    use multicsi::node::discovery::{self, Found, Lookup};

    let scratch = Scratch::new();
    let host = DeviceHost::new(scratch.dir("images"), scratch.dir("links")).unwrap();
    let wanted = "0b3f6a52-7a1c-4c47-9d1e-6c5f2b8c0001";
    let other = "0b3f6a52-7a1c-4c47-9d1e-6c5f2b8c0002";
    host.provision(wanted, 8 * MIB).unwrap();
    host.provision(other, 8 * MIB).unwrap();
    let device = host
        .attach(wanted, &format!("scsi-0QEMU_QEMU_HARDDISK_{wanted}"))
        .unwrap();
    let other_device = host
        .attach(other, "scsi-0QEMU_QEMU_HARDDISK_other")
        .unwrap();
    let links = scratch.path("links");
    let matches = |name: &str| name.ends_with(wanted);
    let lookup = Lookup {
        dir: &links,
        link_matches: &matches,
        serial: wanted,
        what: "test volume",
    };
    let found = discovery::find(&lookup);
    // A stale link: the volume's name, someone else's disk.
    let stale = links.join(format!("scsi-0QEMU_QEMU_HARDDISK_{wanted}"));
    fs::remove_file(&stale).unwrap();
    std::os::unix::fs::symlink(&other_device, &stale).unwrap();
    let refused = discovery::find(&lookup);
    host.detach(wanted, "unused").unwrap();
    host.clear();
    assert_eq!(found.unwrap(), Found::Device(device));
    match refused.unwrap() {
        Found::Mismatch(seen) => assert!(seen.contains(other), "{seen}"),
        other => panic!("a disk with another serial was accepted: {other:?}"),
    }
}

#[test]
fn a_read_only_loop_device_refuses_writes_and_is_not_the_volume_device() {
    let scratch = Scratch::new();
    let image = scratch.image("ro.img", 16 * MIB);
    let device = loopdev::attach(&image).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&device)
        .and_then(|d| {
            d.write_all_at(b"written read-write", 4096)
                .and(d.sync_all())
        })
        .unwrap();
    let view = loopdev::attach_read_only(&image).unwrap();
    assert_ne!(view, device);
    assert_eq!(loopdev::attach_read_only(&image).unwrap(), view, "shared");
    assert_eq!(loopdev::find(&image).unwrap(), Some(device.clone()));
    assert_eq!(loopdev::find_read_only(&image).unwrap(), vec![view.clone()]);
    assert!(loopdev::is_read_only_loop(&view));
    assert!(!loopdev::is_read_only_loop(&device));
    let refused = OpenOptions::new()
        .write(true)
        .open(&view)
        .and_then(|d| d.write_all_at(b"x", 4096));
    assert!(
        matches!(errno(refused), Some(libc::EPERM) | Some(libc::EROFS)),
        "a write to the read-only device must fail"
    );
    let mut back = [0u8; 18];
    File::open(&view)
        .unwrap()
        .read_exact_at(&mut back, 4096)
        .unwrap();
    assert_eq!(&back, b"written read-write");
    loopdev::detach(&view).unwrap();
    assert!(loopdev::find_read_only(&image).unwrap().is_empty());
    assert_eq!(loopdev::find(&image).unwrap(), Some(device.clone()));
    loopdev::detach(&device).unwrap();
}

/// A 64 MiB ext4 image attached and mounted at `<scratch>/mnt`.
fn mounted_ext4(image_name: &str) -> (Scratch, PathBuf, PathBuf, PathBuf) {
    let mut scratch = Scratch::new();
    let image = scratch.image(image_name, 64 * MIB);
    let device = loopdev::attach(&image).unwrap();
    nodefs::mkfs(&device, "ext4", &MkfsOptions::default()).unwrap();
    let at = scratch.dir("mnt");
    scratch.track(&at);
    mount::mount_fs(&device, &at, "ext4", &[], false).unwrap();
    (scratch, image, device, at)
}

/// A freeze whose owner died (no thaw) is found by its record and thawed.
#[test]
fn a_recorded_freeze_left_by_a_dead_owner_is_thawed() {
    let (scratch, image, device, at) = mounted_ext4("abandoned.img");
    let records = scratch.path("frozen-records");
    let quiesced = freeze::quiesce_image(&image, &records).unwrap().unwrap();
    assert!(quiesced.is_frozen());
    // Its owner dies: no thaw, and its descriptor of the mount point closes.
    std::mem::forget(quiesced);
    for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if fs::read_link(fd.path()).is_ok_and(|target| target == at) {
            let fd: i32 = fd.file_name().to_str().unwrap().parse().unwrap();
            // SAFETY: the descriptor the forgotten freeze held; nothing else uses it.
            unsafe { libc::close(fd) };
        }
    }
    assert_eq!(freeze::thaw_recorded(&records).unwrap(), vec![at.clone()]);
    assert_eq!(fs::read_dir(&records).unwrap().count(), 0);
    fs::write(at.join("after"), b"writable again").unwrap();
    assert!(freeze::thaw_recorded(&records).unwrap().is_empty());
    mount::unmount(&at).unwrap();
    loopdev::detach(&device).unwrap();
}

#[test]
fn quiesce_freezes_a_mounted_filesystem_until_dropped() {
    let (scratch, image, device, at) = mounted_ext4("frozen.img");
    fs::write(at.join("unflushed"), b"in the page cache").unwrap();
    let records = scratch.path("frozen-records");
    let recorded = || fs::read_dir(&records).map_or(0, |d| d.count());
    let quiesced = freeze::quiesce_image(&image, &records)
        .unwrap()
        .expect("the image's filesystem is mounted");
    assert!(quiesced.is_frozen(), "ext4 can be frozen");
    assert_eq!(quiesced.mount_point(), at.as_path());
    assert_eq!(recorded(), 1, "the freeze is recorded while it lasts");
    // Frozen: the data is in the image, and a writer waits.
    let image_bytes = fs::read(&image).unwrap();
    assert!(
        image_bytes.windows(17).any(|w| w == b"in the page cache"),
        "freezing flushed the file to the image"
    );
    let (sent, written) = std::sync::mpsc::channel();
    let file = at.join("during");
    let writer = std::thread::spawn(move || {
        fs::write(&file, b"x").unwrap();
        sent.send(()).unwrap();
    });
    assert!(
        written
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "a write went through a frozen filesystem"
    );
    drop(quiesced);
    written
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the write goes on after the thaw");
    writer.join().unwrap();
    assert_eq!(recorded(), 0, "the record goes with the thaw");
    // Attached, not mounted (raw block): writes through the device reach
    // the image.
    mount::unmount(&at).unwrap();
    // Kept open: the last close of a block device would flush it anyway.
    let writer = OpenOptions::new().write(true).open(&device).unwrap();
    writer.write_all_at(b"raw block data", 8 * MIB).unwrap();
    let flushed = freeze::quiesce_image(&image, &records)
        .unwrap()
        .expect("attached devices are flushed");
    assert!(!flushed.is_frozen());
    assert_eq!(recorded(), 0, "a flush is not recorded");
    let mut back = [0u8; 14];
    File::open(&image)
        .unwrap()
        .read_exact_at(&mut back, 8 * MIB)
        .unwrap();
    assert_eq!(&back, b"raw block data");
    drop(flushed);
    drop(writer);
    // Not attached: nothing to quiesce.
    loopdev::detach(&device).unwrap();
    assert!(freeze::quiesce_image(&image, &records).unwrap().is_none());
}
