//! `forward` mode: the zero-logic sidecar. Every request on the pod's Unix socket goes to
//! the gateway with its headers unchanged except `Host` (and the hop-by-hop headers HTTP
//! itself forbids passing on). It holds no secret and reads no configuration volume.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args as ClapArgs;
use http::{Request, Response};
use hyper::body::Incoming;
use sanctum_common::admin::{self, AdminState};
use sanctum_common::defaults;
use sanctum_common::metrics::Registry;
use sanctum_common::proxy::{
    self, Handler, Limits, ProxyBody, ProxyMetrics, Upstream, UpstreamClient,
};
use sanctum_common::telemetry::{self, LogFormat};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Unix socket to listen on (created owner-only; a stale socket is replaced).
    #[arg(long, env = "SANCTUM_LISTEN_SOCKET", default_value = defaults::LLM_SOCKET)]
    pub listen_socket: String,
    /// Gateway URL: https, verified against the system roots plus --ca-file/--ca-pem. An
    /// http URL is refused unless --allow-insecure-upstream is set.
    #[arg(long, env = "SANCTUM_UPSTREAM")]
    pub upstream: String,
    /// Accept an http:// --upstream. Every request on this hop carries both bearer tokens
    /// (the JWT-SVID and the TraT), so plain HTTP hands them to anyone on the path: only for
    /// a gateway on a network you trust (a test, the same host).
    #[arg(long, env = "SANCTUM_ALLOW_INSECURE_UPSTREAM")]
    pub allow_insecure_upstream: bool,
    /// Extra PEM CA certificates to trust for an https upstream, besides the system roots.
    #[arg(long, env = "SANCTUM_CA_FILE", conflicts_with = "ca_pem")]
    pub ca_file: Option<PathBuf>,
    /// The same as PEM text: the operator passes the gateway's CA this way, because the
    /// forwarder has no config volume.
    #[arg(long, env = "SANCTUM_CA_PEM", hide_env_values = true)]
    pub ca_pem: Option<String>,
    /// Admin address (/healthz, /readyz, /metrics); all interfaces so the kubelet's
    /// probes reach it. It serves no credential.
    #[arg(long, env = "SANCTUM_ADMIN_LISTEN", default_value = "0.0.0.0:9083")]
    pub admin_listen: SocketAddr,
    /// Seconds to connect to the gateway (TCP and TLS).
    #[arg(long, env = "SANCTUM_CONNECT_TIMEOUT", default_value_t = 5)]
    pub connect_timeout: u64,
    /// Longest silence, in seconds, inside a request or response body (no total deadline).
    #[arg(long, env = "SANCTUM_BODY_IDLE_TIMEOUT", default_value_t = 300)]
    pub body_idle_timeout: u64,
    /// Seconds an idle pooled connection to the gateway is kept (fractions allowed). Keep it
    /// below the gateway's keep-alive timeout (60 s for sanctum-gateway), so the forwarder
    /// drops a connection before the gateway closes it under a request.
    #[arg(long, env = "SANCTUM_POOL_IDLE_TIMEOUT", default_value_t = 50.0, value_parser = positive_secs)]
    pub pool_idle_timeout: f64,
    /// Seconds in-flight streams may finish after SIGTERM.
    #[arg(long, env = "SANCTUM_GRACE_PERIOD", default_value_t = 30)]
    pub grace_period: u64,
    /// Worker threads; 1 runs everything on one thread (smallest footprint).
    #[arg(long, env = "SANCTUM_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Log format: auto (JSON unless a terminal), json or text.
    #[arg(long, env = "SANCTUM_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

struct Forward {
    client: UpstreamClient,
}

impl Handler for Forward {
    type Body = ProxyBody;

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let method = req.method().clone();
        match self.client.send(req.map(ProxyBody::from)).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, %method, "gateway request failed");
                error.to_api_error("check that the gateway is up and reachable from this pod (NetworkPolicy, DNS, --upstream)").to_response()
            }
        }
    }
}

struct Admin {
    /// The process's one registry: the proxy's metrics.
    registry: Registry,
    socket: PathBuf,
}

