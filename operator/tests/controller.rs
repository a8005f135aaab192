//! The reconciler against kube's mock service (`tower-test`), as kube-rs's controller-rs
//! does: each scenario states the exact requests the operator must make, in order, and what
//! they must carry, and that it makes no others.

use std::collections::VecDeque;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::crd::ScannerRun;
use sanctum_operator::metrics::Metrics;
use sanctum_operator::reconcile::{Context, reconcile, save_revoked};
use sanctum_operator::revoked::Revoked;
use sanctum_operator::tokens::{Signer, SignerSlot};
use serde_json::{Value, json};

const UID: &str = "7f1d7a3e-0000-4000-8000-000000000001";

type Check = Box<dyn Fn(&Value) + Send>;

/// One request the operator must make, and the answer it gets.
struct Expect {
    method: Method,
    path: String,
    status: StatusCode,
    /// `None`: echo the request body back.
    response: Option<Value>,
    check: Check,
}

fn expect(
    method: Method,
    path: &str,
    status: u16,
    response: Option<Value>,
    check: impl Fn(&Value) + Send + 'static,
) -> Expect {
    Expect {
        method,
        path: path.into(),
        status: StatusCode::from_u16(status).unwrap(),
        response,
        check: Box::new(check),
    }
}

fn not_found() -> Option<Value> {
    Some(
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404,"message":"not found"}),
    )
}

fn run_json(status: Value) -> Value {
    json!({
        "apiVersion": "sanctum.dev/v1alpha1", "kind": "ScannerRun",
        "metadata": {"name": "run-1", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "41",
            "creationTimestamp": "2026-11-22T10:00:00Z", "finalizers": ["sanctum.dev/revoke"]},
        "spec": {"image": "ghcr.io/example/scanner:1", "orgId": "acme", "source": {"volume": {"claimName": "repo"}}},
        "status": status,
    })
}

fn pod_json(status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "run-1-scanner", "namespace": "ns",
            "ownerReferences": [{"apiVersion": "sanctum.dev/v1alpha1", "kind": "ScannerRun", "name": "run-1", "uid": UID, "controller": true}]},
        "spec": {"containers": [{"name": "scanner", "image": "x"}]},
        "status": status,
    })
}

