//! The driver's Prometheus metrics: the recording API every module calls,
//! on the `metrics` facade, exported by `metrics-exporter-prometheus`.
//!
//! Recording is cheap and never fails; before [`install`] (the server calls
//! it when `--metrics-address` is set) it does nothing. The exporter's text is
//! served by the HTTP listener (see [`endpoint`]). Label values must come from
//! a small fixed set (method names, provider operations, status codes), never
//! from volume IDs or other unbounded input.

pub mod endpoint;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, shared by RPCs, cloud calls and node operations:
/// from a cached answer (milliseconds) to a slow cloud attach (minutes).
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

const CSI_REQUESTS: &str = "multicsi_csi_requests_total";
const CSI_DURATION: &str = "multicsi_csi_request_duration_seconds";
const CSI_ABORTED: &str = "multicsi_csi_aborted_total";
const CSI_IN_FLIGHT: &str = "multicsi_csi_requests_in_flight";
const CSI_OLDEST: &str = "multicsi_csi_oldest_in_flight_seconds";
const CLOUD_REQUESTS: &str = "multicsi_cloud_requests_total";
const CLOUD_DURATION: &str = "multicsi_cloud_request_duration_seconds";
const CLOUD_ERRORS: &str = "multicsi_cloud_request_errors_total";
const CLOUD_THROTTLED: &str = "multicsi_cloud_throttled_total";
const CLOUD_RETRIES: &str = "multicsi_cloud_retries_total";
const NODE_OPS: &str = "multicsi_node_operations_total";
const NODE_DURATION: &str = "multicsi_node_operation_duration_seconds";
const LUKS_ON_PREVIOUS: &str = "multicsi_luks_volumes_on_previous_key";
const BUILD_INFO: &str = "multicsi_build_info";
const KEPT_ASIDE_FILES: &str = "multicsi_hostpath_kept_aside_files";
const GROUP_FREEZE: &str = "multicsi_group_snapshot_freeze_seconds";
/// Freeze windows of group snapshots: from a millisecond (reflinks) up.
const FREEZE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Tells the recorder what each family is.
fn describe() {
    describe_counter!(CSI_REQUESTS, "CSI RPCs answered, by method and gRPC code.");
    describe_histogram!(
        CSI_DURATION,
        "Time from receiving a CSI RPC to answering it, by method and gRPC code."
    );
    describe_counter!(
        CSI_ABORTED,
        "CSI RPCs answered ABORTED because an operation on the same volume or snapshot was in flight."
    );
    describe_gauge!(CSI_IN_FLIGHT, "CSI RPCs being worked on now, by method.");
    describe_gauge!(
        CSI_OLDEST,
        "Age of the oldest CSI RPC still being worked on, by method (0 when none)."
    );
    describe_counter!(
        CLOUD_REQUESTS,
        "HTTP requests to a cloud API, by provider, operation and HTTP status (error: no answer)."
    );
    describe_histogram!(
        CLOUD_DURATION,
        "Duration of one HTTP request to a cloud API, by provider and operation."
    );
    describe_counter!(
        CLOUD_ERRORS,
        "Cloud API requests that failed: HTTP status 4xx or 5xx, or error when no answer came."
    );
    describe_counter!(
        CLOUD_THROTTLED,
        "Cloud API requests answered 429 Too Many Requests."
    );
    describe_counter!(
        CLOUD_RETRIES,
        "Cloud API requests sent again, by reason: 5xx, 429 or connection."
    );
    describe_counter!(
        NODE_OPS,
        "Operations on the node's host (attach, mkfs, mount, grow, ...), by operation and result."
    );
    describe_histogram!(
        NODE_DURATION,
        "Duration of operations on the node's host, by operation and result."
    );
    describe_gauge!(
        LUKS_ON_PREVIOUS,
        "Staged encrypted volumes that open only with the previous key of a rotation (a slot for the new key could not be added)."
    );
    describe_gauge!(
        KEPT_ASIDE_FILES,
        "Images and records of the hostpath state that its journal did not name at start: moved to the kept-aside directory, never deleted; an operator decides."
    );
    describe_histogram!(
        GROUP_FREEZE,
        "How long a volume group snapshot held its members frozen (from the first freeze to the last thaw)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the driver's version and backend."
    );
}

/// The exporter and the process collector, once installed.
struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static EXPORTER: OnceLock<Option<Exporter>> = OnceLock::new();

