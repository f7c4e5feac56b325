//! The SnapshotMetadata service: the allocated blocks of a snapshot and the
//! blocks changed between two, streamed in messages of at most
//! `max_results` tuples. Served only for backends that compute them.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::backend::blocks::ExtentStream;
use crate::csi::block_style::{BlockStyle, Shaper};
use crate::csi::{self as pb, snapshot_metadata_server, validate};
use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};

/// Tuples per message when the caller leaves `max_results` at 0.
pub const DEFAULT_MAX_RESULTS: usize = 1024;
/// Messages in flight towards the caller.
const IN_FLIGHT: usize = 4;

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The fields both responses share.
trait MetadataReply: Send + 'static {
    fn new(style: BlockStyle, capacity_bytes: u64, tuples: Vec<pb::BlockMetadata>) -> Self;
}

impl MetadataReply for pb::GetMetadataAllocatedResponse {
    fn new(style: BlockStyle, capacity_bytes: u64, block_metadata: Vec<pb::BlockMetadata>) -> Self {
        pb::GetMetadataAllocatedResponse {
            block_metadata_type: style.wire_type() as i32,
            volume_capacity_bytes: capacity_bytes as i64,
            block_metadata,
        }
    }
}

impl MetadataReply for pb::GetMetadataDeltaResponse {
    fn new(style: BlockStyle, capacity_bytes: u64, block_metadata: Vec<pb::BlockMetadata>) -> Self {
        pb::GetMetadataDeltaResponse {
            block_metadata_type: style.wire_type() as i32,
            volume_capacity_bytes: capacity_bytes as i64,
            block_metadata,
        }
    }
}

/// A request's starting offset: negative is OUT_OF_RANGE (the backend
/// checks the upper end against the volume's capacity).
fn starting_offset(value: i64) -> CsiResult<u64> {
    u64::try_from(value).map_err(|_| {
        CsiError::OutOfRange(format!(
            "starting_offset {value} is negative; give 0, or the end of the last range received to continue"
        ))
    })
}

/// Tuples per message: `max_results`, or the default for 0.
fn page_size(max_results: i32) -> CsiResult<usize> {
    match usize::try_from(max_results) {
        Ok(0) => Ok(DEFAULT_MAX_RESULTS),
        Ok(n) => Ok(n.min(DEFAULT_MAX_RESULTS * 64)),
        Err(_) => Err(CsiError::InvalidArgument(format!(
            "max_results {max_results} is negative; give 0 (the driver chooses) or a positive count"
        ))),
    }
}

/// Pages the extents of `stream` into replies on a task of its own; the
/// first reply comes even when there is no tuple, so the caller always
/// learns the capacity and the style. A backend error ends the stream with
/// that error.
fn pages<R: MetadataReply>(
    mut stream: ExtentStream,
    style: BlockStyle,
    from: u64,
    per_page: usize,
    method: &'static str,
) -> ReplyStream<R> {
    let (sender, receiver) = mpsc::channel::<Result<R, Status>>(IN_FLIGHT);
    let capacity = stream.capacity_bytes;
    tokio::spawn(async move {
        let mut shaper = Shaper::new(style, from);
        let mut page = Vec::with_capacity(per_page.min(DEFAULT_MAX_RESULTS));
        let mut sent = 0usize;
        let mut tuples = 0u64;
        while let Some(batch) = stream.batches.recv().await {
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(method, error = %e, tuples, "block metadata stream failed");
                    let _ = sender.send(Err(e.into())).await;
                    return;
                }
            };
            for extent in batch {
                for (byte_offset, size_bytes) in shaper.tuples(extent) {
                    page.push(pb::BlockMetadata {
                        byte_offset: byte_offset as i64,
                        size_bytes: size_bytes as i64,
                    });
                    tuples += 1;
                    if page.len() == per_page {
                        let full = std::mem::take(&mut page);
                        if sender
                            .send(Ok(R::new(style, capacity, full)))
                            .await
                            .is_err()
                        {
                            tracing::info!(method, tuples, "the caller stopped reading");
                            return;
                        }
                        sent += 1;
                    }
                }
            }
        }
        if !page.is_empty() || sent == 0 {
            let _ = sender.send(Ok(R::new(style, capacity, page))).await;
        }
        tracing::debug!(method, tuples, "block metadata sent");
    });
    Box::pin(ReceiverStream::new(receiver))
}

impl Driver {
    fn block_style(&self) -> BlockStyle {
        self.settings.metadata_blocks
    }

