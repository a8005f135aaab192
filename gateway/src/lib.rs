//! `sanctum-gateway`: the central gateway. It checks the JWT-SVID (who is calling) and the TraT
//! (what that caller's run may do), scans the body for secrets, holds the run to its token
//! budget and request rate, adds the org's provider key, and writes one audit line per call.
//!
//! One concept per module: [`pipeline`] is the list of steps a request goes through, each a
//! small function in the module named after it; [`provider`] is what differs per LLM
//! provider (Anthropic, Amazon Bedrock); [`server`] serves the pipeline on the shared shell.

pub mod audit;
pub mod authenticate;
pub mod bedrock;
pub mod body;
pub mod budget;
pub mod config;
pub mod dlp;
pub mod fields;
pub mod forward;
pub mod gateway;
pub mod jwks;
pub mod keys;
pub mod metered;
pub mod metrics;
pub mod orgs;
pub mod pipeline;
pub mod policy;
pub mod provider;
pub mod ratelimit;
pub mod reject;
pub mod request;
pub mod revocation;
pub mod route;
pub mod server;
pub mod settle;
pub mod sources;
pub mod state;
pub mod svid;
pub use sanctum_common::tls;
pub mod tokencache;
pub mod trat;
pub mod unescape;
pub mod unsettled;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use sanctum_common::metrics::{FnCounter, FnGauge, Registry};
use sanctum_common::proxy::{Limits, ProxyMetrics, Upstream, UpstreamClient};
use sanctum_common::telemetry::{self, LogFormat};
use sanctum_common::{admin, defaults};

use self::dlp::{DlpAction, Scanner};
use self::gateway::{Gateway, Settings};
use self::keys::ProviderKeys;
use self::orgs::Orgs;
use self::provider::anthropic::Anthropic;
use self::sources::{Fetcher, JwksSource, Origin, Revocations};
use self::state::{State, Store as _};
use self::svid::{SubjectPattern, SvidPolicy};
use self::trat::TratPolicy;

