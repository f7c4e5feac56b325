//! What thin volumes may still take of the state filesystem: each one's
//! capacity less what its image has allocated. The sum is kept as volumes
//! come, grow and go, so a create reads it without looking at every volume;
//! the images are measured again at most once a second.
//!
//! A measurement a second old errs on the safe side as volumes are written
//! (it counts more as promised than is), and a volume not yet measured
//! counts whole.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::files::ImageDir;
use super::image;

/// How long a measurement of the images is used.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The thin volumes of the state, and what they may still take.
#[derive(Default)]
pub struct ThinVolumes {
    by_id: BTreeMap<String, Thin>,
    /// The sum of every volume's [`Thin::promised`].
    promised: u64,
    /// Told to each volume when it comes, so that a measurement is never
    /// taken for a volume of the same ID made after it started.
    next_stamp: u64,
}

#[derive(Clone, Copy)]
struct Thin {
    capacity: u64,
    /// Bytes its image had allocated when last measured.
    allocated: u64,
    stamp: u64,
}

impl Thin {
    fn promised(self) -> u64 {
        self.capacity.saturating_sub(self.allocated)
    }
}

/// A thin volume to measure: its ID and its stamp.
pub type ToMeasure = (String, u64);

/// A measured thin volume: its ID, stamp and allocated bytes.
pub type Measured = (String, u64, u64);

impl ThinVolumes {
    /// A thin volume of `capacity` bytes comes or grows.
    pub fn set(&mut self, id: &str, capacity: u64) {
        let thin = match self.take(id) {
            Some(known) => Thin { capacity, ..known },
            None => {
                self.next_stamp += 1;
                Thin {
                    capacity,
                    allocated: 0,
                    stamp: self.next_stamp,
                }
            }
        };
        self.promised += thin.promised();
        self.by_id.insert(id.to_string(), thin);
    }

    /// A volume goes (or is no longer thin).
    pub fn remove(&mut self, id: &str) {
        self.take(id);
    }

    fn take(&mut self, id: &str) -> Option<Thin> {
        let thin = self.by_id.remove(id)?;
        self.promised -= thin.promised();
        Some(thin)
    }

    /// Bytes the thin volumes may still take.
    pub fn promised(&self) -> u64 {
        self.promised
    }

    /// The volumes a measurement looks at.
    pub fn to_measure(&self) -> Vec<ToMeasure> {
        self.by_id
            .iter()
            .map(|(id, thin)| (id.clone(), thin.stamp))
            .collect()
    }

    /// Takes in a measurement, for the volumes still here as they were.
    pub fn measured(&mut self, measured: Vec<Measured>) {
        for (id, stamp, allocated) in measured {
            if let Some(thin) = self.by_id.get_mut(&id).filter(|t| t.stamp == stamp) {
                self.promised -= thin.promised();
                thin.allocated = allocated;
                self.promised += thin.promised();
            }
        }
    }
}

/// Measures the images of `volumes` in `dir` (blocking); an image that
/// cannot be measured counts as nothing allocated.
pub fn measure(dir: &ImageDir, volumes: Vec<ToMeasure>) -> Vec<Measured> {
    volumes
        .into_iter()
        .map(|(id, stamp)| {
            let allocated = image::allocated(&dir.image_path(&id)).unwrap_or(0);
            (id, stamp, allocated)
        })
        .collect()
}

/// When the images were last measured.
#[derive(Default)]
pub struct Schedule {
    last: Mutex<Option<Instant>>,
}

impl Schedule {
    /// Whether a measurement is due; when it is, it counts as taken now,
    /// so that one caller measures while the others go on.
    pub fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() <= FRESH_FOR) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_promise_follows_volumes_and_measurements() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::open(tmp.path().join("v")).unwrap();
        image::create(&dir.image_path("a"), 4 * MIB).unwrap();
        std::fs::write(dir.image_path("a"), vec![1u8; MIB as usize]).unwrap();
        let mut thin = ThinVolumes::default();
        thin.set("a", 4 * MIB);
        // Not yet measured: whole.
        assert_eq!(thin.promised(), 4 * MIB);
        let taken = measure(&dir, thin.to_measure());
        thin.measured(taken);
        assert_eq!(thin.promised(), 3 * MIB);
        // Written since: the older, larger promise stands until measured.
        std::fs::write(dir.image_path("a"), vec![1u8; 2 * MIB as usize]).unwrap();
        thin.set("b", 8 * MIB);
        assert_eq!(thin.promised(), 3 * MIB + 8 * MIB);
        // Grown: the new capacity less what was measured.
        thin.set("a", 6 * MIB);
        assert_eq!(thin.promised(), 5 * MIB + 8 * MIB);
        let taken = measure(&dir, thin.to_measure());
        thin.measured(taken);
        assert_eq!(thin.promised(), 4 * MIB + 8 * MIB);
        thin.remove("a");
        assert_eq!(thin.promised(), 8 * MIB);
    }

    #[test]
    fn a_measurement_is_never_taken_for_a_volume_made_after_it_started() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::open(tmp.path().join("v")).unwrap();
        image::create(&dir.image_path("a"), 4 * MIB).unwrap();
        std::fs::write(dir.image_path("a"), vec![1u8; 3 * MIB as usize]).unwrap();
        let mut thin = ThinVolumes::default();
        thin.set("a", 4 * MIB);
        let started = thin.to_measure();
        let taken = measure(&dir, started);
        // Deleted and made again under the same ID while it ran.
        thin.remove("a");
        thin.set("a", 4 * MIB);
        thin.measured(taken);
        assert_eq!(thin.promised(), 4 * MIB);
    }

    #[test]
    fn one_caller_measures_at_most_once_a_second() {
        let schedule = Schedule::default();
        assert!(schedule.due());
        assert!(!schedule.due());
        *schedule.last.lock().unwrap() = Some(Instant::now() - FRESH_FOR * 2);
        assert!(schedule.due());
    }
}
