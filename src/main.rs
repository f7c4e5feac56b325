use std::process::ExitCode;

use clap::{Parser, Subcommand};
use multicsi::{client, config, server};

/// multicsi: one Kubernetes CSI driver for hostpath, cloudscale.ch, Civo and Packet.
#[derive(Parser)]
#[command(name = "multicsi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CSI services (identity, controller, node) on an endpoint.
    Serve(config::ServeArgs),
    /// Speak CSI to a driver's socket (any CSI driver).
    Client(client::ClientArgs),
    /// Check this node's prerequisites for the configured backend.
    Doctor(multicsi::doctor::DoctorArgs),
    /// Rebuild a lost or damaged hostpath state journal from the records
    /// kept beside the images (the server must be stopped).
    Recover(multicsi::backend::hostpath::RecoverArgs),
    /// Attach or detach an iSCSI volume by hand (node diagnostics, tests).
    #[command(hide = true)]
    Iscsi(multicsi::node::iscsi_cmd::IscsiArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => server::main(args),
        Command::Doctor(args) => multicsi::doctor::main(args),
        Command::Recover(args) => multicsi::backend::hostpath::recover_main(args),
        Command::Iscsi(args) => multicsi::node::iscsi_cmd::run(args),
        Command::Client(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("multicsi: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(client::run(args))
        }
    }
}