fn scanner_terminated(phase: &str, exit_code: i32, reason: &str, message: Option<&str>) -> Value {
    let mut terminated =
        json!({"exitCode": exit_code, "reason": reason, "finishedAt": "2026-11-22T10:05:00Z"});
    if let Some(m) = message {
        terminated["message"] = json!(m);
    }
    json!({"phase": phase, "startTime": "2026-11-22T10:01:00Z",
        "containerStatuses": [{"name": "scanner", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": terminated}}]})
}

const POD: &str = "/api/v1/namespaces/ns/pods/run-1-scanner";
const STATUS: &str = "/apis/sanctum.dev/v1alpha1/namespaces/ns/scannerruns/run-1/status";
const POLICY: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/run-1-scanner";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn event(reason: &'static str, kind: &'static str) -> Expect {
    expect(Method::POST, EVENTS, 201, None, move |body| {
        assert_eq!(body["reason"], reason, "event reason");
        assert_eq!(body["type"], kind, "event type");
        assert_eq!(body["regarding"]["name"], "run-1");
    })
}

fn status_patch(status: Value, check: impl Fn(&Value) + Send + 'static) -> Expect {
    expect(Method::PATCH, STATUS, 200, Some(run_json(status)), move |body| check(&body["status"]))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The operator config of the scenarios: namespace `ns` bills org `acme`.
fn config() -> OperatorConfig {
    OperatorConfig::parse("tenancy:\n  namespaces:\n    ns: {orgId: acme}\n", "c.yaml".as_ref())
        .unwrap()
}

/// Runs `reconcile` for `run` against a mock API server that expects exactly `script`.
async fn scenario(run: Value, script: Vec<Expect>, signer: SignerSlot) -> Arc<Context> {
    scenario_with(config(), run, script, signer).await
}

async fn scenario_with(
    config: OperatorConfig,
    run: Value,
    script: Vec<Expect>,
    signer: SignerSlot,
) -> Arc<Context> {
    let run: ScannerRun = serde_json::from_value(run).unwrap();
    scripted(config, signer, Arc::new(Revoked::default()), script, Act::Reconcile(Arc::new(run)))
        .await
}

/// What the operator does against the scripted API server.
enum Act {
    /// One reconcile of the run.
    Reconcile(Arc<ScannerRun>),
    /// One pass of the revoked list's save loop.
    SaveRevoked,
}

async fn scripted(
    config: OperatorConfig,
    signer: SignerSlot,
    revoked: Arc<Revoked>,
    script: Vec<Expect>,
    act: Act,
) -> Arc<Context> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        signer: Arc::new(signer),
        recorder: Recorder::new(
            client,
            Reporter { controller: "sanctum-operator".into(), instance: None },
        ),
        revoked,
        metrics: Arc::new(Metrics::default()),
        failures: Default::default(),
    });
    let server = tokio::spawn(async move {
        let mut script: VecDeque<Expect> = script.into();
        while let Some(next) = script.pop_front() {
            let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                panic!("expected {} {}, but no request came", next.method, next.path)
            });
            assert_eq!(
                (request.method(), request.uri().path()),
                (&next.method, next.path.as_str()),
                "unexpected request"
            );
            if matches!(next.method, Method::PATCH | Method::POST) && !next.path.contains("events")
            {
                let query = request.uri().query().unwrap_or("");
                assert!(
                    query.contains("fieldManager=sanctum-operator"),
                    "{} {} without the field manager: {query}",
                    next.method,
                    next.path
                );
            }
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            (next.check)(&body);
            let answer = next.response.unwrap_or(body);
            send.send_response(
                Response::builder()
                    .status(next.status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
        handle
    });
    let acting = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match act {
                Act::Reconcile(run) => reconcile(run, ctx).await.map(drop),
                Act::SaveRevoked => save_revoked(&ctx).await,
            }
        })
    };
    let wait = std::time::Duration::from_secs(5);
    let mut handle = tokio::time::timeout(wait, server)
        .await
        .expect("the operator made fewer requests than expected")
        .unwrap();
    // A request beyond the script would get no answer: catch it instead of hanging.
    let extra =
        tokio::time::timeout(std::time::Duration::from_millis(300), handle.next_request()).await;
    if let Ok(Some((request, _))) = extra {
        panic!("unexpected extra request {} {}", request.method(), request.uri());
    }
    tokio::time::timeout(wait, acting)
        .await
        .expect("reconcile hung")
        .unwrap()
        .expect("reconcile failed");
    ctx
}

fn key_slot() -> SignerSlot {
    SignerSlot::new(None, Some(Signer::ephemeral().unwrap()))
}

#[tokio::test]
async fn new_run_creates_secret_policy_pod_then_reports_pending() {
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        expect(Method::POST, "/api/v1/namespaces/ns/secrets", 201, None, |body| {
            assert_eq!(body["metadata"]["name"], "run-1-sanctum");
            assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], UID);
            assert!(body["data"]["trat.jwt"].is_string());
        }),
        status_patch(json!({"phase": "Pending"}), |status| {
            assert_eq!(condition(status, "SecretCreated")["status"], "True");
        }),
        expect(Method::GET, POLICY, 404, not_found(), |_| {}),
        expect(
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/run-1-scanner",
            200,
            None,
            |body| {
                // No ingress rule denies all ingress; `[]` would be stored as absent and
                // differ from the stored policy on every pass.
                assert!(body["spec"].get("ingress").is_none(), "{body}");
                assert_eq!(body["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
                assert_eq!(body["spec"]["podSelector"]["matchLabels"]["sanctum.dev/run"], "run-1");
            },
        ),
        expect(Method::PATCH, POD, 200, None, |body| {
            assert_eq!(body["metadata"]["labels"]["sanctum.dev/run-id"], UID);
            assert_eq!(body["spec"]["restartPolicy"], "Never");
            assert_eq!(body["spec"]["activeDeadlineSeconds"], 3600);
        }),
        status_patch(json!({"phase": "Pending"}), |status| {
            assert_eq!(status["phase"], "Pending");
            assert_eq!(status["podName"], "run-1-scanner");
            assert_eq!(status["observedGeneration"], 1);
            assert_eq!(condition(status, "Provisioned")["status"], "True");
            assert_eq!(condition(status, "SecretCreated")["status"], "True", "the record stays");
        }),
        event("Created", "Normal"),
    ];
    let ctx = scenario(run_json(json!(null)), script, key_slot()).await;
    assert!(ctx.revoked.is_empty());
}

