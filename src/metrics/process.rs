//! Process metrics read from /proc/self at scrape time, under the names
//! Prometheus client libraries use (`process_*`).

use super::registry::{write_family, write_sample};

/// The fields of /proc/self/stat the metrics need.
#[derive(Debug, PartialEq)]
struct Stat {
    /// User plus system CPU time, in clock ticks.
    cpu_ticks: u64,
    threads: u64,
    /// Start time after boot, in clock ticks.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses /proc/self/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest starts at field 3 (state): field n is rest[n - 3].
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// Boot time in seconds since the epoch (`btime` in /proc/stat).
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid rlimit it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then_some(limit.rlim_cur)
}

fn sysconf(name: libc::c_int) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let value = unsafe { libc::sysconf(name) };
    if value > 0 { value as f64 } else { 1.0 }
}

fn gauge(out: &mut String, name: &str, help: &str, kind: &str, value: Option<f64>) {
    if let Some(value) = value {
        write_family(out, name, help, kind);
        write_sample::<&str>(out, name, &[], &[], value);
    }
}

/// Writes the process metrics; what cannot be read is left out.
pub fn render(out: &mut String) {
    let ticks = sysconf(libc::_SC_CLK_TCK);
    let page = sysconf(libc::_SC_PAGESIZE);
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| parse_stat(&text));
    let stat = stat.as_ref();
    gauge(
        out,
        "process_cpu_seconds_total",
        "User and system CPU time spent, in seconds.",
        "counter",
        stat.map(|s| s.cpu_ticks as f64 / ticks),
    );
    gauge(
        out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        stat.map(|s| s.resident_pages as f64 * page),
    );
    gauge(
        out,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        stat.map(|s| s.virtual_bytes as f64),
    );
    gauge(
        out,
        "process_threads",
        "Number of OS threads of the process.",
        "gauge",
        stat.map(|s| s.threads as f64),
    );
    gauge(
        out,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        "gauge",
        stat.zip(boot_time())
            .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / ticks),
    );
    gauge(
        out,
        "process_open_fds",
        "Number of open file descriptors.",
        "gauge",
        open_fds().map(|n| n as f64),
    );
    gauge(
        out,
        "process_max_fds",
        "Maximum number of open file descriptors.",
        "gauge",
        max_fds().map(|n| n as f64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (multi csi) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    25 17 0 0 20 0 6 0 123456 30000000 2048 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 42,
                threads: 6,
                start_ticks: 123456,
                virtual_bytes: 30000000,
                resident_pages: 2048,
            })
        );
    }

    #[test]
    fn own_stat_parses() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let stat = parse_stat(&text).expect("stat");
        assert!(stat.threads >= 1 && stat.resident_pages > 0);
    }
}
