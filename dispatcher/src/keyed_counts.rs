//! How many of something each key holds at once (event streams per caller, webhook
//! attempts per target), counted by guards that give their count back when dropped, so a
//! task that ends in any way (done, failed, cancelled, panicked) leaves the count right.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

/// Counts per key. Cheap to clone; clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct KeyedCounts(Arc<Mutex<HashMap<String, usize>>>);

/// One unit of a key's count, held until dropped.
#[derive(Debug)]
pub struct Counted {
    counts: KeyedCounts,
    key: String,
}

impl KeyedCounts {
    /// Counts one more for `key`.
    pub fn enter(&self, key: &str) -> Counted {
        *self.lock().entry(key.to_owned()).or_default() += 1;
        Counted { counts: self.clone(), key: key.to_owned() }
    }

    /// Counts one more for `key` if it holds fewer than `limit`; `None` if it holds that many.
    pub fn enter_below(&self, key: &str, limit: usize) -> Option<Counted> {
        let mut counts = self.lock();
        let count = counts.entry(key.to_owned()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        drop(counts);
        Some(Counted { counts: self.clone(), key: key.to_owned() })
    }

    /// What `key` holds now.
    pub fn count(&self, key: &str) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// Every key holding anything, and how much.
    pub fn snapshot(&self) -> Vec<(String, usize)> {
        self.lock().iter().map(|(key, n)| (key.clone(), *n)).collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // Counts change by one under the lock: a panic elsewhere leaves them whole.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_goes_up_per_guard_and_back_when_each_is_dropped() {
        let counts = KeyedCounts::default();
        let a1 = counts.enter("a");
        let a2 = counts.enter_below("a", 2).expect("a holds 1 of 2");
        assert!(counts.enter_below("a", 2).is_none(), "a holds its 2");
        let _b = counts.enter("b");
        let mut snapshot = counts.snapshot();
        snapshot.sort();
        assert_eq!(snapshot, [("a".to_owned(), 2), ("b".to_owned(), 1)]);
        drop((a1, a2));
        assert_eq!(counts.count("a"), 0);
        assert!(counts.snapshot().iter().all(|(key, _)| key != "a"), "an emptied key is forgotten");
    }
}