#[tokio::test]
async fn running_pod_moves_the_run_to_running() {
    let pod = pod_json(json!({"phase": "Running", "startTime": "2026-11-22T10:01:00Z",
        "containerStatuses": [{"name": "scanner", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-11-22T10:01:05Z"}}}]}));
    let script = vec![
        expect(Method::GET, POD, 200, Some(pod), |_| {}),
        status_patch(json!({"phase": "Running"}), |status| {
            assert_eq!(status["phase"], "Running");
            assert_eq!(status["startTime"], "2026-11-22T10:01:00Z");
            assert_eq!(condition(status, "Started")["status"], "True");
        }),
        event("Running", "Normal"),
    ];
    scenario(run_json(json!({"phase": "Pending", "podName": "run-1-scanner"})), script, key_slot())
        .await;
}

#[tokio::test]
async fn succeeded_pod_records_the_result_and_revokes() {
    let summary = r#"{"findings":{"critical":0,"high":2,"medium":1,"low":0,"note":0},"costUsd":0.42,"sarif":"/output/results.sarif"}"#;
    let script = vec![
        expect(
            Method::GET,
            POD,
            200,
            Some(pod_json(scanner_terminated("Succeeded", 0, "Completed", Some(summary)))),
            |_| {},
        ),
        status_patch(json!({"phase": "Succeeded"}), |status| {
            assert_eq!(status["phase"], "Succeeded");
            assert_eq!(status["result"]["findings"]["high"], 2);
            assert_eq!(status["result"]["costUsd"], 0.42);
            assert_eq!(status["result"]["sarif"], "/output/results.sarif");
            assert_eq!(status["findings"], "C0 H2 M1 L0 N0");
            assert_eq!(status["completionTime"], "2026-11-22T10:05:00Z");
            assert_eq!(condition(status, "Finished")["reason"], "Succeeded");
            assert_eq!(condition(status, "ResultRecorded")["status"], "True");
        }),
        event("Succeeded", "Normal"),
    ];
    let ctx = scenario(
        run_json(json!({"phase": "Running", "podName": "run-1-scanner"})),
        script,
        key_slot(),
    )
    .await;
    assert!(ctx.revoked.to_json(0).contains(UID), "the run's txn is revoked");
}

#[tokio::test]
async fn failed_scanner_without_summary_says_both() {
    let script = vec![
        expect(
            Method::GET,
            POD,
            200,
            Some(pod_json(scanner_terminated("Failed", 2, "Error", None))),
            |_| {},
        ),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(condition(status, "Finished")["reason"], "ScannerFailed");
            assert!(status["message"].as_str().unwrap().contains("exit"));
            let result = condition(status, "ResultRecorded");
            assert_eq!(
                (result["status"].as_str(), result["reason"].as_str()),
                (Some("False"), Some("MissingSummary"))
            );
        }),
        event("ScannerFailed", "Warning"),
        event("MissingSummary", "Warning"),
    ];
    let ctx = scenario(
        run_json(json!({"phase": "Running", "podName": "run-1-scanner"})),
        script,
        key_slot(),
    )
    .await;
    assert!(!ctx.revoked.is_empty());
}

#[tokio::test]
async fn oom_killed_scanner_says_to_raise_the_memory_limit() {
    let script = vec![
        expect(
            Method::GET,
            POD,
            200,
            Some(pod_json(scanner_terminated("Failed", 137, "OOMKilled", Some("not json")))),
            |_| {},
        ),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(condition(status, "Finished")["reason"], "OOMKilled");
            assert!(status["message"].as_str().unwrap().contains("limits.memory"));
            assert_eq!(condition(status, "ResultRecorded")["reason"], "MalformedSummary");
        }),
        event("OOMKilled", "Warning"),
        event("MalformedSummary", "Warning"),
    ];
    scenario(run_json(json!({"phase": "Running", "podName": "run-1-scanner"})), script, key_slot())
        .await;
}

#[tokio::test]
async fn deadline_exceeded() {
    let pod = pod_json(
        json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node longer than the specified deadline", "startTime": "2026-11-22T10:01:00Z"}),
    );
    let script = vec![
        expect(Method::GET, POD, 200, Some(pod), |_| {}),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(condition(status, "Finished")["reason"], "DeadlineExceeded");
            assert!(status["message"].as_str().unwrap().contains("timeoutSeconds"));
        }),
        event("DeadlineExceeded", "Warning"),
        event("MissingSummary", "Warning"),
    ];
    scenario(run_json(json!({"phase": "Running", "podName": "run-1-scanner"})), script, key_slot())
        .await;
}

