//! Opens a gRPC channel to a CSI endpoint: a unix socket or TCP.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::ClientError;

/// Where the driver listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket path.
    Unix(String),
    /// `host:port`.
    Tcp(String),
}

/// Parses `unix:///path`, `unix:/path`, a bare absolute path, or
/// `tcp://host:port`.
pub fn parse_endpoint(text: &str) -> Result<Target, ClientError> {
    let usage = || {
        ClientError::Usage(format!(
            "endpoint {text:?}: expected unix:///path/to/csi.sock or tcp://HOST:PORT"
        ))
    };
    if let Some(path) = text
        .strip_prefix("unix://")
        .or_else(|| text.strip_prefix("unix:"))
    {
        return if path.is_empty() {
            Err(usage())
        } else {
            Ok(Target::Unix(path.to_string()))
        };
    }
    if text.starts_with('/') {
        return Ok(Target::Unix(text.to_string()));
    }
    if let Some(address) = text.strip_prefix("tcp://") {
        let valid = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        return if valid {
            Ok(Target::Tcp(address.to_string()))
        } else {
            Err(usage())
        };
    }
    Err(usage())
}

/// How to reach the driver. Commands check their input first and connect
/// only then, so a usage error never waits for a driver.
#[derive(Debug, Clone)]
pub struct Connection {
    endpoint: String,
    timeout: Option<Duration>,
}

impl Connection {
    pub fn new(endpoint: &str, timeout: Option<Duration>) -> Result<Self, ClientError> {
        parse_endpoint(endpoint)?;
        Ok(Connection {
            endpoint: endpoint.to_string(),
            timeout,
        })
    }

    pub async fn channel(&self) -> Result<Channel, ClientError> {
        connect(&self.endpoint, self.timeout).await
    }
}

/// Connects, waiting at most `timeout` (None: the system's limits).
pub async fn connect(text: &str, timeout: Option<Duration>) -> Result<Channel, ClientError> {
    let uri = match parse_endpoint(text)? {
        Target::Unix(path) => format!("unix://{path}"),
        Target::Tcp(address) => format!("http://{address}"),
    };
    let fail = |e: &dyn std::error::Error| ClientError::Connect {
        endpoint: text.to_string(),
        reason: error_chain(e),
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|e| fail(&e))?;
    if let Some(timeout) = timeout {
        endpoint = endpoint.connect_timeout(timeout);
    }
    endpoint.connect().await.map_err(|e| fail(&e))
}

/// An error with its causes, e.g. `transport error: No such file or directory (os error 2)`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///csi/csi.sock").unwrap(),
            Target::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            parse_endpoint("unix:/csi/csi.sock").unwrap(),
            Target::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            parse_endpoint("/csi/csi.sock").unwrap(),
            Target::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:10000").unwrap(),
            Target::Tcp("127.0.0.1:10000".into())
        );
        assert_eq!(
            parse_endpoint("tcp://csi.example:10000").unwrap(),
            Target::Tcp("csi.example:10000".into())
        );
        for bad in [
            "",
            "unix://",
            "tcp://",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "csi.sock",
            "http://x:1",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(ClientError::Usage(_))),
                "{bad:?} passed"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = connect(&format!("unix://{}", path.display()), None)
            .await
            .unwrap_err();
        assert_eq!(err.code_name(), "Unavailable");
        let text = err.to_string();
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(text.contains("none.sock"), "{text}");
    }
}
