//! Block metadata of hostpath snapshots, computed from their images alone
//! (nothing is logged as volumes are written, so nothing a crash could
//! lose): the allocated extents of a snapshot are its image's data ranges;
//! the delta of two snapshots of one volume is every 4 KiB block whose
//! contents differ. Blocks the two images keep in the same physical place
//! (a reflinked copy that was not written since) are known equal without
//! reading them; holes in both are equal zeros; the rest is compared.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, UNIX_EPOCH};

use super::extents::{self, DataRanges};
use super::{HostPath, SnapshotRecord};
use crate::backend::blocks::{ExtentSink, ExtentStream, check_offset, spawn_producer};
use crate::error::{CsiError, CsiResult};

/// The unit of a delta: extents start and end on these boundaries.
pub const UNIT: u64 = 4096;
/// The span mapped and compared at once (and the size of each of the two
/// read buffers).
const WINDOW: u64 = 1 << 20;

fn align_down(offset: u64) -> u64 {
    offset - offset % UNIT
}

fn align_up(offset: u64, limit: u64) -> u64 {
    offset.div_ceil(UNIT).saturating_mul(UNIT).min(limit)
}

/// What a delta cost: bytes read and compared, bytes known equal from
/// shared physical blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaCost {
    pub compared_bytes: u64,
    pub shared_bytes: u64,
}

/// Streams the data ranges of `image` in `[from, capacity)`.
pub fn allocated(image: &File, from: u64, capacity: u64, sink: &mut ExtentSink) -> CsiResult<()> {
    let mut ranges = DataRanges::new(image, align_down(from), capacity).map_err(read_error)?;
    while let Some((start, end)) = ranges.next_range().map_err(read_error)? {
        sink.push(start, end)?;
    }
    Ok(())
}

fn read_error(e: std::io::Error) -> CsiError {
    CsiError::io("cannot read the snapshot image", e)
}

/// Streams the blocks of `[from, capacity)` whose contents differ between
/// `base` and `target` (what lies beyond the end of `base`, a volume grown
/// since, counts as zeros).
pub fn changed(
    base: &File,
    target: &File,
    from: u64,
    capacity: u64,
    sink: &mut ExtentSink,
) -> CsiResult<DeltaCost> {
    let from = align_down(from);
    let mut delta = Delta {
        base,
        target,
        capacity,
        fiemap: true,
        cost: DeltaCost::default(),
        base_buf: vec![0; WINDOW as usize],
        target_buf: vec![0; WINDOW as usize],
    };
    let mut in_base = DataRanges::new(base, from, capacity).map_err(read_error)?;
    let mut in_target = DataRanges::new(target, from, capacity).map_err(read_error)?;
    let mut a = in_base.next_range().map_err(read_error)?;
    let mut b = in_target.next_range().map_err(read_error)?;
    // The union of both files' data ranges, one merged region at a time.
    loop {
        let (mut start, mut end) = match (a, b) {
            (None, None) => break,
            (Some(x), None) => x,
            (None, Some(y)) => y,
            (Some(x), Some(y)) => {
                if x.0 <= y.0 {
                    x
                } else {
                    y
                }
            }
        };
        start = align_down(start);
        loop {
            let mut grew = false;
            if let Some(x) = a.filter(|x| x.0 <= end) {
                end = end.max(x.1);
                a = in_base.next_range().map_err(read_error)?;
                grew = true;
            }
            if let Some(y) = b.filter(|y| y.0 <= end) {
                end = end.max(y.1);
                b = in_target.next_range().map_err(read_error)?;
                grew = true;
            }
            if !grew {
                break;
            }
        }
        delta.region(start, align_up(end, capacity), sink)?;
    }
    Ok(delta.cost)
}

struct Delta<'a> {
    base: &'a File,
    target: &'a File,
    capacity: u64,
    /// Whether the filesystem maps extents (FIEMAP); off after it said no.
    fiemap: bool,
    cost: DeltaCost,
    base_buf: Vec<u8>,
    target_buf: Vec<u8>,
}

