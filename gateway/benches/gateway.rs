//! Gateway benchmark (issues 7, 14, 15): `sanctum-gateway` (both token checks, DLP, budget,
//! audit log) with the memory state and with the Redis state, against direct calls to the
//! stand-in provider, optionally an older gateway binary (the baseline, for before/after
//! ratios), nginx as a bare proxy hop (the floor: what a zero-logic hop costs here) and the
//! LiteLLM proxy, all in the same run and the same rounds, on loopback.
//! Reports added latency p50/p99 (small and 100 KB bodies), throughput at saturation (small
//! and 100 KB bodies) as subject ÷ direct per round, failed requests, RSS and thread budgets.
//!
//! `bench/gateway/run.sh` reproduces bench/gateway/README.md (it installs LiteLLM first);
//! `cargo bench -p sanctum-gateway --bench gateway` runs without LiteLLM when it is absent.
//! Settings by environment (defaults in brackets):
//! - BENCH_ROUNDS (3), BENCH_REQUESTS (1000 small sequential), BENCH_LARGE (300 × 100 KB
//!   sequential), BENCH_SECS (3 s per saturation phase), BENCH_CONNS (32 connections);
//! - BENCH_GATEWAY_THREADS and BENCH_STANDIN_THREADS (the CPU count), BENCH_LOAD_THREADS (2);
//! - BENCH_REDIS (`auto`: the Redis state when `redis-server` is installed; `on`: required;
//!   `off`);
//! - BENCH_BASELINE_GATEWAY (an older gateway binary) and BENCH_BASELINE_ARGS (arguments
//!   before the flags; default `gateway` when the binary's name contains `forwarder`).
//!
//! Every phase is bounded: at most N requests and 60 s per sequential phase, BENCH_SECS plus
//! at most 10 s (one request's timeout) per saturation phase. Every process (stand-in,
//! redis-server, gateways, LiteLLM) runs in its own process group, killed whole at the end,
//! on a panic and on SIGINT/SIGTERM/SIGHUP.

// The crate root's modules would be looked for beside it; they live in gateway/ instead, out
// of cargo's bench auto-discovery.
#[path = "gateway/load.rs"]
mod load;
#[path = "gateway/procs.rs"]
mod procs;
#[path = "gateway/report.rs"]
mod report;
#[path = "gateway/subjects.rs"]
mod subjects;

use std::time::Duration;

use load::Target;
use procs::Proc;
use report::{Kind, Round, Series};
use subjects::Binary;

/// Longest one sequential (latency) phase may take.
const SEQUENTIAL_LIMIT: Duration = Duration::from_secs(60);

fn env_num(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

struct Settings {
    rounds: usize,
    requests: usize,
    large: usize,
    secs: f64,
    conns: usize,
    gateway_threads: usize,
    standin_threads: usize,
    load_threads: usize,
    redis: String,
    cpus: usize,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let secs = match std::env::var("BENCH_SECS") {
            Ok(v) => v.trim().parse().map_err(|_| format!("BENCH_SECS={v:?} is not a number"))?,
            Err(_) => 3.0,
        };
        let redis = std::env::var("BENCH_REDIS").unwrap_or_else(|_| "auto".into());
        if !["auto", "on", "off"].contains(&redis.as_str()) {
            return Err(format!("BENCH_REDIS={redis:?}: auto, on or off"));
        }
        let s = Self {
            rounds: env_num("BENCH_ROUNDS", 3)?.max(1),
            requests: env_num("BENCH_REQUESTS", 1000)?.max(1),
            large: env_num("BENCH_LARGE", 300)?.max(1),
            secs,
            conns: env_num("BENCH_CONNS", 32)?.max(1),
            gateway_threads: env_num("BENCH_GATEWAY_THREADS", cpus)?.max(1),
            standin_threads: env_num("BENCH_STANDIN_THREADS", cpus)?.max(1),
            load_threads: env_num("BENCH_LOAD_THREADS", 2)?.max(1),
            redis,
            cpus,
        };
        if !(s.secs > 0.0 && s.secs <= 600.0) {
            return Err(format!("BENCH_SECS={}: between 0 and 600", s.secs));
        }
        Ok(s)
    }
}

