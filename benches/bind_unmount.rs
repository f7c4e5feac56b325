//! Times bind + unmount of a directory, the host work of NodePublish/NodeUnpublish for a
//! filesystem volume. Needs root. Run: `cargo bench --bench bind_unmount [-- pairs]`.

use std::time::{Duration, Instant};

use multicsi::node::mount;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn run(label: &str, pairs: usize, read_only: bool) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("source");
    let target = dir.path().join("target");
    std::fs::create_dir(&source)?;
    std::fs::create_dir(&target)?;
    let mut bind_times = Vec::with_capacity(pairs);
    let mut pair_times = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let start = Instant::now();
        mount::bind(&source, &target, read_only, &[])?;
        let bound = start.elapsed();
        mount::unmount(&target)?;
        bind_times.push(bound);
        pair_times.push(start.elapsed());
    }
    bind_times.sort();
    pair_times.sort();
    let total: Duration = pair_times.iter().sum();
    println!(
        "{label}: {pairs} pairs in {total:?}; bind p50 {:?} p99 {:?}; bind+unmount p50 {:?} p99 {:?} max {:?}",
        percentile(&bind_times, 0.5),
        percentile(&bind_times, 0.99),
        percentile(&pair_times, 0.5),
        percentile(&pair_times, 0.99),
        pair_times[pairs - 1],
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; the first number given is the pair count.
    let pairs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(1000)
        .max(1);
    run("read-write bind", pairs, false)?;
    run("read-only bind", pairs, true)?;
    Ok(())
}
