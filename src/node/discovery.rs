//! Finding a cloud volume's block device on this node: a link in a device
//! directory (`/dev/disk/by-id` on real nodes) whose name identifies the
//! volume, resolved to a block device whose serial is checked before the
//! device is used. A device with the wrong serial is never returned: a
//! stale link left by an earlier attachment points at someone else's disk.
//!
//! Missing devices are waited for up to a deadline; on a real device
//! directory each round asks udev to replay and settle its events and the
//! SCSI hosts to rescan.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::emulator::devices::loop_serial;
use crate::error::{CsiError, CsiResult};
use crate::node::loopdev::is_block_device;

/// What to look for.
pub struct Lookup<'a> {
    /// The device directory.
    pub dir: &'a Path,
    /// Whether a link name in `dir` may be the volume's.
    pub link_matches: &'a (dyn Fn(&str) -> bool + Sync),
    /// The serial the volume's disk reports (full length).
    pub serial: &'a str,
    /// For messages, e.g. `cloudscale volume 5f0c...`.
    pub what: &'a str,
}

/// The result of one look.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The device, with its serial verified.
    Device(PathBuf),
    /// No candidate link.
    Missing,
    /// Candidate links exist, but none leads to a block device with the
    /// right serial; the text says what was seen.
    Mismatch(String),
}

