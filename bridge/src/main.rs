//! sanctum-bridge: loopback HTTP proxy that adds the pod's JWT-SVID and TraT to every LLM call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sanctum_common::proxy::{self, Limits, ProxyMetrics, Upstream, UpstreamClient};
use sanctum_common::telemetry::{self, LogFormat};
use sanctum_common::{admin, defaults};

mod admin_state;
mod fetch_trat;
mod handler;
mod tokens;
mod write_trat;

/// Loopback proxy inside the agent's pod: drops any credential the client sends, adds
/// `Authorization: Bearer <JWT-SVID>` and `Txn-Token: <TraT>` (re-read from disk for every
/// request) and streams the request to the forwarder over a Unix socket.
#[derive(Parser, Debug)]
#[command(name = "sanctum-bridge", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trade the pod's projected ServiceAccount token for a TraT (the write-trat init container).
    FetchTrat(fetch_trat::Args),
    /// Copy the TraT from the mounted Secret to /run/sage/trat.jwt, owner-only (ScannerRun pods).
    WriteTrat(write_trat::Args),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Loopback address to listen on (the agent's ANTHROPIC_BASE_URL).
    #[arg(long, env = "SANCTUM_LISTEN", default_value = defaults::BRIDGE_LISTEN)]
    listen: SocketAddr,
    /// Listen on a non-loopback address anyway. Anyone who can connect then gets requests
    /// signed with the pod's identity: only for setups that isolate the port otherwise.
    #[arg(long, env = "SANCTUM_ALLOW_NON_LOOPBACK")]
    allow_non_loopback: bool,
    /// Unix socket of the forwarder.
    #[arg(long, env = "SANCTUM_UPSTREAM_SOCKET", default_value = defaults::LLM_SOCKET)]
    upstream_socket: String,
    /// JWT-SVID file, re-read on every request.
    #[arg(long, env = "SANCTUM_JWT_FILE", default_value = defaults::JWT_FILE)]
    jwt_file: String,
    /// Transaction token file, re-read on every request.
    #[arg(long, env = "SANCTUM_TRAT_FILE", default_value = defaults::TRAT_FILE)]
    trat_file: String,
    /// Admin address (/healthz, /readyz, /metrics). On all interfaces by default so the
    /// kubelet's probes reach it; it serves no credential.
    #[arg(long, env = "SANCTUM_ADMIN_LISTEN", default_value = "0.0.0.0:9082")]
    admin_listen: SocketAddr,
    /// Seconds to open a connection to the forwarder.
    #[arg(long, env = "SANCTUM_CONNECT_TIMEOUT", default_value_t = 5)]
    connect_timeout: u64,
    /// Longest silence, in seconds, inside a request or response body (no total deadline).
    #[arg(long, env = "SANCTUM_BODY_IDLE_TIMEOUT", default_value_t = 300)]
    body_idle_timeout: u64,
    /// Seconds in-flight streams may finish after SIGTERM.
    #[arg(long, env = "SANCTUM_GRACE_PERIOD", default_value_t = 30)]
    grace_period: u64,
    /// Largest request head accepted, in bytes.
    #[arg(long, env = "SANCTUM_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Worker threads; 1 (the default) runs everything on one thread: the lowest latency
    /// and footprint for one agent's calls. More help only with many concurrent clients.
    #[arg(long, env = "SANCTUM_THREADS", default_value_t = 1)]
    threads: usize,
    /// Log format: auto (JSON unless a terminal), json or text.
    #[arg(long, env = "SANCTUM_LOG_FORMAT", default_value = "auto")]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::FetchTrat(args)) => fetch_trat::run(args),
        Some(Command::WriteTrat(args)) => write_trat::run(args),
        None => serve(cli.serve),
    };
    sanctum_common::exit::report("sanctum-bridge", result)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let runtime =
        sanctum_common::runtime::build(args.threads).context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let limits = Limits {
        connect_timeout: Duration::from_secs(args.connect_timeout),
        body_idle_timeout: Duration::from_secs(args.body_idle_timeout),
        grace_period: Duration::from_secs(args.grace_period),
        max_header_bytes: args.max_header_bytes,
        ..Limits::default()
    };
    let metrics = Arc::new(ProxyMetrics::new("sanctum_bridge"));
    let client =
        UpstreamClient::new(Upstream::unix(&args.upstream_socket), &limits, metrics.clone())
            .context("cannot set up the upstream client")?;
    let jwt = tokens::TokenFile::new(
        &args.jwt_file,
        "JWT-SVID",
        "fetch-jwt (or the projected ServiceAccount token)",
        "--jwt-file",
        "Bearer ",
    );
    let trat = tokens::TokenFile::new(&args.trat_file, "TraT", "write-trat", "--trat-file", "");
    let bridge = handler::Bridge::new(jwt, trat, client);

    let listener = proxy::listen::loopback_tcp(args.listen, args.allow_non_loopback)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (--allow-non-loopback)"))?;
    let admin_listener = admin::bind(args.admin_listen, "--admin-listen").await?;
    let admin_addr = admin_listener.local_addr().unwrap_or(args.admin_listen);
    let admin_state = Arc::new(admin_state::Admin::new(bridge.clone(), &metrics));
    tokio::spawn(admin::serve(admin_listener, admin_state, std::future::pending()));

    tracing::info!(
        listen = %listener.local_addr().map_or(args.listen, |a| a),
        admin = %admin_addr,
        upstream_socket = %args.upstream_socket,
        jwt_file = %args.jwt_file,
        trat_file = %args.trat_file,
        "sanctum-bridge ready"
    );
    proxy::serve(listener, bridge, limits, metrics, proxy::server::shutdown_signal()).await;
    tracing::info!("sanctum-bridge stopped");
    Ok(())
}
