//! The Bedrock pieces of the gateway against the stand-in Bedrock, over real loopback TCP:
//! requests rewritten and signed by `sanctum_gateway::bedrock` are checked by the stand-in's
//! own SigV4 implementation (written from the AWS docs, not with `aws-sigv4`), its event
//! streams (framed by hand) are decoded back to SSE, and web identity goes through its STS.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sanctum_common::proxy::{Limits, ProxyBody, ProxyMetrics, Upstream, UpstreamClient};
use sanctum_gateway::bedrock::credentials::{ACCESS_KEY_FILE, SECRET_KEY_FILE, SESSION_TOKEN_FILE};
use sanctum_gateway::bedrock::eventstream::error_json;
use sanctum_gateway::bedrock::{
    AwsCredentials, CredentialsError, EventStreamToSse, ModelMap, SERVICE, SecretDirCredentials,
    WebIdentity, WebIdentityConfig, rewrite, sign_parts,
};
use sanctum_gateway::usage::{self, Usage};
use sanctum_testkit::bedrock::{
    AwsKey, Bedrock, BedrockConfig, EXAMPLE_KEY_ID, EXAMPLE_SECRET, StsConfig,
};
use sanctum_testkit::{Reply, Usage as StandinUsage};
use serde_json::Value;

const REGION: &str = "eu-central-1";
const MODEL_ID: &str = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0";

fn models() -> ModelMap {
    ModelMap::new([("claude-sonnet-4-5-20250929".to_owned(), MODEL_ID.to_owned())])
}

fn config() -> BedrockConfig {
    let mut c = BedrockConfig {
        region: REGION.into(),
        models: vec![MODEL_ID.into()],
        ..Default::default()
    };
    c.keys.push(AwsKey::new("ASIATEMPEXAMPLE", "temp/secret", Some("session-token-example")));
    c.provider.reply = Reply::Text("Hello from the stand-in Bedrock, in several pieces.".into());
    c.provider.usage = StandinUsage {
        input_tokens: 321,
        output_tokens: 54,
        cache_creation_input_tokens: 7,
        cache_read_input_tokens: 1000,
    };
    c.provider.deltas = 5;
    c
}

fn client(url: &str) -> UpstreamClient {
    UpstreamClient::new(
        Upstream::url(url).unwrap(),
        &Limits::default(),
        Arc::new(ProxyMetrics::new("bedrock_wire")),
    )
    .unwrap()
}

/// Claude Code's request, as the gateway has it after its checks.
fn messages_body(stream: bool) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 32000,
            "stream": stream,
            "system": [{"type": "text", "text": "You are Claude Code."}],
            "messages": [{"role": "user", "content": "say hello"}],
        })
        .to_string(),
    )
}

/// Rewrites, signs with `creds` for `host`, and returns the request parts and body.
fn signed(stream: bool, host: &str, creds: &AwsCredentials) -> (http::request::Parts, Bytes) {
    let br = rewrite(
        "/v1/messages?beta=true",
        ["claude-code-20250219,interleaved-thinking-2025-05-14"],
        None,
        &messages_body(stream),
        &models(),
    )
    .unwrap();
    assert_eq!(br.streaming, stream);
    let (mut parts, ()) = Request::builder()
        .method(Method::POST)
        .uri(br.path.as_str())
        .header("content-type", "application/json")
        .header(
            "accept",
            if stream { "application/vnd.amazon.eventstream" } else { "application/json" },
        )
        .header("user-agent", "claude-cli/2.1.112 (external, sdk-cli)")
        .body(())
        .unwrap()
        .into_parts();
    sign_parts(&mut parts, host, REGION, SERVICE, &br.body, creds, SystemTime::now()).unwrap();
    (parts, br.body)
}

async fn send(
    client: &UpstreamClient,
    parts: http::request::Parts,
    body: Bytes,
) -> (http::response::Parts, Vec<Bytes>) {
    let resp = client.send(Request::from_parts(parts, ProxyBody::full(body))).await.unwrap();
    let (head, mut body) = resp.into_parts();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(data);
        }
    }
    (head, frames)
}

