//! The controller's metrics, `prometheus-client` families registered in the operator's one
//! registry (built by [`crate::admin::Admin`], served on the admin port's `/metrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the reconciliation-time buckets.
const BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    phase: String,
    reason: String,
}

#[derive(Debug)]
pub struct Metrics {
    reconciliations: Family<ResultLabels, Counter>,
    /// `reconciliations{result="ok"}` and `{result="error"}`, resolved once.
    reconciles_ok: Counter,
    reconciles_err: Counter,
    duration: Histogram,
    /// Runs that reached a phase, by (phase, reason).
    transitions: Family<TransitionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciliations = Family::<ResultLabels, Counter>::default();
        let reconciles_ok = reconciliations.get_or_create_owned(&ResultLabels { result: "ok" });
        let reconciles_err = reconciliations.get_or_create_owned(&ResultLabels { result: "error" });
        Self {
            reconciliations,
            reconciles_ok,
            reconciles_err,
            duration: Histogram::new(BUCKETS),
            transitions: Family::default(),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, ok: bool, took: Duration) {
        if ok { &self.reconciles_ok } else { &self.reconciles_err }.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn transition(&self, phase: &str, reason: &str) {
        self.transitions
            .get_or_create(&TransitionLabels { phase: phase.to_owned(), reason: reason.to_owned() })
            .inc();
    }

    /// Adds `sanctum_operator_reconciliations_total{result}`,
    /// `sanctum_operator_reconcile_duration_seconds` and
    /// `sanctum_operator_run_transitions_total{phase,reason}` to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sanctum_operator_reconciliations",
            "ScannerRun reconciliations by result.",
            self.reconciliations.clone(),
        );
        registry.register(
            "sanctum_operator_reconcile_duration_seconds",
            "Time per reconciliation.",
            self.duration.clone(),
        );
        registry.register(
            "sanctum_operator_run_transitions",
            "ScannerRuns that reached a phase, by reason.",
            self.transitions.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_results_durations_and_transitions() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.reconciled(true, Duration::from_millis(20));
        m.reconciled(false, Duration::from_secs(9));
        m.transition("Succeeded", "Succeeded");
        m.transition("Succeeded", "Succeeded");
        let out = sanctum_common::metrics::encode(&registry);
        assert!(out.contains("sanctum_operator_reconciliations_total{result=\"ok\"} 1\n"), "{out}");
        assert!(
            out.contains("sanctum_operator_reconciliations_total{result=\"error\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("sanctum_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("sanctum_operator_reconcile_duration_seconds_count 2\n"), "{out}");
        assert!(
            out.contains(
                "sanctum_operator_run_transitions_total{phase=\"Succeeded\",reason=\"Succeeded\"} 2\n"
            ),
            "{out}"
        );
    }
}
