//! `multicsi client`: speaks CSI to any driver's socket, the way `csc` did.
//!
//! `multicsi client [--endpoint E] [--json] [--timeout SECS] <group> <command> [args]`
//! with the groups `identity`, `controller`, `node`, `group-snapshot` and
//! `snapshot` (the SnapshotMetadata service). Results go to stdout
//! (readable, or one JSON object per result with `--json`); errors go to
//! stderr as `error: <gRPC code>: <message>` with exit code 1, usage errors
//! exit with 2. Secrets given on the command line are never printed.

pub mod args;
pub mod connect;
pub mod controller;
pub mod group_snapshot;
pub mod identity;
pub mod metadata;
pub mod node;
pub mod output;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use connect::Connection;
use output::Printer;

/// Options of `multicsi client`.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The driver's endpoint: unix:///path/to/csi.sock or tcp://HOST:PORT.
    #[arg(long, env = "CSI_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Print one JSON object per result instead of readable lines.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after this many seconds, connecting included (0 = never).
    #[arg(long, value_name = "SECS", default_value_t = 60, global = true)]
    pub timeout: u64,
    #[command(subcommand)]
    pub group: Group,
}

/// The CSI service to call.
#[derive(Subcommand, Debug)]
pub enum Group {
    /// Identity service: plugin info, capabilities, probe.
    #[command(subcommand)]
    Identity(identity::Command),
    /// Controller service: volumes, publications, snapshots, capacity.
    #[command(subcommand)]
    Controller(controller::Command),
    /// Node service: stage, publish, stats, expand, info.
    #[command(subcommand)]
    Node(node::Command),
    /// GroupController service: volume group snapshots.
    #[command(subcommand)]
    GroupSnapshot(group_snapshot::Command),
    /// SnapshotMetadata service: allocated and changed ranges of snapshots.
    #[command(subcommand)]
    Snapshot(metadata::Command),
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line is wrong (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    /// The driver answered with an error status.
    #[error("{}", status_message(.0))]
    Rpc(tonic::Status),
    #[error("no answer within {0} s; raise --timeout if the driver needs longer")]
    Timeout(u64),
    /// The driver's answer lacks something the CSI spec requires.
    #[error("the driver's answer is incomplete: {0}")]
    Incomplete(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn status_message(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Rpc(status)
    }
}

impl ClientError {
    /// The gRPC code name printed before the message, e.g. `NotFound`.
    pub fn code_name(&self) -> String {
        match self {
            ClientError::Usage(_) => "usage".into(),
            ClientError::Connect { .. } => "Unavailable".into(),
            ClientError::Rpc(status) => format!("{:?}", status.code()),
            ClientError::Timeout(_) => "DeadlineExceeded".into(),
            ClientError::Incomplete(_) => "Internal".into(),
            ClientError::Output(_) => "output".into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// A required message field of a response.
pub(crate) fn required<T>(value: Option<T>, what: &str) -> Result<T, ClientError> {
    value.ok_or_else(|| ClientError::Incomplete(format!("{what} is missing")))
}

/// Runs one client command; returns the process exit code.
pub async fn run(args: ClientArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (e.g. `| head`) is not worth a complaint.
        Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}: {e}", e.code_name());
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(args: ClientArgs) -> Result<(), ClientError> {
    let endpoint = args.endpoint.as_deref().ok_or_else(|| {
        ClientError::Usage("no endpoint: give --endpoint or set CSI_ENDPOINT".into())
    })?;
    let limit = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    let connection = Connection::new(endpoint, limit)?;
    let mut printer = Printer::new(args.json, std::io::stdout().lock());
    let work = dispatch(args.group, &connection, &mut printer);
    match limit {
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .map_err(|_| ClientError::Timeout(args.timeout))?,
        None => work.await,
    }
}

async fn dispatch<W: Write>(
    group: Group,
    connection: &Connection,
    out: &mut Printer<W>,
) -> Result<(), ClientError> {
    match group {
        Group::Identity(command) => identity::run(command, connection, out).await,
        Group::Controller(command) => controller::run(command, connection, out).await,
        Group::Node(command) => node::run(command, connection, out).await,
        Group::GroupSnapshot(command) => group_snapshot::run(command, connection, out).await,
        Group::Snapshot(command) => metadata::run(command, connection, out).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::Args as _;
        ClientArgs::augment_args(clap::Command::new("client")).debug_assert();
    }

    #[test]
    fn errors_name_their_code() {
        let err = ClientError::from(tonic::Status::not_found("volume hp-1 does not exist"));
        assert_eq!(err.code_name(), "NotFound");
        assert_eq!(err.to_string(), "volume hp-1 does not exist");
        assert_eq!(err.exit_code(), 1);
        let err = ClientError::from(tonic::Status::already_exists(""));
        assert_eq!(err.code_name(), "AlreadyExists");
        assert!(!err.to_string().is_empty());
        assert_eq!(ClientError::Usage("x".into()).exit_code(), 2);
        assert_eq!(ClientError::Timeout(5).code_name(), "DeadlineExceeded");
        assert_eq!(
            ClientError::from(tonic::Status::invalid_argument("x")).code_name(),
            "InvalidArgument"
        );
    }
}
