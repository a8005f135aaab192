//! sanctum-standin: the stand-in Messages API provider as a process, for benchmarks and
//! manual runs. Prints `listening on <address>` on standard output once it accepts.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sanctum_testkit::{Provider, ProviderConfig, Refuse, Usage};

/// A stand-in Anthropic Messages API on loopback or a Unix socket.
#[derive(Parser, Debug)]
#[command(name = "sanctum-standin")]
struct Cli {
    /// Loopback TCP address, e.g. 127.0.0.1:18080.
    #[arg(long, conflicts_with = "socket")]
    listen: Option<std::net::SocketAddr>,
    /// Allow a --listen address that is not loopback: in a pod (the e2e suite, the demo) the
    /// stand-in is a Service on the cluster network.
    #[arg(long)]
    any_address: bool,
    /// Unix socket path instead of TCP.
    #[arg(long)]
    socket: Option<std::path::PathBuf>,
    /// Require a header, as 'name: value' (repeatable).
    #[arg(long = "require-header")]
    require: Vec<String>,
    /// Refuse requests carrying this string in any header value (repeatable).
    #[arg(long = "forbid-value")]
    forbid: Vec<String>,
    /// Content deltas per streamed answer.
    #[arg(long, default_value_t = 4)]
    deltas: usize,
    /// Milliseconds between SSE events.
    #[arg(long, default_value_t = 0)]
    event_delay_ms: u64,
    #[arg(long, default_value_t = 25)]
    input_tokens: u64,
    #[arg(long, default_value_t = 12)]
    output_tokens: u64,
    /// Keep no copy of requests (benchmarks).
    #[arg(long)]
    no_record: bool,
    /// `review`: play the scripted security review to requests that offer a report_finding
    /// tool (the default); `off`: always answer the plain reply.
    #[arg(long, default_value = "review", value_parser = ["review", "off"])]
    script: String,
    /// Answer every Messages API call with this HTTP status and `x-should-retry: false`
    /// (e.g. 429: the run's budget is spent).
    #[arg(long)]
    refuse: Option<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut require = Vec::new();
    for r in &cli.require {
        let (name, value) = r.split_once(':').context("--require-header wants 'name: value'")?;
        require.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let config = ProviderConfig {
        require,
        forbid_values: cli.forbid,
        deltas: cli.deltas,
        event_delay: Duration::from_millis(cli.event_delay_ms),
        usage: Usage {
            input_tokens: cli.input_tokens,
            output_tokens: cli.output_tokens,
            ..Usage::default()
        },
        record: !cli.no_record,
        review_script: cli.script == "review",
        refuse: cli.refuse.map(|status| Refuse {
            status,
            message: format!("stand-in: refused with {status} (--refuse)"),
            ..Refuse::budget_spent()
        }),
        ..ProviderConfig::default()
    };
    let provider = match (&cli.socket, cli.listen) {
        (Some(path), _) => Provider::start_unix(path, config)
            .await
            .with_context(|| format!("cannot listen on {}", path.display()))?,
        (None, Some(addr)) => {
            anyhow::ensure!(
                addr.ip().is_loopback() || cli.any_address,
                "the stand-in listens on loopback addresses only, unless --any-address (in a pod)"
            );
            Provider::start_tcp(addr, config)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?
        }
        (None, None) => anyhow::bail!("give --listen 127.0.0.1:PORT or --socket PATH"),
    };
    match provider.address() {
        sanctum_testkit::Address::Tcp(addr) => println!("listening on {addr}"),
        sanctum_testkit::Address::Unix(path) => println!("listening on {}", path.display()),
    }
    sanctum_common::proxy::server::shutdown_signal().await;
    Ok(())
}
