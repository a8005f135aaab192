//! sanctum-bench: the bridge and forwarder benchmarks of issues 6 and 7, in one run, on
//! loopback, against the stand-in provider and the peers of shared/PEERS.md.
//!
//! Run it with `bench/run.sh` (builds release binaries, installs peers, runs this).
//! Every measurement is bounded in requests and time; medians over `--rounds` rounds.

mod load;
mod procs;
mod relay;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use procs::{Proc, bin, free_port};
use target::Target;

#[derive(Parser, Debug)]
#[command(name = "sanctum-bench")]
struct Cli {
    /// Rounds; every figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sequential requests per latency measurement (small body).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Sequential requests per latency measurement (100 KB body).
    #[arg(long, default_value_t = 400)]
    large_requests: usize,
    /// Seconds of saturation load per throughput measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Concurrent connections for the throughput measurement.
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Skip the Python bridge, mitmproxy and nginx (only Sanctum against direct).
    #[arg(long)]
    no_peers: bool,
    /// Only send this many sequential small requests to --drive-target and exit (used by
    /// bench/allocs.sh to count allocations per request under valgrind).
    #[arg(long)]
    drive: Option<usize>,
    /// `127.0.0.1:PORT` or a Unix socket path, for --drive.
    #[arg(long)]
    drive_target: Option<String>,
    /// Run as the bare relay (the floor subject): listen here (`127.0.0.1:PORT` or a path)…
    #[arg(long, requires = "relay_to")]
    relay_listen: Option<String>,
    /// …and relay every connection to this address or socket path.
    #[arg(long)]
    relay_to: Option<String>,
    /// Directory of the repository's bench/ folder (peers and venv).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR")))]
    bench_dir: PathBuf,
}

/// The floor subject: a bare byte relay in its own process (bench/src/relay.rs).
const FLOOR: &str = "floor: bare relay";

#[derive(Debug, Clone, Default)]
struct Row {
    small: load::Latency,
    large: load::Latency,
    rps: f64,
    /// Failed requests in the throughput phase (errors and non-200 answers).
    failed: u64,
    sse_us: f64,
    rss_200_kib: u64,
    streams_ok: usize,
}