/// Looks once.
pub fn find(lookup: &Lookup) -> CsiResult<Found> {
    let entries = match fs::read_dir(lookup.dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => {
            return Err(CsiError::io(
                format!("read device directory {}", lookup.dir.display()),
                e,
            ));
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| (lookup.link_matches)(name))
        .collect();
    names.sort();
    if names.is_empty() {
        return Ok(Found::Missing);
    }
    let mut seen = Vec::new();
    for name in &names {
        let link = lookup.dir.join(name);
        let device = match fs::canonicalize(&link) {
            Ok(device) => device,
            Err(_) => {
                seen.push(format!("{name} is a dangling link"));
                continue;
            }
        };
        if !is_block_device(&device) {
            seen.push(format!(
                "{name} -> {} is not a block device",
                device.display()
            ));
            continue;
        }
        match read_serial(&device) {
            Some(serial) if serial_matches(&serial, lookup.serial) => {
                return Ok(Found::Device(device));
            }
            Some(serial) => seen.push(format!(
                "{name} -> {} reports serial {serial:?}",
                device.display()
            )),
            None => seen.push(format!("{name} -> {} reports no serial", device.display())),
        }
    }
    Ok(Found::Mismatch(seen.join("; ")))
}

/// Looks until the device appears or `deadline` passes.
pub fn wait(lookup: &Lookup, deadline: Duration) -> CsiResult<PathBuf> {
    crate::metrics::node_op("discover", || wait_unmetered(lookup, deadline))
}

fn wait_unmetered(lookup: &Lookup, deadline: Duration) -> CsiResult<PathBuf> {
    let started = Instant::now();
    let real_dir = lookup.dir.starts_with("/dev");
    let last = loop {
        let found = find(lookup)?;
        if let Found::Device(device) = found {
            return Ok(device);
        }
        if started.elapsed() >= deadline {
            break found;
        }
        if real_dir {
            rescan();
        }
        std::thread::sleep(Duration::from_millis(200).min(deadline));
    };
    let waited = started.elapsed().as_secs_f64();
    Err(match last {
        Found::Mismatch(seen) => CsiError::FailedPrecondition(format!(
            "the device of {} was not found in {} after {waited:.1}s: candidate links do not match serial {}: {seen}; refusing to use them",
            lookup.what,
            lookup.dir.display(),
            lookup.serial
        )),
        _ => CsiError::DeadlineExceeded(format!(
            "the device of {} did not appear in {} within {waited:.1}s (looked for a link naming it with serial {}); check that the volume is attached to this node",
            lookup.what,
            lookup.dir.display(),
            lookup.serial
        )),
    })
}

/// Whether a reported serial is the expected one. virtio-blk disks cut
/// serials at 20 characters, so a 20-character prefix counts.
pub fn serial_matches(found: &str, expected: &str) -> bool {
    let found = found.trim();
    !found.is_empty()
        && (found.eq_ignore_ascii_case(expected)
            || (found.len() == 20 && expected.len() > 20 && expected.starts_with(found)))
}

/// The serial a block device reports: a loop device's is the name of its
/// backing image (see `crate::emulator::devices`); a SCSI disk's is its
/// unit serial number (VPD page 0x80); a virtio disk's is in sysfs.
pub fn read_serial(device: &Path) -> Option<String> {
    let name = device.file_name()?.to_str()?;
    let sys = Path::new("/sys/class/block").join(name);
    if name.starts_with("loop") {
        let backing = fs::read_to_string(sys.join("loop/backing_file")).ok()?;
        return loop_serial(Path::new(backing.trim()));
    }
    if let Some(serial) = fs::read(sys.join("device/vpd_pg80"))
        .ok()
        .and_then(|page| parse_vpd_pg80(&page))
    {
        return Some(serial);
    }
    fs::read_to_string(sys.join("serial"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The serial in a VPD page 0x80: a 4-byte header (page code 0x80, length
/// in bytes 2..4), then the serial as ASCII, possibly padded with spaces.
pub fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let body = page.get(4..4 + length.min(page.len() - 4))?;
    let serial = String::from_utf8_lossy(body).trim().to_string();
    (!serial.is_empty()).then_some(serial)
}

/// Asks udev to replay block device events and wait for them, and the SCSI
/// hosts to look for new disks. Best effort: a node without udev or SCSI
/// hosts simply waits.
fn rescan() {
    if let Ok(hosts) = fs::read_dir("/sys/class/scsi_host") {
        for host in hosts.flatten() {
            let _ = fs::write(host.path().join("scan"), "- - -");
        }
    }
    let udevadm = |args: &[&str]| {
        let _ = std::process::Command::new("udevadm")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    udevadm(&["trigger", "--action=add", "--subsystem-match=block"]);
    udevadm(&["settle", "--timeout=2"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_match_fully_or_by_virtio_prefix() {
        let uuid = "2db69ba3-1864-4608-853a-0771b6885a3a";
        assert!(serial_matches(uuid, uuid));
        assert!(serial_matches(&uuid.to_uppercase(), uuid));
        assert!(serial_matches(&uuid[..20], uuid));
        assert!(!serial_matches(&uuid[..19], uuid));
        assert!(!serial_matches("", uuid));
        assert!(!serial_matches(
            "2db69ba3-1864-4608-853a-0771b6885a3b",
            uuid
        ));
    }

    #[test]
    fn vpd_page_80_is_parsed() {
        let mut page = vec![0x00, 0x80, 0x00, 0x0a];
        page.extend_from_slice(b"abc123    ");
        assert_eq!(parse_vpd_pg80(&page).as_deref(), Some("abc123"));
        assert_eq!(parse_vpd_pg80(&[0, 0x83, 0, 1, b'x']), None);
        assert_eq!(parse_vpd_pg80(&[0, 0x80]), None);
    }

    #[test]
    fn links_that_are_not_block_devices_are_reported_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let serial = "6f1f2c3a-0000-4000-8000-000000000001";
        std::os::unix::fs::symlink("/dev/null", dir.path().join(format!("scsi-0X_{serial}")))
            .unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("scsi-other")).unwrap();
        let matches = |name: &str| name.contains(serial);
        let lookup = Lookup {
            dir: dir.path(),
            link_matches: &matches,
            serial,
            what: "test volume",
        };
        match find(&lookup).unwrap() {
            Found::Mismatch(seen) => assert!(seen.contains("not a block device"), "{seen}"),
            other => panic!("{other:?}"),
        }
        let err = wait(&lookup, Duration::from_millis(10)).unwrap_err();
        assert!(matches!(err, CsiError::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
    }

    #[test]
    fn a_missing_device_times_out_naming_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let matches = |name: &str| name.ends_with("vol-1");
        let lookup = Lookup {
            dir: dir.path(),
            link_matches: &matches,
            serial: "vol-1",
            what: "civo volume vol-1",
        };
        let err = wait(&lookup, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, CsiError::DeadlineExceeded(_)), "{err}");
        assert!(err.to_string().contains("civo volume vol-1"), "{err}");
    }
}
