//! Block metadata of snapshots (the SnapshotMetadata service): byte ranges
//! of a snapshot, streamed from the backend that computes them to the gRPC
//! adapter in bounded batches, so memory stays small whatever the volume's
//! size.

use tokio::sync::mpsc;

use crate::error::{CsiError, CsiResult};

/// Extents per batch handed from the producer to the adapter.
pub const BATCH: usize = 256;
/// Batches in flight between producer and adapter.
const IN_FLIGHT: usize = 4;

/// A byte range of a volume: `[offset, offset + length)`, `length > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Extents of a snapshot, in ascending order and never overlapping, each
/// ending after the requested starting offset.
pub struct ExtentStream {
    /// The capacity of the snapshot's volume.
    pub capacity_bytes: u64,
    pub batches: mpsc::Receiver<CsiResult<Vec<Extent>>>,
}

/// The producing end of an [`ExtentStream`]: merges touching extents and
/// sends them in batches, blocking while the consumer is behind.
pub struct ExtentSink {
    pending: Vec<Extent>,
    /// The end of the last extent pushed.
    end: u64,
    sender: mpsc::Sender<CsiResult<Vec<Extent>>>,
}

/// The consumer went away (the client cancelled the call): stop producing.
#[derive(Debug, thiserror::Error)]
#[error("the caller stopped reading the block metadata")]
pub struct Cancelled;

impl ExtentSink {
    /// Adds the extent `[offset, end)`; extents must come in ascending
    /// order (what overlaps the previous one is cut off, empty ones are
    /// ignored).
    pub fn push(&mut self, offset: u64, end: u64) -> Result<(), Cancelled> {
        let offset = offset.max(self.end);
        if end <= offset {
            return Ok(());
        }
        self.end = end;
        if let Some(last) = self.pending.last_mut()
            && last.end() == offset
        {
            last.length += end - offset;
            return Ok(());
        }
        if self.pending.len() == BATCH {
            let full = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
            self.send(Ok(full))?;
        }
        self.pending.push(Extent {
            offset,
            length: end - offset,
        });
        Ok(())
    }

    fn send(&self, item: CsiResult<Vec<Extent>>) -> Result<(), Cancelled> {
        self.sender.blocking_send(item).map_err(|_| Cancelled)
    }

    /// Sends what is pending, or the error that stopped the producer.
    pub fn finish(self, result: CsiResult<()>) {
        let _ = match result {
            Ok(()) if self.pending.is_empty() => Ok(()),
            Ok(()) => self.send(Ok(self.pending.clone())),
            Err(e) => self.send(Err(e)),
        };
    }
}

/// Runs `produce` on the blocking pool, feeding a new stream of a volume
/// of `capacity_bytes`. Its error (other than the consumer going away) ends
/// the stream.
pub fn spawn_producer(
    capacity_bytes: u64,
    produce: impl FnOnce(&mut ExtentSink) -> CsiResult<()> + Send + 'static,
) -> ExtentStream {
    let (sender, batches) = mpsc::channel(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut sink = ExtentSink {
            pending: Vec::with_capacity(BATCH),
            end: 0,
            sender,
        };
        let result = produce(&mut sink);
        sink.finish(result);
    });
    ExtentStream {
        capacity_bytes,
        batches,
    }
}

/// Checks a starting offset against the volume's capacity: beyond it is
/// OUT_OF_RANGE (the CSI spec's code).
pub fn check_offset(from: u64, capacity_bytes: u64) -> CsiResult<()> {
    if from > capacity_bytes {
        return Err(CsiError::OutOfRange(format!(
            "starting_offset {from} is beyond the volume's {capacity_bytes} bytes; give an offset from 0 to {capacity_bytes}"
        )));
    }
    Ok(())
}

impl From<Cancelled> for CsiError {
    fn from(e: Cancelled) -> Self {
        CsiError::Aborted(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut stream: ExtentStream) -> CsiResult<Vec<Extent>> {
        let mut all = Vec::new();
        while let Some(batch) = stream.batches.recv().await {
            all.extend(batch?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn touching_extents_merge_and_batches_arrive_in_order() {
        let stream = spawn_producer(1 << 30, |sink| {
            sink.push(0, 4096)?;
            sink.push(4096, 8192)?;
            for i in 0..(3 * BATCH as u64) {
                sink.push(65536 * (i + 1), 65536 * (i + 1) + 4096)?;
            }
            Ok(())
        });
        let all = collect(stream).await.unwrap();
        assert_eq!(all.len(), 1 + 3 * BATCH);
        assert_eq!(
            all[0],
            Extent {
                offset: 0,
                length: 8192
            }
        );
        assert!(all.windows(2).all(|w| w[0].end() < w[1].offset));
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_after_what_was_sent() {
        let stream = spawn_producer(1 << 20, |sink| {
            sink.push(0, 4096)?;
            Err(CsiError::Internal("read failed".into()))
        });
        assert_eq!(
            collect(stream).await.unwrap_err(),
            CsiError::Internal("read failed".into())
        );
    }

    #[test]
    fn offsets_beyond_the_capacity_are_out_of_range() {
        assert!(check_offset(0, 0).is_ok());
        assert!(check_offset(1 << 20, 1 << 20).is_ok());
        assert!(matches!(
            check_offset((1 << 20) + 1, 1 << 20),
            Err(CsiError::OutOfRange(_))
        ));
    }
}