struct Subject {
    name: &'static str,
    target: Target,
    proc_: Option<Proc>,
    rss_idle_kib: u64,
    rows: Vec<Row>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let (Some(listen), Some(to)) = (&cli.relay_listen, &cli.relay_to) {
        return tokio::task::block_in_place(|| relay::run(listen, to));
    }
    if let Some(n) = cli.drive {
        let t = cli.drive_target.as_deref().context("--drive needs --drive-target")?;
        let target = match t.parse() {
            Ok(addr) => Target::Tcp(addr),
            Err(_) => Target::Unix(PathBuf::from(t)),
        };
        target.wait_ready().await?;
        load::latency(&target, 100, n).await?;
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("sanctum-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&cli, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(cli: &Cli, dir: &std::path::Path) -> anyhow::Result<()> {
    let jwt =
        sanctum_testkit::jwt::expiring_in("spiffe://sage-sanctum.local/scanner/bench", 86_400);
    let trat = sanctum_testkit::jwt::unsigned(
        &serde_json::json!({"sub": "spiffe://sage-sanctum.local/scanner/bench", "txn": "bench", "exp": 4102444800u64}),
    );
    let (jwt_file, trat_file) = (dir.join("jwt"), dir.join("trat.jwt"));
    std::fs::write(&jwt_file, &jwt)?;
    std::fs::write(&trat_file, &trat)?;

    // Two stand-in providers: TCP (direct, mitmproxy, forwarder, nginx) and Unix (bridges).
    let standin = bin("sanctum-standin")?;
    let p0 = free_port()?;
    let uds = dir.join("llm.sock");
    let _tcp_provider = Proc::spawn(
        "standin-tcp",
        Command::new(&standin).args(["--no-record", "--listen", &format!("127.0.0.1:{p0}")]),
    )?;
    let _uds_provider = Proc::spawn(
        "standin-uds",
        Command::new(&standin).arg("--no-record").arg("--socket").arg(&uds),
    )?;
    let direct = Target::Tcp(([127, 0, 0, 1], p0).into());
    direct.wait_ready().await?;
    Target::Unix(uds.clone()).wait_ready().await?;

    let mut bridge_subjects = vec![Subject {
        name: "direct",
        target: direct.clone(),
        proc_: None,
        rss_idle_kib: 0,
        rows: vec![],
    }];
    let p1 = free_port()?;
    bridge_subjects.push(
        start(
            "sanctum-bridge",
            Target::Tcp(([127, 0, 0, 1], p1).into()),
            Command::new(bin("sanctum-bridge")?)
                .args(["--listen", &format!("127.0.0.1:{p1}"), "--admin-listen", "127.0.0.1:0"])
                .arg("--upstream-socket")
                .arg(&uds)
                .arg("--jwt-file")
                .arg(&jwt_file)
                .arg("--trat-file")
                .arg(&trat_file)
                .env("RUST_LOG", "warn"),
        )
        .await?,
    );
    let pf = free_port()?;
    bridge_subjects.push(
        start(
            FLOOR,
            Target::Tcp(([127, 0, 0, 1], pf).into()),
            Command::new(std::env::current_exe()?)
                .args(["--relay-listen", &format!("127.0.0.1:{pf}"), "--relay-to"])
                .arg(&uds),
        )
        .await?,
    );
    if !cli.no_peers {
        let p2 = free_port()?;
        bridge_subjects.push(
            start(
                "python asyncio bridge",
                Target::Tcp(([127, 0, 0, 1], p2).into()),
                Command::new("python3")
                    .arg(cli.bench_dir.join("peers/bridge.py"))
                    .args(["--port", &p2.to_string()])
                    .arg("--upstream-socket")
                    .arg(&uds)
                    .arg("--jwt-file")
                    .arg(&jwt_file)
                    .arg("--trat-file")
                    .arg(&trat_file),
            )
            .await?,
        );
        let p3 = free_port()?;
        let mitmdump = cli.bench_dir.join(".venv/bin/mitmdump");
        anyhow::ensure!(mitmdump.exists(), "{} is missing: run bench/setup.sh", mitmdump.display());
        bridge_subjects.push(
            start(
                "mitmproxy",
                Target::Tcp(([127, 0, 0, 1], p3).into()),
                Command::new(mitmdump)
                    .args([
                        "--mode",
                        &format!("reverse:http://127.0.0.1:{p0}"),
                        "--listen-host",
                        "127.0.0.1",
                        "--listen-port",
                        &p3.to_string(),
                        "-q",
                    ])
                    .arg("-s")
                    .arg(cli.bench_dir.join("peers/mitm_addon.py"))
                    .env("SANCTUM_JWT_FILE", &jwt_file)
                    .env("SANCTUM_TRAT_FILE", &trat_file),
            )
            .await?,
        );
    }

    let mut fwd_subjects = vec![Subject {
        name: "direct",
        target: direct.clone(),
        proc_: None,
        rss_idle_kib: 0,
        rows: vec![],
    }];
    let fwd_sock = dir.join("fwd.sock");
    fwd_subjects.push(
        start(
            "sanctum-forwarder",
            Target::Unix(fwd_sock.clone()),
            Command::new(bin("sanctum-forwarder")?)
                .args([
                    "forward",
                    "--allow-insecure-upstream",
                    "--upstream",
                    &format!("http://127.0.0.1:{p0}"),
                    "--admin-listen",
                    "127.0.0.1:0",
                ])
                .arg("--listen-socket")
                .arg(&fwd_sock)
                .env("RUST_LOG", "warn"),
        )
        .await?,
    );
    let floor_sock = dir.join("relay.sock");
    fwd_subjects.push(
        start(
            FLOOR,
            Target::Unix(floor_sock.clone()),
            Command::new(std::env::current_exe()?)
                .arg("--relay-listen")
                .arg(&floor_sock)
                .args(["--relay-to", &format!("127.0.0.1:{p0}")]),
        )
        .await?,
    );
    if !cli.no_peers {
        let nginx_sock = dir.join("nginx.sock");
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, procs::nginx_config(dir, &nginx_sock, p0))?;
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|n| Command::new(n).arg("-v").output().is_ok())
            .context("nginx is missing: run bench/setup.sh")?;
        fwd_subjects.push(
            start(
                "nginx",
                Target::Unix(nginx_sock),
                Command::new(nginx).arg("-c").arg(&conf).arg("-p").arg(dir),
            )
            .await?,
        );
    }