struct Subject {
    series: Series,
    target: Target,
    proc_: Option<Proc>,
    /// Sequential requests are divided by this (LiteLLM is two orders of magnitude slower).
    scale: usize,
}

fn main() {
    if let Ok(addr) = std::env::var(procs::STANDIN_ENV) {
        procs::serve_standin(&addr);
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway bench: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.load_threads)
        .enable_all()
        .build()
        .expect("the load generator's runtime");
    if let Err(e) = runtime.block_on(run(&settings)) {
        eprintln!("gateway bench failed: {e}");
        std::process::exit(1);
    }
}

async fn run(s: &Settings) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let dir = dir.path();
    procs::kill_all_on_signal(dir);
    let (standin, standin_addr) = procs::standin(dir, s.standin_threads).await?;
    let upstream = format!("http://{standin_addr}");
    let headers = subjects::credentials(dir);
    let redis = match s.redis.as_str() {
        "off" => None,
        mode => match procs::redis(dir).await? {
            Some(r) => Some(r),
            None if mode == "on" => {
                return Err("BENCH_REDIS=on but redis-server is not installed \
                            (Debian: apt-get install -y redis-server)"
                    .into());
            }
            None => {
                eprintln!(
                    "redis-server is not installed (apt-get install -y redis-server): measuring the memory state only"
                );
                None
            }
        },
    };

    let mut subjects = vec![Subject {
        series: series("direct (stand-in provider)", Kind::Direct),
        target: Target {
            addr: standin_addr,
            headers: vec![("x-api-key", "sk-bench-org-key".into())],
        },
        proc_: None,
        scale: 1,
    }];
    let current = Binary { program: env!("CARGO_BIN_EXE_sanctum-gateway").into(), args: vec![] };
    let mut builds = vec![("sanctum-gateway".to_string(), current, false)];
    if let Some(b) = Binary::baseline_from_env()? {
        let name = b.program.file_name().map_or("?".into(), |n| n.to_string_lossy().into_owned());
        let cmd = if b.args.is_empty() { name } else { format!("{name} {}", b.args.join(" ")) };
        builds.push((format!("baseline: {cmd}"), b, true));
    }
    for (name, bin, baseline) in &builds {
        // The two builds use separate Redis databases: an older build's keys never meet a
        // newer build's layout.
        let mut states = vec![("memory", "memory".to_string())];
        if let Some((_, url)) = &redis {
            states.push(("redis", format!("{url}/{}", u8::from(*baseline))));
        }
        for (state, arg) in states {
            let label = format!("{name}, {state}");
            let (proc_, target) =
                subjects::gateway(&label, bin, dir, &upstream, &arg, s.gateway_threads, &headers)
                    .await?;
            // Paused while the others start and are measured.
            proc_.pause(true);
            subjects.push(Subject {
                series: series(&label, Kind::Gateway { baseline: *baseline, state }),
                target,
                proc_: Some(proc_),
                scale: 1,
            });
        }
    }
    match subjects::nginx_bin() {
        Some(bin) => {
            let (proc_, target) =
                subjects::nginx(bin, dir, standin_addr, s.gateway_threads).await?;
            proc_.pause(true);
            subjects.push(Subject {
                series: series("nginx (bare proxy hop, the floor)", Kind::Floor),
                target,
                proc_: Some(proc_),
                scale: 1,
            });
        }
        None => {
            eprintln!("nginx not installed (apt-get install -y nginx): measuring without the floor")
        }
    }
    match subjects::litellm_bin() {
        Some(bin) => match subjects::litellm(&bin, dir, &upstream).await {
            Ok((proc_, target)) => {
                proc_.pause(true);
                subjects.push(Subject {
                    series: series("LiteLLM proxy", Kind::Peer),
                    target,
                    proc_: Some(proc_),
                    scale: 5,
                });
            }
            Err(e) => eprintln!("LiteLLM skipped: {e}"),
        },
        None => {
            eprintln!("LiteLLM not installed (bash bench/gateway/setup.sh); measuring without it")
        }
    }
    for subject in &mut subjects {
        subject.series.rss_idle = subject.proc_.as_ref().map_or(0, Proc::rss_kib);
    }

    let small = load::body(300);
    let large = load::body(100 * 1024);
    for round in 0..s.rounds {
        // Each round starts with another subject, so no subject always runs first or last.
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            for (j, other) in subjects.iter().enumerate() {
                if let Some(p) = &other.proc_ {
                    p.pause(i != j);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let x = &mut subjects[i];
            let t = &x.target;
            let r = Round {
                small: load::latency(t, &small, s.requests / x.scale, SEQUENTIAL_LIMIT).await,
                large: load::latency(t, &large, s.large / x.scale, SEQUENTIAL_LIMIT).await,
                sat_small: load::throughput(t, &small, s.conns, s.secs).await,
                sat_large: load::throughput(t, &large, s.conns, s.secs).await,
            };
            let rss = x.proc_.as_ref().map_or(0, Proc::rss_kib);
            x.series.rss_loaded = x.series.rss_loaded.max(rss);
            eprintln!(
                "round {}/{}: {}: p50 {:.0} µs, {:.0} req/s small, {:.0} req/s 100 KB, failed {}",
                round + 1,
                s.rounds,
                x.series.name,
                r.small.p50,
                r.sat_small.rps,
                r.sat_large.rps,
                r.small.failed + r.large.failed + r.sat_small.failed + r.sat_large.failed,
            );
            x.series.rounds.push(r);
        }
    }
    for subject in &mut subjects {
        if let Some(p) = &subject.proc_ {
            p.pause(false);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for subject in &mut subjects {
        subject.series.rss_end = subject.proc_.as_ref().map_or(0, Proc::rss_kib);
    }
    // Observed after the load: the blocking pool grows on demand.
    let observed: Vec<String> = subjects
        .iter()
        .filter_map(|x| x.proc_.as_ref().filter(|_| matches!(x.series.kind, Kind::Gateway { .. })))
        .map(|p| p.threads_named("tokio-r").to_string())
        .collect();

    println!(
        "\nGateway benchmark: {} rounds (medians of per-round figures), {} small / {} × 100 KB sequential requests per subject and round, saturation {} connections × {} s per body size, loopback, {} CPUs.",
        s.rounds, s.requests, s.large, s.conns, s.secs, s.cpus
    );
    println!(
        "Thread budgets: each gateway {} tokio worker threads (TOKIO_WORKER_THREADS; tokio threads observed, workers and blocking pool: {}), stand-in provider {} runtime threads (own process; observed: {}), load generator {} runtime threads (this process){}{}; everything shares the {} CPUs. Only the subject being measured runs: the other subjects are stopped (SIGSTOP); {}.\n",
        s.gateway_threads,
        observed.join(", "),
        s.standin_threads,
        standin.threads_named("tokio-r"),
        s.load_threads,
        if redis.is_some() { ", redis-server 1 main thread" } else { "" },
        match (
            subjects.iter().any(|x| x.series.kind == Kind::Floor),
            subjects.iter().any(|x| x.series.kind == Kind::Peer),
        ) {
            (true, true) =>
                format!(", nginx {} worker processes, LiteLLM 1 worker process", s.gateway_threads),
            (true, false) => format!(", nginx {} worker processes", s.gateway_threads),
            (false, true) => ", LiteLLM 1 worker process".to_string(),
            (false, false) => String::new(),
        },
        s.cpus,
        if redis.is_some() {
            "the stand-in and redis-server always run"
        } else {
            "the stand-in always runs"
        },
    );
    let series: Vec<Series> = subjects.iter().map(|x| x.series.clone()).collect();
    print!("{}", report::render(&series));
    drop(subjects);
    drop(redis);
    drop(standin);
    Ok(())
}

fn series(name: &str, kind: Kind) -> Series {
    Series { name: name.into(), kind, rounds: Vec::new(), rss_idle: 0, rss_loaded: 0, rss_end: 0 }
}
