//! Fault injection for the emulators: added latency, a share of 5xx
//! answers, 429 bursts with Retry-After, dropped connections.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Served normally.
    None,
    /// Answered with this status (5xx or 429) without touching state.
    Status(u16),
    /// The connection is closed without an answer.
    Drop,
}

/// Fault settings; shares are fractions of all requests in [0, 1].
#[derive(Clone, Debug, Default)]
pub struct FaultSettings {
    pub latency_ms: u64,
    pub error_share: f64,
    pub throttle_share: f64,
    /// Requests answered 429 in a row once a burst starts (at least 1).
    pub throttle_burst: u32,
    pub retry_after_secs: u64,
    pub drop_share: f64,
    /// Seed of the fault generator, for repeatable runs.
    pub seed: u64,
}

/// Decides the fault of each request.
#[derive(Debug)]
pub struct Faults {
    settings: FaultSettings,
    state: Mutex<(fastrand::Rng, u32)>,
    counts: Counts,
}

/// What the emulator did with the requests so far, served on
/// `GET /_emulator/stats` (never faulted).
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub requests: AtomicU64,
    pub server_errors: AtomicU64,
    pub throttled: AtomicU64,
    pub dropped: AtomicU64,
}

impl Faults {
    pub fn new(settings: FaultSettings) -> Self {
        Faults {
            state: Mutex::new((fastrand::Rng::with_seed(settings.seed), 0)),
            settings,
            counts: Counts::default(),
        }
    }

    pub fn none() -> Self {
        Self::new(FaultSettings::default())
    }

    pub fn latency(&self) -> Option<Duration> {
        (self.settings.latency_ms > 0).then(|| Duration::from_millis(self.settings.latency_ms))
    }

    pub fn retry_after_secs(&self) -> u64 {
        self.settings.retry_after_secs
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The fault for the next request to `path`, counted.
    pub fn decide(&self, path: &str) -> Fault {
        let fault = self.roll(path);
        let c = &self.counts;
        c.requests.fetch_add(1, Ordering::Relaxed);
        match fault {
            Fault::None => {}
            Fault::Drop => _ = c.dropped.fetch_add(1, Ordering::Relaxed),
            Fault::Status(429) => _ = c.throttled.fetch_add(1, Ordering::Relaxed),
            Fault::Status(_) => _ = c.server_errors.fetch_add(1, Ordering::Relaxed),
        }
        fault
    }

    fn roll(&self, _path: &str) -> Fault {
        let s = &self.settings;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (rng, burst_left) = &mut *state;
        if *burst_left > 0 {
            *burst_left -= 1;
            return Fault::Status(429);
        }
        let roll = rng.f64();
        if roll < s.drop_share {
            return Fault::Drop;
        }
        if roll < s.drop_share + s.error_share {
            return Fault::Status([500, 502, 503][rng.usize(0..3)]);
        }
        if roll < s.drop_share + s.error_share + s.throttle_share {
            *burst_left = s.throttle_burst.max(1) - 1;
            return Fault::Status(429);
        }
        Fault::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_roughly_kept_and_repeatable() {
        let settings = FaultSettings {
            error_share: 0.10,
            throttle_share: 0.05,
            throttle_burst: 1,
            seed: 7,
            ..Default::default()
        };
        let run = || {
            let faults = Faults::new(settings.clone());
            (0..10_000)
                .map(|_| faults.decide("/v1/volumes"))
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let errors = first
            .iter()
            .filter(|f| matches!(f, Fault::Status(s) if *s >= 500))
            .count();
        let throttles = first.iter().filter(|f| **f == Fault::Status(429)).count();
        assert!((800..1200).contains(&errors), "{errors}");
        assert!((350..650).contains(&throttles), "{throttles}");
    }

    #[test]
    fn a_burst_answers_429_in_a_row() {
        let faults = Faults::new(FaultSettings {
            throttle_share: 1.0,
            throttle_burst: 3,
            ..Default::default()
        });
        for _ in 0..3 {
            assert_eq!(faults.decide("/"), Fault::Status(429));
        }
    }

    #[test]
    fn no_faults_by_default() {
        let faults = Faults::none();
        assert!((0..100).all(|_| faults.decide("/") == Fault::None));
        assert_eq!(faults.counts().requests.load(Ordering::Relaxed), 100);
        assert_eq!(faults.counts().throttled.load(Ordering::Relaxed), 0);
    }
}