impl Delta<'_> {
    /// Streams the changed blocks of `[start, end)`, a window at a time.
    fn region(&mut self, start: u64, end: u64, sink: &mut ExtentSink) -> CsiResult<()> {
        let mut window = start;
        while window < end {
            let window_end = (window - window % WINDOW + WINDOW).min(end);
            let mut next = window;
            for (equal_from, equal_to) in self.shared(window, window_end)? {
                self.compare(next, equal_from, sink)?;
                self.cost.shared_bytes += equal_to - equal_from;
                next = equal_to;
            }
            self.compare(next, window_end, sink)?;
            window = window_end;
        }
        Ok(())
    }

    /// The parts of `[start, end)` both images keep in the same physical
    /// blocks.
    fn shared(&mut self, start: u64, end: u64) -> CsiResult<Vec<(u64, u64)>> {
        if !self.fiemap {
            return Ok(Vec::new());
        }
        let map = |file| extents::mapped(file, start, end).map_err(read_error);
        match (map(self.base)?, map(self.target)?) {
            (Some(a), Some(b)) => Ok(extents::shared(&a, &b, start, end)),
            _ => {
                self.fiemap = false;
                Ok(Vec::new())
            }
        }
    }

    /// Reads `[start, end)` of both images (at most a window) and streams
    /// the blocks that differ.
    fn compare(&mut self, start: u64, end: u64, sink: &mut ExtentSink) -> CsiResult<()> {
        let start = align_down(start);
        let end = align_up(end, self.capacity);
        if start >= end {
            return Ok(());
        }
        let len = (end - start) as usize;
        read_full(self.base, &mut self.base_buf[..len], start)?;
        read_full(self.target, &mut self.target_buf[..len], start)?;
        self.cost.compared_bytes += len as u64;
        let units = self.base_buf[..len]
            .chunks(UNIT as usize)
            .zip(self.target_buf[..len].chunks(UNIT as usize));
        for (i, (x, y)) in units.enumerate() {
            if x != y {
                let offset = start + i as u64 * UNIT;
                sink.push(offset, (offset + UNIT).min(end))?;
            }
        }
        Ok(())
    }
}

/// Fills `buf` from `offset` of `file`; what lies beyond its end is zeros.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> CsiResult<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Opens a snapshot's image for reading, off the async workers.
async fn open(path: std::path::PathBuf) -> CsiResult<File> {
    crate::blocking::run(move || {
        File::open(&path).map_err(|e| {
            CsiError::io(
                format!(
                    "cannot open snapshot image {} (see Troubleshooting: state directory)",
                    path.display()
                ),
                e,
            )
        })
    })
    .await
}

fn created(record: &SnapshotRecord) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_nanos(record.created_unix_nanos as u64)
}

impl HostPath {
    fn snapshot_record(&self, id: &str) -> CsiResult<SnapshotRecord> {
        self.state()
            .snapshots
            .get(id)
            .cloned()
            .ok_or_else(|| CsiError::NotFound(format!("snapshot {id} does not exist")))
    }

    /// The allocated extents of a snapshot from `from` on.
    pub(super) async fn snapshot_allocated(&self, id: &str, from: u64) -> CsiResult<ExtentStream> {
        let record = self.snapshot_record(id)?;
        let capacity = record.size_bytes;
        check_offset(from, capacity)?;
        let image = open(self.snapshots.image_path(id)).await?;
        Ok(spawn_producer(capacity, move |sink| {
            allocated(&image, from, capacity, sink)
        }))
    }

