//! Loop devices: attach an image file as a block device, find, resize and detach it.
//!
//! Uses the loop ioctls directly: `LOOP_CTL_GET_FREE` on `/dev/loop-control`, then
//! `LOOP_CONFIGURE` (Linux 5.8+) or `LOOP_SET_FD` + `LOOP_SET_STATUS64` on older kernels.
//! Devices are attached without autoclear, without partition scanning and with direct I/O off,
//! so they survive a restart of the driver and are found again by their backing file.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::{HostError, Result, c_path, errno};

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: nix::sys::ioctl::ioctl_num_type =
    nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>());

/// The ioctls of `<linux/loop.h>` and `BLKGETSIZE64`, typed by nix's ioctl macros. nix has no
/// loop device API: each request's argument type is declared here, which is what makes a call
/// sound, so the functions they generate stay `unsafe` and each has one safe wrapper below.
mod sys {
    use super::{LoopConfig, LoopInfo64};
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);
    nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_read_bad!(blkgetsize64, super::BLKGETSIZE64, u64);
}

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LOOP_MAJOR: u32 = 7;
/// `LO_FLAGS_READ_ONLY`: the kernel refuses writes to the device.
const LO_FLAGS_READ_ONLY: u32 = 1;

/// How often `attach` tries again when another process configures the free device first.
const ATTACH_ATTEMPTS: u32 = 16;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    fn zeroed() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }

    /// Flags 0: read-write, no autoclear, no partition scan, no direct I/O. The file name is
    /// informational only (what `losetup` prints); it is truncated like the kernel does.
    fn for_image(image: &Path) -> Self {
        let mut info = Self::zeroed();
        let name = image.as_os_str().as_bytes();
        let n = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..n].copy_from_slice(&name[..n]);
        info
    }
}

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of a free loop device.
fn get_free(control: &File) -> io::Result<i32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument; `control` is an open descriptor.
    Ok(unsafe { sys::loop_ctl_get_free(control.as_raw_fd()) }?)
}

/// `LOOP_SET_FD`: attaches the open `backing` file.
fn set_fd(device: &File, backing: &File) -> io::Result<()> {
    // SAFETY: LOOP_SET_FD takes a file descriptor by value, no pointer.
    unsafe { sys::loop_set_fd(device.as_raw_fd(), backing.as_raw_fd()) }?;
    Ok(())
}

/// `LOOP_CLR_FD`: detaches the backing file.
fn clear_fd(device: &File) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { sys::loop_clr_fd(device.as_raw_fd()) }?;
    Ok(())
}

/// `LOOP_SET_CAPACITY`: re-reads the size of the backing file.
fn set_capacity(device: &File) -> io::Result<()> {
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    unsafe { sys::loop_set_capacity(device.as_raw_fd()) }?;
    Ok(())
}

/// `LOOP_SET_STATUS64`.
fn set_status(device: &File, info: &LoopInfo64) -> io::Result<()> {
    // SAFETY: the kernel reads a `struct loop_info64`, which `LoopInfo64` lays out (size
    // checked at compile time), from a reference that lives through the call.
    unsafe { sys::loop_set_status64(device.as_raw_fd(), info) }?;
    Ok(())
}

/// `LOOP_GET_STATUS64`.
fn get_status(device: &File) -> io::Result<LoopInfo64> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: the kernel writes a `struct loop_info64` into `info`, laid out alike.
    unsafe { sys::loop_get_status64(device.as_raw_fd(), &mut info) }?;
    Ok(info)
}

/// `LOOP_CONFIGURE` (Linux 5.8+).
fn apply_config(device: &File, config: &LoopConfig) -> io::Result<()> {
    // SAFETY: the kernel reads a `struct loop_config`, which `LoopConfig` lays out (size
    // checked at compile time), from a reference that lives through the call.
    unsafe { sys::loop_configure(device.as_raw_fd(), config) }?;
    Ok(())
}

/// `BLKGETSIZE64`: the size of a block device in bytes.
fn block_size_of(device: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: the kernel writes a 64-bit size into `size`.
    unsafe { sys::blkgetsize64(device.as_raw_fd(), &mut size) }?;
    Ok(size)
}

fn open_device(op: &'static str, device: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(device)
        .map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::NotFound => {
                    "the device node does not exist; is /dev mounted from the host?"
                }
                io::ErrorKind::PermissionDenied => {
                    "the node plugin must run as root (privileged) to use block devices"
                }
                _ => "check that the device exists and is a block device",
            };
            HostError::os(op, device, e, hint)
        })
}

