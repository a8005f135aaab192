//! The whole chain to Amazon Bedrock, every part real (issue 14 item 4): a real client →
//! `sanctum-bridge` → Unix socket → `sanctum-forwarder forward` → `sanctum-gateway`, whose
//! `--config` makes the org a Bedrock org (static credentials from a Secret directory) → the
//! testkit's stand-in Bedrock, which verifies SigV4 independently of the gateway and refuses a
//! body that is not Bedrock's. The client speaks the Messages API and never learns it was
//! Bedrock: printing the stand-in's answer proves the translation back; the stand-in's record
//! proves what crossed the last hop; the audit line must carry the usage the stand-in reported.
//!
//! Clients: the native Claude Code CLI (`-p`, streaming), the anthropic Python SDK (JSON and
//! streaming) and the Python Agent SDK (the native CLI it bundles, with an in-process tool).
//! They skip unless installed (`tests/clients/install.sh`); `SANCTUM_REQUIRE_ALL=1` fails
//! instead.

mod gateway_support;

use gateway_support::chain::{PodSide, bridge_binary, pod_side, pod_tokens};
use gateway_support::*;
use sanctum_testkit::bedrock::{Bedrock, BedrockConfig, EXAMPLE_KEY_ID, EXAMPLE_SECRET};
use sanctum_testkit::{Recorded, clients};
use serde_json::Value;

const RUN: &str = "run-bedrock-chain";
const TXN: &str = "txn-bedrock-chain";
/// What every other Claude model name maps to (Claude Code 2.1.332 asks for its own default
/// model, whatever its name), as an org would map to an inference profile.
const SONNET_ID: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
/// The small model Claude Code may use for side requests.
const HAIKU_ID: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

/// The org's config: Bedrock at the stand-in, a model map that covers every `claude-*` name
/// the clients send (haiku names to their own id), credentials from a Secret directory. The
/// betas request policy is the default (`*`: none refused) and so is `bedrock.betas`: of the
/// `anthropic-beta` names Claude Code sends, those Bedrock takes are passed on in
/// `anthropic_beta`, the others left out — the stand-in refuses unknown names as Bedrock
/// does, so Claude Code's calls passing proves it.
fn config(endpoint: &str, secret_dir: &std::path::Path) -> String {
    format!(
        "orgs:\n  {ORG}:\n    provider: bedrock\n    bedrock:\n      region: us-east-1\n      \
         endpoint: {endpoint}\n      modelIds:\n        'claude-haiku-*': '{HAIKU_ID}'\n        \
         'claude-*': '{SONNET_ID}'\n      credentials:\n        secretDir: {}\n",
        secret_dir.display()
    )
}

/// The chain, running: stand-in Bedrock ← gateway ← forwarder ← bridge.
struct Chain {
    s: Setup,
    standin: Bedrock,
    gw: Gateway,
    pod: PodSide,
    svid: String,
    trat: String,
}

/// Starts the chain, or returns `None` (after a SKIP line) when the bridge is not built.
async fn chain() -> Option<Chain> {
    let bridge = bridge_binary()?;
    let s = Setup::new();
    let (svid, trat) = pod_tokens(&s, RUN, TXN);
    // Only the two ids of the map exist at the stand-in; the example key pair signs.
    let standin = Bedrock::start(BedrockConfig {
        models: vec![SONNET_ID.into(), HAIKU_ID.into()],
        ..BedrockConfig::default()
    })
    .await
    .unwrap();
    // The org's AWS Secret as the chart mounts it: one file per key.
    let aws = s.path("aws-acme");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(aws.join("aws_access_key_id"), format!("{EXAMPLE_KEY_ID}\n")).unwrap();
    std::fs::write(aws.join("aws_secret_access_key"), format!("{EXAMPLE_SECRET}\n")).unwrap();
    let file = s.path("gateway.yaml");
    std::fs::write(&file, config(&standin.url(), &aws)).unwrap();
    // --upstream is Anthropic's, unused by this org: a closed port proves it.
    let gw = s.gateway("http://127.0.0.1:9", &["--config", file.to_str().unwrap()]).await;
    let pod = pod_side(&bridge, &s, &gw).await;
    Some(Chain { s, standin, gw, pod, svid, trat })
}

fn json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{} sent a body that is not JSON ({e}): {:?}", r.target, r.body))
}

impl Chain {
    fn base_url(&self) -> String {
        format!("http://{}", self.pod.bridge_addr)
    }

    /// What reached Bedrock: only invokes of a mapped model, SigV4-signed (the stand-in
    /// verified each signature, or it would have answered 403 and the client failed), bodies
    /// rewritten for Bedrock, and nothing of the pod's credentials. Returns the invokes.
    fn assert_bedrock_saw_signed_rewritten_invokes(&self) -> Vec<Recorded> {
        let seen = self.standin.requests();
        assert!(!seen.is_empty(), "nothing reached the stand-in Bedrock");
        for r in &seen {
            assert!(
                r.target.starts_with(&format!("/model/{}/", encode(SONNET_ID)))
                    || r.target.starts_with(&format!("/model/{}/", encode(HAIKU_ID))),
                "{}",
                r.target
            );
            let auth = r.header("authorization").unwrap_or_default();
            assert!(
                auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                    && auth.contains("/us-east-1/bedrock/aws4_request"),
                "{auth}"
            );
            assert!(r.header("x-amz-date").is_some(), "{:?}", r.headers);
            for name in ["x-api-key", "txn-token", "anthropic-beta", "anthropic-version"] {
                assert_eq!(r.count(name), 0, "{name} reached Bedrock");
            }
            for secret in [clients::PLACEHOLDER_KEY, &self.svid, &self.trat] {
                assert!(!r.any_header_contains(secret), "a pod credential reached Bedrock");
                assert!(
                    !String::from_utf8_lossy(&r.body).contains(secret),
                    "a pod credential is in the body sent to Bedrock"
                );
            }
            let body = json(r);
            assert!(body.get("model").is_none() && body.get("stream").is_none(), "{body}");
            assert_eq!(body["anthropic_version"], "bedrock-2023-05-31");
            assert!(body["messages"].as_array().is_some_and(|m| !m.is_empty()), "{body}");
        }
        seen
    }