    fn require_snapshot_metadata(&self) -> CsiResult<()> {
        if self.serves_snapshot_metadata() {
            return Ok(());
        }
        Err(CsiError::Unimplemented(format!(
            "the {} backend does not offer the SnapshotMetadata service (SNAPSHOT_METADATA_SERVICE is not advertised); take full backups of its snapshots",
            self.backend.name()
        )))
    }

    async fn metadata_allocated(
        &self,
        r: pb::GetMetadataAllocatedRequest,
    ) -> CsiResult<ReplyStream<pb::GetMetadataAllocatedResponse>> {
        self.require_snapshot_metadata()?;
        let id = validate::identifier("snapshot_id", &r.snapshot_id)?;
        let from = starting_offset(r.starting_offset)?;
        let per_page = page_size(r.max_results)?;
        let stream = self.backend.allocated_extents(id, from).await?;
        Ok(pages(
            stream,
            self.block_style(),
            from,
            per_page,
            "GetMetadataAllocated",
        ))
    }

    async fn metadata_delta(
        &self,
        r: pb::GetMetadataDeltaRequest,
    ) -> CsiResult<ReplyStream<pb::GetMetadataDeltaResponse>> {
        self.require_snapshot_metadata()?;
        let base = validate::identifier("base_snapshot_id", &r.base_snapshot_id)?;
        let target = validate::identifier("target_snapshot_id", &r.target_snapshot_id)?;
        let from = starting_offset(r.starting_offset)?;
        let per_page = page_size(r.max_results)?;
        let stream = self.backend.changed_extents(base, target, from).await?;
        Ok(pages(
            stream,
            self.block_style(),
            from,
            per_page,
            "GetMetadataDelta",
        ))
    }
}

#[tonic::async_trait]
impl snapshot_metadata_server::SnapshotMetadata for Driver {
    type GetMetadataAllocatedStream = ReplyStream<pb::GetMetadataAllocatedResponse>;
    type GetMetadataDeltaStream = ReplyStream<pb::GetMetadataDeltaResponse>;

    async fn get_metadata_allocated(
        &self,
        r: Request<pb::GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        let r = r.into_inner();
        let span = tracing::info_span!("GetMetadataAllocated", snapshot_id = %r.snapshot_id);
        self.call(span, self.metadata_allocated(r)).await
    }

    async fn get_metadata_delta(
        &self,
        r: Request<pb::GetMetadataDeltaRequest>,
    ) -> Result<Response<Self::GetMetadataDeltaStream>, Status> {
        let r = r.into_inner();
        let span = tracing::info_span!(
            "GetMetadataDelta",
            base_snapshot_id = %r.base_snapshot_id,
            target_snapshot_id = %r.target_snapshot_id
        );
        self.call(span, self.metadata_delta(r)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_offsets_and_counts_are_refused() {
        assert!(matches!(starting_offset(-1), Err(CsiError::OutOfRange(_))));
        assert_eq!(starting_offset(4096), Ok(4096));
        assert!(matches!(page_size(-1), Err(CsiError::InvalidArgument(_))));
        assert_eq!(page_size(0), Ok(DEFAULT_MAX_RESULTS));
        assert_eq!(page_size(3), Ok(3));
    }

    #[tokio::test]
    async fn pages_hold_at_most_max_results_and_an_empty_stream_gives_one_reply() {
        use tokio_stream::StreamExt;
        let stream = crate::backend::blocks::spawn_producer(1 << 20, |sink| {
            for i in 0..10 {
                sink.push(i * 8192, i * 8192 + 4096)?;
            }
            Ok(())
        });
        let replies: Vec<pb::GetMetadataDeltaResponse> =
            pages(stream, BlockStyle::Variable, 0, 4, "test")
                .map(|r| r.unwrap())
                .collect()
                .await;
        let sizes: Vec<usize> = replies.iter().map(|r| r.block_metadata.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert!(replies.iter().all(|r| r.volume_capacity_bytes == 1 << 20));
        let empty = crate::backend::blocks::spawn_producer(1 << 20, |_| Ok(()));
        let replies: Vec<pb::GetMetadataAllocatedResponse> =
            pages(empty, BlockStyle::Fixed(65536), 0, 4, "test")
                .map(|r| r.unwrap())
                .collect()
                .await;
        assert_eq!(replies.len(), 1);
        assert!(replies[0].block_metadata.is_empty());
        assert_eq!(
            replies[0].block_metadata_type,
            pb::BlockMetadataType::FixedLength as i32
        );
    }
}
