//! The measurements: sequential latency, throughput at saturation, per-event SSE delay,
//! and many concurrent streams. Each is bounded in requests and in time.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::BodyExt;
use hyper::body::Body as _;

use crate::target::{Target, body_of_size, messages_request};

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `n` requests one after another on one keep-alive connection (after `n/10` warm-up).
pub async fn latency(target: &Target, body_size: usize, n: usize) -> anyhow::Result<Latency> {
    let body = body_of_size(body_size, false);
    let mut sender = target.connect().await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(messages_request(&body, &[])).await?;
        anyhow::ensure!(response.status() == 200, "status {}", response.status());
        response.into_body().collect().await?;
        if i >= n / 10 {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(Latency { p50: percentile(&samples, 0.5), p99: percentile(&samples, 0.99) })
}

/// Throughput at saturation: answered requests per second, and requests that failed (an
/// error or a status other than 200; the connection is opened again after an error).
#[derive(Debug, Clone, Copy, Default)]
pub struct Throughput {
    pub rps: f64,
    pub failed: u64,
}

/// Requests per second with `conns` closed-loop connections for `secs`.
pub async fn throughput(target: &Target, conns: usize, secs: f64) -> anyhow::Result<Throughput> {
    let body = body_of_size(100, false);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (target, body) = (target.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let (mut done, mut failed) = (0u64, 0u64);
            let mut sender = None;
            while Instant::now() < deadline {
                let s = match sender.as_mut() {
                    Some(s) => s,
                    None => match target.connect().await {
                        Ok(s) => sender.insert(s),
                        Err(_) => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let answer = async {
                    s.ready().await?;
                    let response = s.send_request(messages_request(&body, &[])).await?;
                    let ok = response.status() == 200;
                    response.into_body().collect().await?;
                    anyhow::Ok(ok)
                };
                match answer.await {
                    Ok(true) => done += 1,
                    Ok(false) => failed += 1,
                    Err(_) => {
                        failed += 1;
                        sender = None;
                    }
                }
            }
            (done, failed)
        }));
    }
    let start = Instant::now();
    let (mut total, mut failed) = (0, 0);
    for t in tasks {
        let (d, f) = t.await.context("load task")?;
        total += d;
        failed += f;
    }
    Ok(Throughput { rps: total as f64 / start.elapsed().as_secs_f64().max(secs), failed })
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Median delivery delay (µs) of SSE events sent `gap_ms` apart: the provider stamps each
/// event when it writes it, the client subtracts on arrival.
pub async fn sse_event_delay(
    target: &Target,
    streams: usize,
    events: usize,
    gap_ms: u64,
) -> anyhow::Result<f64> {
    let body = body_of_size(100, true);
    let mut delays = Vec::new();
    let mut sender = target.connect().await?;
    let (events_s, gap_s) = (events.to_string(), gap_ms.to_string());
    for _ in 0..streams {
        sender.ready().await?;
        let extra = [
            ("x-standin-events", events_s.as_str()),
            ("x-standin-delay-ms", gap_s.as_str()),
            ("x-standin-stamp", "1"),
        ];
        let response = sender.send_request(messages_request(&body, &extra)).await?;
        anyhow::ensure!(response.status() == 200, "status {}", response.status());
        let mut body = response.into_body();
        let mut pending = Vec::<u8>::new();
        while let Some(frame) = body.frame().await {
            let now = unix_nanos();
            if let Ok(data) = frame?.into_data() {
                pending.extend_from_slice(&data);
                // Only complete lines: a stamp may be split across frames.
                let cut = pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in pending[..cut].split(|&b| b == b'\n') {
                    if let Some(t) = line.strip_prefix(b": t=")
                        && let Some(sent) =
                            std::str::from_utf8(t).ok().and_then(|t| t.parse::<u128>().ok())
                    {
                        delays.push(now.saturating_sub(sent) as f64 / 1e3);
                    }
                }
                pending.drain(..cut);
            }
        }
    }
    anyhow::ensure!(!delays.is_empty(), "no stamped events arrived");
    delays.sort_by(f64::total_cmp);
    Ok(percentile(&delays, 0.5))
}

/// Opens `n` concurrent SSE streams of `events` events `gap_ms` apart; calls `sample`
/// while all are open; returns how many finished completely, and the sample.
pub async fn concurrent_streams<T>(
    target: &Target,
    n: usize,
    events: usize,
    gap_ms: u64,
    sample: impl FnOnce() -> T,
) -> anyhow::Result<(usize, T)> {
    let body = body_of_size(100, true);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(n);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (target, body, opened) = (target.clone(), body.clone(), opened_tx.clone());
        let (events, gap) = (events.to_string(), gap_ms.to_string());
        tasks.push(tokio::spawn(async move {
            let mut sender = target.connect().await?;
            sender.ready().await?;
            let extra =
                [("x-standin-events", events.as_str()), ("x-standin-delay-ms", gap.as_str())];
            let response = sender.send_request(messages_request(&body, &extra)).await?;
            anyhow::ensure!(response.status() == 200, "status {}", response.status());
            let _ = opened.send(()).await;
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while !body.is_end_stream() {
                match body.frame().await {
                    Some(frame) => {
                        if let Ok(d) = frame?.into_data() {
                            bytes.extend_from_slice(&d);
                        }
                    }
                    None => break,
                }
            }
            anyhow::Ok(bytes.ends_with(b"data: {\"type\":\"message_stop\"}\n\n"))
        }));
    }
    drop(opened_tx);
    let mut opened = 0;
    let wait = tokio::time::timeout(Duration::from_secs(20), async {
        while opened < n && opened_rx.recv().await.is_some() {
            opened += 1;
        }
    });
    let _ = wait.await;
    // All streams have their response head; they are mid-stream now.
    tokio::time::sleep(Duration::from_millis(gap_ms * 3)).await;
    let sampled = sample();
    let mut complete = 0;
    for t in tasks {
        if matches!(t.await, Ok(Ok(true))) {
            complete += 1;
        }
    }
    Ok((complete, sampled))
}
