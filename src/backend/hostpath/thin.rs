//! What thin volumes may still take of the state filesystem: each one's
//! capacity less what its image has allocated. The images are measured at
//! most once a second, not at every create: among thousands of thin volumes
//! a create would otherwise look at every image.
//!
//! A measurement a second old errs on the safe side as volumes are written
//! (it counts more as promised than is), and a volume not yet measured
//! counts whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::files::ImageDir;
use super::image;

/// How long a measurement of the images is used.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The allocations of thin images, as last measured.
#[derive(Clone, Default)]
pub struct ThinUse {
    measured: Arc<Mutex<Option<Measured>>>,
}

struct Measured {
    at: Instant,
    /// Allocated bytes by volume ID.
    allocated: HashMap<String, u64>,
}

impl ThinUse {
    /// Bytes the thin volumes (ID and capacity), whose images are in `dir`,
    /// may still take. Blocking: it may measure the images.
    pub fn promised(&self, dir: &ImageDir, volumes: &[(String, u64)]) -> u64 {
        let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        if measured.as_ref().is_none_or(|m| m.at.elapsed() > FRESH_FOR) {
            let allocated = volumes
                .iter()
                .map(|(id, _)| {
                    let bytes = image::allocated(&dir.image_path(id)).unwrap_or(0);
                    (id.clone(), bytes)
                })
                .collect();
            *measured = Some(Measured {
                at: Instant::now(),
                allocated,
            });
        }
        let allocated = measured.as_ref().map(|m| &m.allocated);
        volumes
            .iter()
            .map(|(id, capacity)| {
                let taken = allocated.and_then(|a| a.get(id)).copied().unwrap_or(0);
                capacity.saturating_sub(taken)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_measured_once_a_second_and_new_volumes_count_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::open(tmp.path().join("v")).unwrap();
        let mib = 1 << 20;
        image::create(&dir.image_path("a"), 4 * mib).unwrap();
        std::fs::write(dir.image_path("a"), vec![1u8; mib as usize]).unwrap();
        let thin = ThinUse::default();
        let promised = thin.promised(&dir, &[("a".into(), 4 * mib)]);
        assert_eq!(promised, 3 * mib);
        // Written since, but measured less than a second ago: the older,
        // larger promise stands.
        std::fs::write(dir.image_path("a"), vec![1u8; 2 * mib as usize]).unwrap();
        let both = [("a".into(), 4 * mib), ("b".into(), 8 * mib)];
        assert_eq!(thin.promised(&dir, &both), 3 * mib + 8 * mib);
        // A second later the images are measured again.
        thin.measured.lock().unwrap().as_mut().unwrap().at -= FRESH_FOR * 2;
        assert_eq!(thin.promised(&dir, &both), 2 * mib + 8 * mib);
    }
}