/// The command line of `sanctum-gateway`.
#[derive(clap::Parser, Debug)]
#[command(name = "sanctum-gateway", version, about)]
pub struct Options {
    /// Address to listen on (all interfaces, e.g. 0.0.0.0:8443: the gateway is a Service).
    #[arg(long, env = "SANCTUM_LISTEN")]
    pub listen: SocketAddr,
    /// Provider base URL, e.g. `https://api.anthropic.com`.
    #[arg(long, env = "SANCTUM_UPSTREAM")]
    pub upstream: String,
    /// JWKS that verifies JWT-SVIDs: a file (reloaded on change) or a URL (a JWKS, or an OIDC
    /// issuer's discovery document: SPIRE OIDC provider, Kubernetes service-account issuer).
    #[arg(long, env = "SANCTUM_SVID_JWKS")]
    pub svid_jwks: String,
    /// Bearer token sent (over https only) when fetching --svid-jwks, re-read at each fetch:
    /// the Kubernetes service-account issuer's JWKS needs one, e.g.
    /// /var/run/secrets/kubernetes.io/serviceaccount/token.
    #[arg(long, env = "SANCTUM_SVID_JWKS_TOKEN_FILE")]
    pub svid_jwks_token_file: Option<PathBuf>,
    /// JWKS that verifies TraTs (the operator's, e.g. http://OPERATOR:8080/.well-known/jwks.json).
    #[arg(long, env = "SANCTUM_TRAT_JWKS")]
    pub trat_jwks: String,
    /// Directory with one file per org, `DIR/<org_id>`, holding that org's provider key.
    /// /readyz fails, naming the org, while an org served by Anthropic has no usable key (a
    /// key file empty, or none for an org the --config lists, or no key file at all).
    #[arg(long, env = "SANCTUM_KEYS_DIR")]
    pub keys_dir: PathBuf,
    /// SPIFFE trust domain of the scanners (sets the default --allowed-sub).
    #[arg(long, env = "SANCTUM_TRUST_DOMAIN", default_value = defaults::TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Audience both tokens must name.
    #[arg(long, env = "SANCTUM_AUDIENCE", default_value = defaults::GATEWAY_AUDIENCE)]
    pub audience: String,
    /// Serve TLS with this certificate chain (PEM; reloaded when it changes).
    #[arg(long, env = "SANCTUM_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, env = "SANCTUM_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Append one JSON line per request here ('-' for standard output).
    #[arg(long, env = "SANCTUM_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Budget and rate state: 'memory' (one replica) or redis://HOST:PORT[/DB] (several).
    #[arg(long, env = "SANCTUM_STATE", default_value = "memory")]
    pub state: String,
    /// The operator's revoked-run list, e.g. http://OPERATOR:8080/revoked. Without it no
    /// revocation is enforced (tokens still expire).
    #[arg(long, env = "SANCTUM_REVOKED_URL")]
    pub revoked_url: Option<String>,
    /// Gateway config file (YAML; unknown keys are refused): per org, its provider, request
    /// policy, and budget and rate defaults. Keys: `default:` (every org not listed) and
    /// `orgs: {<org_id>: …}`, each with `provider` (`anthropic`, the default: --upstream with
    /// the key in --keys-dir; or `bedrock`), `bedrock` (for provider bedrock: `region`,
    /// optional `endpoint`, `modelIds` {model the agent sends: Bedrock model id} and
    /// `credentials` with one of `secretDir` (files aws_access_key_id, aws_secret_access_key,
    /// aws_session_token) or `webIdentity` {roleArn, tokenFile, sessionName}), `models`
    /// (allowed `model` values, '*' matches any characters; default ['*']), `betas` (allowed
    /// anthropic-beta values; default ['*']), `serverTools` (provider-side tools allowed:
    /// `mcp_servers`, or a tool type without its date such as `web_search`, `web_fetch`,
    /// `code_execution`; default none), `budgetTokens`, `ratePerMinute` and `rateBurst`
    /// (defaults: the flags below). An org entry's missing keys come from `default:`.
    /// Policy refusals are 403 with x-should-retry: false. Only the query string
    /// `?beta=true` is passed to the provider.
    #[arg(long, env = "SANCTUM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Health, readiness and metrics address: a port apart from --listen, loopback only by
    /// default because /metrics tells anyone who reaches it what the gateway serves. In a
    /// pod, set it to 0.0.0.0:PORT for the kubelet's probes (it dials the pod IP) and keep
    /// the port out of the gateway's Service and NetworkPolicy ingress.
    #[arg(long, env = "SANCTUM_ADMIN_LISTEN", default_value = "127.0.0.1:9083")]
    pub admin_listen: SocketAddr,
    /// Label token metrics with org and run ids (sanctum_gateway_org_*,
    /// sanctum_gateway_run_tokens_total). Off: /metrics shows totals only, no tenant names.
    #[arg(long, env = "SANCTUM_METRICS_TENANT_LABELS")]
    pub metrics_tenant_labels: bool,