/// Whether `path` is (or, through symlinks, points to) a block device.
pub fn is_block_device(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// The size in bytes of a block device (`BLKGETSIZE64`); works for any block device.
pub fn device_size(device: &Path) -> Result<u64> {
    let file = open_device("open device to read its size", device, false)?;
    block_size_of(&file).map_err(|e| {
        let hint = if errno(&e) == Errno::ENOTTY {
            "this is not a block device"
        } else {
            "check that the device is still present"
        };
        HostError::os("read the size (BLKGETSIZE64) of", device, e, hint)
    })
}

/// The loop device number in a name like `loop7`.
fn loop_number(name: &OsStr) -> Option<u32> {
    let digits = name.as_bytes().strip_prefix(b"loop")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Makes sure `/dev/loopN` exists (containers with a private /dev and no udev lack it) and
/// returns its path.
fn ensure_node(number: u32) -> Result<PathBuf> {
    let path = PathBuf::from(format!("/dev/loop{number}"));
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_block_device() => return Ok(path),
        Ok(_) => {
            return Err(HostError::os(
                "use loop device node",
                &path,
                io::Error::from(Errno::ENOTBLK),
                "it exists but is not a block device; remove it",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(HostError::os("inspect", &path, e, "check /dev")),
    }
    // The kernel publishes the real numbers (the minor depends on loop.max_part).
    let sys = format!("/sys/block/loop{number}/dev");
    let (major, minor) = fs::read_to_string(&sys)
        .ok()
        .and_then(|s| {
            let (a, b) = s.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((LOOP_MAJOR, number));
    let cpath = c_path("create loop device node", &path)?;
    if let Err(e) = mknod(
        cpath.as_c_str(),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(major.into(), minor.into()),
    ) {
        let e = io::Error::from(e);
        if errno(&e) != Errno::EEXIST {
            return Err(HostError::os(
                "create loop device node",
                &path,
                e,
                "the node plugin needs CAP_MKNOD and a writable /dev, or mount /dev from the host",
            ));
        }
    }
    Ok(path)
}

/// The (st_dev, st_ino) of the file a loop device is attached to and whether the device is
/// read-only, if it is attached.
fn backing_identity(device: &Path) -> io::Result<Option<(u64, u64, bool)>> {
    let file = File::open(device)?;
    match get_status(&file) {
        Ok(info) => Ok(Some((
            info.lo_device,
            info.lo_inode,
            info.lo_flags & LO_FLAGS_READ_ONLY != 0,
        ))),
        Err(e) if errno(&e) == Errno::ENXIO => Ok(None),
        Err(e) => Err(e),
    }
}

/// The attached loop devices as (number, backing file); a backing file the kernel reports as
/// deleted is left out, it cannot be the file that is at that path now.
fn attached() -> Result<Vec<(u32, PathBuf)>> {
    let sys = Path::new("/sys/block");
    let dir = fs::read_dir(sys)
        .map_err(|e| HostError::os("list", sys, e, "is /sys mounted in the node plugin?"))?;
    let mut found = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| HostError::os("list", sys, e, "is /sys mounted?"))?;
        let Some(number) = loop_number(&entry.file_name()) else {
            continue;
        };
        let file = entry.path().join("loop/backing_file");
        let raw = match fs::read(&file) {
            Ok(raw) => raw,
            // Not attached, or detached while we were looking.
            Err(e) if matches!(errno(&e), Errno::ENOENT | Errno::ENXIO) => {
                continue;
            }
            Err(e) => return Err(HostError::os("read", &file, e, "is /sys mounted?")),
        };
        let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
        if raw.ends_with(b" (deleted)") {
            continue;
        }
        found.push((number, PathBuf::from(OsStr::from_bytes(raw))));
    }
    found.sort();
    Ok(found)
}

/// The read-write loop device whose backing file is `image`, if one is attached. When several
/// are (someone ran `losetup` by hand), the lowest numbered one. A missing image has no loop
/// device. Read-only devices over the same image (see [`attach_read_only`]) are not it.
///
/// The backing file path in sysfs is compared with the canonical path of `image`, and the
/// device's backing inode must be the image's inode (so a re-created image at the same path does
/// not match a device still holding the old one). Creates the device node when it is missing.
pub fn find(image: &Path) -> Result<Option<PathBuf>> {
    crate::metrics::node_op("discover", || {
        Ok(find_all(image, false)?.into_iter().next())
    })
}

/// The read-only loop devices over `image` (or over a block device), lowest numbered first.
pub fn find_read_only(image: &Path) -> Result<Vec<PathBuf>> {
    crate::metrics::node_op("discover", || find_all(image, true))
}

fn find_all(image: &Path, read_only: bool) -> Result<Vec<PathBuf>> {
    let canonical = match fs::canonicalize(image) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(HostError::os(
                "resolve image path",
                image,
                e,
                "check the permissions of the directories above it",
            ));
        }
    };
    let meta = fs::metadata(&canonical)
        .map_err(|e| HostError::os("stat image", &canonical, e, "check the image file"))?;
    let mut found = Vec::new();
    for (number, backing) in attached()? {
        if backing != canonical {
            continue;
        }
        let device = ensure_node(number)?;
        match backing_identity(&device) {
            Ok(Some((dev, ino, ro)))
                if dev == meta.dev() && ino == meta.ino() && ro == read_only =>
            {
                found.push(device);
            }
            // Another file at the same path, or detached meanwhile.
            Ok(_) => continue,
            Err(e) if errno(&e) == Errno::ENXIO => continue,
            Err(e) => {
                return Err(HostError::os(
                    "read loop status (LOOP_GET_STATUS64) of",
                    &device,
                    e,
                    "check the loop device",
                ));
            }
        }
    }
    Ok(found)
}

/// Binds `backing` to the loop device open as `device`.
fn configure(device: &File, backing: &File, image: &Path, read_only: bool) -> io::Result<()> {
    let mut info = LoopInfo64::for_image(image);
    if read_only {
        info.lo_flags = LO_FLAGS_READ_ONLY;
    }
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    match apply_config(device, &config) {
        Ok(()) => return Ok(()),
        // Kernels before 5.8 do not know LOOP_CONFIGURE.
        Err(e) if matches!(errno(&e), Errno::EINVAL | Errno::ENOTTY) => {}
        Err(e) => return Err(e),
    }
    // LOOP_SET_FD makes the device read-only when the backing file is open read-only.
    set_fd(device, backing)?;
    let info = LoopInfo64::for_image(image);
    let mut last = None;
    for _ in 0..10 {
        match set_status(device, &info) {
            Ok(()) => return Ok(()),
            Err(e) if errno(&e) == Errno::EAGAIN => {
                last = Some(e);
                sleep(Duration::from_millis(20));
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    let _ = clear_fd(device);
    Err(last.unwrap_or_else(|| io::Error::from(Errno::EAGAIN)))
}

/// Attaches `image` to a free loop device and returns the device path, or returns the device it
/// is already attached to. Safe against other processes taking the same free device: the
/// configure fails with EBUSY and the next free device is tried.
pub fn attach(image: &Path) -> Result<PathBuf> {
    crate::metrics::node_op("attach", || attach_as(image, false))
}

/// Attaches `image` (a file or a block device) to a free loop device that the kernel keeps
/// read-only (`LO_FLAGS_READ_ONLY`: writes fail with EPERM), or returns the read-only device
/// already attached to it. Separate from the read-write device of the same image.
pub fn attach_read_only(image: &Path) -> Result<PathBuf> {
    crate::metrics::node_op("attach", || attach_as(image, true))
}

fn attach_as(image: &Path, read_only: bool) -> Result<PathBuf> {
    if let Some(device) = find_all(image, read_only)?.into_iter().next() {
        return Ok(device);
    }
    let canonical = fs::canonicalize(image).map_err(|e| {
        HostError::os(
            "resolve image path",
            image,
            e,
            "the image file must exist before it can be attached",
        )
    })?;
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(&canonical)
        .map_err(|e| {
            HostError::os(
                if read_only {
                    "open image read-only"
                } else {
                    "open image read-write"
                },
                &canonical,
                e,
                "check that the image exists and is writable",
            )
        })?;
    let control_path = Path::new("/dev/loop-control");
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(control_path)
        .map_err(|e| {
            HostError::os(
                "open",
                control_path,
                e,
                "load the loop module (modprobe loop) and give the node plugin the host's /dev",
            )
        })?;
    for _ in 0..ATTACH_ATTEMPTS {
        let number = get_free(&control).map_err(|e| {
            HostError::os(
                "get a free loop device (LOOP_CTL_GET_FREE) from",
                control_path,
                e,
                "all loop devices may be in use; raise the loop module's max_loop",
            )
        })?;
        let device = ensure_node(number as u32)?;
        let file = match OpenOptions::new().read(true).write(true).open(&device) {
            Ok(file) => file,
            // Removed (loop_remove via LOOP_CTL_REMOVE) between GET_FREE and open.
            Err(e) if matches!(errno(&e), Errno::ENXIO | Errno::ENOENT) => {
                continue;
            }
            Err(e) => {
                return Err(HostError::os(
                    "open loop device",
                    &device,
                    e,
                    "the node plugin must run privileged",
                ));
            }
        };
        match configure(&file, &backing, &canonical, read_only) {
            Ok(()) => return Ok(device),
            Err(e) if errno(&e) == Errno::EBUSY => {
                // Somebody else took this device; maybe even for the same image.
                if let Some(device) = find_all(image, read_only)?.into_iter().next() {
                    return Ok(device);
                }
                sleep(Duration::from_millis(2));
            }
            Err(e) => {
                return Err(HostError::os(
                    "attach image to loop device",
                    &device,
                    e,
                    format!("check the image {}", canonical.display()),
                ));
            }
        }
    }
    Err(HostError::NoFreeLoop {
        image: canonical,
        attempts: ATTACH_ATTEMPTS,
    })
}

/// Detaches a loop device (`LOOP_CLR_FD`). A device that is not attached, or whose node is gone
/// with nothing attached, is fine. While someone still holds the device open (a mount), the kernel
/// detaches it when the last user closes it; this waits briefly for that and returns Ok.
pub fn detach(device: &Path) -> Result<()> {
    crate::metrics::node_op("detach", || detach_unmetered(device))
}

fn detach_unmetered(device: &Path) -> Result<()> {
    let name = device.file_name().unwrap_or_default();
    let file = match File::open(device) {
        Ok(file) => file,
        Err(e) if matches!(errno(&e), Errno::ENOENT | Errno::ENXIO) => {
            let attached = loop_number(name).is_some_and(|n| {
                Path::new(&format!("/sys/block/loop{n}/loop/backing_file")).exists()
            });
            if !attached {
                return Ok(());
            }
            let number = loop_number(name).unwrap_or_default();
            let node = ensure_node(number)?;
            File::open(&node)
                .map_err(|e| HostError::os("open loop device", &node, e, "check the device node"))?
        }
        Err(e) => {
            return Err(HostError::os(
                "open loop device",
                device,
                e,
                "the node plugin must run privileged",
            ));
        }
    };
    match clear_fd(&file) {
        Ok(()) => {}
        Err(e) if errno(&e) == Errno::ENXIO => return Ok(()),
        Err(e) => {
            let hint = match errno(&e) {
                Errno::ENOTTY | Errno::EINVAL => "this is not a loop device",
                Errno::EBUSY => "the device is still in use; unmount it first",
                _ => "check `losetup -a`",
            };
            return Err(HostError::os("detach (LOOP_CLR_FD)", device, e, hint));
        }
    }
    // The kernel clears the device when the last opener (possibly us) closes it.
    drop(file);
    if let Some(n) = loop_number(name) {
        let backing = PathBuf::from(format!("/sys/block/loop{n}/loop/backing_file"));
        for _ in 0..50 {
            if !backing.exists() {
                break;
            }
            sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// The file or device a loop device is backed by, if `device` is an attached loop device.
pub fn backing_file(device: &Path) -> Option<PathBuf> {
    let canonical = fs::canonicalize(device).ok()?;
    let number = loop_number(canonical.file_name()?)?;
    let raw = fs::read(format!("/sys/block/loop{number}/loop/backing_file")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    if raw.ends_with(b" (deleted)") {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(raw)))
}

/// Whether `device` is an attached read-only loop device.
pub fn is_read_only_loop(device: &Path) -> bool {
    fs::canonicalize(device)
        .ok()
        .and_then(|d| loop_number(d.file_name()?))
        .is_some()
        && matches!(backing_identity(device), Ok(Some((_, _, true))))
}

/// Tells the loop driver to re-read the size of its backing file (`LOOP_SET_CAPACITY`), after
/// the image grew.
pub fn refresh_capacity(device: &Path) -> Result<()> {
    crate::metrics::node_op("refresh_capacity", || refresh_capacity_unmetered(device))
}

fn refresh_capacity_unmetered(device: &Path) -> Result<()> {
    let file = open_device("open loop device", device, false)?;
    set_capacity(&file).map_err(|e| {
        let hint = match errno(&e) {
            Errno::ENXIO => "the loop device is not attached",
            Errno::ENOTTY | Errno::EINVAL => "this is not a loop device",
            _ => "check the loop device",
        };
        HostError::os("refresh capacity (LOOP_SET_CAPACITY) of", device, e, hint)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_numbers_are_parsed_from_names() {
        assert_eq!(loop_number(OsStr::new("loop0")), Some(0));
        assert_eq!(loop_number(OsStr::new("loop127")), Some(127));
        assert_eq!(loop_number(OsStr::new("loop")), None);
        assert_eq!(loop_number(OsStr::new("loop-control")), None);
        assert_eq!(loop_number(OsStr::new("loop1p1")), None);
        assert_eq!(loop_number(OsStr::new("sda")), None);
    }

    #[test]
    fn blkgetsize64_matches_the_kernel_header_value() {
        // The request number is 32 bits wide whatever the type of `ioctl_num_type`.
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_eq!(BLKGETSIZE64 as i64 & 0xffff_ffff, 0x8008_1272);
    }

    #[test]
    fn loop_info_name_is_truncated_and_nul_terminated() {
        let long = "/x".repeat(100);
        let info = LoopInfo64::for_image(Path::new(&long));
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 1], 0);
        assert_eq!(&info.lo_file_name[..4], b"/x/x");
        assert_eq!(info.lo_flags, 0, "no autoclear, no direct I/O");
    }
}
