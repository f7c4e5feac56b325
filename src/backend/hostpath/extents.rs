//! Where an image file keeps its data: the data ranges (everything else is
//! a hole that reads as zeros) from `lseek` SEEK_DATA/SEEK_HOLE, and the
//! physical extents behind them from the FIEMAP ioctl.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use rustix::io::Errno;
use rustix::ioctl::{self, Opcode, Updater, opcode};

/// The data ranges of a file from one offset up to a limit, in ascending
/// order, read lazily (one SEEK_DATA and one SEEK_HOLE per range).
pub struct DataRanges<'a> {
    file: &'a File,
    next: u64,
    end: u64,
}

impl<'a> DataRanges<'a> {
    /// The data of `file` in `[from, end)` (clipped to the file's length).
    pub fn new(file: &'a File, from: u64, end: u64) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(DataRanges {
            file,
            next: from,
            end: end.min(len),
        })
    }

    /// The next data range `[start, end)`, or `None` when only holes remain.
    pub fn next_range(&mut self) -> io::Result<Option<(u64, u64)>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let start = match rustix::fs::seek(self.file, SeekFrom::Data(self.next)) {
            Ok(start) => start,
            // ENXIO: no data after the offset.
            Err(Errno::NXIO) => {
                self.next = self.end;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if start >= self.end {
            self.next = self.end;
            return Ok(None);
        }
        let hole = rustix::fs::seek(self.file, SeekFrom::Hole(start))?;
        let end = hole.min(self.end);
        self.next = end;
        Ok(Some((start, end)))
    }
}

/// One physical extent of a file, as FIEMAP reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
}

impl Mapped {
    fn end(&self) -> u64 {
        self.logical + self.length
    }
}

/// Extents whose physical address says nothing certain about their data:
/// not yet placed, packed into metadata, encoded (compressed, encrypted) or
/// sharing a block with other data.
const UNCERTAIN: u32 = FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_ENCODED
    | FIEMAP_EXTENT_DATA_ENCRYPTED
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL;
const FIEMAP_EXTENT_LAST: u32 = 0x0001;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x0002;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x0004;
const FIEMAP_EXTENT_ENCODED: u32 = 0x0008;
const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x0080;
const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x0100;
const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x0200;
const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x0400;
/// Flush delayed allocations before mapping.
const FIEMAP_FLAG_SYNC: u32 = 0x0001;

/// Extents asked for per FIEMAP call.
const EXTENTS_PER_CALL: usize = 64;

