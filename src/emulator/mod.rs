//! Emulators of the clouds' REST APIs and metadata services, served by the
//! `multicsi-emulator` binary. Each provider module keeps the cloud's state,
//! walks volumes through the cloud's asynchronous states and answers with
//! the cloud's own payloads and error bodies; this module adds what every
//! emulator shares: fault injection and the HTTP server.

pub mod civo;
pub mod cloudscale;
pub mod devices;
pub mod faults;
pub mod packet;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use devices::DeviceHost;
pub use faults::{Fault, Faults};

/// Everything a provider's emulator is built from.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where attached volumes appear as block devices; None = API only.
    pub devices: Option<DeviceHost>,
    /// How long an asynchronous state change (creating -> available,
    /// attaching -> attached) takes, in milliseconds.
    pub transition_ms: u64,
}

/// Where an emulator reports its fault counters (see `faults::Counts`).
pub const STATS_PATH: &str = "/_emulator/stats";

/// The error body a provider answers an injected fault with.
pub type ErrorBody = fn(status: u16) -> String;

/// Serves `app` on `listener`, injecting `faults` in front of it, until
/// the listener fails. A `Fault::Drop` closes the connection without an
/// answer.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    faults: Arc<Faults>,
    error_body: ErrorBody,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let app = app.clone();
        let faults = faults.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let app = app.clone();
                let faults = faults.clone();
                async move { answer(app, &faults, error_body, request).await }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    app: Router,
    faults: &Faults,
    error_body: ErrorBody,
    request: hyper::Request<Incoming>,
) -> Result<axum::response::Response, std::io::Error> {
    if request.uri().path() == STATS_PATH {
        let body = serde_json::to_string(faults.counts()).unwrap_or_default();
        return Ok(axum::http::Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .expect("static response parts are valid"));
    }
    let fault = faults.decide(request.uri().path());
    if let Some(latency) = faults.latency() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Fault::None => {}
        Fault::Drop => {
            return Err(std::io::Error::other(
                "connection dropped (fault injection)",
            ));
        }
        Fault::Status(status) => {
            let mut builder = axum::http::Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if status == 429 {
                builder = builder.header("retry-after", faults.retry_after_secs().to_string());
            }
            return Ok(builder
                .body(axum::body::Body::from(error_body(status)))
                .expect("static response parts are valid"));
        }
    }
    let request = request.map(axum::body::Body::new);
    let response: Result<_, Infallible> = app.oneshot(request).await;
    Ok(response.unwrap_or_else(|never| match never {}))
}

/// Removes the records whose deletion has finished (`gone_at` in the past)
/// and returns their keys: what a cloud still shows as `deleting` until then.
pub fn remove_finished<T>(
    records: &mut std::collections::BTreeMap<String, T>,
    gone_at: impl Fn(&T) -> Option<std::time::Instant>,
) -> Vec<String> {
    let now = std::time::Instant::now();
    let gone: Vec<String> = records
        .iter()
        .filter(|(_, r)| gone_at(r).is_some_and(|t| t <= now))
        .map(|(key, _)| key.clone())
        .collect();
    for key in &gone {
        records.remove(key);
    }
    gone
}

/// A random version-4 UUID, the form of every cloud's resource IDs.
pub fn random_uuid(rng: &mut fastrand::Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}