    /// The extents that differ between two snapshots of one volume, from
    /// `from` on.
    pub(super) async fn snapshot_delta(
        &self,
        base_id: &str,
        target_id: &str,
        from: u64,
    ) -> CsiResult<ExtentStream> {
        let base = self.snapshot_record(base_id)?;
        let target = self.snapshot_record(target_id)?;
        if base_id == target_id {
            return Err(CsiError::InvalidArgument(format!(
                "base_snapshot_id and target_snapshot_id are both {base_id}: name an earlier snapshot of the volume as the base"
            )));
        }
        if base.source_volume_id != target.source_volume_id {
            return Err(CsiError::InvalidArgument(format!(
                "base snapshot {base_id} is of volume {}, target snapshot {target_id} of volume {}: a delta is between two snapshots of one volume",
                base.source_volume_id, target.source_volume_id
            )));
        }
        if created(&target) < created(&base) {
            return Err(CsiError::InvalidArgument(format!(
                "target snapshot {target_id} was taken before base snapshot {base_id}: swap them"
            )));
        }
        let capacity = target.size_bytes;
        check_offset(from, capacity)?;
        let base_image = open(self.snapshots.image_path(base_id)).await?;
        let target_image = open(self.snapshots.image_path(target_id)).await?;
        let (base_id, target_id) = (base_id.to_string(), target_id.to_string());
        Ok(spawn_producer(capacity, move |sink| {
            let cost = changed(&base_image, &target_image, from, capacity, sink)?;
            tracing::info!(
                base_snapshot_id = %base_id,
                target_snapshot_id = %target_id,
                compared_bytes = cost.compared_bytes,
                shared_bytes = cost.shared_bytes,
                "snapshot delta computed"
            );
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::blocks::Extent;

    const MIB: u64 = 1 << 20;

    use crate::backend::hostpath::extents::tests::sparse_file as image;

    async fn run(
        produce: impl FnOnce(&mut ExtentSink) -> CsiResult<()> + Send + 'static,
    ) -> Vec<Extent> {
        let mut stream = spawn_producer(0, produce);
        let mut all = Vec::new();
        while let Some(batch) = stream.batches.recv().await {
            all.extend(batch.unwrap());
        }
        all
    }

    fn ext(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    #[tokio::test]
    async fn the_delta_is_exactly_the_blocks_that_differ() {
        let tmp = tempfile::tempdir().unwrap();
        let old = [7u8; 3 * UNIT as usize];
        let base = image(tmp.path(), "base", 8 * MIB, &[(MIB, &old)]);
        // One block rewritten with other data, one with the same data, a
        // block written where the base has a hole, zeros written where it
        // has a hole (no change), and one byte near the end.
        let target = image(
            tmp.path(),
            "target",
            8 * MIB,
            &[
                (MIB, &old),
                (MIB + UNIT, &[9u8; UNIT as usize]),
                (3 * MIB, &[1u8; 2 * UNIT as usize]),
                (4 * MIB, &[0u8; UNIT as usize]),
                (8 * MIB - 1, &[1u8]),
            ],
        );
        let all = run(move |sink| changed(&base, &target, 0, 8 * MIB, sink).map(drop)).await;
        assert_eq!(
            all,
            vec![
                ext(MIB + UNIT, UNIT),
                ext(3 * MIB, 2 * UNIT),
                ext(8 * MIB - UNIT, UNIT)
            ]
        );
    }

    #[tokio::test]
    async fn a_delta_starts_at_the_block_of_the_starting_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let base = image(tmp.path(), "base", 4 * MIB, &[]);
        let target = image(
            tmp.path(),
            "target",
            4 * MIB,
            &[(MIB, &[1u8; 4 * UNIT as usize]), (2 * MIB, &[1u8; 1])],
        );
        let all =
            run(move |sink| changed(&base, &target, MIB + UNIT + 5, 4 * MIB, sink).map(drop)).await;
        assert_eq!(all, vec![ext(MIB + UNIT, 3 * UNIT), ext(2 * MIB, UNIT)]);
    }

    #[tokio::test]
    async fn a_grown_volume_compares_its_new_part_with_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let base = image(tmp.path(), "base", 2 * MIB, &[(0, &[1u8; 16])]);
        let target = image(
            tmp.path(),
            "target",
            4 * MIB,
            &[
                (0, &[1u8; 16]),
                (3 * MIB, &[2u8; 16]),
                (2 * MIB, &[0u8; 16]),
            ],
        );
        let all = run(move |sink| changed(&base, &target, 0, 4 * MIB, sink).map(drop)).await;
        assert_eq!(all, vec![ext(3 * MIB, UNIT)]);
    }

    #[tokio::test]
    async fn allocated_is_the_data_of_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let file = image(
            tmp.path(),
            "snap",
            8 * MIB,
            &[(0, &[1u8; 16]), (5 * MIB, &[1u8; 2 * UNIT as usize])],
        );
        let all = run(move |sink| allocated(&file, UNIT, 8 * MIB, sink)).await;
        assert_eq!(all, vec![ext(5 * MIB, 2 * UNIT)]);
    }
}
