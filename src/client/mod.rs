//! `multicsi client`: speaks CSI to any driver's socket.

use clap::Args;

/// Options of `multicsi client`.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The driver's endpoint: unix:///path/to/csi.sock or tcp://HOST:PORT.
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: String,
}

/// Runs one client command; returns the process exit code.
pub async fn run(_args: ClientArgs) -> std::process::ExitCode {
    eprintln!("multicsi client: no command given");
    std::process::ExitCode::from(2)
}