    /// JWT-SVID subjects allowed; '*' matches one path segment. Repeat or comma-separate.
    /// Default: `spiffe://<trust-domain>/scanner/*`. For ServiceAccount-token identities add
    /// e.g. 'system:serviceaccount:scan-run:*'.
    #[arg(long, env = "SANCTUM_ALLOWED_SUB", value_delimiter = ',')]
    pub allowed_sub: Vec<String>,
    /// Required TraT issuer (`iss`); any issuer whose key is in --trat-jwks when unset.
    #[arg(long, env = "SANCTUM_TRAT_ISSUER")]
    pub trat_issuer: Option<String>,
    /// Clock skew tolerated on exp/nbf, in seconds.
    #[arg(long, env = "SANCTUM_CLOCK_SKEW_SECS", default_value_t = 30)]
    pub clock_skew_secs: u64,
    /// Token budget of a run whose TraT sets no tctx.budget_tokens.
    #[arg(long, env = "SANCTUM_DEFAULT_BUDGET_TOKENS", default_value_t = 2_000_000)]
    pub default_budget_tokens: u64,
    /// Requests per minute per run (0: no limit).
    #[arg(long, env = "SANCTUM_RATE_LIMIT_PER_MINUTE", default_value_t = 120)]
    pub rate_limit_per_minute: u32,
    /// Requests a run may send at once above its rate.
    #[arg(long, env = "SANCTUM_RATE_LIMIT_BURST", default_value_t = 20)]
    pub rate_limit_burst: u32,
    /// DLP rules file (YAML or JSON) amending the built-in rules.
    #[arg(long, env = "SANCTUM_DLP_RULES")]
    pub dlp_rules: Option<PathBuf>,
    /// What a DLP match does unless its rule says: block (400) or redact.
    #[arg(long, env = "SANCTUM_DLP_ACTION", default_value = "block")]
    pub dlp_action: DlpAction,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SANCTUM_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send its whole request body once the head has arrived; a
    /// stalled body is answered 408 and its memory freed.
    #[arg(long, env = "SANCTUM_BODY_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub body_read_timeout_secs: u64,
    /// Request-body bytes one run may have in the gateway's memory at once (bodies being
    /// read or forwarded); beyond it a request is answered 429 with retry-after.
    #[arg(long, env = "SANCTUM_RUN_BODY_BYTES_IN_FLIGHT", default_value_t = 64 << 20)]
    pub run_body_bytes_in_flight: usize,
    /// Request-body bytes all runs together may have in memory at once; beyond it a request
    /// is answered 503 with retry-after.
    #[arg(long, env = "SANCTUM_BODY_BYTES_IN_FLIGHT", default_value_t = 256 << 20)]
    pub body_bytes_in_flight: usize,
    /// Most client connections open at once on --listen; one more is closed as soon as it
    /// is accepted, with a log line. Keep it below the process's file-descriptor limit (each
    /// connection can hold two: the client's and one to the provider). The admin port has
    /// its own small cap (32), so probes and scrapes can never starve this one.
    #[arg(long, env = "SANCTUM_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Extra CA certificates (PEM) for the provider, JWKS and revoked-list URLs.
    #[arg(long, env = "SANCTUM_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds between polls of --revoked-url.
    #[arg(long, env = "SANCTUM_REVOKED_POLL_SECS", default_value_t = 5)]
    pub revoked_poll_secs: u64,
    /// Refuse requests (503) when the revoked list is older than this many seconds.
    #[arg(long, env = "SANCTUM_REVOKED_MAX_AGE_SECS", default_value_t = 60)]
    pub revoked_max_age_secs: u64,
    /// Seconds between refreshes of a JWKS URL (files are checked every 2 s).
    #[arg(long, env = "SANCTUM_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,
    /// Request-body bytes counted as one input token when a request's budget reservation is
    /// made (max_tokens + body bytes / this). 3 fits English and code with room to spare
    /// (Claude averages 3.5-4 bytes per token, and JSON adds bytes but no tokens); 1 is a
    /// bound for any text. The charge is settled to the reported usage afterwards.
    #[arg(long, env = "SANCTUM_BODY_BYTES_PER_TOKEN", default_value_t = budget::BODY_BYTES_PER_TOKEN,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_bytes_per_token: u64,
    /// Seconds a budget reservation lives if its request never settles (gateway crash).
    #[arg(long, env = "SANCTUM_RESERVATION_TTL_SECS", default_value_t = 900)]
    pub reservation_ttl_secs: u64,
    /// Log format: auto, json or text.
    #[arg(long, env = "SANCTUM_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,
}

/// Runs the gateway until SIGTERM; `Err` only if it could not start (the binary reports it
/// on one line with [`sanctum_common::exit::report`]).
pub fn run(args: Options) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(main(args))
}

/// The admin port's state: the gateway, the process's one metrics registry, and the keys
/// directory the Anthropic provider reads (checked for readiness: unready while no org it
/// serves has a usable key, as the chart's NOTES promise).
struct Admin {
    gw: Arc<Gateway>,
    registry: Registry,
    keys: ProviderKeys,
    /// The last keys verdict logged, so a probe every few seconds logs only changes:
    /// `Ok(Some(why))` is ready with some orgs' keys missing.
    keys_logged: std::sync::Mutex<Option<Result<Option<String>, String>>>,
}

