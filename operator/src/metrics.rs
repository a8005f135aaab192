//! The operator's Prometheus metrics, kept small and dependency-free.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct Metrics {
    reconciles_ok: AtomicU64,
    reconciles_err: AtomicU64,
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    /// (phase, reason) -> runs that reached it.
    transitions: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    pub fn reconciled(&self, ok: bool, took: Duration) {
        if ok { &self.reconciles_ok } else { &self.reconciles_err }.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bucket, le) in self.duration_buckets.iter().zip(BUCKETS) {
            if secs <= le {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn transition(&self, phase: &str, reason: &str) {
        let mut t = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        *t.entry((phase.to_owned(), reason.to_owned())).or_default() += 1;
    }

    pub fn render(&self, out: &mut String, revoked: usize) {
        let ok = self.reconciles_ok.load(Ordering::Relaxed);
        let err = self.reconciles_err.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP sanctum_operator_reconciliations_total ScannerRun reconciliations by result."
        );
        let _ = writeln!(out, "# TYPE sanctum_operator_reconciliations_total counter");
        let _ = writeln!(out, "sanctum_operator_reconciliations_total{{result=\"ok\"}} {ok}");
        let _ = writeln!(out, "sanctum_operator_reconciliations_total{{result=\"error\"}} {err}");
        let _ = writeln!(
            out,
            "# HELP sanctum_operator_reconcile_duration_seconds Time per reconciliation."
        );
        let _ = writeln!(out, "# TYPE sanctum_operator_reconcile_duration_seconds histogram");
        for (bucket, le) in self.duration_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "sanctum_operator_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.duration_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "sanctum_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.duration_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "sanctum_operator_reconcile_duration_seconds_sum {sum}");
        let _ = writeln!(out, "sanctum_operator_reconcile_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP sanctum_operator_run_transitions_total ScannerRuns that reached a phase, by reason."
        );
        let _ = writeln!(out, "# TYPE sanctum_operator_run_transitions_total counter");
        for ((phase, reason), n) in
            self.transitions.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            let _ = writeln!(
                out,
                "sanctum_operator_run_transitions_total{{phase=\"{phase}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sanctum_operator_revoked_txns Transaction tokens on the revoked list."
        );
        let _ = writeln!(out, "# TYPE sanctum_operator_revoked_txns gauge");
        let _ = writeln!(out, "sanctum_operator_revoked_txns {revoked}");
    }
}
