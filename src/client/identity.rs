//! `multicsi client identity ...`

use std::io::Write;

use clap::Subcommand;

use super::ClientError;
use super::connect::Connection;
use super::output::{self, Printer};
use crate::csi as pb;
use crate::csi::identity_client::IdentityClient;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The driver's name, version and manifest (GetPluginInfo).
    Info,
    /// What the plugin offers (GetPluginCapabilities).
    Capabilities,
    /// Whether the driver is ready (Probe).
    Probe,
}

pub async fn run<W: Write>(
    command: Command,
    connection: &Connection,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    let mut client = IdentityClient::new(connection.channel().await?);
    let item = match command {
        Command::Info => {
            let r = client.get_plugin_info(pb::GetPluginInfoRequest {}).await?;
            output::plugin_info(r.get_ref())
        }
        Command::Capabilities => {
            let r = client
                .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
                .await?;
            output::plugin_capabilities(r.get_ref())
        }
        Command::Probe => {
            let r = client.probe(pb::ProbeRequest {}).await?;
            output::probe(r.get_ref())
        }
    };
    out.emit(item)?;
    Ok(())
}