impl Admin {
    /// Registers the gateway's metrics: its own families, the server shell's proxy metrics
    /// (`sanctum_gateway_proxy_*`), and the sizes read at scrape time.
    fn new(gw: Arc<Gateway>, keys: ProviderKeys) -> Self {
        let mut registry = Registry::default();
        gw.metrics.register(&mut registry);
        gw.proxy_metrics.register(&mut registry);
        let size = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let g = gw.clone();
        registry.register(
            "sanctum_gateway_revoked_txns",
            "Revoked runs in the current list.",
            FnGauge::new(move || size(g.revocations.len())),
        );
        let g = gw.clone();
        registry.register(
            "sanctum_gateway_body_bytes_in_flight",
            "Request-body bytes held in memory.",
            FnGauge::new(move || size(g.inflight.held(None))),
        );
        let g = gw.clone();
        registry.register(
            "sanctum_gateway_unsettled_charges",
            "Request charges the state store has not recorded yet (retrying; their runs are \
             refused meanwhile).",
            FnGauge::new(move || size(g.unsettled.len())),
        );
        let g = gw.clone();
        registry.register(
            "sanctum_gateway_audit_dropped",
            "Audit lines that could not be written.",
            FnCounter::new(move || g.audit.dropped.load(std::sync::atomic::Ordering::Relaxed)),
        );
        Self { gw, registry, keys, keys_logged: std::sync::Mutex::new(None) }
    }

    /// Whether the Anthropic provider can serve: unready when no org it serves has a usable
    /// key ([`ProviderKeys::readiness`]). Logs the verdict when it changes, including orgs
    /// without a key while others have one (the reason names orgs and files, never a key).
    fn keys_ready(&self) -> Result<(), String> {
        let verdict = self
            .keys
            .readiness(self.gw.orgs.keyed())
            .map(|incomplete| incomplete.map(|why| why.to_string()))
            .map_err(|e| e.to_string());
        let mut logged = self.keys_logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.as_ref() != Some(&verdict) {
            match &verdict {
                Err(why) => tracing::warn!(reason = %why, "gateway unready: provider keys"),
                Ok(Some(why)) => {
                    tracing::warn!(reason = %why, "provider keys incomplete: these orgs' requests fail")
                }
                Ok(None) if logged.is_some() => tracing::info!("provider keys complete"),
                Ok(None) => {}
            }
            *logged = Some(verdict.clone());
        }
        verdict.map(drop)
    }
}

impl admin::AdminState for Admin {
    async fn ready(&self) -> Result<(), String> {
        // First, so its log line appears even while a JWKS is still loading.
        let keys = self.keys_ready();
        let gw = &self.gw;
        for source in [&gw.svid_jwks, &gw.trat_jwks] {
            if source.current().is_none() {
                let why = source.last_error.read().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(format!(
                    "{} JWKS not loaded ({})",
                    source.name,
                    why.unwrap_or_else(|| "not yet".into())
                ));
            }
        }
        if let sources::RevocationStatus::Unknown(why) = gw.revocations.status("") {
            return Err(format!("revoked list not fresh ({why})"));
        }
        for provider in gw.orgs.providers() {
            provider.ready()?;
        }
        keys?;
        gw.state.ping().await.map_err(|e| e.to_string())
    }

    fn metrics(&self) -> &Registry {
        &self.registry
    }

    fn route(&self, _path: &str) -> Option<http::Response<Full<Bytes>>> {
        None
    }
}

