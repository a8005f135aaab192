//! Gateway metrics, `prometheus-client` families in the gateway's one registry: rejections
//! by reason, DLP matches, tokens in all, and — only with `--metrics-tenant-labels` —
//! tokens per org and per run. Anyone who can reach the admin port reads these, so org ids,
//! run ids and each org's usage are off by default (issue 12 item 17). Per-run series are
//! dropped once the run's TraT has expired, so their number stays bounded by the runs alive.
//!
//! Requests by HTTP status are the server shell's `sanctum_gateway_proxy_requests_total`
//! ([`sanctum_common::proxy::ProxyMetrics`]), which sees every answer once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sanctum_common::metrics::{FnCounter, FnGauge};

use super::usage::Usage;

/// Token kinds, the `kind` label values, in [`kinds`] order.
const KINDS: [&str; 4] = ["input", "output", "cache_creation", "cache_read"];

fn kinds(u: &Usage) -> [u64; 4] {
    [u.input_tokens, u.output_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens]
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DlpLabels {
    rule: String,
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgKindLabels {
    org: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabels {
    org: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunKindLabels {
    txn: String,
    org: String,
    kind: &'static str,
}

pub struct Metrics {
    /// Whether per-org and per-run series (tenant labels) are kept and registered.
    pub tenant_labels: bool,
    // Plain atomics the pipeline bumps, read at scrape time (shared with the registry).
    pub in_flight: Arc<AtomicU64>,
    pub upstream_errors: Arc<AtomicU64>,
    pub cache_hits: Arc<AtomicU64>,
    pub cache_misses: Arc<AtomicU64>,
    rejections: Family<ReasonLabels, Counter>,
    dlp: Family<DlpLabels, Counter>,
    tokens: Family<KindLabels, Counter>,
    /// `tokens`' counters, resolved once, in [`KINDS`] order.
    tokens_by_kind: [Counter; 4],
    settled: Counter,
    org_tokens: Family<OrgKindLabels, Counter>,
    org_requests: Family<OrgLabels, Counter>,
    run_tokens: Family<RunKindLabels, Counter>,
    /// txn → (org, keep until): which per-run series to drop, and when.
    runs: Mutex<HashMap<String, (String, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// Metrics with or without per-org and per-run series.
    pub fn new(tenant_labels: bool) -> Self {
        let tokens = Family::<KindLabels, Counter>::default();
        let tokens_by_kind = KINDS.map(|kind| tokens.get_or_create_owned(&KindLabels { kind }));
        Self {
            tenant_labels,
            in_flight: Arc::default(),
            upstream_errors: Arc::default(),
            cache_hits: Arc::default(),
            cache_misses: Arc::default(),
            rejections: Family::default(),
            dlp: Family::default(),
            tokens,
            tokens_by_kind,
            settled: Counter::default(),
            org_tokens: Family::default(),
            org_requests: Family::default(),
            run_tokens: Family::default(),
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one refused request under its reason (a `Reason` label).
    pub fn rejection(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts one DLP match of `rule` and what was done (`block`, `redact`).
    pub fn dlp(&self, rule: &str, action: &'static str) {
        self.dlp.get_or_create(&DlpLabels { rule: rule.to_owned(), action }).inc();
    }

    /// Counts a settled request's tokens; per org and per run (until `keep_until`, unix
    /// seconds) too with tenant labels.
    pub fn tokens(&self, org: &str, txn: &str, keep_until: u64, usage: &Usage) {
        let counts = kinds(usage);
        for (counter, n) in self.tokens_by_kind.iter().zip(counts) {
            counter.inc_by(n);
        }
        self.settled.inc();
        if !self.tenant_labels {
            return;
        }
        for (kind, n) in KINDS.into_iter().zip(counts) {
            self.org_tokens.get_or_create(&OrgKindLabels { org: org.to_owned(), kind }).inc_by(n);
            self.run_tokens
                .get_or_create(&RunKindLabels { txn: txn.to_owned(), org: org.to_owned(), kind })
                .inc_by(n);
        }
        self.org_requests.get_or_create(&OrgLabels { org: org.to_owned() }).inc();
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let run = runs.entry(txn.to_owned()).or_insert_with(|| (org.to_owned(), 0));
        run.1 = run.1.max(keep_until);
    }

    /// Drops the per-run series of runs whose TraT expired by `now` (unix seconds).
    pub fn prune(&self, now: u64) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.retain(|txn, (org, keep)| {
            if *keep > now {
                return true;
            }
            for kind in KINDS {
                self.run_tokens.remove(&RunKindLabels { txn: txn.clone(), org: org.clone(), kind });
            }
            false
        });
    }

    /// Adds these metrics to the gateway's registry: the families, and the atomics read at
    /// scrape time.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sanctum_gateway_rejections",
            "Requests the gateway refused, by failed check.",
            self.rejections.clone(),
        );
        registry.register(
            "sanctum_gateway_dlp_matches",
            "DLP matches, by rule and action.",
            self.dlp.clone(),
        );
        registry.register("sanctum_gateway_tokens", "Tokens used, by kind.", self.tokens.clone());
        registry.register(
            "sanctum_gateway_settled_requests",
            "Settled requests.",
            self.settled.clone(),
        );
        if self.tenant_labels {
            registry.register(
                "sanctum_gateway_org_tokens",
                "Tokens used, by org and kind.",
                self.org_tokens.clone(),
            );
            registry.register(
                "sanctum_gateway_org_requests",
                "Settled requests, by org.",
                self.org_requests.clone(),
            );
            registry.register(
                "sanctum_gateway_run_tokens",
                "Tokens used, by run (txn) and kind; runs alive only.",
                self.run_tokens.clone(),
            );
        }
        let read = |n: &Arc<AtomicU64>| {
            let n = n.clone();
            move || n.load(Ordering::Relaxed)
        };
        let in_flight = read(&self.in_flight);
        registry.register(
            "sanctum_gateway_in_flight",
            "Requests being served now.",
            FnGauge::new(move || i64::try_from(in_flight()).unwrap_or(i64::MAX)),
        );
        registry.register(
            "sanctum_gateway_upstream_errors",
            "Provider connections that failed or broke mid-stream.",
            FnCounter::new(read(&self.upstream_errors)),
        );
        registry.register(
            "sanctum_gateway_token_cache_hits",
            "Token verifications answered from the cache.",
            FnCounter::new(read(&self.cache_hits)),
        );
        registry.register(
            "sanctum_gateway_token_cache_misses",
            "Token verifications that ran the signature check.",
            FnCounter::new(read(&self.cache_misses)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        sanctum_common::metrics::encode(&registry)
    }

    #[test]
    fn tenant_labels_are_off_by_default() {
        let m = Metrics::default();
        m.tokens("acme", "txn-1", 100, &Usage { input_tokens: 5, ..Default::default() });
        let out = scrape(&m);
        assert!(out.contains("sanctum_gateway_tokens_total{kind=\"input\"} 5"), "{out}");
        assert!(out.contains("sanctum_gateway_settled_requests_total 1"), "{out}");
        assert!(out.contains("sanctum_gateway_in_flight 0"), "{out}");
        assert!(!out.contains("acme") && !out.contains("txn-1"), "{out}");
    }

    #[test]
    fn renders_and_prunes() {
        let m = Metrics::new(true);
        m.rejection("svid_expired");
        m.dlp("jwt", "block");
        m.cache_hits.fetch_add(2, Ordering::Relaxed);
        m.tokens(
            "acme",
            "t\"1",
            100,
            &Usage { input_tokens: 5, output_tokens: 7, ..Default::default() },
        );
        let out = scrape(&m);
        assert!(out.contains("sanctum_gateway_rejections_total{reason=\"svid_expired\"} 1"));
        assert!(out.contains("sanctum_gateway_dlp_matches_total{rule=\"jwt\",action=\"block\"} 1"));
        assert!(out.contains("sanctum_gateway_token_cache_hits_total 2"), "{out}");
        assert!(out.contains("sanctum_gateway_org_tokens_total{org=\"acme\",kind=\"output\"} 7"));
        assert!(out.contains("sanctum_gateway_org_requests_total{org=\"acme\"} 1"), "{out}");
        assert!(out.contains("txn=\"t\\\"1\""), "{out}");
        m.prune(101);
        let out = scrape(&m);
        assert!(!out.contains("sanctum_gateway_run_tokens_total{"), "{out}");
        assert!(out.contains("org=\"acme\""));
    }
}
