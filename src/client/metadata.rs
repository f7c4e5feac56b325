//! `multicsi client snapshot allocated|delta`: the SnapshotMetadata
//! service. The ranges are printed as they stream in (a header with the
//! volume's capacity and the block style first, a total last), so a large
//! volume needs no more memory than a small one.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;
use tonic::Streaming;
use tonic::transport::Channel;

use super::ClientError;
use super::args::{SecretArgs, parse_size};
use super::connect::Connection;
use super::output::{Item, Printer, human_bytes};
use crate::csi as pb;
use crate::csi::snapshot_metadata_client::SnapshotMetadataClient;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The allocated ranges of a snapshot (GetMetadataAllocated).
    Allocated {
        /// The snapshot.
        id: String,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// The ranges that changed between two snapshots of one volume
    /// (GetMetadataDelta).
    Delta {
        /// The earlier snapshot.
        base: String,
        /// The later snapshot.
        target: String,
        #[command(flatten)]
        range: RangeArgs,
    },
}

#[derive(Args, Debug)]
pub struct RangeArgs {
    /// Start at this byte offset (to continue an interrupted listing: the
    /// end of the last range received); bytes or with a suffix (1Gi).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub from: u64,
    /// At most this many ranges per message of the stream (0: the driver
    /// chooses).
    #[arg(long, default_value_t = 0)]
    pub max_results: i32,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// The fields both responses share.
struct Page {
    kind: i32,
    capacity: i64,
    tuples: Vec<pb::BlockMetadata>,
}

impl From<pb::GetMetadataAllocatedResponse> for Page {
    fn from(r: pb::GetMetadataAllocatedResponse) -> Self {
        Page {
            kind: r.block_metadata_type,
            capacity: r.volume_capacity_bytes,
            tuples: r.block_metadata,
        }
    }
}

impl From<pb::GetMetadataDeltaResponse> for Page {
    fn from(r: pb::GetMetadataDeltaResponse) -> Self {
        Page {
            kind: r.block_metadata_type,
            capacity: r.volume_capacity_bytes,
            tuples: r.block_metadata,
        }
    }
}

pub async fn run<W: Write>(
    command: Command,
    connection: &Connection,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    match command {
        Command::Allocated { id, range } => {
            let request = pb::GetMetadataAllocatedRequest {
                snapshot_id: id,
                starting_offset: offset(range.from)?,
                max_results: range.max_results,
                secrets: range.secrets.map()?,
            };
            let stream = client(connection)
                .await?
                .get_metadata_allocated(request)
                .await?
                .into_inner();
            print_stream(stream, out).await
        }
        Command::Delta {
            base,
            target,
            range,
        } => {
            let request = pb::GetMetadataDeltaRequest {
                base_snapshot_id: base,
                target_snapshot_id: target,
                starting_offset: offset(range.from)?,
                max_results: range.max_results,
                secrets: range.secrets.map()?,
            };
            let stream = client(connection)
                .await?
                .get_metadata_delta(request)
                .await?
                .into_inner();
            print_stream(stream, out).await
        }
    }
}

fn offset(from: u64) -> Result<i64, ClientError> {
    i64::try_from(from).map_err(|_| ClientError::Usage(format!("--from {from} is too large")))
}

async fn client(connection: &Connection) -> Result<SnapshotMetadataClient<Channel>, ClientError> {
    Ok(SnapshotMetadataClient::new(connection.channel().await?))
}

/// Prints a header from the first message, every range, then the total.
async fn print_stream<R: Into<Page>, W: Write>(
    mut stream: Streaming<R>,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    let mut header = false;
    let (mut ranges, mut bytes) = (0u64, 0i64);
    while let Some(reply) = stream.message().await? {
        let page: Page = reply.into();
        if !header {
            out.emit(volume(&page))?;
            header = true;
        }
        for tuple in &page.tuples {
            out.emit(range(tuple))?;
            ranges += 1;
            bytes += tuple.size_bytes;
        }
    }
    if !header {
        return Err(ClientError::Incomplete(
            "the stream ended without a message (no capacity nor block style)".into(),
        ));
    }
    out.emit(total(ranges, bytes))?;
    Ok(())
}

fn style_name(kind: i32) -> &'static str {
    pb::BlockMetadataType::try_from(kind).map_or("UNKNOWN", |t| t.as_str_name())
}

fn volume(page: &Page) -> Item {
    let style = style_name(page.kind);
    Item {
        text: format!(
            "volume {} ({} bytes)  {}",
            human_bytes(page.capacity),
            page.capacity,
            style.to_lowercase().replace('_', "-")
        ),
        json: json!({
            "volume_capacity_bytes": page.capacity,
            "block_metadata_type": style,
        }),
    }
}

fn range(tuple: &pb::BlockMetadata) -> Item {
    Item {
        text: format!(
            "range {} {}  ({} at {})",
            tuple.byte_offset,
            tuple.size_bytes,
            human_bytes(tuple.size_bytes),
            human_bytes(tuple.byte_offset)
        ),
        json: json!({
            "byte_offset": tuple.byte_offset,
            "size_bytes": tuple.size_bytes,
        }),
    }
}

fn total(ranges: u64, bytes: i64) -> Item {
    Item {
        text: format!(
            "total {ranges} ranges, {} ({bytes} bytes)",
            human_bytes(bytes)
        ),
        json: json!({ "ranges": ranges, "bytes": bytes }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_readable_and_json_is_stable() {
        let header = volume(&Page {
            kind: pb::BlockMetadataType::FixedLength as i32,
            capacity: 1 << 30,
            tuples: vec![],
        });
        assert_eq!(
            header.text,
            "volume 1.0 GiB (1073741824 bytes)  fixed-length"
        );
        assert_eq!(
            header.json,
            json!({"volume_capacity_bytes": 1073741824, "block_metadata_type": "FIXED_LENGTH"})
        );
        let line = range(&pb::BlockMetadata {
            byte_offset: 1 << 20,
            size_bytes: 12288,
        });
        assert_eq!(line.text, "range 1048576 12288  (12.0 KiB at 1.0 MiB)");
        assert_eq!(
            line.json,
            json!({"byte_offset": 1048576, "size_bytes": 12288})
        );
        assert_eq!(total(2, 8192).text, "total 2 ranges, 8.0 KiB (8192 bytes)");
    }
}