impl AdminState for Admin {
    async fn ready(&self) -> Result<(), String> {
        // Serving as long as our socket file is in place; the gateway's own health is the
        // gateway's readiness, and a failing gateway is answered with 502 per request.
        match std::fs::symlink_metadata(&self.socket) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "the listening socket {} is gone ({e}); restart the sidecar",
                self.socket.display()
            )),
        }
    }

    fn metrics(&self) -> &Registry {
        &self.registry
    }
}

/// Refuses a plain-HTTP gateway unless `allow_insecure`: the hop carries both tokens.
/// Checked before anything is bound, so a misconfigured sidecar fails at start with one line
/// instead of sending tokens in clear.
fn check_upstream_scheme(
    upstream: &Upstream,
    raw: &str,
    allow_insecure: bool,
) -> anyhow::Result<()> {
    // Decided on the parsed URL, so `HTTP://` or any other spelling cannot slip through.
    let is_http =
        matches!(upstream, Upstream::Url { scheme, .. } if *scheme == http::uri::Scheme::HTTP);
    let upstream = raw;
    if is_http && !allow_insecure {
        anyhow::bail!(
            "refusing --upstream {upstream}: plain http would send both bearer tokens across the \
             network in clear; use the gateway's https:// URL (its CA via --ca-file or \
             SANCTUM_CA_PEM), or pass --allow-insecure-upstream \
             (SANCTUM_ALLOW_INSECURE_UPSTREAM=true) for a gateway on a trusted network"
        );
    }
    if is_http {
        tracing::warn!(
            upstream,
            "plain-http gateway allowed by --allow-insecure-upstream: tokens cross the network in clear"
        );
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let runtime =
        sanctum_common::runtime::build(args.threads).context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let limits = Limits {
        connect_timeout: Duration::from_secs(args.connect_timeout),
        body_idle_timeout: Duration::from_secs(args.body_idle_timeout),
        grace_period: Duration::from_secs(args.grace_period),
        pool_idle_timeout: Duration::from_secs_f64(args.pool_idle_timeout),
        ..Limits::default()
    };
    let mut upstream = Upstream::url(&args.upstream).context("--upstream")?;
    check_upstream_scheme(&upstream, &args.upstream, args.allow_insecure_upstream)?;
    if let Some(ca) = &args.ca_file {
        upstream = upstream.with_ca_file(ca);
    }
    if let Some(pem) = &args.ca_pem {
        upstream = upstream.with_ca_pem(pem.as_str());
    }
    let metrics = Arc::new(ProxyMetrics::new("sanctum_forwarder"));
    let client = UpstreamClient::new(upstream, &limits, metrics.clone())
        .context("cannot set up the gateway client")?;
    let socket = PathBuf::from(&args.listen_socket);
    let listener = proxy::listen::owner_only_unix(&socket)?;
    let admin_listener = admin::bind(args.admin_listen, "--admin-listen").await?;
    let admin_addr = admin_listener.local_addr().unwrap_or(args.admin_listen);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let admin_state = Arc::new(Admin { registry, socket: socket.clone() });
    tokio::spawn(admin::serve(admin_listener, admin_state, std::future::pending()));
    tracing::info!(listen_socket = %socket.display(), upstream = %args.upstream, admin = %admin_addr, "sanctum-forwarder forward ready");
    proxy::serve(
        listener,
        Arc::new(Forward { client }),
        limits,
        metrics,
        proxy::server::shutdown_signal(),
    )
    .await;
    // Leave no socket behind for the next start to mistake for a live one.
    let _ = std::fs::remove_file(&socket);
    tracing::info!("sanctum-forwarder forward stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, allow: bool) -> Result<(), String> {
        let upstream = Upstream::url(url).map_err(|e| e.to_string())?;
        check_upstream_scheme(&upstream, url, allow).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_http_gateway_needs_the_explicit_flag_in_any_spelling() {
        for url in ["http://gw:8080", "HTTP://gw:8080", "Http://gw/prefix"] {
            let err = check(url, false).unwrap_err();
            assert!(err.contains("--allow-insecure-upstream"), "{url}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
            assert!(check(url, true).is_ok(), "{url} with the flag");
        }
        assert!(check("https://gw:8443", false).is_ok());
        assert!(check("HTTPS://gw:8443", false).is_ok());
    }
}
