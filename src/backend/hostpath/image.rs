//! Image files: created sparse (thin) or with their space reserved (thick),
//! grown, and copied without filling holes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, copy_file_range, fallocate};
use nix::unistd::{Whence, lseek};

/// Creates a sparse file of `size` bytes; a file already there is never
/// overwritten (an error).
pub fn create(path: &Path, size: u64) -> io::Result<()> {
    make(path, size, false).map(drop)
}

/// Creates a file of `size` bytes, sparse or with its space reserved (see
/// `reserve`), and returns it open for writing; a file already there is
/// never overwritten (an error).
pub fn make(path: &Path, size: u64, reserved: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if reserved {
        // Allocating the whole length sets the size too.
        allocate(&file, size)?;
    } else {
        file.set_len(size)?;
    }
    Ok(file)
}

/// Reserves the space of the first `size` bytes of a file (allocating what
/// is a hole, keeping what is written, growing the file when shorter), so
/// that writes there never fail for lack of space. A full filesystem is an
/// error of kind `StorageFull`. Not flushed here: the volume's journal
/// entry is what makes it durable, and a start after a crash reserves the
/// space of every thick volume again (see `repair_image`).
pub fn reserve(path: &Path, size: u64) -> io::Result<()> {
    allocate(&OpenOptions::new().write(true).open(path)?, size)
}

fn allocate(file: &File, size: u64) -> io::Result<()> {
    let len = i64::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
    // Mode 0 only allocates.
    fallocate(file, FallocateFlags::empty(), 0, len)?;
    Ok(())
}

/// Bytes of a file that are allocated on disk.
pub fn allocated(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Reads the first block of an image: an I/O error of the backing store
/// shows here.
pub fn check_readable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let mut block = [0u8; 4096];
    file.read_at(&mut block, 0).map(drop)
}

/// Grows a file to `size` bytes (never shrinks) and makes the size durable.
pub fn grow(path: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() < size {
        file.set_len(size)?;
        file.sync_all()?;
    }
    Ok(())
}

/// Size of a file in bytes.
pub fn size(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

/// Copies `src` into a new file `dst` of at least `size` bytes, keeping
/// holes: reflink where the filesystem can, else only the data extents.
/// The copy is durable when this returns.
pub fn copy(src: &Path, dst: &Path, size: u64) -> io::Result<()> {
    copy_unsynced(src, dst, size)?.sync_all()
}

/// [`copy`] without making it durable: the copy holds `src` as it was, in
/// the page cache; the caller syncs the returned file.
pub fn copy_unsynced(src: &Path, dst: &Path, size: u64) -> io::Result<File> {
    let input = File::open(src)?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let len = input.metadata()?.len();
    // FICLONE shares extents on filesystems that support it (xfs, btrfs);
    // nix has no wrapper for it, rustix a safe one.
    if rustix::fs::ioctl_ficlone(&output, &input).is_err() {
        copy_data_extents(&input, &output, len)?;
    }
    output.set_len(len.max(size))?;
    Ok(output)
}

fn copy_data_extents(input: &File, output: &File, len: u64) -> io::Result<()> {
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        let data = match lseek(input, offset, Whence::SeekData) {
            Ok(data) => data,
            Err(Errno::ENXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(input, data, Whence::SeekHole)?;
        let mut pos_in = data;
        let mut pos_out = data;
        while pos_in < hole {
            let want = (hole - pos_in) as usize;
            let n = copy_file_range(input, Some(&mut pos_in), output, Some(&mut pos_out), want)?;
            if n == 0 {
                break;
            }
        }
        offset = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_keeps_content_and_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src.img");
        create(&src, 64 << 20).unwrap();
        let mut f = OpenOptions::new().write(true).open(&src).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(b"hello, volume").unwrap();
        drop(f);
        let dst = tmp.path().join("dst.img");
        copy(&src, &dst, 128 << 20).unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        assert_eq!(bytes.len(), 128 << 20);
        assert_eq!(&bytes[10 << 20..(10 << 20) + 13], b"hello, volume");
        // sparse: far fewer blocks allocated than the apparent size
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20);
    }

    #[test]
    fn reserve_allocates_without_touching_data() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.img");
        create(&p, 4 << 20).unwrap();
        std::fs::write(&p, b"kept").unwrap();
        assert!(allocated(&p).unwrap() < 1 << 20);
        reserve(&p, 8 << 20).unwrap();
        assert!(allocated(&p).unwrap() >= 8 << 20);
        assert_eq!(size(&p).unwrap(), 8 << 20);
        assert_eq!(&std::fs::read(&p).unwrap()[..4], b"kept");
        check_readable(&p).unwrap();
    }

    #[test]
    fn grow_never_shrinks() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.img");
        create(&p, 4096).unwrap();
        grow(&p, 8192).unwrap();
        grow(&p, 1024).unwrap();
        assert_eq!(size(&p).unwrap(), 8192);
    }
}
