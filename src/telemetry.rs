//! Logging: JSON lines for containers, text on a terminal. Every event inside
//! an RPC carries its spans: `request` (request id, node id) and the RPC's own
//! span (named after the method, with the volume id).

use std::io::IsTerminal;

use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

/// Parses a log filter: a level, or `target=level` pairs separated by
/// commas (`info,multicsi::backend=debug`).
pub fn parse_filter(level: &str) -> Result<Targets, String> {
    level.parse::<Targets>().map_err(|e| e.to_string())
}

/// Installs the global subscriber; logs go to stderr. `level` was checked
/// by [`parse_filter`] when the settings were read.
pub fn init(format: Option<LogFormat>, level: &str) {
    let filter =
        parse_filter(level).unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let output = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let output = match format {
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => output.with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(output)
        .with(RpcSpans.with_filter(filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("multicsi::csi")
        })))
        .try_init();
}

/// Keeps the CSI adapters' spans enabled whatever the log level, so
/// [`crate::driver::Driver::call`] can read the method from the span's name
/// for the metrics; a span the log filter rejects is still not printed.
struct RpcSpans;

impl<S: tracing::Subscriber> Layer<S> for RpcSpans {}
