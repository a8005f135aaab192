//! Readiness follows the provider keys: the gateway binary stays unready (naming the org and
//! what to do, never a key) while no org it serves through Anthropic has a usable key — the
//! Secret missing, or made with `--from-literal=acme="$UNSET"` — and turns ready without a
//! restart once the key is written, the way a Secret volume update writes it. One org's
//! missing key, while others have theirs, fails only that org's requests.

mod gateway_support;

use std::time::Duration;

use bytes::Bytes;
use gateway_support::*;
use http_body_util::Full;
use sanctum_testkit::{Provider, ProviderConfig};

/// `/readyz`'s status and body, once the admin port answers.
async fn readyz(gw: &mut Gateway) -> (u16, String) {
    for _ in 0..200 {
        if let Ok(Some(status)) = gw.child.try_wait() {
            panic!("gateway exited early: {status}");
        }
        let req = http::Request::get(format!("http://{}/readyz", gw.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(Ok(resp)) =
            tokio::time::timeout(Duration::from_secs(2), client().request(req)).await
        {
            let (parts, body) = resp.into_parts();
            let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
            return (parts.status.as_u16(), String::from_utf8_lossy(&body).into_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the admin port never answered");
}

/// Waits (up to 5 s) for `/readyz` to answer `status` with a body containing `words`.
async fn readyz_becomes(gw: &mut Gateway, status: u16, words: &[&str]) -> String {
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = readyz(gw).await;
        if last.0 == status && words.iter().all(|w| last.1.contains(w)) {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {status} with {words:?}; last: {} {}", last.0, last.1);
}

/// Writes `content` as the org's key the way a Secret volume update does (rename over).
fn write_key(s: &Setup, org: &str, content: &str) {
    let keys = s.path("keys");
    std::fs::write(keys.join(".new"), content).unwrap();
    std::fs::rename(keys.join(".new"), keys.join(org)).unwrap();
}

#[tokio::test]
async fn an_empty_or_missing_key_keeps_the_gateway_unready_until_it_is_written() {
    let s = Setup::new();
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    // The Secret does not exist yet: an empty directory.
    std::fs::remove_file(s.path("keys").join(ORG)).unwrap();
    let mut gw = s.spawn(&p.url().unwrap(), &[]);
    readyz_becomes(&mut gw, 503, &["no provider key in", "without a restart"]).await;

    // `--from-literal=acme="$ANTHROPIC_API_KEY"` with the variable unset; whitespace only
    // is empty too.
    write_key(&s, ORG, "");
    readyz_becomes(&mut gw, 503, &["org 'acme'", "is empty", "provider-keys Secret"]).await;
    write_key(&s, ORG, " \n\t\n");
    readyz_becomes(&mut gw, 503, &["org 'acme'", "is empty"]).await;
    let (svid, trat) = (s.svid("run-e"), s.trat("run-e", "txn-e"));
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 503, "{}", a.text());

    // A key that cannot be sent: named as unusable, its content never shown.
    write_key(&s, ORG, "sk-SECRET\nVALUE");
    let body = readyz_becomes(&mut gw, 503, &["org 'acme'", "cannot be sent in a header"]).await;
    assert!(!body.contains("SECRET") && !body.contains("VALUE"), "{body}");

    // The key arrives: ready on the next probe, same process, and the key is used.
    write_key(&s, ORG, &format!("{ORG_KEY}\n"));
    let body = readyz_becomes(&mut gw, 200, &[]).await;
    assert!(!body.contains(ORG_KEY), "{body}");
    assert_eq!(gw.child.try_wait().unwrap(), None, "no restart");
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(p.requests()[0].header("x-api-key"), Some(ORG_KEY));

    // A second org's Secret key added empty: that org's requests fail, naming its file, but
    // the gateway stays ready for `acme` (an unready pod would leave the Service for all).
    write_key(&s, "globex", "\n");
    let mut claims = trat_claims("run-g", "txn-g");
    claims["tctx"]["org_id"] = serde_json::json!("globex");
    let trat = s.trat_key.sign(&claims);
    let g = call(&gw, Some(&s.svid("run-g")), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(g.status, 503, "{}", g.text());
    assert!(g.text().contains("globex") && !g.text().contains(ORG_KEY), "{}", g.text());
    readyz_becomes(&mut gw, 200, &[]).await;
    let a = call(
        &gw,
        Some(&s.svid("run-e")),
        Some(&s.trat("run-e", "txn-e")),
        messages_body(false, 5, "x"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn listed_anthropic_orgs_need_a_key_and_bedrock_orgs_do_not() {
    let s = Setup::new();
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let config = s.path("gateway.yaml");
    // `globex` is on Bedrock (credentials from a directory that has none yet: its requests
    // fail, the gateway stays ready, as the chart says); `initech` is on Anthropic, and no
    // other org has a key yet.
    std::fs::remove_file(s.path("keys").join(ORG)).unwrap();
    std::fs::write(
        &config,
        format!(
            "orgs:\n  initech: {{}}\n  globex:\n    provider: bedrock\n    bedrock:\n      \
             region: us-east-1\n      modelIds: {{m: m}}\n      credentials:\n        \
             secretDir: {}\n",
            s.path("keys").display()
        ),
    )
    .unwrap();
    let mut gw = s.spawn(&p.url().unwrap(), &["--config", config.to_str().unwrap()]);
    let body = readyz_becomes(
        &mut gw,
        503,
        &["org 'initech'", "create", "initech with the org's API key"],
    )
    .await;
    assert!(!body.contains("globex") && !body.contains("org 'acme'"), "{body}");
    write_key(&s, "initech", "sk-initech");
    readyz_becomes(&mut gw, 200, &[]).await;
}