async fn main(args: Options) -> anyhow::Result<()> {
    let allowed = if args.allowed_sub.is_empty() {
        vec![SubjectPattern::scanners(&args.trust_domain)]
    } else {
        args.allowed_sub
            .iter()
            .map(|p| SubjectPattern::new(p.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?
    };
    let rules = match &args.dlp_rules {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --dlp-rules {}", path.display()))?;
            Some(Scanner::parse_file(&text).with_context(|| format!("in {}", path.display()))?)
        }
        None => None,
    };
    let dlp = Scanner::new(args.dlp_action, rules.as_ref())?;
    let config = match &args.config {
        Some(path) => config::ConfigFile::load(path)?,
        None => config::ConfigFile::default(),
    };
    let state = State::from_url(&args.state)?;
    let limits = Limits { max_connections: args.max_connections, ..Limits::default() };
    let proxy_metrics = Arc::new(ProxyMetrics::new("sanctum_gateway_proxy"));
    let mut upstream = Upstream::url(&args.upstream).context("invalid --upstream")?;
    if let Some(ca) = &args.ca_file {
        upstream = upstream.with_ca_file(ca);
    }
    let client = UpstreamClient::new(upstream, &limits, proxy_metrics.clone())?;
    // One cache for the provider and the readiness check.
    let keys = ProviderKeys::new(&args.keys_dir, Duration::from_secs(1));
    let anthropic = Arc::new(Anthropic::new(keys.clone(), client));
    let org_defaults = orgs::Defaults {
        budget_tokens: args.default_budget_tokens,
        rate_per_minute: args.rate_limit_per_minute,
        rate_burst: args.rate_limit_burst,
    };
    let orgs = Orgs::new(&config, org_defaults, anthropic, |org, spec| {
        let bedrock = provider::bedrock::Bedrock::new(
            org,
            spec,
            &limits,
            proxy_metrics.clone(),
            args.ca_file.as_deref(),
        )?;
        Ok(Arc::new(bedrock))
    })?;
    let fetcher = Arc::new(Fetcher::new(args.ca_file.clone()));
    let svid_jwks = Arc::new(
        JwksSource::new("svid", Origin::parse(&args.svid_jwks))
            .with_token_file(args.svid_jwks_token_file.clone()),
    );
    let trat_jwks = Arc::new(JwksSource::new("trat", Origin::parse(&args.trat_jwks)));
    let revocations = Arc::new(Revocations::new(
        args.revoked_url.clone(),
        Duration::from_secs(args.revoked_max_age_secs.max(1)),
    ));
    // First loads before serving, so the first requests do not all fail; failures here are
    // not fatal (the sources keep retrying, and /readyz says what is missing).
    tokio::join!(
        svid_jwks.refresh(&fetcher),
        trat_jwks.refresh(&fetcher),
        revocations.poll_once(&fetcher)
    );
    let jwks_every = Duration::from_secs(args.jwks_refresh_secs.max(5));
    svid_jwks.spawn_refresher(fetcher.clone(), Duration::from_secs(2), jwks_every);
    trat_jwks.spawn_refresher(fetcher.clone(), Duration::from_secs(2), jwks_every);
    revocations.spawn_poller(fetcher.clone(), Duration::from_secs(args.revoked_poll_secs.max(1)));
    if args.revoked_url.is_none() {
        tracing::warn!("no --revoked-url: ended runs stay usable until their TraT expires");
    }

    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let reloading = Arc::new(tls::ReloadingCert::new(cert.clone(), key.clone())?);
            reloading.spawn_watcher(Duration::from_secs(5));
            Some(tls::acceptor(reloading)?)
        }
        _ => None,
    };
    let audit = audit::open(args.audit_log.clone()).await?;
    let settings = Settings {
        svid: SvidPolicy { audience: args.audience.clone(), leeway: args.clock_skew_secs, allowed },
        trat: TratPolicy {
            audience: args.audience.clone(),
            issuer: args.trat_issuer.clone(),
            scope: defaults::SCOPE_LLM_MESSAGES.to_owned(),
            leeway: args.clock_skew_secs,
        },
        max_body: args.max_body_bytes,
        reservation_ttl: args.reservation_ttl_secs.max(60),
        body_bytes_per_token: args.body_bytes_per_token,
        body_read_timeout: Duration::from_secs(args.body_read_timeout_secs.max(1)),
        metrics_tenant_labels: args.metrics_tenant_labels,
    };
    let gw = Arc::new(Gateway::new(
        settings,
        svid_jwks,
        trat_jwks,
        fetcher,
        revocations,
        orgs,
        dlp,
        state,
        audit,
        proxy_metrics,
        body::InFlight::new(args.run_body_bytes_in_flight, args.body_bytes_in_flight),
    ));
    {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let now = gateway::now_unix();
                gw.state.prune(now);
                gw.metrics.prune(now);
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; choose another --listen", args.listen))?;
    let admin_listener = admin::bind(args.admin_listen, "--admin-listen").await?;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        state = gw.state.kind(),
        upstream = %args.upstream,
        "sanctum gateway serving"
    );
    let admin_state = Arc::new(Admin::new(gw.clone(), keys));
    // Said at start too, for a gateway no probe asks (docker run, a laptop).
    let _ = admin_state.keys_ready();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    }));
    server::serve(gw.clone(), listener, tls, limits, async {
        sanctum_common::proxy::server::shutdown_signal().await;
    })
    .await;
    // Charges still being retried would be lost with the process: give them the grace
    // period too.
    let deadline = tokio::time::Instant::now() + limits.grace_period;
    while !gw.unsettled.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !gw.unsettled.is_empty() {
        tracing::error!(
            charges = gw.unsettled.len(),
            "exiting with budget charges the state store never recorded"
        );
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    Ok(())
}