fn concat(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.iter().copied()).collect()
}

fn example_creds() -> AwsCredentials {
    AwsCredentials::new(EXAMPLE_KEY_ID, EXAMPLE_SECRET, None, None)
}

#[tokio::test]
async fn signed_invoke_from_a_secret_dir_is_accepted_and_answered() {
    let standin = Bedrock::start(config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(ACCESS_KEY_FILE), "ASIATEMPEXAMPLE\n").unwrap();
    std::fs::write(dir.path().join(SECRET_KEY_FILE), "temp/secret\n").unwrap();
    std::fs::write(dir.path().join(SESSION_TOKEN_FILE), "session-token-example\n").unwrap();
    let creds = SecretDirCredentials::new(dir.path(), Duration::ZERO).get().unwrap();

    let (parts, body) = signed(false, &standin.host(), &creds);
    let (head, frames) = send(&client(&standin.url()), parts, body).await;
    let answer = concat(&frames);
    assert_eq!(head.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
    let message: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(
        message["content"][0]["text"],
        "Hello from the stand-in Bedrock, in several pieces."
    );
    assert_eq!(
        usage::from_json(&answer),
        Some(Usage {
            input_tokens: 321,
            output_tokens: 54,
            cache_creation_input_tokens: 7,
            cache_read_input_tokens: 1000
        })
    );

    // What arrived is Bedrock's request: the encoded model id, the rewritten body, a token.
    let seen = standin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/model/eu.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke");
    assert_eq!(seen[0].header("x-amz-security-token"), Some("session-token-example"));
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(
        sent["anthropic_beta"],
        serde_json::json!(["claude-code-20250219", "interleaved-thinking-2025-05-14"])
    );
    assert!(sent.get("model").is_none() && sent.get("stream").is_none());
}

#[tokio::test]
async fn tampering_or_bad_credentials_get_403_in_anthropic_shape() {
    let standin = Bedrock::start(config()).await.unwrap();
    let client = client(&standin.url());

    // One byte of the signed body changed after signing.
    let (parts, body) = signed(false, &standin.host(), &example_creds());
    let mut tampered = body.to_vec();
    let at = tampered.iter().position(|b| *b == b'h').unwrap(); // "say hello"
    tampered[at] = b'j';
    let (head, frames) = send(&client, parts, Bytes::from(tampered)).await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);
    let exception = head.headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok());
    assert!(exception.unwrap().starts_with("InvalidSignatureException"));
    let (status, translated) = error_json(403, exception, &concat(&frames));
    let v: Value = serde_json::from_slice(&translated).unwrap();
    assert_eq!(status, 403);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "permission_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Amazon Bedrock: The request signature")
    );

    // The right key id with the wrong secret; an unknown key id; no signature at all.
    let wrong = AwsCredentials::new(EXAMPLE_KEY_ID, "not-the-secret", None, None);
    let (parts, body) = signed(false, &standin.host(), &wrong);
    assert_eq!(send(&client, parts, body).await.0.status, StatusCode::FORBIDDEN);
    let unknown = AwsCredentials::new("AKIDUNKNOWN", EXAMPLE_SECRET, None, None);
    let (parts, body) = signed(false, &standin.host(), &unknown);
    let (head, _) = send(&client, parts, body).await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);
    assert!(
        head.headers["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("UnrecognizedClientException")
    );
    let (mut parts, body) = signed(false, &standin.host(), &example_creds());
    parts.headers.remove("authorization");
    let (head, _) = send(&client, parts, body).await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);

    // Signed for another host than the one the client sends: refused.
    let (parts, body) =
        signed(false, "bedrock-runtime.eu-central-1.amazonaws.com", &example_creds());
    assert_eq!(send(&client, parts, body).await.0.status, StatusCode::FORBIDDEN);

    // The same request, untouched, passes.
    let (parts, body) = signed(false, &standin.host(), &example_creds());
    assert_eq!(send(&client, parts, body).await.0.status, StatusCode::OK);
}

