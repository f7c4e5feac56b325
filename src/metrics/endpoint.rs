//! The metrics listener: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the process answers) and `/readyz` (readiness: the same check
//! as the Probe RPC, [`Driver::ready`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::driver::Driver;

/// Content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes of the metrics listener.
pub fn router(driver: Arc<Driver>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(driver)
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], super::render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(driver): State<Arc<Driver>>) -> (StatusCode, String) {
    match driver.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// Binds the listener; port 0 picks a free port (see the returned address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// How often the exporter's buffers are drained between scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the exporter and serves the routes on `listener` until the
/// task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, driver: Arc<Driver>) {
    super::install();
    let upkeep = tokio::spawn(async {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            super::upkeep();
        }
    });
    if let Err(e) = axum::serve(listener, router(driver)).await {
        tracing::error!(error = %e, "metrics listener failed");
    }
    upkeep.abort();
}