#[tokio::test]
async fn pod_deleted_underneath_fails_the_run_and_does_not_recreate() {
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(condition(status, "Finished")["reason"], "PodDeleted");
            assert!(status["message"].as_str().unwrap().contains("create a new ScannerRun"));
        }),
        event("PodDeleted", "Warning"),
    ];
    let ctx = scenario(
        run_json(json!({"phase": "Running", "podName": "run-1-scanner"})),
        script,
        key_slot(),
    )
    .await;
    assert!(!ctx.revoked.is_empty());
}

#[tokio::test]
async fn deleted_run_makes_no_requests_and_revokes() {
    let mut run = run_json(json!({"phase": "Running", "podName": "run-1-scanner"}));
    run["metadata"]["deletionTimestamp"] = json!("2026-11-22T10:03:00Z");
    run["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    let ctx = scenario(run, vec![], key_slot()).await;
    assert!(ctx.revoked.to_json(0).contains(UID));
}

/// A finished run that no longer holds our finalizer: no request at all.
#[tokio::test]
async fn finished_run_is_left_alone() {
    let mut run = run_json(json!({"phase": "Succeeded", "podName": "run-1-scanner"}));
    run["metadata"]["finalizers"] = json!(["other.example/keep"]);
    let ctx = scenario(run, vec![], key_slot()).await;
    assert!(ctx.revoked.to_json(0).contains(UID), "its txn stays revoked");
}

/// A finished run lets go of `sanctum.dev/revoke` once its txn is saved as revoked, so
/// deleting it (or its namespace, after `helm uninstall`) never waits on an operator that
/// is gone. Only our finalizer goes, guarded by the run's resourceVersion.
#[tokio::test]
async fn finished_run_drops_only_our_finalizer_once_its_txn_is_saved() {
    let mut run = run_json(json!({"phase": "Failed", "podName": "run-1-scanner"}));
    run["metadata"]["finalizers"] = json!(["sanctum.dev/revoke", "other.example/keep"]);
    // Created just now, so its entry has not expired by the time the list is written.
    run["metadata"]["creationTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
    released_after_the_save(run, |list| assert_eq!(list["revoked"][0]["txn"], UID)).await;
}

/// The finalizer's protocol, in three passes against the scripted API server: the run's
/// txn is revoked but not saved yet, so the run waits (no request; a thousand runs ending
/// at once do not each write the list); the save loop writes the list (`check_list` sees
/// its `revoked.json`); the next pass removes only our finalizer, guarded by the run's
/// resourceVersion.
async fn released_after_the_save(run: Value, check_list: impl Fn(&Value) + Send + 'static) {
    let revoked = Arc::new(Revoked::default());
    let run: Arc<ScannerRun> = Arc::new(serde_json::from_value(run).unwrap());
    let pass = |script, act| scripted(config(), key_slot(), revoked.clone(), script, act);
    pass(vec![], Act::Reconcile(run.clone())).await;
    assert!(revoked.is_dirty() && !revoked.is_saved(UID), "revoked, not saved yet");
    let save = expect(
        Method::PATCH,
        "/api/v1/namespaces/sanctum-system/configmaps/sanctum-revoked",
        200,
        None,
        move |body| {
            let list = serde_json::from_str(body["data"]["revoked.json"].as_str().unwrap());
            check_list(&list.unwrap());
        },
    );
    pass(vec![save], Act::SaveRevoked).await;
    assert!(revoked.is_saved(UID) && !revoked.is_dirty(), "saved");
    let release = expect(Method::PATCH, RUN, 200, Some(run_json(json!(null))), |body| {
        assert_eq!(body["metadata"]["finalizers"], json!(["other.example/keep"]));
        assert_eq!(body["metadata"]["resourceVersion"], "41");
    });
    pass(vec![release], Act::Reconcile(run)).await;
}

#[tokio::test]
async fn unbuildable_spec_fails_once_without_creating_anything() {
    let mut run = run_json(json!(null));
    run["spec"]["source"] =
        json!({"volume": {"claimName": "repo"}, "git": {"url": "https://x/y.git"}});
    let script = vec![
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(status["phase"], "Failed");
            let provisioned = condition(status, "Provisioned");
            assert_eq!(
                (provisioned["status"].as_str(), provisioned["reason"].as_str()),
                (Some("False"), Some("InvalidSource"))
            );
            assert!(status["message"].as_str().unwrap().contains("exactly one of git or volume"));
        }),
        event("InvalidSource", "Warning"),
    ];
    scenario(run, script, key_slot()).await;
}