/// `struct fiemap` of linux/fiemap.h, without its extent array: the size
/// the ioctl's number encodes.
#[repr(C)]
struct FiemapHeader {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// `struct fiemap_extent` of linux/fiemap.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` followed by room for its extents.
#[repr(C)]
struct FiemapRequest {
    header: FiemapHeader,
    extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// FS_IOC_FIEMAP: `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: Opcode = opcode::read_write::<FiemapHeader>(b'f', 11);

/// The physical extents of `[start, end)` of a file whose address is
/// certain, in ascending order; `None` when the filesystem has no FIEMAP
/// (the caller then compares contents). Extents after the first
/// [`EXTENTS_PER_CALL`] are fetched by further calls.
pub fn mapped(file: &File, start: u64, end: u64) -> io::Result<Option<Vec<Mapped>>> {
    let mut found = Vec::new();
    let mut from = start;
    while from < end {
        let mut request = FiemapRequest {
            header: FiemapHeader {
                start: from,
                length: end - from,
                flags: FIEMAP_FLAG_SYNC,
                mapped_extents: 0,
                extent_count: EXTENTS_PER_CALL as u32,
                reserved: 0,
            },
            extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        };
        // SAFETY: FS_IOC_FIEMAP reads a `struct fiemap` and writes at most
        // `extent_count` extents after it; `request` is laid out as that
        // header followed by room for exactly `extent_count` extents, and
        // lives across the call.
        let call = unsafe { ioctl::ioctl(file, Updater::<FS_IOC_FIEMAP, _>::new(&mut request)) };
        match call {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP | Errno::NOTTY | Errno::INVAL) if found.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let count = (request.header.mapped_extents as usize).min(EXTENTS_PER_CALL);
        if count == 0 {
            break;
        }
        let mut last = false;
        let before = from;
        for extent in &request.extents[..count] {
            last |= extent.flags & FIEMAP_EXTENT_LAST != 0;
            let mapped = Mapped {
                logical: extent.logical,
                physical: extent.physical,
                length: extent.length,
            };
            from = from.max(mapped.end());
            if extent.flags & UNCERTAIN == 0 && extent.length > 0 {
                found.push(mapped);
            }
        }
        if last || count < EXTENTS_PER_CALL || from == before {
            break;
        }
    }
    Ok(Some(found))
}

/// The parts of `[start, end)` that two files keep in the very same
/// physical blocks at the same offsets (a reflinked copy not written
/// since), in ascending order; such parts hold the same data.
pub fn shared(a: &[Mapped], b: &[Mapped], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (&a[i], &b[j]);
        let lo = x.logical.max(y.logical).max(start);
        let hi = x.end().min(y.end()).min(end);
        // The same physical block for the same logical offset: the two
        // extents are the same distance from their physical addresses.
        if lo < hi && x.physical.wrapping_sub(x.logical) == y.physical.wrapping_sub(y.logical) {
            match out.last_mut() {
                Some(last) if last.1 == lo => last.1 = hi,
                _ => out.push((lo, hi)),
            }
        }
        if x.end() <= y.end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_ioctl_number_is_the_kernels() {
        assert_eq!(FS_IOC_FIEMAP as u64, 0xC020_660B);
        assert_eq!(std::mem::size_of::<FiemapExtent>(), 56);
    }

    /// A new sparse file of `size` bytes with `writes` in it, durable.
    pub(in crate::backend::hostpath) fn sparse_file(
        dir: &std::path::Path,
        name: &str,
        size: u64,
        writes: &[(u64, &[u8])],
    ) -> File {
        let file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(dir.join(name))
            .unwrap();
        file.set_len(size).unwrap();
        for (offset, data) in writes {
            file.write_all_at(data, *offset).unwrap();
        }
        file.sync_all().unwrap();
        file
    }

    #[test]
    fn data_ranges_of_a_sparse_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = sparse_file(
            tmp.path(),
            "a.img",
            16 << 20,
            &[(1 << 20, &[1u8; 4096]), (5 << 20, &[2u8; 8192])],
        );
        let mut ranges = DataRanges::new(&file, 0, 16 << 20).unwrap();
        let mut all = Vec::new();
        while let Some(range) = ranges.next_range().unwrap() {
            all.push(range);
        }
        assert_eq!(
            all,
            vec![(1 << 20, (1 << 20) + 4096), (5 << 20, (5 << 20) + 8192)]
        );
        // From inside a range, and a limit inside the second.
        let mut ranges = DataRanges::new(&file, (1 << 20) + 100, (5 << 20) + 4096).unwrap();
        assert_eq!(
            ranges.next_range().unwrap(),
            Some(((1 << 20) + 100, (1 << 20) + 4096))
        );
        assert_eq!(
            ranges.next_range().unwrap(),
            Some((5 << 20, (5 << 20) + 4096))
        );
        assert_eq!(ranges.next_range().unwrap(), None);
    }

    #[test]
    fn shared_needs_the_same_block_at_the_same_offset() {
        let a = [
            Mapped {
                logical: 0,
                physical: 1 << 30,
                length: 1 << 20,
            },
            Mapped {
                logical: 2 << 20,
                physical: 9 << 30,
                length: 1 << 20,
            },
        ];
        let b = [
            // The first half of a's first extent, then rewritten elsewhere.
            Mapped {
                logical: 0,
                physical: 1 << 30,
                length: 512 << 10,
            },
            Mapped {
                logical: 512 << 10,
                physical: 5 << 30,
                length: 512 << 10,
            },
            // a's second extent, at another offset: not the same data.
            Mapped {
                logical: 3 << 20,
                physical: 9 << 30,
                length: 1 << 20,
            },
        ];
        assert_eq!(shared(&a, &b, 0, 4 << 20), vec![(0, 512 << 10)]);
        assert_eq!(shared(&a, &b, 4096, 8192), vec![(4096, 8192)]);
    }
}