/// Installs the Prometheus exporter as the process's recorder (once) and
/// returns its handle; `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    EXPORTER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(GROUP_FREEZE.into()),
                    FREEZE_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            let process = metrics_process::Collector::default();
            process.describe();
            Some(Exporter { handle, process })
        })
        .as_ref()
        .map(|e| &e.handle)
}

/// Drains what the exporter keeps between scrapes; the listener calls it
/// every few seconds so that an unscraped driver does not grow.
pub fn upkeep() {
    if let Some(Some(exporter)) = EXPORTER.get() {
        exporter.handle.run_upkeep();
    }
}

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
        counter!(CSI_REQUESTS, "method" => self.method, "code" => code).increment(1);
        histogram!(CSI_DURATION, "method" => self.method, "code" => code)
            .record(self.started.elapsed().as_secs_f64());
        if code == "Aborted" {
            counter!(CSI_ABORTED, "method" => self.method).increment(1);
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
    let status = status.to_string();
    counter!(CLOUD_REQUESTS, "provider" => provider, "operation" => operation, "status" => status.clone())
        .increment(1);
    histogram!(CLOUD_DURATION, "provider" => provider, "operation" => operation).record(seconds);
    let failed = status == "error" || status.starts_with('4') || status.starts_with('5');
    if failed {
        counter!(CLOUD_ERRORS, "provider" => provider, "operation" => operation, "status" => status.clone())
            .increment(1);
    }
    if status == "429" {
        counter!(CLOUD_THROTTLED, "provider" => provider, "operation" => operation).increment(1);
    }
}

/// Records that a cloud call is retried; `reason` is `5xx`, `429` or `connection`.
pub fn cloud_retry(provider: &'static str, operation: &'static str, reason: &'static str) {
    counter!(CLOUD_RETRIES, "provider" => provider, "operation" => operation, "reason" => reason)
        .increment(1);
}

/// Times a node operation (`attach`, `discover`, `luks_format`, `luks_open`,
/// `luks_close`, `luks_resize`, `mkfs`, `mount`, `grow`, ...), recording its
/// duration and whether it succeeded.
pub fn node_op<T, E>(operation: &'static str, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let started = Instant::now();
    let result = work();
    let outcome = if result.is_ok() { "success" } else { "error" };
    counter!(NODE_OPS, "operation" => operation, "result" => outcome).increment(1);
    histogram!(NODE_DURATION, "operation" => operation, "result" => outcome)
        .record(started.elapsed().as_secs_f64());
    result
}

/// Open LUKS mappings that only the previous key of a rotation opens.
static LUKS_ON_PREVIOUS_KEY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Records whether LUKS mapping `name` opens only with the previous key of
/// a rotation (false once it is rotated or closed).
pub fn luks_on_previous_key(name: &str, on_previous: bool) {
    let mut set = LUKS_ON_PREVIOUS_KEY
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if on_previous {
        set.insert(name.to_string());
    } else {
        set.remove(name);
    }
}

/// Records how long a group snapshot held its members frozen.
pub fn group_snapshot_frozen(seconds: f64) {
    histogram!(GROUP_FREEZE).record(seconds);
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
    let Some(handle) = install() else {
        return String::new();
    };
    let backend = BACKEND.get().cloned().unwrap_or_default();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "backend" => backend).set(1.0);
    let on_previous = LUKS_ON_PREVIOUS_KEY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    gauge!(LUKS_ON_PREVIOUS).set(on_previous as f64);
    if let Some(files) = *KEPT_ASIDE.lock().unwrap_or_else(|e| e.into_inner()) {
        gauge!(KEPT_ASIDE_FILES).set(files as f64);
    }
    record_in_flight();
    if let Some(Some(exporter)) = EXPORTER.get() {
        exporter.process.collect();
    }
    handle.render()
}

/// Sets the in-flight gauges from the table of RPCs being worked on.
fn record_in_flight() {
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
    for (method, (count, oldest)) in per_method {
        gauge!(CSI_IN_FLIGHT, "method" => method).set(count as f64);
        gauge!(CSI_OLDEST, "method" => method).set(oldest);
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
        install();
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
        install();
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
        install();
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
        install();
        rpc_started("TestMethodDoc").finish(tonic::Code::Aborted);
        cloud_call("testdoc", "op", "429", 0.1);
        cloud_retry("testdoc", "op", "429");
        let _: Result<(), ()> = node_op("test_doc", || Ok(()));
        group_snapshot_frozen(0.001);
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
