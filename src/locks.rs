//! Per-volume in-flight guard: a second call on a key that is busy gets
//! ABORTED at once, calls on different keys run in parallel.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{CsiError, CsiResult};

/// The set of keys with an operation in flight.
#[derive(Default, Clone)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Holds keys until dropped.
pub struct Guard {
    keys: Arc<Mutex<HashSet<String>>>,
    held: Vec<String>,
}

impl InFlight {
    /// Takes every key or none; a busy key gives ABORTED naming it.
    pub fn acquire(&self, keys: &[&str]) -> CsiResult<Guard> {
        let mut set = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = keys.iter().find(|k| set.contains(**k)) {
            return Err(CsiError::Aborted(format!(
                "an operation on {busy} is already in progress; retry later"
            )));
        }
        let mut held = Vec::with_capacity(keys.len());
        for key in keys {
            if set.insert((*key).to_string()) {
                held.push((*key).to_string());
            }
        }
        Ok(Guard {
            keys: self.keys.clone(),
            held,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut set = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.held {
            set.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_keys_abort_and_free_keys_pass() {
        let locks = InFlight::default();
        let a = locks.acquire(&["vol-a"]).unwrap();
        let err = match locks.acquire(&["vol-a"]) {
            Err(e) => e,
            Ok(_) => panic!("second acquire of a busy key succeeded"),
        };
        assert!(matches!(err, CsiError::Aborted(_)));
        let b = locks.acquire(&["vol-b"]).unwrap();
        // all-or-nothing: a set containing a busy key takes none of them
        assert!(locks.acquire(&["vol-c", "vol-b"]).is_err());
        assert!(locks.acquire(&["vol-c"]).is_ok());
        drop(a);
        drop(b);
        assert!(locks.acquire(&["vol-a", "vol-b"]).is_ok());
    }
}
