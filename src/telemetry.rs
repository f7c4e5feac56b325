//! Logging: JSON lines for containers, text on a terminal. Every event inside
//! an RPC carries its spans: `request` (request id, node id) and the RPC's own
//! span (named after the method, with the volume id).

use std::borrow::Cow;
use std::io::IsTerminal;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
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
        LogFormat::Text => output.fmt_fields(EscapedFields).with_filter(filter).boxed(),
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

/// Fields of text logs as the default formatter writes them, with control
/// characters escaped (`\n`, `\u{1b}`): a request field (a volume name
/// with a newline) cannot end its line and forge another. JSON logs escape
/// by their format.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut plain = String::new();
        DefaultFields::new().format_fields(Writer::new(&mut plain), fields)?;
        writer.write_str(&escape_controls(&plain))
    }
}

/// `text` with every control character written as its escape.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_characters_in_fields_cannot_forge_a_line() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_ansi(false)
                .fmt_fields(EscapedFields)
                .with_writer(move || writer.clone()),
        );
        let name = "pvc-1\n2026-01-01T00:00:00Z  INFO forged: volume deleted\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("CreateVolume", volume_name = %name);
            let _entered = span.enter();
            tracing::info!(error = %format!("bad name {name}"), "failed");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("pvc-1\\n2026-01-01"), "{text}");
    }

    #[test]
    fn plain_text_is_kept() {
        assert!(matches!(escape_controls("plain text"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\tb\r"), "a\\tb\\r");
    }
}