#[tokio::test]
async fn missing_signing_key_fails_the_run_with_what_to_do() {
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(condition(status, "Provisioned")["reason"], "SigningKeyUnavailable");
            assert!(status["message"].as_str().unwrap().contains("/nonexistent/signing.pem"));
        }),
        event("SigningKeyUnavailable", "Warning"),
    ];
    scenario(
        run_json(json!(null)),
        script,
        SignerSlot::new(Some("/nonexistent/signing.pem".into()), None),
    )
    .await;
}

#[tokio::test]
async fn foreign_pod_with_the_same_name_is_a_conflict_not_a_crash() {
    let mut pod = pod_json(json!({"phase": "Running"}));
    pod["metadata"]["ownerReferences"] = json!([]);
    let script = vec![
        expect(Method::GET, POD, 200, Some(pod), |_| {}),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(condition(status, "Provisioned")["reason"], "PodConflict");
        }),
        event("PodConflict", "Warning"),
    ];
    scenario(run_json(json!(null)), script, key_slot()).await;
}

/// Issue 12 item 1: a run in a namespace that bills `acme` names `bigcorp`. It fails with
/// `OrgNotAllowed` and an Event naming the namespace, the org and the config key; no Secret
/// (token), NetworkPolicy or pod is created.
#[tokio::test]
async fn run_naming_an_org_its_namespace_may_not_bill_fails_without_a_token() {
    let mut run = run_json(json!(null));
    run["spec"]["orgId"] = json!("bigcorp");
    let says_what = |text: &str| {
        assert!(text.contains("namespace ns may bill org acme, not 'bigcorp'"), "{text}");
        assert!(text.contains("tenancy.namespaces.ns.otherOrgs: [bigcorp]"), "{text}");
    };
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        status_patch(json!({"phase": "Failed"}), move |status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(condition(status, "Provisioned")["reason"], "OrgNotAllowed");
            assert_eq!(condition(status, "Finished")["reason"], "OrgNotAllowed");
            says_what(status["message"].as_str().unwrap());
        }),
        expect(Method::POST, EVENTS, 201, None, move |body| {
            assert_eq!(
                (body["reason"].as_str(), body["type"].as_str()),
                (Some("OrgNotAllowed"), Some("Warning"))
            );
            says_what(body["note"].as_str().unwrap());
        }),
    ];
    scenario(run, script, key_slot()).await;
}

/// With no tenancy policy at all, a run bills no org, and the message gives the one line
/// that makes a single-tenant install work.
#[tokio::test]
async fn without_a_tenancy_policy_a_run_fails_with_the_line_to_add() {
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(condition(status, "Provisioned")["reason"], "OrgNotAllowed");
            let message = status["message"].as_str().unwrap();
            assert!(message.contains("tenancy: {defaultOrg: acme}"), "{message}");
        }),
        event("OrgNotAllowed", "Warning"),
    ];
    scenario_with(OperatorConfig::default(), run_json(json!(null)), script, key_slot()).await;
}

