//! `multicsi client group-snapshot ...`: the GroupController service.

use std::io::Write;

use clap::Subcommand;
use tonic::transport::Channel;

use super::args::{SecretArgs, parse_key_value, to_map};
use super::connect::Connection;
use super::output::{self, Printer};
use super::{ClientError, required};
use crate::csi as pb;
use crate::csi::group_controller_client::GroupControllerClient;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Snapshot several volumes at one point in time
    /// (CreateVolumeGroupSnapshot).
    Create {
        /// The group snapshot's name; the same name and volumes again
        /// return the same group snapshot.
        name: String,
        /// A volume of the group (repeat for each volume).
        #[arg(long = "volume", value_name = "VOLUME_ID", required = true)]
        volumes: Vec<String>,
        /// Group snapshot parameter, KEY=VALUE (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Delete a group snapshot and its member snapshots
    /// (DeleteVolumeGroupSnapshot).
    Delete {
        id: String,
        /// A member snapshot the driver checks the group against
        /// (repeatable; none: not checked).
        #[arg(long = "snapshot", value_name = "SNAPSHOT_ID")]
        snapshots: Vec<String>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Show a group snapshot and its members (GetVolumeGroupSnapshot).
    Get {
        id: String,
        /// A member snapshot the driver checks the group against
        /// (repeatable; none: not checked).
        #[arg(long = "snapshot", value_name = "SNAPSHOT_ID")]
        snapshots: Vec<String>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// What the group controller supports (GroupControllerGetCapabilities).
    Capabilities,
}

async fn client(connection: &Connection) -> Result<GroupControllerClient<Channel>, ClientError> {
    Ok(GroupControllerClient::new(connection.channel().await?))
}

pub async fn run<W: Write>(
    command: Command,
    connection: &Connection,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    let item = match command {
        Command::Create {
            name,
            volumes,
            params,
            secrets,
        } => {
            let request = pb::CreateVolumeGroupSnapshotRequest {
                name,
                source_volume_ids: volumes,
                secrets: secrets.map()?,
                parameters: to_map("--param", params)?,
            };
            let r = client(connection)
                .await?
                .create_volume_group_snapshot(request)
                .await?;
            output::group_snapshot(&required(r.into_inner().group_snapshot, "group_snapshot")?)
        }
        Command::Delete {
            id,
            snapshots,
            secrets,
        } => {
            let request = pb::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: id.clone(),
                snapshot_ids: snapshots,
                secrets: secrets.map()?,
            };
            client(connection)
                .await?
                .delete_volume_group_snapshot(request)
                .await?;
            output::done("deleted", &[("group_snapshot_id", &id)])
        }
        Command::Get {
            id,
            snapshots,
            secrets,
        } => {
            let request = pb::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: id,
                snapshot_ids: snapshots,
                secrets: secrets.map()?,
            };
            let r = client(connection)
                .await?
                .get_volume_group_snapshot(request)
                .await?;
            output::group_snapshot(&required(r.into_inner().group_snapshot, "group_snapshot")?)
        }
        Command::Capabilities => {
            let r = client(connection)
                .await?
                .group_controller_get_capabilities(pb::GroupControllerGetCapabilitiesRequest {})
                .await?;
            output::group_controller_capabilities(r.get_ref())
        }
    };
    out.emit(item)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn create_takes_every_volume_and_needs_one() {
        let cli =
            Cli::try_parse_from(["x", "create", "g", "--volume", "a", "--volume", "b"]).unwrap();
        match cli.command {
            Command::Create { name, volumes, .. } => {
                assert_eq!(name, "g");
                assert_eq!(volumes, ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["x", "create", "g"]).is_err());
    }
}
