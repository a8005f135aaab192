//! What one run measured, and the tables made of it: pure functions over per-round figures.
//! Every comparison (added latency, ratio to direct, after/before) is computed per round from
//! the same round's figures, then the median over rounds is taken (robust to one noisy round
//! on a shared machine; a ratio of medians would mix rounds).

use std::fmt::Write as _;

use crate::load::{Latency, Rate};

/// One subject's figures in one round.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub small: Latency,
    pub large: Latency,
    pub sat_small: Rate,
    pub sat_large: Rate,
}

/// What a subject is, for the comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    /// A gateway: `baseline` false for this build; `state` is `memory` or `redis`.
    Gateway {
        baseline: bool,
        state: &'static str,
    },
    /// A bare proxy hop (nginx): the floor any proxy reaches here.
    Floor,
    Peer,
}

#[derive(Clone)]
pub struct Series {
    pub name: String,
    pub kind: Kind,
    pub rounds: Vec<Round>,
    /// KiB: after start-up, the largest right after a subject's load, at the end of the run.
    pub rss_idle: u64,
    pub rss_loaded: u64,
    pub rss_end: u64,
}

/// The median of the figures that are numbers (a phase with no successful request is NaN);
/// the mean of the middle two for an even count.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn pick(s: &Series, f: fn(&Round) -> f64) -> Vec<f64> {
    s.rounds.iter().map(f).collect()
}

/// Per round `a - b`, then the median.
fn diff(a: &Series, b: &Series, f: fn(&Round) -> f64) -> f64 {
    median(&pick(a, f).iter().zip(pick(b, f)).map(|(x, y)| x - y).collect::<Vec<_>>())
}

/// Per-round ratios `a / b`.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| if *y > 0.0 { x / y } else { f64::NAN }).collect()
}

/// `0.41× (0.40, 0.41, 0.45)`: the median and each round's value.
fn ratio_cell(r: &[f64]) -> String {
    let each: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
    format!("**{:.2}×** ({})", median(r), each.join(", "))
}

fn mib(kib: u64) -> String {
    if kib == 0 { "—".into() } else { format!("{:.1}", kib as f64 / 1024.0) }
}

const P50: fn(&Round) -> f64 = |r| r.small.p50;
const P99: fn(&Round) -> f64 = |r| r.small.p99;
const P50L: fn(&Round) -> f64 = |r| r.large.p50;
const P99L: fn(&Round) -> f64 = |r| r.large.p99;
const RPS: fn(&Round) -> f64 = |r| r.sat_small.rps;
const RPSL: fn(&Round) -> f64 = |r| r.sat_large.rps;

/// The tables, in Markdown. `series[0]` is direct.
pub fn render(series: &[Series]) -> String {
    let mut out = String::new();
    let direct = &series[0];
    let _ = writeln!(
        out,
        "| subject | small p50 / p99 µs | added p50 / p99 µs | 100 KB p50 / p99 µs | added 100 KB p50 / p99 µs | req/s small | req/s 100 KB | failed (sequential / saturation small / 100 KB) | RSS idle / loaded / end MiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (i, s) in series.iter().enumerate() {
        let added = |f, g| {
            if i == 0 {
                "—".to_string()
            } else {
                format!("{:.0} / {:.0}", diff(s, direct, f), diff(s, direct, g))
            }
        };
        let failed_seq: u64 = s.rounds.iter().map(|r| r.small.failed + r.large.failed).sum();
        let failed_sat: u64 = s.rounds.iter().map(|r| r.sat_small.failed).sum();
        let failed_sat_l: u64 = s.rounds.iter().map(|r| r.sat_large.failed).sum();
        let _ = writeln!(
            out,
            "| {} | {:.0} / {:.0} | {} | {:.0} / {:.0} | {} | {:.0} | {:.0} | {failed_seq} / {failed_sat} / {failed_sat_l} | {} / {} / {} |",
            s.name,
            median(&pick(s, P50)),
            median(&pick(s, P99)),
            added(P50, P99),
            median(&pick(s, P50L)),
            median(&pick(s, P99L)),
            added(P50L, P99L),
            median(&pick(s, RPS)),
            median(&pick(s, RPSL)),
            mib(s.rss_idle),
            mib(s.rss_loaded),
            mib(s.rss_end),
        );
    }

    let _ = writeln!(
        out,
        "\nThroughput at saturation, subject ÷ direct of the same round (median, then each round):\n"
    );
    let _ = writeln!(out, "| subject | small body | 100 KB body |");
    let _ = writeln!(out, "|---|---|---|");
    for s in &series[1..] {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            s.name,
            ratio_cell(&ratios(&pick(s, RPS), &pick(direct, RPS))),
            ratio_cell(&ratios(&pick(s, RPSL), &pick(direct, RPSL))),
        );
    }
    let _ = writeln!(
        out,
        "\nReference: agentgateway (the best published Rust AI gateway) 0.33× direct at saturation; Sanctum's aim 0.5×."
    );

    let gateway = |baseline: bool, state: &'static str| {
        series.iter().find(|s| s.kind == Kind::Gateway { baseline, state })
    };
    let mut before_after = Vec::new();
    for state in ["memory", "redis"] {
        if let (Some(after), Some(before)) = (gateway(false, state), gateway(true, state)) {
            before_after.push((state, before, after));
        }
    }
    if !before_after.is_empty() {
        let _ = writeln!(
            out,
            "\nBefore/after (baseline binary vs this build, same rounds): ratios after ÷ before per round, then the median; added latency = subject − direct of the same round:\n"
        );
        let _ = writeln!(
            out,
            "| state | req/s small after ÷ before | req/s 100 KB after ÷ before | added p50 small before → after µs | added p50 100 KB before → after µs | RSS end before → after MiB |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for (state, before, after) in before_after {
            let _ = writeln!(
                out,
                "| {state} | {} | {} | {:.0} → {:.0} | {:.0} → {:.0} | {} → {} |",
                ratio_cell(&ratios(&pick(after, RPS), &pick(before, RPS))),
                ratio_cell(&ratios(&pick(after, RPSL), &pick(before, RPSL))),
                diff(before, direct, P50),
                diff(after, direct, P50),
                diff(before, direct, P50L),
                diff(after, direct, P50L),
                mib(before.rss_end),
                mib(after.rss_end),
            );
        }
    }

    let ours = gateway(false, "memory");
    if let (Some(ours), Some(floor)) = (ours, series.iter().find(|s| s.kind == Kind::Floor)) {
        let _ = writeln!(
            out,
            "\n{} ÷ {} throughput (per round; the share of a bare hop's throughput the gateway keeps): small body {}, 100 KB body {}",
            ours.name,
            floor.name,
            ratio_cell(&ratios(&pick(ours, RPS), &pick(floor, RPS))),
            ratio_cell(&ratios(&pick(ours, RPSL), &pick(floor, RPSL))),
        );
    }
    if let (Some(ours), Some(peer)) = (ours, series.iter().find(|s| s.kind == Kind::Peer)) {
        let _ = writeln!(
            out,
            "\n{} ÷ {} throughput (small body, per round): {}",
            ours.name,
            peer.name,
            ratio_cell(&ratios(&pick(ours, RPS), &pick(peer, RPS)))
        );
    }
    out
}
