//! `multicsi client controller ...`

use std::future::Future;
use std::io::Write;

use clap::{Args, Subcommand};
use tonic::transport::Channel;

use super::args::{CapabilityArgs, SecretArgs, parse_key_value, parse_size, to_map};
use super::connect::Connection;
use super::output::{self, Item, Printer};
use super::{ClientError, required};
use crate::csi as pb;
use crate::csi::controller_client::ControllerClient;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a volume (CreateVolume).
    Create(CreateArgs),
    /// Delete a volume (DeleteVolume).
    Delete {
        id: String,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// List volumes (ListVolumes); every page unless --max is given.
    List(PageArgs),
    /// Show one volume and its status (ControllerGetVolume).
    Get { id: String },
    /// Make a volume available on a node (ControllerPublishVolume).
    Publish {
        id: String,
        /// The node to publish to.
        #[arg(long)]
        node: String,
        /// Publish read-only.
        #[arg(long)]
        readonly: bool,
        #[command(flatten)]
        capability: CapabilityArgs,
        /// Volume context from CreateVolume, KEY=VALUE (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        context: Vec<(String, String)>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Withdraw a volume from a node, or from every node (ControllerUnpublishVolume).
    Unpublish {
        id: String,
        /// The node to withdraw from (default: every node).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Ask whether a volume supports a capability (ValidateVolumeCapabilities).
    Validate {
        id: String,
        #[command(flatten)]
        capability: CapabilityArgs,
        /// Volume context, KEY=VALUE (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        context: Vec<(String, String)>,
        /// StorageClass parameter, KEY=VALUE (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Grow a volume (ControllerExpandVolume).
    Expand {
        id: String,
        /// The new size: bytes or with a suffix (2Gi).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// The largest acceptable size.
        #[arg(long, value_parser = parse_size)]
        limit: Option<u64>,
        #[command(flatten)]
        capability: CapabilityArgs,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Free capacity (GetCapacity).
    Capacity {
        #[command(flatten)]
        capability: CapabilityArgs,
        /// StorageClass parameter, KEY=VALUE (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// Topology segment the capacity is asked for, KEY=VALUE (repeatable).
        #[arg(long = "topology", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        topology: Vec<(String, String)>,
    },
    /// What the controller offers (ControllerGetCapabilities).
    Capabilities,
    /// Snapshots: create, delete, list.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The volume's name; the same name again returns the same volume.
    pub name: String,
    /// The smallest acceptable size: bytes or with a suffix (1Gi).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// The largest acceptable size.
    #[arg(long, value_parser = parse_size)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub capability: CapabilityArgs,
    /// StorageClass parameter, KEY=VALUE (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// Restore this snapshot into the new volume.
    #[arg(long, value_name = "SNAPSHOT_ID", conflicts_with = "from_volume")]
    pub from_snapshot: Option<String>,
    /// Clone this volume into the new volume.
    #[arg(long, value_name = "VOLUME_ID")]
    pub from_volume: Option<String>,
    /// Required topology segment, KEY=VALUE (repeatable; all in one segment).
    #[arg(long = "topology", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub topology: Vec<(String, String)>,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// Paging of list commands.
#[derive(Args, Debug, Clone, Default)]
pub struct PageArgs {
    /// Fetch one page of at most N entries and print the next token.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub max: Option<i32>,
    /// Start at this token (from a previous page).
    #[arg(long, value_name = "TOKEN", default_value = "")]
    pub token: String,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot a volume (CreateSnapshot).
    Create {
        /// The snapshot's name; the same name again returns the same snapshot.
        name: String,
        /// The volume to snapshot.
        #[arg(long, value_name = "VOLUME_ID")]
        volume: String,
        /// Snapshot parameter, KEY=VALUE (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Delete a snapshot (DeleteSnapshot).
    Delete {
        id: String,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// List snapshots (ListSnapshots); every page unless --max is given.
    List {
        /// Only snapshots of this volume.
        #[arg(long, value_name = "VOLUME_ID")]
        volume: Option<String>,
        /// Only the snapshot with this ID.
        #[arg(long, value_name = "SNAPSHOT_ID")]
        id: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        secrets: SecretArgs,
    },
}

/// Prints the entries of one page (`--max`) or of every page from `--token`
/// on. `fetch(max_entries, token)` returns a page's items and next token.
async fn pages<W, F, Fut>(
    page: PageArgs,
    out: &mut Printer<W>,
    mut fetch: F,
) -> Result<(), ClientError>
where
    W: Write,
    F: FnMut(i32, String) -> Fut,
    Fut: Future<Output = Result<(Vec<Item>, String), ClientError>>,
{
    let mut token = page.token;
    loop {
        let (items, next) = fetch(page.max.unwrap_or(0), token.clone()).await?;
        for item in items {
            out.emit(item)?;
        }
        if page.max.is_some() {
            if !next.is_empty() {
                out.emit(output::next_token(&next))?;
            }
            return Ok(());
        }
        if next.is_empty() {
            return Ok(());
        }
        if next == token {
            return Err(ClientError::Incomplete(format!(
                "the driver returned next_token {next:?} for the page it started"
            )));
        }
        token = next;
    }
}

fn create_request(a: CreateArgs) -> Result<pb::CreateVolumeRequest, ClientError> {
    use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let source = match (a.from_snapshot, a.from_volume) {
        (Some(snapshot_id), _) => Some(Type::Snapshot(SnapshotSource { snapshot_id })),
        (None, Some(volume_id)) => Some(Type::Volume(VolumeSource { volume_id })),
        (None, None) => None,
    };
    let capacity_range = (a.size.is_some() || a.limit.is_some()).then(|| pb::CapacityRange {
        required_bytes: a.size.unwrap_or(0) as i64,
        limit_bytes: a.limit.unwrap_or(0) as i64,
    });
    let accessibility_requirements = if a.topology.is_empty() {
        None
    } else {
        let segments = to_map("--topology", a.topology)?;
        Some(pb::TopologyRequirement {
            requisite: vec![pb::Topology {
                segments: segments.clone(),
            }],
            preferred: vec![pb::Topology { segments }],
        })
    };
    Ok(pb::CreateVolumeRequest {
        name: a.name,
        capacity_range,
        volume_capabilities: vec![a.capability.capability()],
        parameters: to_map("--param", a.params)?,
        secrets: a.secrets.map()?,
        volume_content_source: source.map(|t| pb::VolumeContentSource { r#type: Some(t) }),
        accessibility_requirements,
        mutable_parameters: Default::default(),
    })
}

async fn client(connection: &Connection) -> Result<ControllerClient<Channel>, ClientError> {
    Ok(ControllerClient::new(connection.channel().await?))
}

/// A volume with the status ListVolumes or ControllerGetVolume gave.
fn volume_item(
    volume: Option<pb::Volume>,
    status: Option<(&[String], Option<&pb::VolumeCondition>)>,
) -> Result<Item, ClientError> {
    let volume = required(volume, "volume")?;
    Ok(match status {
        Some((nodes, condition)) => output::volume(&volume, Some(nodes), condition),
        None => output::volume(&volume, None, None),
    })
}

pub async fn run<W: Write>(
    command: Command,
    connection: &Connection,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    let item = match command {
        Command::Create(a) => {
            let request = create_request(a)?;
            let r = client(connection).await?.create_volume(request).await?;
            volume_item(r.into_inner().volume, None)?
        }
        Command::Delete { id, secrets } => {
            let request = pb::DeleteVolumeRequest {
                volume_id: id.clone(),
                secrets: secrets.map()?,
            };
            client(connection).await?.delete_volume(request).await?;
            output::done("deleted", &[("volume_id", &id)])
        }
        Command::List(page) => {
            let client = client(connection).await?;
            return pages(page, out, |max_entries, starting_token| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_volumes(pb::ListVolumesRequest {
                            max_entries,
                            starting_token,
                        })
                        .await?
                        .into_inner();
                    let items = r
                        .entries
                        .into_iter()
                        .map(|e| {
                            let status = e.status.as_ref().map(|s| {
                                (s.published_node_ids.as_slice(), s.volume_condition.as_ref())
                            });
                            volume_item(e.volume, status)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((items, r.next_token))
                }
            })
            .await;
        }
        Command::Get { id } => {
            let request = pb::ControllerGetVolumeRequest { volume_id: id };
            let r = client(connection)
                .await?
                .controller_get_volume(request)
                .await?
                .into_inner();
            let status = r
                .status
                .as_ref()
                .map(|s| (s.published_node_ids.as_slice(), s.volume_condition.as_ref()));
            volume_item(r.volume, status)?
        }
        Command::Publish {
            id,
            node,
            readonly,
            capability,
            context,
            secrets,
        } => {
            let request = pb::ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: node.clone(),
                volume_capability: Some(capability.capability()),
                readonly,
                secrets: secrets.map()?,
                volume_context: to_map("--context", context)?,
            };
            let r = client(connection)
                .await?
                .controller_publish_volume(request)
                .await?;
            output::controller_published(&id, &node, r.get_ref())
        }
        Command::Unpublish { id, node, secrets } => {
            let request = pb::ControllerUnpublishVolumeRequest {
                volume_id: id.clone(),
                node_id: node.clone().unwrap_or_default(),
                secrets: secrets.map()?,
            };
            client(connection)
                .await?
                .controller_unpublish_volume(request)
                .await?;
            output::done(
                "unpublished",
                &[
                    ("volume_id", &id),
                    ("node_id", node.as_deref().unwrap_or("")),
                ],
            )
        }
        Command::Validate {
            id,
            capability,
            context,
            params,
            secrets,
        } => {
            let request = pb::ValidateVolumeCapabilitiesRequest {
                volume_id: id.clone(),
                volume_context: to_map("--context", context)?,
                volume_capabilities: vec![capability.capability()],
                parameters: to_map("--param", params)?,
                secrets: secrets.map()?,
                mutable_parameters: Default::default(),
            };
            let r = client(connection)
                .await?
                .validate_volume_capabilities(request)
                .await?;
            output::validated(&id, r.get_ref())
        }
        Command::Expand {
            id,
            size,
            limit,
            capability,
            secrets,
        } => {
            let request = pb::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: size as i64,
                    limit_bytes: limit.unwrap_or(0) as i64,
                }),
                secrets: secrets.map()?,
                volume_capability: capability.optional(),
            };
            let r = client(connection)
                .await?
                .controller_expand_volume(request)
                .await?
                .into_inner();
            output::expanded(&id, r.capacity_bytes, Some(r.node_expansion_required))
        }
        Command::Capacity {
            capability,
            params,
            topology,
        } => {
            let accessible_topology = if topology.is_empty() {
                None
            } else {
                Some(pb::Topology {
                    segments: to_map("--topology", topology)?,
                })
            };
            let request = pb::GetCapacityRequest {
                volume_capabilities: capability.optional().into_iter().collect(),
                parameters: to_map("--param", params)?,
                accessible_topology,
            };
            let r = client(connection).await?.get_capacity(request).await?;
            output::capacity(r.get_ref())
        }
        Command::Capabilities => {
            let r = client(connection)
                .await?
                .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
                .await?;
            output::controller_capabilities(r.get_ref())
        }
        Command::Snapshot(command) => return snapshot(command, connection, out).await,
    };
    out.emit(item)?;
    Ok(())
}

async fn snapshot<W: Write>(
    command: SnapshotCommand,
    connection: &Connection,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    let item = match command {
        SnapshotCommand::Create {
            name,
            volume,
            params,
            secrets,
        } => {
            let request = pb::CreateSnapshotRequest {
                source_volume_id: volume,
                name,
                secrets: secrets.map()?,
                parameters: to_map("--param", params)?,
            };
            let r = client(connection).await?.create_snapshot(request).await?;
            output::snapshot(&required(r.into_inner().snapshot, "snapshot")?)
        }
        SnapshotCommand::Delete { id, secrets } => {
            let request = pb::DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                secrets: secrets.map()?,
            };
            client(connection).await?.delete_snapshot(request).await?;
            output::done("deleted", &[("snapshot_id", &id)])
        }
        SnapshotCommand::List {
            volume,
            id,
            page,
            secrets,
        } => {
            let template = pb::ListSnapshotsRequest {
                max_entries: 0,
                starting_token: String::new(),
                source_volume_id: volume.unwrap_or_default(),
                snapshot_id: id.unwrap_or_default(),
                secrets: secrets.map()?,
            };
            let client = client(connection).await?;
            return pages(page, out, |max_entries, starting_token| {
                let mut client = client.clone();
                let request = pb::ListSnapshotsRequest {
                    max_entries,
                    starting_token,
                    ..template.clone()
                };
                async move {
                    let r = client.list_snapshots(request).await?.into_inner();
                    let items = r
                        .entries
                        .into_iter()
                        .map(|e| required(e.snapshot, "snapshot").map(|s| output::snapshot(&s)))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((items, r.next_token))
                }
            })
            .await;
        }
    };
    out.emit(item)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("controller").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn create_requests_carry_every_flag() {
        let Command::Create(a) = parse(&[
            "create",
            "pvc-1",
            "--size",
            "1Gi",
            "--fs",
            "xfs",
            "--mode",
            "single-node-multi-writer",
            "--param",
            "multicsi.io/mkfs-inode-size=512",
            "--from-snapshot",
            "hps-1",
            "--secret",
            "k=v",
        ])
        .unwrap() else {
            panic!("not a create command");
        };
        let r = create_request(a).unwrap();
        assert_eq!(r.name, "pvc-1");
        assert_eq!(
            r.capacity_range,
            Some(pb::CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0
            })
        );
        assert_eq!(r.parameters["multicsi.io/mkfs-inode-size"], "512");
        assert_eq!(r.secrets["k"], "v");
        assert_eq!(r.volume_capabilities.len(), 1);
        assert!(matches!(
            r.volume_content_source.and_then(|s| s.r#type),
            Some(pb::volume_content_source::Type::Snapshot(s)) if s.snapshot_id == "hps-1"
        ));
        assert_eq!(r.accessibility_requirements, None);
    }

    #[test]
    fn create_without_size_sends_no_range() {
        let Command::Create(a) = parse(&["create", "pvc-1", "--block"]).unwrap() else {
            panic!("not a create command");
        };
        let r = create_request(a).unwrap();
        assert_eq!(r.capacity_range, None);
        assert!(matches!(
            r.volume_capabilities[0].access_type,
            Some(pb::volume_capability::AccessType::Block(_))
        ));
    }

    #[test]
    fn conflicting_flags_are_usage_errors() {
        for args in [
            &["create", "v", "--block", "--fs", "ext4"][..],
            &["create", "v", "--from-snapshot", "s", "--from-volume", "v"],
            &["create", "v", "--size", "1.5Gi"],
            &["create", "v", "--param", "novalue"],
            &["create", "v", "--mode", "everyone"],
            &["list", "--max", "-1"],
            &["expand", "v"],
            &["publish", "v"],
        ] {
            assert!(parse(args).is_err(), "{args:?} passed");
        }
        let Command::Create(a) =
            parse(&["create", "v", "--param", "a=1", "--param", "a=2"]).unwrap()
        else {
            panic!("not a create command");
        };
        assert!(matches!(create_request(a), Err(ClientError::Usage(_))));
    }
}
