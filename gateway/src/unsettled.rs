//! Runs with spend the state store has not recorded yet.
//!
//! When settling a request fails (Redis paused, failing over, unreachable), the charge is
//! retried until the store takes it, and the run is refused new admissions meanwhile: its
//! budget as the store sees it is too low by that charge, so admitting against it could
//! overshoot (issue 12 item 9). Only this replica knows what it owes; the other replicas
//! still see the request's reservation, which holds its tokens until its TTL.

use std::collections::HashMap;
use std::sync::Mutex;

/// Per run (`txn`), the number of charges waiting to be recorded.
#[derive(Debug, Default)]
pub struct Unsettled {
    runs: Mutex<HashMap<String, usize>>,
}

impl Unsettled {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more charge of `txn` waits to be recorded.
    pub fn hold(&self, txn: &str) {
        *self.lock().entry(txn.to_owned()).or_default() += 1;
    }

    /// One charge of `txn` was recorded.
    pub fn release(&self, txn: &str) {
        let mut runs = self.lock();
        if let Some(n) = runs.get_mut(txn) {
            *n -= 1;
            if *n == 0 {
                runs.remove(txn);
            }
        }
    }

    /// Whether `txn` has charges waiting (its admissions must wait too).
    pub fn holds(&self, txn: &str) -> bool {
        self.lock().contains_key(txn)
    }

    /// Charges waiting, over all runs (a metric; the shutdown waits for 0).
    pub fn len(&self) -> usize {
        self.lock().values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_run() {
        let u = Unsettled::default();
        u.hold("a");
        u.hold("a");
        u.hold("b");
        assert!(u.holds("a") && u.holds("b") && !u.holds("c"));
        assert_eq!(u.len(), 3);
        u.release("a");
        assert!(u.holds("a"));
        u.release("a");
        u.release("b");
        u.release("zzz");
        assert!(u.is_empty() && !u.holds("a"));
    }
}