/// A run in the gateway's namespace (which holds the provider keys), `kube-system` or the
/// operator's own fails with `NamespaceNotAllowed` and an Event, before it gets a
/// finalizer, a token, a policy or a pod.
#[tokio::test]
async fn run_in_a_namespace_sanctum_keeps_out_of_fails_before_anything_is_created() {
    for namespace in ["scan-infra", "kube-system", "sanctum-system"] {
        let mut run = run_json(json!(null));
        run["metadata"]["namespace"] = json!(namespace);
        run["metadata"]["finalizers"] = json!([]);
        let says_what = move |text: &str| {
            assert!(text.contains(&format!("may not run in namespace {namespace} (")), "{text}");
            assert!(text.contains("create the run in a namespace meant for scans"), "{text}");
        };
        let status_path =
            format!("/apis/sanctum.dev/v1alpha1/namespaces/{namespace}/scannerruns/run-1/status");
        let script = vec![
            expect(Method::PATCH, &status_path, 200, Some(run_json(json!(null))), move |body| {
                let status = &body["status"];
                assert_eq!(status["phase"], "Failed");
                assert_eq!(condition(status, "Provisioned")["reason"], "NamespaceNotAllowed");
                assert_eq!(condition(status, "Finished")["reason"], "NamespaceNotAllowed");
                says_what(status["message"].as_str().unwrap());
            }),
            expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
                201,
                None,
                move |body| {
                    assert_eq!(body["reason"], "NamespaceNotAllowed");
                    assert_eq!(body["type"], "Warning");
                    says_what(body["note"].as_str().unwrap());
                },
            ),
        ];
        let ctx = scenario(run, script, key_slot()).await;
        assert!(ctx.revoked.is_empty(), "no token was minted");
    }
}

fn already_exists() -> Option<Value> {
    Some(
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"AlreadyExists","code":409,"message":"secrets \"run-1-sanctum\" already exists"}),
    )
}

/// Issue 12 item 3: a Secret named `<run>-sanctum` that the run did not create (someone
/// planted it, with a token of their choosing) is never mounted: the run fails with
/// `SecretConflict`, and no NetworkPolicy or pod is created.
#[tokio::test]
async fn planted_secret_with_the_run_s_name_fails_the_run_before_any_pod() {
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        expect(Method::POST, "/api/v1/namespaces/ns/secrets", 409, already_exists(), |_| {}),
        status_patch(json!({"phase": "Failed"}), |status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(condition(status, "Provisioned")["reason"], "SecretConflict");
            assert_eq!(
                status["message"],
                "a Secret run-1-sanctum exists that this run did not create; delete it or rename the run"
            );
        }),
        event("SecretConflict", "Warning"),
    ];
    scenario(run_json(json!(null)), script, key_slot()).await;
}

/// The run's own Secret, created by an earlier pass that failed before the pod (the status
/// records it), is kept: the retry goes on to the policy and the pod.
#[tokio::test]
async fn own_secret_from_an_interrupted_pass_is_kept() {
    let recorded = json!({"phase": "Pending", "conditions": [{"type": "SecretCreated", "status": "True",
        "reason": "Created", "message": "created Secret run-1-sanctum", "lastTransitionTime": "2026-11-22T10:00:01Z"}]});
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        expect(Method::POST, "/api/v1/namespaces/ns/secrets", 409, already_exists(), |_| {}),
        expect(Method::GET, POLICY, 404, not_found(), |_| {}),
        expect(
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/run-1-scanner",
            200,
            None,
            |_| {},
        ),
        expect(Method::PATCH, POD, 200, None, |_| {}),
        status_patch(json!({"phase": "Pending"}), |status| {
            assert_eq!(condition(status, "Provisioned")["status"], "True");
        }),
        event("Created", "Normal"),
    ];
    scenario(run_json(recorded), script, key_slot()).await;
}

const RUN: &str = "/apis/sanctum.dev/v1alpha1/namespaces/ns/scannerruns/run-1";

