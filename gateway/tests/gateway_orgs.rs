//! Per-org settings from `--config` (issue 14 item 5), end to end: each org's rate and
//! budget defaults, the command-line flags for orgs the file leaves out, and a config the
//! gateway refuses at start with a one-line reason.

mod gateway_support;

use std::process::{Command, Stdio};

use gateway_support::*;
use sanctum_testkit::{Provider, ProviderConfig};
use serde_json::json;

/// A TraT of run `run` in org `org` (the support's TraTs are all in `acme`).
fn trat_of(s: &Setup, run: &str, org: &str) -> String {
    let mut claims = trat_claims(run, &format!("txn-{run}"));
    claims["tctx"]["org_id"] = json!(org);
    s.trat_key.sign(&claims)
}

#[tokio::test]
async fn rate_and_budget_defaults_come_from_the_org_entry_or_the_flags() {
    let s = Setup::new();
    for org in ["fast", "small"] {
        std::fs::write(s.path("keys").join(org), "sk-provider-other\n").unwrap();
    }
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let config = s.path("gateway.yaml");
    std::fs::write(
        &config,
        "orgs:\n  fast:\n    ratePerMinute: 0\n  small:\n    ratePerMinute: 0\n    budgetTokens: 20\n",
    )
    .unwrap();
    let gw = s
        .gateway(
            &p.url().unwrap(),
            &[
                "--config",
                config.to_str().unwrap(),
                "--rate-limit-per-minute",
                "1",
                "--rate-limit-burst",
                "1",
            ],
        )
        .await;
    let body = || messages_body(false, 10, "hello there, this is a short request");

    // `acme` is not in the file: the flags' rate, one request a minute.
    let (svid, trat) = (s.svid("run-a"), trat_of(&s, "run-a", ORG));
    assert_eq!(call(&gw, Some(&svid), Some(&trat), body()).await.status, 200);
    let second = call(&gw, Some(&svid), Some(&trat), body()).await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.json()["error"]["type"], "rate_limit_error");

    // `fast` turns the rate limit off.
    let (svid, trat) = (s.svid("run-f"), trat_of(&s, "run-f", "fast"));
    for _ in 0..3 {
        let a = call(&gw, Some(&svid), Some(&trat), body()).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }

    // `small` has a 20-token budget: max_tokens 10 plus the body's input bound exceed it.
    let (svid, trat) = (s.svid("run-s"), trat_of(&s, "run-s", "small"));
    let a = call(&gw, Some(&svid), Some(&trat), body()).await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert!(a.message().contains("has 20 tokens of budget left"), "{}", a.message());

    let m = gw.metrics().await;
    assert!(m.contains("sanctum_gateway_rejections_total{reason=\"rate_limited\"} 1"), "{m}");
    assert!(
        m.contains("sanctum_gateway_rejections_total{reason=\"budget_insufficient\"} 1"),
        "{m}"
    );
    assert_eq!(p.requests().len(), 4);
}

#[test]
fn a_config_that_cannot_work_stops_the_gateway_with_one_line() {
    let s = Setup::new();
    for (yaml, words) in [
        ("orgs:\n  g:\n    provider: bedrock\n", "needs a 'bedrock:' entry"),
        ("default:\n  provider: openai\n", "unknown variant"),
        ("orgs:\n  g:\n    ratePerMinut: 5\n", "unknown field"),
    ] {
        let config = s.path("bad.yaml");
        std::fs::write(&config, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sanctum-gateway"))
            .args(["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9"])
            .args(["--svid-jwks", s.path("svid-jwks.json").to_str().unwrap()])
            .args(["--trat-jwks", s.path("trat-jwks.json").to_str().unwrap()])
            .args(["--keys-dir", s.path("keys").to_str().unwrap()])
            .args(["--admin-listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("sanctum-gateway: ") && last.contains(words), "{yaml}: {err}");
    }
}
