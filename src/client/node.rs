//! `multicsi client node ...`

use std::io::Write;

use clap::{Args, Subcommand};
use tonic::transport::Channel;

use super::ClientError;
use super::args::{CapabilityArgs, SecretArgs, parse_key_value, parse_size, to_map};
use super::connect::Connection;
use super::output::{self, Printer};
use crate::csi as pb;
use crate::csi::node_client::NodeClient;

/// The contexts the controller handed out, passed on to the node.
#[derive(Args, Debug, Clone, Default)]
pub struct ContextArgs {
    /// Volume context from CreateVolume, KEY=VALUE (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub volume_context: Vec<(String, String)>,
    /// Publish context from ControllerPublishVolume, KEY=VALUE (repeatable).
    #[arg(long = "publish-context", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub publish_context: Vec<(String, String)>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach, format if blank, and mount a volume at its staging path (NodeStageVolume).
    Stage {
        id: String,
        /// The staging directory.
        #[arg(long, value_name = "PATH")]
        staging: String,
        #[command(flatten)]
        capability: CapabilityArgs,
        #[command(flatten)]
        contexts: ContextArgs,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Unmount and detach a staged volume (NodeUnstageVolume).
    Unstage {
        id: String,
        /// The staging directory.
        #[arg(long, value_name = "PATH")]
        staging: String,
    },
    /// Mount a staged volume at a target path (NodePublishVolume).
    Publish {
        id: String,
        /// The staging directory the volume was staged at.
        #[arg(long, value_name = "PATH")]
        staging: Option<String>,
        /// Where the workload sees the volume.
        #[arg(long, value_name = "PATH")]
        target: String,
        /// Mount read-only.
        #[arg(long)]
        readonly: bool,
        #[command(flatten)]
        capability: CapabilityArgs,
        #[command(flatten)]
        contexts: ContextArgs,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Unmount a volume from a target path (NodeUnpublishVolume).
    Unpublish {
        id: String,
        /// The target path.
        #[arg(long, value_name = "PATH")]
        target: String,
    },
    /// Usage and health of a mounted volume (NodeGetVolumeStats).
    Stats {
        id: String,
        /// A path the volume is published or staged at.
        #[arg(long, value_name = "PATH")]
        path: String,
        /// The staging directory.
        #[arg(long, value_name = "PATH")]
        staging: Option<String>,
    },
    /// The node's ID, volume limit and topology (NodeGetInfo).
    Info,
    /// What the node offers (NodeGetCapabilities).
    Capabilities,
    /// Grow a volume's filesystem after the controller grew it (NodeExpandVolume).
    Expand {
        id: String,
        /// A path the volume is published at.
        #[arg(long, value_name = "PATH")]
        path: String,
        /// The volume's new size.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// The staging directory.
        #[arg(long, value_name = "PATH")]
        staging: Option<String>,
        #[command(flatten)]
        capability: CapabilityArgs,
        #[command(flatten)]
        secrets: SecretArgs,
    },
}

async fn client(connection: &Connection) -> Result<NodeClient<Channel>, ClientError> {
    Ok(NodeClient::new(connection.channel().await?))
}

pub async fn run<W: Write>(
    command: Command,
    connection: &Connection,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    let item = match command {
        Command::Stage {
            id,
            staging,
            capability,
            contexts,
            secrets,
        } => {
            let request = pb::NodeStageVolumeRequest {
                volume_id: id.clone(),
                publish_context: to_map("--publish-context", contexts.publish_context)?,
                staging_target_path: staging.clone(),
                volume_capability: Some(capability.capability()),
                secrets: secrets.map()?,
                volume_context: to_map("--context", contexts.volume_context)?,
            };
            client(connection).await?.node_stage_volume(request).await?;
            output::done(
                "staged",
                &[("volume_id", &id), ("staging_target_path", &staging)],
            )
        }
        Command::Unstage { id, staging } => {
            let request = pb::NodeUnstageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
            };
            client(connection)
                .await?
                .node_unstage_volume(request)
                .await?;
            output::done(
                "unstaged",
                &[("volume_id", &id), ("staging_target_path", &staging)],
            )
        }
        Command::Publish {
            id,
            staging,
            target,
            readonly,
            capability,
            contexts,
            secrets,
        } => {
            let request = pb::NodePublishVolumeRequest {
                volume_id: id.clone(),
                publish_context: to_map("--publish-context", contexts.publish_context)?,
                staging_target_path: staging.unwrap_or_default(),
                target_path: target.clone(),
                volume_capability: Some(capability.capability()),
                readonly,
                secrets: secrets.map()?,
                volume_context: to_map("--context", contexts.volume_context)?,
            };
            client(connection)
                .await?
                .node_publish_volume(request)
                .await?;
            output::done("published", &[("volume_id", &id), ("target_path", &target)])
        }
        Command::Unpublish { id, target } => {
            let request = pb::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.clone(),
            };
            client(connection)
                .await?
                .node_unpublish_volume(request)
                .await?;
            output::done(
                "unpublished",
                &[("volume_id", &id), ("target_path", &target)],
            )
        }
        Command::Stats { id, path, staging } => {
            let request = pb::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: path,
                staging_target_path: staging.unwrap_or_default(),
            };
            let r = client(connection)
                .await?
                .node_get_volume_stats(request)
                .await?;
            output::stats(&id, r.get_ref())
        }
        Command::Info => {
            let r = client(connection)
                .await?
                .node_get_info(pb::NodeGetInfoRequest {})
                .await?;
            output::node_info(r.get_ref())
        }
        Command::Capabilities => {
            let r = client(connection)
                .await?
                .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
                .await?;
            output::node_capabilities(r.get_ref())
        }
        Command::Expand {
            id,
            path,
            size,
            staging,
            capability,
            secrets,
        } => {
            let request = pb::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: path,
                capacity_range: size.map(|bytes| pb::CapacityRange {
                    required_bytes: bytes as i64,
                    limit_bytes: 0,
                }),
                staging_target_path: staging.unwrap_or_default(),
                volume_capability: capability.optional(),
                secrets: secrets.map()?,
            };
            let r = client(connection)
                .await?
                .node_expand_volume(request)
                .await?;
            output::expanded(&id, r.get_ref().capacity_bytes, None)
        }
    };
    out.emit(item)?;
    Ok(())
}