#[tokio::test]
async fn the_standin_refuses_a_body_not_rewritten_for_bedrock() {
    let standin = Bedrock::start(config()).await.unwrap();
    let (mut parts, _) = signed(false, &standin.host(), &example_creds());
    // The client's own body (with model and stream), properly signed.
    let raw = messages_body(false);
    sign_parts(
        &mut parts,
        &standin.host(),
        REGION,
        SERVICE,
        &raw,
        &example_creds(),
        SystemTime::now(),
    )
    .unwrap();
    let (head, frames) = send(&client(&standin.url()), parts, raw).await;
    assert_eq!(head.status, StatusCode::BAD_REQUEST);
    let exception = head.headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok());
    let (status, translated) = error_json(400, exception, &concat(&frames));
    let v: Value = serde_json::from_slice(&translated).unwrap();
    assert_eq!((status, v["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    assert!(v["error"]["message"].as_str().unwrap().contains("extraneous key [model]"));
}

/// The SSE the stand-in's events make once `invocationMetrics` are dropped.
fn expected_sse(cfg: &BedrockConfig, id: &str) -> String {
    let mut out = String::new();
    for mut event in sanctum_testkit::bedrock::expected_events(cfg, id, MODEL_ID) {
        if let Some(o) = event.as_object_mut() {
            o.remove("amazon-bedrock-invocationMetrics");
        }
        out.push_str(&format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap()));
    }
    out
}

fn translate(pieces: &[&[u8]]) -> (String, EventStreamToSse) {
    let mut t = EventStreamToSse::new();
    let mut out = BytesMut::new();
    for p in pieces {
        t.feed(p, &mut out).unwrap();
    }
    t.finish(&mut out).unwrap();
    (String::from_utf8(out.to_vec()).unwrap(), t)
}

#[tokio::test]
async fn stream_decodes_to_the_sse_the_standin_encoded() {
    let cfg = config();
    let standin = Bedrock::start(cfg.clone()).await.unwrap();
    let (parts, body) = signed(true, &standin.host(), &example_creds());
    let (head, frames) = send(&client(&standin.url()), parts, body).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-type"], "application/vnd.amazon.eventstream");
    assert!(frames.len() > 3, "one write per event");

    // As it arrived over the socket.
    let pieces: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
    let (sse, t) = translate(&pieces);
    let first: Value =
        serde_json::from_str(sse.lines().nth(1).unwrap().strip_prefix("data: ").unwrap()).unwrap();
    let id = first["message"]["id"].as_str().unwrap();
    let want = expected_sse(&cfg, id);
    assert_eq!(sse, want);
    assert!(!sse.contains("invocationMetrics"));
    let wanted_usage = Usage {
        input_tokens: 321,
        output_tokens: 54,
        cache_creation_input_tokens: 7,
        cache_read_input_tokens: 1000,
    };
    assert_eq!(t.usage(), wanted_usage);
    assert!(t.stopped());
    let m = t.invocation_metrics().unwrap();
    assert_eq!((m.input_token_count, m.output_token_count), (321, 54));

    // Split in two at every byte, and cut at every frame boundary, the result is the same.
    let whole = concat(&frames);
    for at in 0..=whole.len() {
        let (sse, t) = translate(&[&whole[..at], &whole[at..]]);
        assert_eq!(sse, want, "split at {at}");
        assert_eq!(t.usage(), wanted_usage);
    }
    let mut boundaries = vec![0];
    for f in &frames {
        boundaries.push(boundaries.last().unwrap() + f.len());
    }
    let cut: Vec<&[u8]> = boundaries.windows(2).map(|w| &whole[w[0]..w[1]]).collect();
    assert_eq!(translate(&cut).0, want);
    // The SSE meters the same as the gateway's SSE usage reader would.
    let mut reader = usage::SseUsage::default();
    reader.feed(want.as_bytes());
    assert_eq!(reader.usage(), wanted_usage);
}

#[tokio::test]
async fn stream_exception_becomes_an_sse_error_event() {
    let mut cfg = config();
    cfg.stream_exception = Some((
        "throttlingException".into(),
        "Too many tokens, please wait before trying again.".into(),
    ));
    let standin = Bedrock::start(cfg).await.unwrap();
    let (parts, body) = signed(true, &standin.host(), &example_creds());
    let (head, frames) = send(&client(&standin.url()), parts, body).await;
    assert_eq!(head.status, StatusCode::OK);
    let (sse, t) = translate(&[&concat(&frames)]);
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(events, ["message_start", "error"]);
    let data = sse.lines().filter_map(|l| l.strip_prefix("data: ")).next_back().unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert_eq!(v["error"]["message"], "Too many tokens, please wait before trying again.");
    assert!(t.ended_by_error() && !t.stopped());
    assert_eq!(t.usage().input_tokens, 321);
}

#[tokio::test]
async fn web_identity_through_the_standin_sts() {
    let role = "arn:aws:iam::123456789012:role/sanctum-bedrock";
    let mut cfg = config();
    cfg.keys.clear();
    cfg.sts = Some(StsConfig {
        role_arn: role.into(),
        token: "eyJ.projected.token".into(),
        lifetime: Duration::from_secs(3600),
    });
    let standin = Bedrock::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "eyJ.projected.token\n").unwrap();
    let mut wi = WebIdentityConfig::new(role, &token_file, REGION);
    wi.sts_endpoint = standin.url();
    let identity = WebIdentity::new(wi.clone()).unwrap();
    assert!(matches!(identity.current(SystemTime::now()), Err(CredentialsError::NotYet(_))));

    let creds = identity.get().await.unwrap();
    assert!(creds.access_key_id().starts_with("ASIA") && creds.session_token().is_some());
    let left = creds.expires().unwrap().duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500), "{left:?}");
    // Cached: the next request reads memory, no second STS call.
    let again = identity.get().await.unwrap();
    assert_eq!(again.access_key_id(), creds.access_key_id());
    assert_eq!(standin.sts_calls(), 1);
    let sts_request = &standin.requests()[0];
    assert_eq!(sts_request.target, "/");
    assert!(sts_request.header("authorization").is_none(), "the STS call is unsigned");

    let (parts, body) = signed(true, &standin.host(), &again);
    let (head, frames) = send(&client(&standin.url()), parts, body).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(translate(&[&concat(&frames)]).1.stopped());

    // A bad token: the error names STS's code, never the token.
    std::fs::write(&token_file, "eyJ.stolen.token").unwrap();
    let other = WebIdentity::new(wi).unwrap();
    let err = other.get().await.unwrap_err().to_string();
    assert!(err.contains("InvalidIdentityToken") && !err.contains("eyJ"), "{err}");
    let err = other.current(SystemTime::now()).unwrap_err().to_string();
    assert!(err.contains("InvalidIdentityToken"), "{err}");
}

#[tokio::test]
async fn web_identity_refreshes_before_expiry() {
    let role = "arn:aws:iam::123456789012:role/r";
    let mut cfg = config();
    // Shorter than the 5-minute margin: every read wants fresh credentials.
    cfg.sts = Some(StsConfig {
        role_arn: role.into(),
        token: "t".into(),
        lifetime: Duration::from_secs(200),
    });
    let standin = Bedrock::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let mut wi = WebIdentityConfig::new(role, dir.path().join("token"), REGION);
    wi.sts_endpoint = standin.url();
    let identity = Arc::new(WebIdentity::new(wi).unwrap());
    let a = identity.get().await.unwrap();
    let b = identity.get().await.unwrap();
    assert_ne!(a.access_key_id(), b.access_key_id());
    assert_eq!(standin.sts_calls(), 2);
    // The background refresher keeps fresh credentials in memory.
    let task = identity.spawn_refresher();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(standin.sts_calls() >= 3);
    assert!(identity.current(SystemTime::now()).is_ok());
    task.abort();
}
