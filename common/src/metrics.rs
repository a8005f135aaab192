//! Metrics through one [`Registry`] per process, from `prometheus-client` (the client the
//! Rust anchors use: kube-rs's controller-rs, Linkerd). Each binary builds its registry at
//! start-up, registers its families there, and its admin port's `/metrics` (design contract
//! "Files, ports, sockets", `shared/DESIGN.md`) answers [`encode`] of it with
//! [`CONTENT_TYPE`].
//!
//! Counters are registered without the `_total` suffix: the OpenMetrics text encoder adds it
//! (register `sanctum_bridge_requests`, scrape `sanctum_bridge_requests_total`).
//!
//! Values another part of the process already keeps (a list's length, a byte count) are read
//! at scrape time through [`FnGauge`] and [`FnCounter`] instead of being copied on every
//! change.

use std::fmt;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
pub use prometheus_client::registry::Registry;

/// Content type of [`encode`]'s output: OpenMetrics text 1.0.0, what the encoder writes
/// (`# EOF` last, counters with a `_total` suffix).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text exposition of `registry`, ending in `# EOF`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail; a metric that failed to encode would have left a
    // partial line, which a scraper then reports.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(%error, "metrics encoding failed");
    }
    out
}

/// A gauge whose value is read when scraped (a length, a byte count kept elsewhere).
pub struct FnGauge(Box<dyn Fn() -> i64 + Send + Sync>);

impl FnGauge {
    pub fn new(read: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Box::new(read))
    }
}

impl fmt::Debug for FnGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FnGauge").field(&(self.0)()).finish()
    }
}

impl TypedMetric for FnGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for FnGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&(self.0)())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A counter whose value is read when scraped (an atomic another module increments).
pub struct FnCounter(Box<dyn Fn() -> u64 + Send + Sync>);

impl FnCounter {
    pub fn new(read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Box::new(read))
    }
}

impl fmt::Debug for FnCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FnCounter").field(&(self.0)()).finish()
    }
}

impl TypedMetric for FnCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for FnCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&(self.0)(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn read_at_scrape_time_with_the_total_suffix_on_counters() {
        let n = Arc::new(AtomicU64::new(0));
        let mut registry = Registry::default();
        registry.register("t_things", "Things now.", FnGauge::new(|| 7));
        let read = n.clone();
        registry.register(
            "t_dropped",
            "Dropped.",
            FnCounter::new(move || read.load(Ordering::Relaxed)),
        );
        n.store(3, Ordering::Relaxed);
        let out = encode(&registry);
        assert!(out.contains("# TYPE t_things gauge\nt_things 7\n"), "{out}");
        assert!(out.contains("# TYPE t_dropped counter\nt_dropped_total 3\n"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
