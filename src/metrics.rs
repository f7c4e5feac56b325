//! The driver's Prometheus metrics: the recording API every module calls.
//!
//! Recording is cheap and never fails; the exporter (the HTTP listener on
//! `--metrics-address`, see [`endpoint`]) reads what was recorded. Label
//! values must come from a small fixed set (method names, provider
//! operations, status codes), never from volume IDs or other unbounded input.

pub mod endpoint;
mod process;
mod registry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use registry::{Counter, Histogram};

/// Latency buckets in seconds, shared by RPCs, cloud calls and node operations:
/// from a cached answer (milliseconds) to a slow cloud attach (minutes).
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

static CSI_REQUESTS: Counter = Counter::new(
    "multicsi_csi_requests_total",
    "CSI RPCs answered, by method and gRPC code.",
    &["method", "code"],
);
static CSI_DURATION: Histogram = Histogram::new(
    "multicsi_csi_request_duration_seconds",
    "Time from receiving a CSI RPC to answering it, by method and gRPC code.",
    &["method", "code"],
    SECONDS_BUCKETS,
);
static CSI_ABORTED: Counter = Counter::new(
    "multicsi_csi_aborted_total",
    "CSI RPCs answered ABORTED because an operation on the same volume or snapshot was in flight.",
    &["method"],
);
static CLOUD_REQUESTS: Counter = Counter::new(
    "multicsi_cloud_requests_total",
    "HTTP requests to a cloud API, by provider, operation and HTTP status (error: no answer).",
    &["provider", "operation", "status"],
);
static CLOUD_DURATION: Histogram = Histogram::new(
    "multicsi_cloud_request_duration_seconds",
    "Duration of one HTTP request to a cloud API, by provider and operation.",
    &["provider", "operation"],
    SECONDS_BUCKETS,
);
static CLOUD_ERRORS: Counter = Counter::new(
    "multicsi_cloud_request_errors_total",
    "Cloud API requests that failed: HTTP status 4xx or 5xx, or error when no answer came.",
    &["provider", "operation", "status"],
);
static CLOUD_THROTTLED: Counter = Counter::new(
    "multicsi_cloud_throttled_total",
    "Cloud API requests answered 429 Too Many Requests.",
    &["provider", "operation"],
);
static CLOUD_RETRIES: Counter = Counter::new(
    "multicsi_cloud_retries_total",
    "Cloud API requests sent again, by reason: 5xx, 429 or connection.",
    &["provider", "operation", "reason"],
);
static NODE_OPS: Counter = Counter::new(
    "multicsi_node_operations_total",
    "Operations on the node's host (attach, mkfs, mount, grow, ...), by operation and result.",
    &["operation", "result"],
);
static NODE_DURATION: Histogram = Histogram::new(
    "multicsi_node_operation_duration_seconds",
    "Duration of operations on the node's host, by operation and result.",
    &["operation", "result"],
    SECONDS_BUCKETS,
);

/// Files the hostpath backend keeps aside (images and records its journal
/// does not name), counted at start.
static KEPT_ASIDE: Mutex<Option<u64>> = Mutex::new(None);

/// The backend this process serves, for the build-info metric.
static BACKEND: OnceLock<String> = OnceLock::new();

/// RPCs in flight: id -> (method, start). Methods ever seen stay listed
/// (with 0 in flight) so the gauge does not vanish between calls.
struct InFlight {
    calls: BTreeMap<u64, (&'static str, Instant)>,
    methods: BTreeMap<&'static str, ()>,
}

static IN_FLIGHT: Mutex<InFlight> = Mutex::new(InFlight {
    calls: BTreeMap::new(),
    methods: BTreeMap::new(),
});
static NEXT_CALL: AtomicU64 = AtomicU64::new(0);

fn in_flight() -> std::sync::MutexGuard<'static, InFlight> {
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Times one CSI RPC: counts it in flight until `finish` is called. Dropped
/// without `finish` (the client went away and the call was cancelled), it
/// counts as `Cancelled`.
pub struct RpcTimer {
    method: &'static str,
    started: Instant,
    id: u64,
    finished: bool,
}

/// Starts timing a CSI RPC, e.g. `rpc_started("CreateVolume")`.
pub fn rpc_started(method: &'static str) -> RpcTimer {
    let id = NEXT_CALL.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let mut table = in_flight();
    table.calls.insert(id, (method, started));
    table.methods.insert(method, ());
    RpcTimer {
        method,
        started,
        id,
        finished: false,
    }
}

impl RpcTimer {
    /// Records the RPC's outcome by its gRPC code.
    pub fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        self.finished = true;
        in_flight().calls.remove(&self.id);
        let code = code_name(code);
        CSI_REQUESTS.inc(&[self.method, code]);
        CSI_DURATION.observe(&[self.method, code], self.started.elapsed().as_secs_f64());
        if code == "Aborted" {
            CSI_ABORTED.inc(&[self.method]);
        }
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        if !self.finished {
            self.record(tonic::Code::Cancelled);
        }
    }
}