    /// The audit line of every invoke: the run, the org, status 200 and exactly the usage
    /// the stand-in reported; complete. Returns the lines of the answered requests.
    async fn assert_audited_with_exact_usage(&self, invokes: usize) -> Vec<Value> {
        let audit = audit_lines(&self.s.path("audit.log"), invokes).await;
        let ok: Vec<_> = audit.iter().filter(|l| l["status"] == 200).cloned().collect();
        assert_eq!(ok.len(), invokes, "one audit line per invoke: {audit:?}");
        let usage = &BedrockConfig::default().provider.usage;
        for l in &ok {
            assert_eq!(l["txn"], TXN, "{l}");
            assert_eq!(l["spiffe_id"], spiffe(RUN), "{l}");
            assert_eq!(l["org"], ORG, "{l}");
            assert_eq!(l["input_tokens"], usage.input_tokens, "{l}");
            assert_eq!(l["output_tokens"], usage.output_tokens, "{l}");
            assert!(l.get("incomplete").is_none(), "{l}");
        }
        ok
    }
}

/// The model id as a URI label (what the gateway puts in the path): `:` is `%3A`.
fn encode(id: &str) -> String {
    id.replace(':', "%3A")
}

/// `claude -p` through the chain to Bedrock: it streams its answer from
/// `invoke-with-response-stream`, prints the stand-in's text, and the gateway audits the
/// usage of the translated stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_claude_code_through_the_chain_to_bedrock() {
    let Some(claude) = clients::claude_native() else { return };
    let Some(c) = chain().await else { return };
    // Checks exit status 0, `is_error: false` and the stand-in's answer as `result`.
    let result = clients::run_claude(&claude, &c.base_url()).await;

    let seen = c.assert_bedrock_saw_signed_rewritten_invokes();
    let streamed: Vec<_> =
        seen.iter().filter(|r| r.target.ends_with("/invoke-with-response-stream")).collect();
    assert!(!streamed.is_empty(), "claude -p streams its answer: {seen:?}");
    // Claude Code's betas Bedrock takes reached it in the body (the stand-in refused none).
    assert!(
        streamed.iter().any(|r| json(r)["anthropic_beta"].as_array().is_some_and(|b| b
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.starts_with("claude-code-"))))),
        "{:?}",
        streamed.iter().map(|r| json(r)["anthropic_beta"].clone()).collect::<Vec<_>>()
    );
    let ok = c.assert_audited_with_exact_usage(seen.len()).await;
    assert!(ok.iter().any(|l| l["stream"] == true), "{ok:?}");
    // What the CLI reports per model is what the stand-in reported, under the model name the
    // CLI asked for (the gateway audits that name, not the Bedrock id).
    let usage = &BedrockConfig::default().provider.usage;
    for l in &ok {
        let model = l["model"].as_str().unwrap_or_default();
        let calls = ok.iter().filter(|o| o["model"] == model).count() as u64;
        let reported = &result["modelUsage"][model];
        assert_eq!(reported["inputTokens"], usage.input_tokens * calls, "{model}: {result}");
        assert_eq!(reported["outputTokens"], usage.output_tokens * calls, "{model}: {result}");
    }
    drop(c.gw);
}

/// The anthropic Python SDK, one JSON and one streamed call: `invoke`, then
/// `invoke-with-response-stream`, each answered, printed and audited with the exact usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_through_the_chain_to_bedrock() {
    let Some(python) = clients::python_sdk() else { return };
    let Some(c) = chain().await else { return };
    // Checks both answers' text and the streamed usage (25/12, the stand-in's).
    clients::run_python_sdk(&python, &c.base_url()).await;

    let seen = c.assert_bedrock_saw_signed_rewritten_invokes();
    let targets: Vec<_> = seen.iter().map(|r| r.target.as_str()).collect();
    let path = format!("/model/{}/", encode(SONNET_ID));
    assert_eq!(
        targets,
        [format!("{path}invoke"), format!("{path}invoke-with-response-stream")],
        "claude-sonnet-4-5 maps to the org's id"
    );
    let ok = c.assert_audited_with_exact_usage(2).await;
    let streams: Vec<_> = ok.iter().map(|l| l["stream"].clone()).collect();
    assert_eq!(streams, [false, true], "{ok:?}");
}

/// The Python Agent SDK's `query()` (its bundled native CLI, an in-process MCP tool offered)
/// through the chain to Bedrock: the tool reaches the model in the rewritten body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_sdk_through_the_chain_to_bedrock() {
    let Some(python) = clients::agent_sdk() else { return };
    let Some(c) = chain().await else { return };
    clients::run_agent_sdk(&python, &c.base_url()).await;
    let seen = c.assert_bedrock_saw_signed_rewritten_invokes();
    assert!(
        seen.iter().any(|r| json(r)["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == clients::AGENT_SDK_TOOL))),
        "the SDK's in-process tool {} was offered to the model",
        clients::AGENT_SDK_TOOL
    );
    c.assert_audited_with_exact_usage(seen.len()).await;
}
