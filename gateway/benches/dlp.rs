//! DLP scan speed on 100 KB Messages API bodies (issue 7 target: ≥ 500 MB/s).
//! `cargo bench -p sanctum-gateway --bench dlp`. Prints MB/s for a clean body, a body
//! with many near misses (prefixes that start but do not finish a secret), and a body with
//! one secret that is redacted. Bounded: about two seconds per case.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sanctum_gateway::dlp::{self, DlpAction, Scanner, Verdict};

/// A JSON body shaped like Claude Code's: a long system prompt and file contents, with
/// escaped newlines and quotes, `size` bytes.
fn body(size: usize, filler: &str) -> Vec<u8> {
    let mut text = String::with_capacity(size);
    let mut i = 0usize;
    while text.len() < size - 200 {
        text.push_str(&format!(
            "fn handler_{i}(req: &Request) -> Result<Response, Error> {{\\n    let token = req.header(\\\"authorization\\\")?; // {filler}\\n    Ok(Response::new(format!(\\\"{{}} bytes\\\", req.len())))\\n}}\\n"
        ));
        i += 1;
    }
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":32000,"stream":true,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    )
    .into_bytes()
}

fn measure(name: &str, scanner: &Scanner, body: &[u8], expect: impl Fn(&Verdict) -> bool) -> f64 {
    assert!(expect(&scanner.scan(body)), "{name}: unexpected verdict");
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(400) {
            black_box(scanner.scan(black_box(body)));
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push(n as f64 * body.len() as f64 / secs / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!("| {name} | {} | {median:.0} |", body.len());
    median
}

fn main() {
    let block = Scanner::new(DlpAction::Block, None).expect("built-in rules");
    let redact = Scanner::new(DlpAction::Redact, None).expect("built-in rules");
    println!(
        "DLP scan, {} built-in rules, one pass (median of 5 × 0.4 s)\n",
        block.rule_ids().len()
    );
    println!("| body | bytes | MB/s |\n|---|---|---|");
    let clean = body(100 * 1024, "see docs for the retry policy");
    let near =
        body(100 * 1024, "AKIA ghp_ xoxb- eyJhbGciOi sk-ant- AIza -----BEGIN CERTIFICATE-----");
    let sparse = {
        // One near miss per ~1 KB, closer to real code and conversation text.
        let mut b = body(100 * 1024, "see docs for the retry policy");
        for (i, probe) in [&b" AKIAEXAMPLE "[..], b" eyJhbGciOi. ", b" ghp_short "]
            .iter()
            .cycle()
            .take(100)
            .enumerate()
        {
            let at = 200 + i * 1000;
            b.splice(at..at + probe.len(), probe.iter().copied());
        }
        b
    };
    let mut secret = body(100 * 1024, "nothing here");
    let at = secret.len() / 2;
    let key = format!(" ghp_{} ", "x1Y2z3".repeat(6));
    secret.splice(at..at + key.len(), key.bytes());
    if std::env::var("DLP_BENCH_EACH").is_ok() {
        // Diagnostic: each built-in rule alone on the dense near-miss body.
        for (id, _, regex) in dlp::BUILTIN {
            let file = dlp::RulesFile {
                builtin: Some(false),
                rules: vec![dlp::RuleSpec {
                    id: (*id).into(),
                    description: None,
                    regex: (*regex).into(),
                    action: None,
                }],
                ..Default::default()
            };
            let one = Scanner::new(DlpAction::Block, Some(&file)).unwrap();
            measure(&format!("dense, only {id}"), &one, &near, |_| true);
        }
    }
    let c = measure("100 KB clean", &block, &clean, |v| *v == Verdict::Clean);
    let n =
        measure("100 KB dense near misses (7 per line)", &block, &near, |v| *v == Verdict::Clean);
    let sp = measure("100 KB near miss per KB", &block, &sparse, |v| *v == Verdict::Clean);
    // Terminal output in tool results: a `\u001b` colour escape per line, so the body is
    // decoded before it is scanned.
    let escaped = body(100 * 1024, "\\u001b[1;31merror\\u001b[0m see docs");
    let e =
        measure("100 KB with \\u escapes (decoded)", &block, &escaped, |v| *v == Verdict::Clean);
    measure("100 KB one secret (redact)", &redact, &secret, |v| {
        matches!(v, Verdict::Redacted { .. })
    });
    println!(
        "\nclean {c:.0} MB/s, a near miss per KB {sp:.0} MB/s, dense near misses {n:.0} MB/s, \\u escapes {e:.0} MB/s (target ≥ 500 MB/s)"
    );
}