/// Records one call to a cloud API: `status` is the HTTP status code as
/// text, or `error` for a transport failure.
pub fn cloud_call(provider: &'static str, operation: &'static str, status: &str, seconds: f64) {
    CLOUD_REQUESTS.inc(&[provider, operation, status]);
    CLOUD_DURATION.observe(&[provider, operation], seconds);
    let failed = status == "error" || status.starts_with('4') || status.starts_with('5');
    if failed {
        CLOUD_ERRORS.inc(&[provider, operation, status]);
    }
    if status == "429" {
        CLOUD_THROTTLED.inc(&[provider, operation]);
    }
}

/// Records that a cloud call is retried; `reason` is `5xx`, `429` or `connection`.
pub fn cloud_retry(provider: &'static str, operation: &'static str, reason: &'static str) {
    CLOUD_RETRIES.inc(&[provider, operation, reason]);
}

/// Times a node operation (`attach`, `discover`, `luks_format`, `luks_open`,
/// `luks_close`, `luks_resize`, `mkfs`, `mount`, `grow`, ...), recording its
/// duration and whether it succeeded.
pub fn node_op<T, E>(operation: &'static str, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let started = Instant::now();
    let result = work();
    let outcome = if result.is_ok() { "success" } else { "error" };
    NODE_OPS.inc(&[operation, outcome]);
    NODE_DURATION.observe(&[operation, outcome], started.elapsed().as_secs_f64());
    result
}

/// Records how many files the hostpath backend keeps aside.
pub fn set_kept_aside(files: u64) {
    *KEPT_ASIDE.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
}

/// Names the backend in the build-info metric; the first call wins.
pub fn set_backend(name: &str) {
    let _ = BACKEND.set(name.to_string());
}

/// The gRPC code's canonical name, as gRPC libraries print it (`OK`,
/// `InvalidArgument`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Every metric in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::with_capacity(8192);
    let backend = BACKEND.get().map(String::as_str).unwrap_or("");
    registry::write_family(
        &mut out,
        "multicsi_build_info",
        "Always 1; the labels name the driver's version and backend.",
        "gauge",
    );
    registry::write_sample(
        &mut out,
        "multicsi_build_info",
        &["version", "backend"],
        &[env!("CARGO_PKG_VERSION"), backend],
        1.0,
    );
    CSI_REQUESTS.render(&mut out);
    CSI_DURATION.render(&mut out);
    CSI_ABORTED.render(&mut out);
    render_in_flight(&mut out);
    CLOUD_REQUESTS.render(&mut out);
    CLOUD_DURATION.render(&mut out);
    CLOUD_ERRORS.render(&mut out);
    CLOUD_THROTTLED.render(&mut out);
    CLOUD_RETRIES.render(&mut out);
    NODE_OPS.render(&mut out);
    NODE_DURATION.render(&mut out);
    let kept_aside = *KEPT_ASIDE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(files) = kept_aside {
        let name = "multicsi_hostpath_kept_aside_files";
        registry::write_family(
            &mut out,
            name,
            "Images and records of the hostpath state that its journal did not name at start: moved to the kept-aside directory, never deleted; an operator decides.",
            "gauge",
        );
        registry::write_sample(&mut out, name, &[], &[] as &[&str], files as f64);
    }
    process::render(&mut out);
    out
}