    for round in 1..=cli.rounds {
        eprintln!("round {round}/{}", cli.rounds);
        for s in bridge_subjects.iter_mut().chain(fwd_subjects.iter_mut()) {
            let row = measure(cli, s).await.with_context(|| format!("measuring {}", s.name))?;
            eprintln!(
                "  {:<22} p50 {:>7.0} µs  p99 {:>7.0} µs  100KB p50 {:>7.0} µs  {:>7.0} req/s ({} failed)  SSE {:>5.0} µs  RSS@200 {:>6} KiB ({} of 200 complete)",
                s.name,
                row.small.p50,
                row.small.p99,
                row.large.p50,
                row.rps,
                row.failed,
                row.sse_us,
                row.rss_200_kib,
                row.streams_ok
            );
            s.rows.push(row);
        }
    }
    print_report("Bridge (client → proxy → stand-in)", &bridge_subjects, "sanctum-bridge", cli);
    print_report(
        "Forwarder (Unix socket → proxy → TCP stand-in)",
        &fwd_subjects,
        "sanctum-forwarder",
        cli,
    );
    Ok(())
}

async fn start(name: &'static str, target: Target, cmd: &mut Command) -> anyhow::Result<Subject> {
    let proc_ = Proc::spawn(name, cmd)?;
    target.wait_ready().await.with_context(|| format!("{name} did not start"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle_kib = proc_.rss_kib();
    Ok(Subject { name, target, proc_: Some(proc_), rss_idle_kib, rows: vec![] })
}

async fn measure(cli: &Cli, s: &Subject) -> anyhow::Result<Row> {
    let small = load::latency(&s.target, 100, cli.requests).await?;
    let large = load::latency(&s.target, 100 * 1024, cli.large_requests).await?;
    let load::Throughput { rps, failed } = load::throughput(&s.target, cli.conns, cli.secs).await?;
    let sse_us = load::sse_event_delay(&s.target, 5, 50, 2).await?;
    let proc_ = s.proc_.as_ref();
    let (streams_ok, rss_200_kib) =
        load::concurrent_streams(&s.target, 200, 40, 25, || proc_.map_or(0, Proc::rss_kib)).await?;
    Ok(Row { small, large, rps, failed, sse_us, rss_200_kib, streams_ok })
}

fn print_report(title: &str, subjects: &[Subject], ours: &str, cli: &Cli) {
    let med = |s: &Subject, f: &dyn Fn(&Row) -> f64| median(s.rows.iter().map(f).collect());
    let direct = &subjects[0];
    let mut summary: BTreeMap<&str, [f64; 8]> = BTreeMap::new();
    println!("\n### {title}\n");
    println!(
        "Medians of {} rounds. Latency: {} sequential requests (small, ~100 B body) and {} (100 KB body) on one keep-alive connection; added = minus direct. Throughput: {} connections, {} s. SSE: per-event delivery delay, 250 events 2 ms apart. RSS: idle after start, and while 200 SSE streams are open.\n",
        cli.rounds, cli.requests, cli.large_requests, cli.conns, cli.secs
    );
    println!(
        "Thread budgets: sanctum-bridge and sanctum-forwarder 1 thread (their default, a current-thread runtime); nginx 1 worker process (+ an idle master); Python bridge and mitmproxy 1 asyncio event loop each; the floor relay 2 blocking threads per connection (no event loop: the cheapest possible hop). The load generator has 2 runtime threads; everything shares the machine's 2 cores.\n"
    );
    println!(
        "| | p50 small | p99 small | added p50 / p99 small | added p50 / p99 100 KB | req/s | SSE event delay (added) | RSS idle | RSS 200 streams |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in subjects {
        // Added = subject minus direct of the same round, then the median over rounds:
        // a round disturbed by other load shifts both.
        let added = |f: &dyn Fn(&Row) -> f64| {
            median(s.rows.iter().zip(&direct.rows).map(|(a, b)| f(a) - f(b)).collect())
        };
        let v = [
            med(s, &|r| r.small.p50),
            med(s, &|r| r.small.p99),
            added(&|r| r.small.p50),
            added(&|r| r.small.p99),
            added(&|r| r.large.p50),
            added(&|r| r.large.p99),
            med(s, &|r| r.rps),
            added(&|r| r.sse_us),
        ];
        let rss200 = med(s, &|r| r.rss_200_kib as f64);
        let complete = s.rows.iter().map(|r| r.streams_ok).min().unwrap_or(0);
        let failed: u64 = s.rows.iter().map(|r| r.failed).sum();
        if s.proc_.is_none() {
            println!(
                "| {} | {:.0} µs | {:.0} µs | – | – | {:.0} ({failed} failed) | {:.0} µs (absolute) | – | – |",
                s.name,
                v[0],
                v[1],
                v[6],
                med(s, &|r| r.sse_us)
            );
        } else {
            println!(
                "| {} | {:.0} µs | {:.0} µs | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.0} ({failed} failed) | {:.0} µs | {:.1} MiB | {:.1} MiB{} |",
                s.name,
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5],
                v[6],
                v[7],
                s.rss_idle_kib as f64 / 1024.0,
                rss200 / 1024.0,
                if complete < 200 {
                    format!(" ({complete}/200 streams complete)")
                } else {
                    String::new()
                }
            );
        }
        summary.insert(s.name, v);
    }
    if !summary.contains_key(ours) {
        return;
    }
    println!("\nRatios for {ours}:\n");
    println!(
        "| against | throughput (×) | added p50 small (peer ÷ ours) | added p99 small | added p50 100 KB | SSE added delay |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    // Same-round ratios, then the median: the direct rate moves with the machine's load.
    let ours_rows = subjects.iter().find(|s| s.name == ours).map_or(&[][..], |s| &s.rows[..]);
    let of_direct =
        median(ours_rows.iter().zip(&direct.rows).map(|(a, b)| a.rps / b.rps).collect());
    println!("| direct | {of_direct:.2} of direct | – | – | – | – |");
    // Every ratio is computed within a round (both subjects measured minutes apart at most,
    // under the same load), then the median of the per-round ratios is reported.
    let per_round = |peer: &Subject, f: &dyn Fn(&Row, &Row, &Row) -> f64| {
        median(
            ours_rows
                .iter()
                .zip(&peer.rows)
                .zip(&direct.rows)
                .map(|((o, p), d)| f(o, p, d))
                .collect(),
        )
    };
    for s in subjects.iter().skip(1).filter(|s| s.name != ours) {
        let added =
            |get: fn(&Row) -> f64| per_round(s, &|o, p, d| (get(p) - get(d)) / (get(o) - get(d)));
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.name,
            per_round(s, &|o, p, _| o.rps / p.rps),
            added(|r| r.small.p50),
            added(|r| r.small.p99),
            added(|r| r.large.p50),
            added(|r| r.sse_us),
        );
    }
    if let Some(floor) = subjects.iter().find(|s| s.name == FLOOR) {
        let above = |get: fn(&Row) -> f64| per_round(floor, &|o, f, _| get(o) - get(f));
        println!(
            "\n{ours} above the floor (same-round difference, median): p50 small {:.0} µs, p50 100 KB {:.0} µs, SSE {:.0} µs",
            above(|r| r.small.p50),
            above(|r| r.large.p50),
            above(|r| r.sse_us)
        );
    }
}
