//! Gateway metrics in Prometheus text: requests by status, rejections by reason, tokens in
//! all, and — only with `--metrics-tenant-labels` — tokens per org and per run. Anyone who
//! can reach the admin port reads these, so org ids, run ids and each org's usage are off
//! by default (issue 12 item 17). Per-run series are dropped once the run's TraT has
//! expired, so their number stays bounded by the runs alive.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::usage::Usage;

#[derive(Default, Clone, Copy)]
struct Tokens {
    input: u64,
    output: u64,
    cache_creation: u64,
    cache_read: u64,
    requests: u64,
}

impl Tokens {
    fn add(&mut self, u: &Usage) {
        self.input += u.input_tokens;
        self.output += u.output_tokens;
        self.cache_creation += u.cache_creation_input_tokens;
        self.cache_read += u.cache_read_input_tokens;
        self.requests += 1;
    }
}

#[derive(Default)]
struct Inner {
    by_status: BTreeMap<u16, u64>,
    rejections: BTreeMap<&'static str, u64>,
    dlp: BTreeMap<(String, &'static str), u64>,
    all: Tokens,
    orgs: BTreeMap<String, Tokens>,
    runs: HashMap<String, (String, Tokens, u64)>, // txn → (org, tokens, keep until)
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Whether per-org and per-run series (tenant labels) are kept and rendered.
    pub tenant_labels: bool,
    pub in_flight: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Metrics with or without per-org and per-run series.
    pub fn new(tenant_labels: bool) -> Self {
        Self { tenant_labels, ..Self::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request(&self, status: u16) {
        *self.lock().by_status.entry(status).or_default() += 1;
    }

    pub fn rejection(&self, reason: &'static str) {
        *self.lock().rejections.entry(reason).or_default() += 1;
    }

    pub fn dlp(&self, rule: &str, action: &'static str) {
        *self.lock().dlp.entry((rule.to_owned(), action)).or_default() += 1;
    }

    pub fn tokens(&self, org: &str, txn: &str, keep_until: u64, usage: &Usage) {
        let mut inner = self.lock();
        inner.all.add(usage);
        if !self.tenant_labels {
            return;
        }
        inner.orgs.entry(org.to_owned()).or_default().add(usage);
        let run = inner
            .runs
            .entry(txn.to_owned())
            .or_insert_with(|| (org.to_owned(), Tokens::default(), 0));
        run.1.add(usage);
        run.2 = run.2.max(keep_until);
    }

    pub fn prune(&self, now: u64) {
        self.lock().runs.retain(|_, (_, _, keep)| *keep > now);
    }

    pub fn render(&self, out: &mut String) {
        let inner = self.lock();
        out.push_str("# HELP sanctum_gateway_requests_total Requests answered, by HTTP status.\n");
        out.push_str("# TYPE sanctum_gateway_requests_total counter\n");
        for (status, n) in &inner.by_status {
            let _ = writeln!(out, "sanctum_gateway_requests_total{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP sanctum_gateway_rejections_total Requests the gateway refused, by failed check.\n");
        out.push_str("# TYPE sanctum_gateway_rejections_total counter\n");
        for (reason, n) in &inner.rejections {
            let _ = writeln!(out, "sanctum_gateway_rejections_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str("# HELP sanctum_gateway_dlp_matches_total DLP matches, by rule and action.\n");
        out.push_str("# TYPE sanctum_gateway_dlp_matches_total counter\n");
        for ((rule, action), n) in &inner.dlp {
            let _ = writeln!(
                out,
                "sanctum_gateway_dlp_matches_total{{rule=\"{}\",action=\"{action}\"}} {n}",
                escape(rule)
            );
        }
        let kinds = |t: &Tokens| {
            [
                ("input", t.input),
                ("output", t.output),
                ("cache_creation", t.cache_creation),
                ("cache_read", t.cache_read),
            ]
        };
        out.push_str("# HELP sanctum_gateway_tokens_total Tokens used, by kind.\n");
        out.push_str("# TYPE sanctum_gateway_tokens_total counter\n");
        for (kind, n) in kinds(&inner.all) {
            let _ = writeln!(out, "sanctum_gateway_tokens_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP sanctum_gateway_settled_requests_total Settled requests.\n\
             # TYPE sanctum_gateway_settled_requests_total counter\n\
             sanctum_gateway_settled_requests_total {}",
            inner.all.requests
        );
        if !self.tenant_labels {
            drop(inner);
            self.render_gauges(out);
            return;
        }
        out.push_str("# HELP sanctum_gateway_org_tokens_total Tokens used, by org and kind.\n");
        out.push_str("# TYPE sanctum_gateway_org_tokens_total counter\n");
        for (org, t) in &inner.orgs {
            for (kind, n) in kinds(t) {
                let _ = writeln!(
                    out,
                    "sanctum_gateway_org_tokens_total{{org=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(org)
                );
            }
        }
        out.push_str("# HELP sanctum_gateway_org_requests_total Settled requests, by org.\n");
        out.push_str("# TYPE sanctum_gateway_org_requests_total counter\n");
        for (org, t) in &inner.orgs {
            let _ = writeln!(
                out,
                "sanctum_gateway_org_requests_total{{org=\"{}\"}} {}",
                escape(org),
                t.requests
            );
        }
        out.push_str("# HELP sanctum_gateway_run_tokens_total Tokens used, by run (txn) and kind; runs alive only.\n");
        out.push_str("# TYPE sanctum_gateway_run_tokens_total counter\n");
        let mut runs: Vec<_> = inner.runs.iter().collect();
        runs.sort_by(|a, b| a.0.cmp(b.0));
        for (txn, (org, t, _)) in runs {
            for (kind, n) in kinds(t) {
                let _ = writeln!(
                    out,
                    "sanctum_gateway_run_tokens_total{{txn=\"{}\",org=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(txn),
                    escape(org)
                );
            }
        }
        drop(inner);
        self.render_gauges(out);
    }

    fn render_gauges(&self, out: &mut String) {
        for (name, help, v) in [
            ("sanctum_gateway_in_flight", "Requests being served now.", &self.in_flight),
            (
                "sanctum_gateway_upstream_errors_total",
                "Provider connections that failed or broke mid-stream.",
                &self.upstream_errors,
            ),
            (
                "sanctum_gateway_token_cache_hits_total",
                "Token verifications answered from the cache.",
                &self.cache_hits,
            ),
            (
                "sanctum_gateway_token_cache_misses_total",
                "Token verifications that ran the signature check.",
                &self.cache_misses,
            ),
        ] {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_off_by_default() {
        let m = Metrics::default();
        m.tokens("acme", "txn-1", 100, &Usage { input_tokens: 5, ..Default::default() });
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("sanctum_gateway_tokens_total{kind=\"input\"} 5"), "{out}");
        assert!(out.contains("sanctum_gateway_in_flight 0"), "{out}");
        assert!(!out.contains("acme") && !out.contains("txn-1"), "{out}");
    }

    #[test]
    fn renders_and_prunes() {
        let m = Metrics::new(true);
        m.request(200);
        m.rejection("svid_expired");
        m.dlp("jwt", "block");
        m.tokens(
            "acme",
            "t\"1",
            100,
            &Usage { input_tokens: 5, output_tokens: 7, ..Default::default() },
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("sanctum_gateway_requests_total{status=\"200\"} 1"));
        assert!(out.contains("sanctum_gateway_rejections_total{reason=\"svid_expired\"} 1"));
        assert!(out.contains("sanctum_gateway_org_tokens_total{org=\"acme\",kind=\"output\"} 7"));
        assert!(out.contains("txn=\"t\\\"1\""));
        m.prune(101);
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains("sanctum_gateway_run_tokens_total{"));
        assert!(out.contains("org=\"acme\""));
    }
}
