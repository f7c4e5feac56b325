//! `multicsi serve`: builds the driver from its settings and serves it on a
//! unix socket or TCP endpoint until SIGTERM/SIGINT, letting in-flight calls
//! finish.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::stat::{Mode, umask};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::config::{Endpoint, ServeArgs, Settings};
use crate::csi::controller_server::ControllerServer;
use crate::csi::group_controller_server::GroupControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::csi::snapshot_metadata_server::SnapshotMetadataServer;
use crate::driver::Driver;
use crate::{metrics, telemetry};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Setup(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Entry point of `multicsi serve`.
pub fn main(args: ServeArgs) -> ExitCode {
    let settings = match Settings::resolve(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("multicsi serve: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format, &settings.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_stack_size(256 * 1024)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("multicsi serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server stopped");
            eprintln!("multicsi serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves the driver until a shutdown signal arrives.
pub async fn serve(settings: Settings) -> Result<(), ServeError> {
    let driver = Arc::new(Driver::new(&settings).await.map_err(ServeError::Setup)?);
    metrics::set_backend(&settings.backend);
    let metrics_task = match settings.metrics_address {
        Some(addr) => {
            let (listener, local) = metrics::endpoint::bind(addr).await.map_err(|e| {
                ServeError::Setup(format!("cannot listen for metrics on {addr}: {e}"))
            })?;
            tracing::info!(address = %local, "metrics listening");
            Some(tokio::spawn(metrics::endpoint::serve(
                listener,
                driver.clone(),
            )))
        }
        None => None,
    };
    let node_id = settings.node_id.clone();
    let mut builder = Server::builder().trace_fn(move |request| request_span(request, &node_id));
    let mut router = builder.add_service(IdentityServer::from_arc(driver.clone()));
    if settings.mode.serves_controller() {
        router = router.add_service(ControllerServer::from_arc(driver.clone()));
    }
    if driver.serves_group_controller() {
        router = router.add_service(GroupControllerServer::from_arc(driver.clone()));
    }
    if settings.mode.serves_node() {
        router = router.add_service(NodeServer::from_arc(driver.clone()));
    }
    // Served beside the controller for a backend that computes block
    // metadata; elsewhere it answers UNIMPLEMENTED with the reason.
    router = router.add_service(SnapshotMetadataServer::from_arc(driver.clone()));
    tracing::info!(
        endpoint = %settings.endpoint,
        mode = ?settings.mode,
        backend = %settings.backend,
        node_id = %settings.node_id,
        driver = %settings.driver_name,
        version = env!("CARGO_PKG_VERSION"),
        "serving"
    );
    match &settings.endpoint {
        Endpoint::Unix(path) => {
            let listener = bind_unix(path)?;
            let result = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
                .await;
            let _ = std::fs::remove_file(path);
            result?;
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Setup(format!("cannot listen on {addr}: {e}")))?;
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
                .await?;
        }
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The span of one gRPC request: a request id unique in this process and the
/// id of the node this process runs on. The RPC's own span (named after the
/// method, with the volume id) is created inside it.
fn request_span(request: &axum::http::Request<()>, node_id: &str) -> tracing::Span {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    tracing::info_span!("request", request_id = id, node_id, path = %request.uri().path())
}

/// Binds the unix socket: a stale socket left by a dead process is removed,
/// a live one or a non-socket file is refused; the socket is made 0600.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            ServeError::Setup(format!(
                "cannot create socket directory {}: {e}",
                parent.display()
            ))
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::Setup(format!(
                    "another process is serving on {}; stop it or choose another --endpoint",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                ServeError::Setup(format!(
                    "cannot remove stale socket {}: {e}",
                    path.display()
                ))
            })?;
            tracing::info!(path = %path.display(), "removed stale socket");
        }
        Ok(_) => {
            return Err(ServeError::Setup(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        Err(_) => {}
    }
    // The socket is created with the process umask: tighten it around bind so
    // the socket never exists with wider permissions.
    let old_mask = umask(Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    umask(old_mask);
    let listener = listener
        .map_err(|e| ServeError::Setup(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServeError::Setup(format!("cannot chmod {}: {e}", path.display())))?;
    Ok(listener)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGINT");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight calls"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight calls"),
    }
}