/// Issue 12 item 12: an unfinished run first gets the finalizer that lets its deletion wait
/// until its txn is saved, guarded by its resourceVersion.
#[tokio::test]
async fn unfinished_run_gets_the_revoke_finalizer_first() {
    let mut run = run_json(json!({"phase": "Running", "podName": "run-1-scanner"}));
    run["metadata"]["finalizers"] = json!(["other.example/keep"]);
    let pod = pod_json(json!({"phase": "Running", "startTime": "2026-11-22T10:01:00Z",
        "containerStatuses": [{"name": "scanner", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-11-22T10:01:05Z"}}}]}));
    let script = vec![
        expect(Method::PATCH, RUN, 200, Some(run_json(json!(null))), |body| {
            assert_eq!(
                body["metadata"]["finalizers"],
                json!(["other.example/keep", "sanctum.dev/revoke"])
            );
            assert_eq!(body["metadata"]["resourceVersion"], "41");
        }),
        expect(Method::GET, POD, 200, Some(pod), |_| {}),
        status_patch(json!({"phase": "Running"}), |_| {}),
    ];
    scenario(run, script, key_slot()).await;
}

/// Issue 12 item 12: a run deleted while it runs has its txn written to the revoked
/// ConfigMap before its finalizer is removed, so a restart cannot forget it.
#[tokio::test]
async fn deleted_run_is_saved_as_revoked_before_its_finalizer_goes() {
    let mut run = run_json(json!({"phase": "Running", "podName": "run-1-scanner"}));
    run["metadata"]["deletionTimestamp"] = json!("2026-11-22T10:03:00Z");
    run["metadata"]["finalizers"] = json!(["sanctum.dev/revoke", "other.example/keep"]);
    // Created just now, so its entry has not expired by the time the list is written.
    let created = k8s_openapi::jiff::Timestamp::now();
    run["metadata"]["creationTimestamp"] = json!(created.to_string());
    let created = u64::try_from(created.as_second()).unwrap();
    released_after_the_save(run, move |list| {
        assert_eq!(list["revoked"][0]["txn"], UID);
        // Kept until the token would have expired: creation + timeout + margin + slack.
        assert!(list["revoked"][0]["exp"].as_u64().unwrap() >= created + 3600 + 600);
    })
    .await;
}

#[test]
fn pod_fixture_is_a_pod() {
    let _: Pod = serde_json::from_value(pod_json(json!({}))).unwrap();
}

fn forbidden(message: &str) -> Option<Value> {
    Some(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "Forbidden", "code": 403, "message": message}))
}

/// The NetworkPolicy as the API server stores what the operator applied: no `ingress`
/// (the empty list is dropped), server-set metadata.
fn stored_policy() -> Value {
    use sanctum_operator::netpol::build_network_policy;
    use sanctum_operator::plan::RunPlan;
    let run: ScannerRun = serde_json::from_value(run_json(json!(null))).unwrap();
    let config = config();
    let plan = RunPlan::new(&run, &config).unwrap();
    let mut policy = serde_json::to_value(build_network_policy(&run, &plan, &config)).unwrap();
    policy["metadata"]["uid"] = json!("0a0a0a0a-0000-4000-8000-000000000002");
    policy["metadata"]["resourceVersion"] = json!("77");
    policy["metadata"]["managedFields"] =
        json!([{"manager": "sanctum-operator", "operation": "Apply"}]);
    policy
}

const MUST_SPECIFY: &str = "pods \"run-1-scanner\" is forbidden: failed quota: compute: must specify limits.cpu for: scanner";
const EXCEEDED: &str = "pods \"run-1-scanner\" is forbidden: exceeded quota: compute, requested: limits.cpu=2, used: limits.cpu=3, limited: limits.cpu=4";

/// Issue 13 item 10: a pod the API server refuses for good (the quota demands limits the
/// pod lacks) ends the run `Failed` with an Event quoting the server, once.
#[tokio::test]
async fn refused_pod_fails_the_run_with_the_server_s_reason() {
    let quoted = format!(
        "the API server refused pod run-1-scanner: {MUST_SPECIFY}; fix what it names and create a new ScannerRun"
    );
    let q = quoted.clone();
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        expect(Method::POST, "/api/v1/namespaces/ns/secrets", 201, None, |_| {}),
        status_patch(json!({"phase": "Pending"}), |_| {}),
        expect(Method::GET, POLICY, 404, not_found(), |_| {}),
        expect(Method::PATCH, POLICY, 200, None, |_| {}),
        expect(Method::PATCH, POD, 403, forbidden(MUST_SPECIFY), |_| {}),
        status_patch(json!({"phase": "Failed"}), move |status| {
            assert_eq!(status["phase"], "Failed");
            assert_eq!(status["message"], q.as_str());
            assert_eq!(condition(status, "Provisioned")["status"], "False");
            assert_eq!(condition(status, "Provisioned")["reason"], "Rejected");
            assert_eq!(condition(status, "Finished")["status"], "True");
        }),
        expect(Method::POST, EVENTS, 201, None, move |body| {
            assert_eq!(body["reason"], "Rejected");
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["note"], quoted.as_str());
        }),
    ];
    scenario(run_json(json!(null)), script, key_slot()).await;
}

/// A quota that is used up now waits: `Pending` with `Provisioned=False/QuotaExceeded`
/// and one Event; the stored NetworkPolicy (no `ingress`, as the server keeps it) is not
/// written again.
#[tokio::test]
async fn exceeded_quota_waits_with_a_condition_and_writes_no_unchanged_policy() {
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        expect(Method::POST, "/api/v1/namespaces/ns/secrets", 201, None, |_| {}),
        status_patch(json!({"phase": "Pending"}), |_| {}),
        expect(Method::GET, POLICY, 200, Some(stored_policy()), |_| {}),
        expect(Method::PATCH, POD, 403, forbidden(EXCEEDED), |_| {}),
        status_patch(json!({"phase": "Pending"}), |status| {
            assert_eq!(status["phase"], "Pending");
            let c = condition(status, "Provisioned");
            assert_eq!((&c["status"], &c["reason"]), (&json!("False"), &json!("QuotaExceeded")));
            assert!(c["message"].as_str().unwrap().contains(EXCEEDED), "{c}");
            assert!(status.get("completionTime").is_none());
        }),
        event("QuotaExceeded", "Warning"),
    ];
    scenario(run_json(json!(null)), script, key_slot()).await;
}

