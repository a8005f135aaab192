//! [`ProxyMetrics`]: the counters of one proxy, `prometheus-client` families registered in
//! the process's one registry ([`crate::metrics`]) for the admin port's `/metrics`. Every
//! binary gives its own metric-name prefix.
//!
//! Per request nothing is allocated or looked up by label: the label sets are fixed (the
//! statuses below and `other`, three error kinds), so their counters are resolved once at
//! construction and a request increments an atomic and observes one histogram.

use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Status codes counted under their own label; the rest count as `other`.
const STATUSES: [u16; 17] =
    [200, 201, 204, 400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504, 529];
/// The `status` label values, in [`STATUSES`] order, then `other`.
const STATUS_LABELS: [&str; STATUSES.len() + 1] = [
    "200", "201", "204", "400", "401", "403", "404", "405", "408", "413", "429", "431", "500",
    "502", "503", "504", "529", "other",
];
/// Upper bounds (seconds) of the latency histogram buckets: time to response head.
const BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0];

/// Kinds of upstream failure counted in `<prefix>_upstream_errors_total{kind=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The upstream could not be connected to (missing socket, refused, TLS failure).
    Connect,
    /// It did not answer in time.
    Timeout,
    /// It answered with something that is not HTTP, or closed mid-way.
    Protocol,
}

impl UpstreamErrorKind {
    const ALL: [Self; 3] = [Self::Connect, Self::Timeout, Self::Protocol];

    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Counters of one proxy: requests by status, upstream errors by kind, requests in flight
/// (a streaming response counts until its last byte is sent or the client goes away) and a
/// histogram of the time to the response head.
#[derive(Debug)]
pub struct ProxyMetrics {
    prefix: &'static str,
    requests: Family<StatusLabels, Counter>,
    /// `requests`' counters, resolved once, in [`STATUS_LABELS`] order.
    by_status: Vec<Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    /// `upstream_errors`' counters in [`UpstreamErrorKind::ALL`] order.
    by_kind: Vec<Counter>,
    in_flight: Gauge,
    response_head: Histogram,
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn status_index(status: u16) -> usize {
    STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len())
}

impl ProxyMetrics {
    /// Metrics named `<prefix>_requests_total`, `<prefix>_upstream_errors_total`,
    /// `<prefix>_in_flight`, `<prefix>_response_head_seconds` once [registered](Self::register).
    pub fn new(prefix: &'static str) -> Self {
        let requests = Family::<StatusLabels, Counter>::default();
        let by_status = STATUS_LABELS
            .iter()
            .map(|&status| requests.get_or_create_owned(&StatusLabels { status }))
            .collect();
        let upstream_errors = Family::<KindLabels, Counter>::default();
        let by_kind = UpstreamErrorKind::ALL
            .iter()
            .map(|k| upstream_errors.get_or_create_owned(&KindLabels { kind: k.label() }))
            .collect();
        Self {
            prefix,
            requests,
            by_status,
            upstream_errors,
            by_kind,
            in_flight: Gauge::default(),
            response_head: Histogram::new(BUCKETS),
        }
    }

    /// Adds these metrics to the process's registry (clones share the counts). A proxy
    /// whose metrics are never registered still counts, unseen.
    pub fn register(&self, registry: &mut Registry) {
        let p = self.prefix;
        registry.register(
            format!("{p}_requests"),
            "Requests answered, by HTTP status.",
            self.requests.clone(),
        );
        registry.register(
            format!("{p}_upstream_errors"),
            "Failures to reach or hear from the upstream.",
            self.upstream_errors.clone(),
        );
        registry.register(
            format!("{p}_in_flight"),
            "Requests and streaming responses in flight.",
            self.in_flight.clone(),
        );
        registry.register(
            format!("{p}_response_head_seconds"),
            "Time from request head to response head.",
            self.response_head.clone(),
        );
    }

    pub(crate) fn start(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts one answered request and the time it took to produce its head.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.by_status[status_index(status.as_u16())].inc();
        self.response_head.observe(elapsed.as_secs_f64());
    }

    /// Counts one failure to reach or hear from the upstream.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        let i = UpstreamErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.by_kind[i].inc();
    }

    /// Requests (including streaming responses) in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Requests answered with `status` so far.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        self.by_status[status_index(status)].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = ProxyMetrics::new("t");
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.record(StatusCode::OK, Duration::from_micros(200));
        m.record(StatusCode::IM_A_TEAPOT, Duration::from_secs(2));
        m.upstream_error(UpstreamErrorKind::Timeout);
        let guard = m.start();
        let out = crate::metrics::encode(&registry);
        assert!(out.contains("t_requests_total{status=\"200\"} 1\n"), "{out}");
        assert!(out.contains("t_requests_total{status=\"other\"} 1\n"), "{out}");
        assert!(out.contains("t_requests_total{status=\"503\"} 0\n"), "{out}");
        assert!(out.contains("t_upstream_errors_total{kind=\"timeout\"} 1\n"), "{out}");
        assert!(out.contains("t_upstream_errors_total{kind=\"connect\"} 0\n"), "{out}");
        assert!(out.contains("t_in_flight 1\n"), "{out}");
        assert!(out.contains("t_response_head_seconds_bucket{le=\"0.00025\"} 1\n"), "{out}");
        assert!(out.contains("t_response_head_seconds_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("t_response_head_seconds_count 2\n"), "{out}");
        assert_eq!(m.requests_with_status(200), 1);
        drop(guard);
        assert_eq!(m.in_flight(), 0);
    }
}
