//! How an emulated cloud makes its volumes appear on this host: each
//! volume is a sparse image file; attaching it to "the server" attaches the
//! image to a loop device and links it into a device directory under the
//! name the real cloud's udev rules would give it, so the driver's node
//! side finds, verifies, formats and mounts a real block device.
//!
//! Device identity: a loop device carries no SCSI serial, so the image file
//! is named after the serial the real disk would report
//! (`<images>/<serial>.img`). The driver reads a loop device's serial from
//! the name of its backing file.

use std::fs;
use std::path::{Path, PathBuf};

use crate::node::loopdev;

/// Where the images and the device links live. Without one, an emulator
/// serves its API only (no devices appear).
#[derive(Clone, Debug)]
pub struct DeviceHost {
    pub images: PathBuf,
    pub links: PathBuf,
}

impl DeviceHost {
    pub fn new(images: PathBuf, links: PathBuf) -> std::io::Result<Self> {
        fs::create_dir_all(&images)?;
        fs::create_dir_all(&links)?;
        Ok(DeviceHost { images, links })
    }

    fn image(&self, serial: &str) -> PathBuf {
        self.images.join(format!("{serial}.img"))
    }

    /// Creates (or grows) the sparse image of a volume.
    pub fn provision(&self, serial: &str, size_bytes: u64) -> Result<(), String> {
        let path = self.image(serial);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("create image {}: {e}", path.display()))?;
        let current = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size_bytes > current {
            file.set_len(size_bytes)
                .map_err(|e| format!("size image {}: {e}", path.display()))?;
        }
        if let Some(device) = loopdev::find(&path).map_err(|e| e.to_string())? {
            loopdev::refresh_capacity(&device).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Copies a volume's content into a new image (snapshots, restores).
    pub fn copy(&self, from_serial: &str, to_serial: &str) -> Result<(), String> {
        let (from, to) = (self.image(from_serial), self.image(to_serial));
        crate::backend::hostpath::image::copy(&from, &to, 0)
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))
    }

    /// Removes a volume's image (detaching it first if needed).
    pub fn remove(&self, serial: &str) -> Result<(), String> {
        let path = self.image(serial);
        if let Some(device) = loopdev::find(&path).map_err(|e| e.to_string())? {
            loopdev::detach(&device).map_err(|e| e.to_string())?;
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("remove image {}: {e}", path.display())),
        }
    }

    /// Attaches the volume's image and links it as `links/<link_name>`.
    pub fn attach(&self, serial: &str, link_name: &str) -> Result<PathBuf, String> {
        let device = loopdev::attach(&self.image(serial)).map_err(|e| e.to_string())?;
        let link = self.links.join(link_name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&device, &link)
            .map_err(|e| format!("link {} to {}: {e}", link.display(), device.display()))?;
        Ok(device)
    }

    /// Removes the link and detaches the loop device.
    pub fn detach(&self, serial: &str, link_name: &str) -> Result<(), String> {
        match fs::remove_file(self.links.join(link_name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove link {link_name}: {e}")),
        }
        if let Some(device) = loopdev::find(&self.image(serial)).map_err(|e| e.to_string())? {
            loopdev::detach(&device).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Detaches and removes everything (emulator shutdown).
    pub fn clear(&self) {
        if let Ok(entries) = fs::read_dir(&self.links) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        if let Ok(entries) = fs::read_dir(&self.images) {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(Some(device)) = loopdev::find(&path) {
                    let _ = loopdev::detach(&device);
                }
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// The serial of a loop device: the name of its backing image without
/// `.img` (see the module documentation).
pub fn loop_serial(backing_file: &Path) -> Option<String> {
    let name = backing_file.file_name()?.to_str()?;
    name.strip_suffix(".img").map(str::to_string)
}