/// The retry of a waiting run that is refused the same way writes nothing at all: no
/// policy, no status, no Event (each write would wake the controller again).
#[tokio::test]
async fn a_retry_refused_the_same_way_writes_nothing() {
    let message = format!(
        "the API server refused pod run-1-scanner: {EXCEEDED}; the run waits and retries until the namespace's quota has room (finished pods free it, or raise the ResourceQuota)"
    );
    let waiting = json!({"phase": "Pending", "message": message, "observedGeneration": 1, "conditions": [
        {"type": "SecretCreated", "status": "True", "reason": "Created", "message": "created Secret run-1-sanctum holding the run's TraT",
         "observedGeneration": 1, "lastTransitionTime": "2026-11-22T10:00:01Z"},
        {"type": "Provisioned", "status": "False", "reason": "QuotaExceeded", "message": message,
         "observedGeneration": 1, "lastTransitionTime": "2026-11-22T10:00:02Z"}]});
    let script = vec![
        expect(Method::GET, POD, 404, not_found(), |_| {}),
        expect(Method::POST, "/api/v1/namespaces/ns/secrets", 409, already_exists(), |_| {}),
        expect(Method::GET, POLICY, 200, Some(stored_policy()), |_| {}),
        expect(Method::PATCH, POD, 403, forbidden(EXCEEDED), |_| {}),
    ];
    scenario(run_json(waiting), script, key_slot()).await;
}

#[test]
fn retries_slow_down_between_5_s_and_5_min() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use sanctum_operator::reconcile::retry_delay;
    let t = |s: &str| Time(s.parse().unwrap());
    let since = t("2026-11-22T10:00:00Z");
    assert_eq!(retry_delay(&since, &t("2026-11-22T10:00:01Z")).as_secs(), 5);
    assert_eq!(retry_delay(&since, &t("2026-11-22T10:01:00Z")).as_secs(), 60);
    assert_eq!(retry_delay(&since, &t("2026-11-22T12:00:00Z")).as_secs(), 300);
}
