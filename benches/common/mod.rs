//! What the benchmarks share: waiting for a started server to answer.

use std::time::{Duration, Instant};

use multicsi::client::connect::connect;
use multicsi::csi::ProbeRequest;
use multicsi::csi::identity_client::IdentityClient;
use tonic::transport::Channel;

/// A channel to the server at `endpoint` once it answers Probe; panics
/// after 20 seconds.
pub async fn await_server(endpoint: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(channel) = connect(endpoint, Some(Duration::from_secs(1))).await
            && IdentityClient::new(channel.clone())
                .probe(ProbeRequest {})
                .await
                .is_ok()
        {
            return channel;
        }
        assert!(Instant::now() < deadline, "multicsi did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
