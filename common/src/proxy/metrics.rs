//! [`ProxyMetrics`]: lock-free counters of one proxy, rendered as Prometheus text for the
//! admin port's `/metrics`. Every binary gives its own metric-name prefix.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;

/// Status codes counted under their own label; the rest count as `other`.
const STATUSES: [u16; 17] =
    [200, 201, 204, 400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504, 529];
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

const ERROR_KINDS: [(UpstreamErrorKind, &str); 3] = [
    (UpstreamErrorKind::Connect, "connect"),
    (UpstreamErrorKind::Timeout, "timeout"),
    (UpstreamErrorKind::Protocol, "protocol"),
];

/// Counters of one proxy: requests by status, upstream errors by kind, requests in flight
/// (a streaming response counts until its last byte is sent or the client goes away) and a
/// histogram of the time to the response head.
#[derive(Debug)]
pub struct ProxyMetrics {
    prefix: &'static str,
    by_status: [AtomicU64; STATUSES.len() + 1],
    upstream_errors: [AtomicU64; 3],
    in_flight: Arc<AtomicI64>,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicI64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl ProxyMetrics {
    /// Metrics named `<prefix>_requests_total`, `<prefix>_upstream_errors_total`,
    /// `<prefix>_in_flight`, `<prefix>_response_head_seconds`.
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            by_status: Default::default(),
            upstream_errors: Default::default(),
            in_flight: Arc::new(AtomicI64::new(0)),
            buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn start(&self) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// Counts one answered request and the time it took to produce its head.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        let i = STATUSES.iter().position(|&s| s == status.as_u16()).unwrap_or(STATUSES.len());
        self.by_status[i].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        for (bucket, &le) in self.buckets.iter().zip(&BUCKETS) {
            if secs <= le {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Counts one failure to reach or hear from the upstream.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        let i = ERROR_KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        self.upstream_errors[i].fetch_add(1, Relaxed);
    }

    /// Requests (including streaming responses) in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    /// Requests answered with `status` so far.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        let i = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len());
        self.by_status[i].load(Relaxed)
    }

    /// Appends the Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let p = self.prefix;
        let _ = writeln!(out, "# HELP {p}_requests_total Requests answered, by HTTP status.");
        let _ = writeln!(out, "# TYPE {p}_requests_total counter");
        for (i, counter) in self.by_status.iter().enumerate() {
            let n = counter.load(Relaxed);
            match STATUSES.get(i) {
                Some(code) => {
                    let _ = writeln!(out, "{p}_requests_total{{status=\"{code}\"}} {n}");
                }
                None => {
                    let _ = writeln!(out, "{p}_requests_total{{status=\"other\"}} {n}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP {p}_upstream_errors_total Failures to reach or hear from the upstream."
        );
        let _ = writeln!(out, "# TYPE {p}_upstream_errors_total counter");
        for ((_, kind), counter) in ERROR_KINDS.iter().zip(&self.upstream_errors) {
            let _ = writeln!(
                out,
                "{p}_upstream_errors_total{{kind=\"{kind}\"}} {}",
                counter.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP {p}_in_flight Requests and streaming responses in flight.");
        let _ = writeln!(out, "# TYPE {p}_in_flight gauge");
        let _ = writeln!(out, "{p}_in_flight {}", self.in_flight());
        let _ = writeln!(
            out,
            "# HELP {p}_response_head_seconds Time from request head to response head."
        );
        let _ = writeln!(out, "# TYPE {p}_response_head_seconds histogram");
        for (bucket, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "{p}_response_head_seconds_bucket{{le=\"{le}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{p}_response_head_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{p}_response_head_seconds_sum {sum}");
        let _ = writeln!(out, "{p}_response_head_seconds_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = ProxyMetrics::new("t");
        m.record(StatusCode::OK, Duration::from_micros(200));
        m.record(StatusCode::IM_A_TEAPOT, Duration::from_secs(2));
        m.upstream_error(UpstreamErrorKind::Timeout);
        let guard = m.start();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("t_requests_total{status=\"200\"} 1\n"));
        assert!(out.contains("t_requests_total{status=\"other\"} 1\n"));
        assert!(out.contains("t_upstream_errors_total{kind=\"timeout\"} 1\n"));
        assert!(out.contains("t_in_flight 1\n"));
        assert!(out.contains("t_response_head_seconds_bucket{le=\"0.00025\"} 1\n"));
        assert!(out.contains("t_response_head_seconds_count 2\n"));
        drop(guard);
        assert_eq!(m.in_flight(), 0);
    }
}
