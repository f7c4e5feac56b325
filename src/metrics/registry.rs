//! A small registry: labelled counters and histograms behind one mutex per
//! family, written out in the Prometheus text exposition format.
//!
//! The driver records a few values per RPC; a mutex per family costs far
//! less than the RPC itself and keeps the registry a few hundred bytes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};

/// Label values of one series, in the order of the family's label names.
type Key = Vec<String>;

fn key(values: &[&str]) -> Key {
    values.iter().map(|v| v.to_string()).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A family of counters.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Key, u64>>,
}

impl Counter {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Counter {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, values: &[&str]) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        *lock(&self.series).entry(key(values)).or_insert(0) += 1;
    }

    pub fn render(&self, out: &mut String) {
        let series = lock(&self.series);
        if series.is_empty() {
            return;
        }
        write_family(out, self.name, self.help, "counter");
        for (values, count) in series.iter() {
            write_sample(out, self.name, self.labels, values, *count as f64);
        }
    }
}

/// A family of histograms with fixed buckets.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    series: Mutex<BTreeMap<Key, Observations>>,
}

#[derive(Default)]
struct Observations {
    /// Observations per bucket (not cumulative); one more for +Inf.
    per_bucket: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Histogram {
            name,
            help,
            labels,
            buckets,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, values: &[&str], value: f64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let mut series = lock(&self.series);
        let entry = series.entry(key(values)).or_default();
        if entry.per_bucket.is_empty() {
            entry.per_bucket = vec![0; self.buckets.len() + 1];
        }
        let slot = self
            .buckets
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.buckets.len());
        entry.per_bucket[slot] += 1;
        entry.sum += value;
        entry.count += 1;
    }

    pub fn render(&self, out: &mut String) {
        let series = lock(&self.series);
        if series.is_empty() {
            return;
        }
        write_family(out, self.name, self.help, "histogram");
        let bucket_name = format!("{}_bucket", self.name);
        let mut bucket_labels: Vec<&str> = self.labels.to_vec();
        bucket_labels.push("le");
        for (values, obs) in series.iter() {
            let mut cumulative = 0;
            for (i, count) in obs.per_bucket.iter().enumerate() {
                cumulative += count;
                let bound = match self.buckets.get(i) {
                    Some(bound) => bound.to_string(),
                    None => "+Inf".to_string(),
                };
                let mut bucket_values: Vec<&str> = values.iter().map(String::as_str).collect();
                bucket_values.push(&bound);
                let value = cumulative as f64;
                write_sample(out, &bucket_name, &bucket_labels, &bucket_values, value);
            }
            let labels = self.labels;
            write_sample(out, &format!("{}_sum", self.name), labels, values, obs.sum);
            let count = obs.count as f64;
            write_sample(out, &format!("{}_count", self.name), labels, values, count);
        }
    }
}

/// Writes the HELP and TYPE lines of a family.
pub fn write_family(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line: `name{label="value",...} number`.
pub fn write_sample<V: AsRef<str>>(
    out: &mut String,
    name: &str,
    labels: &[&str],
    values: &[V],
    value: f64,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value.as_ref());
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        static H: Histogram = Histogram::new("t_seconds", "Test.", &["op"], &[0.1, 1.0]);
        H.observe(&["a"], 0.05);
        H.observe(&["a"], 0.5);
        H.observe(&["a"], 7.0);
        let mut out = String::new();
        H.render(&mut out);
        let expected = "# HELP t_seconds Test.\n# TYPE t_seconds histogram\n\
            t_seconds_bucket{op=\"a\",le=\"0.1\"} 1\n\
            t_seconds_bucket{op=\"a\",le=\"1\"} 2\n\
            t_seconds_bucket{op=\"a\",le=\"+Inf\"} 3\n\
            t_seconds_sum{op=\"a\"} 7.55\n\
            t_seconds_count{op=\"a\"} 3\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        write_sample(&mut out, "m", &["l"], &["a\"b\\c\nd"], 1.0);
        assert_eq!(out, "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn empty_families_are_not_written() {
        static C: Counter = Counter::new("t_total", "Test.", &["op"]);
        let mut out = String::new();
        C.render(&mut out);
        assert_eq!(out, "");
        C.inc(&["x"]);
        C.inc(&["x"]);
        C.render(&mut out);
        assert!(out.ends_with("t_total{op=\"x\"} 2\n"), "{out}");
    }
}