fn render_in_flight(out: &mut String) {
    let now = Instant::now();
    let mut per_method: BTreeMap<&'static str, (u64, f64)> = BTreeMap::new();
    {
        let table = in_flight();
        for method in table.methods.keys() {
            per_method.insert(method, (0, 0.0));
        }
        for (method, started) in table.calls.values() {
            let entry = per_method.entry(method).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 = entry.1.max(now.duration_since(*started).as_secs_f64());
        }
    }
    if per_method.is_empty() {
        return;
    }
    let name = "multicsi_csi_requests_in_flight";
    registry::write_family(
        out,
        name,
        "CSI RPCs being worked on now, by method.",
        "gauge",
    );
    for (method, (count, _)) in &per_method {
        registry::write_sample(out, name, &["method"], &[method], *count as f64);
    }
    let name = "multicsi_csi_oldest_in_flight_seconds";
    registry::write_family(
        out,
        name,
        "Age of the oldest CSI RPC still being worked on, by method (0 when none).",
        "gauge",
    );
    for (method, (_, oldest)) in &per_method {
        registry::write_sample(out, name, &["method"], &[method], *oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one sample line of a scrape, found by its exact prefix.
    fn sample(scrape: &str, series: &str) -> Option<f64> {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn rpcs_are_counted_timed_and_tracked_in_flight() {
        let timer = rpc_started("TestMethodA");
        let during = render();
        assert_eq!(
            sample(
                &during,
                "multicsi_csi_requests_in_flight{method=\"TestMethodA\"}"
            ),
            Some(1.0)
        );
        timer.finish(tonic::Code::Aborted);
        rpc_started("TestMethodA").finish(tonic::Code::Ok);
        drop(rpc_started("TestMethodA"));
        let after = render();
        let get = |series: &str| sample(&after, series);
        assert_eq!(
            get("multicsi_csi_requests_in_flight{method=\"TestMethodA\"}"),
            Some(0.0)
        );
        assert_eq!(
            get("multicsi_csi_requests_total{method=\"TestMethodA\",code=\"Aborted\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("multicsi_csi_requests_total{method=\"TestMethodA\",code=\"OK\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("multicsi_csi_requests_total{method=\"TestMethodA\",code=\"Canceled\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("multicsi_csi_aborted_total{method=\"TestMethodA\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("multicsi_csi_request_duration_seconds_count{method=\"TestMethodA\",code=\"OK\"}"),
            Some(1.0)
        );
        assert_eq!(
            get(
                "multicsi_csi_request_duration_seconds_bucket{method=\"TestMethodA\",code=\"OK\",le=\"+Inf\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn cloud_calls_split_into_errors_and_throttles() {
        cloud_call("testcloud", "list_things", "200", 0.02);
        cloud_call("testcloud", "list_things", "429", 0.01);
        cloud_call("testcloud", "list_things", "503", 0.01);
        cloud_call("testcloud", "list_things", "error", 3.0);
        cloud_retry("testcloud", "list_things", "429");
        let scrape = render();
        let get = |series: &str| sample(&scrape, series);
        let labels = "provider=\"testcloud\",operation=\"list_things\"";
        assert_eq!(
            get(&format!(
                "multicsi_cloud_requests_total{{{labels},status=\"200\"}}"
            )),
            Some(1.0)
        );
        assert_eq!(
            get(&format!("multicsi_cloud_throttled_total{{{labels}}}")),
            Some(1.0)
        );
        assert_eq!(
            get(&format!(
                "multicsi_cloud_request_errors_total{{{labels},status=\"200\"}}"
            )),
            None
        );
        for status in ["429", "503", "error"] {
            assert_eq!(
                get(&format!(
                    "multicsi_cloud_request_errors_total{{{labels},status=\"{status}\"}}"
                )),
                Some(1.0),
                "{status}"
            );
        }
        assert_eq!(
            get(&format!(
                "multicsi_cloud_retries_total{{{labels},reason=\"429\"}}"
            )),
            Some(1.0)
        );
        assert_eq!(
            get(&format!(
                "multicsi_cloud_request_duration_seconds_count{{{labels}}}"
            )),
            Some(4.0)
        );
        // 0.01, 0.01 and 0.02 are at most 0.025 s; the 3 s transport error is not.
        assert_eq!(
            get(&format!(
                "multicsi_cloud_request_duration_seconds_bucket{{{labels},le=\"0.025\"}}"
            )),
            Some(3.0)
        );
    }

    #[test]
    fn node_operations_record_their_result() {
        let ok: Result<u32, String> = node_op("test_op", || Ok(7));
        assert_eq!(ok, Ok(7));
        let failed: Result<u32, String> = node_op("test_op", || Err("no".into()));
        assert!(failed.is_err());
        let scrape = render();
        for result in ["success", "error"] {
            assert_eq!(
                sample(
                    &scrape,
                    &format!(
                        "multicsi_node_operations_total{{operation=\"test_op\",result=\"{result}\"}}"
                    )
                ),
                Some(1.0)
            );
        }
    }

    /// The metric names in README's table (first column of the rows that
    /// follow the `| metric | type | labels | meaning |` header).
    fn documented_metrics() -> std::collections::BTreeSet<String> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("| metric | type | labels | meaning |")
            .nth(1)
            .expect("README has a metrics table");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .flat_map(|line| {
                let first = line.split('|').nth(1).unwrap_or_default();
                first
                    .split(',')
                    .map(|name| name.trim().trim_matches('`').to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_exported_family_is_documented_in_the_readme() {
        rpc_started("TestMethodDoc").finish(tonic::Code::Aborted);
        cloud_call("testdoc", "op", "429", 0.1);
        cloud_retry("testdoc", "op", "429");
        let _: Result<(), ()> = node_op("test_doc", || Ok(()));
        let scrape = render();
        let exported: std::collections::BTreeSet<String> = scrape
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_string)
            .collect();
        assert_eq!(exported, documented_metrics());
    }

    #[test]
    fn build_info_and_process_metrics_are_present() {
        let scrape = render();
        assert!(scrape.contains(&format!(
            "multicsi_build_info{{version=\"{}\",",
            env!("CARGO_PKG_VERSION")
        )));
        let rss = sample(&scrape, "process_resident_memory_bytes").expect("rss");
        assert!(rss > 0.0);
        let fds = sample(&scrape, "process_open_fds").expect("open fds");
        assert!(fds >= 3.0);
        assert!(sample(&scrape, "process_cpu_seconds_total").is_some());
    }
}
