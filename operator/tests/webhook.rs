//! The webhook over real HTTPS on loopback: AdmissionReview fixtures for the injection
//! matrix, each returned JSONPatch applied to its input and the result checked as a Pod;
//! bad input; the certificate reloaded on disk while an old connection keeps working.
#![allow(clippy::unwrap_used)]

use sanctum_testkit::tls::ca_and_cert;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Pod};
use rustls::pki_types::{CertificateDer, ServerName};
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::crd::IdentitySource;
use sanctum_operator::webhook::server::{self, WebhookState};
use serde_json::{Value, json};

struct Server {
    addr: SocketAddr,
    ca: String,
    dir: tempfile::TempDir,
    state: Arc<WebhookState>,
}

fn config() -> OperatorConfig {
    let mut c = OperatorConfig::default();
    c.identity.source = IdentitySource::ServiceAccountToken;
    c.pod.seccomp_localhost_profile = None;
    c.gateway.allowed_urls = vec!["https://gw.example:8443".into()];
    c
}

async fn start(config: OperatorConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_cert("webhook").unwrap();
    std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    let tls = server::bind(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    let addr = tls.listener.local_addr().unwrap();
    let state = Arc::new(WebhookState::new(config, Some(dir.path().join("ca.crt")), None));
    tokio::spawn(server::serve(tls, state.clone(), std::future::pending()));
    Server { addr, ca, dir, state }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, ca: &str) -> (Sender, Vec<CertificateDer<'static>>) {
    try_connect(addr, ca).await.expect("TLS connection to the webhook")
}

/// `None` when the server's certificate does not verify against `ca`.
async fn try_connect(addr: SocketAddr, ca: &str) -> Option<(Sender, Vec<CertificateDer<'static>>)> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .ok()?;
    let peer = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    Some((sender, peer))
}

async fn post(sender: &mut Sender, path: &str, body: impl Into<Bytes>) -> (u16, Bytes) {
    let req = http::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn review(pod: &Value, namespace: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": pod, "oldObject": null, "dryRun": false,
        }
    })
}

fn pod(annotations: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "namespace": "team", "annotations": annotations},
        "spec": {"containers": containers}
    })
}

fn agent(name: &str) -> Value {
    json!({"name": name, "image": "ghcr.io/example/claude:1",
        "env": [{"name": "ANTHROPIC_API_KEY", "value": "sk-ant-real"}, {"name": "KEEP", "value": "1"}]})
}

/// What came back for one review.
struct Reply {
    allowed: bool,
    message: String,
    patched: Option<Pod>,
    raw: Value,
}

async fn admit(s: &Server, path: &str, pod: &Value, namespace: &str) -> Reply {
    let (mut sender, _) = connect(s.addr, &s.ca).await;
    let (status, body) = post(&mut sender, path, review(pod, namespace).to_string()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let raw: Value = serde_json::from_slice(&body).unwrap();
    let response = &raw["response"];
    assert_eq!(raw["kind"], "AdmissionReview");
    assert_eq!(response["uid"], "e911857d-c318-11e8-bbad-025000000001");
    let patched = response["patch"].as_str().map(|b64| {
        use base64::Engine as _;
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value::<Pod>(doc).unwrap()
    });
    Reply {
        allowed: response["allowed"].as_bool().unwrap(),
        message: response["status"]["message"].as_str().unwrap_or("").to_owned(),
        patched,
        raw,
    }
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env.iter().flatten().find(|e| e.name == name).map(|e| e.value.as_deref().unwrap_or(""))
}

/// The full injection and hardening of an injected pod.
fn assert_injected(pod: &Pod, agents: &[&str]) {
    assert_eq!(pod.metadata.annotations.as_ref().unwrap()["sanctum.dev/status"], "injected");
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(&names[..3], ["write-trat", "sanctum-forwarder", "sanctum-bridge"]);
    for c in &init[..3] {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
        assert!(sc.seccomp_profile.is_some());
    }
    for sidecar in &init[1..3] {
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert!(sidecar.startup_probe.is_some(), "{} has a startup probe", sidecar.name);
    }
    let write_trat = &init[0];
    let args = write_trat.args.as_ref().unwrap();
    assert_eq!(args[0], "fetch-trat");
    assert!(env(write_trat, "SANCTUM_TOKEN_SERVICE_CA").unwrap().contains("BEGIN CERTIFICATE"));
    let vols: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    for v in ["sanctum-sage", "sanctum-spiffe", "sanctum-sa-token"] {
        assert!(vols.contains(&v), "volume {v} in {vols:?}");
    }
    for c in &spec.containers {
        let is_agent = agents.contains(&c.name.as_str());
        assert_eq!(
            env(c, "ANTHROPIC_BASE_URL"),
            is_agent.then_some("http://127.0.0.1:8082"),
            "{}",
            c.name
        );
        if is_agent {
            assert_eq!(env(c, "ANTHROPIC_API_KEY"), Some("gateway-injected"));
            assert_eq!(env(c, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), Some("1"));
            assert!(!c.env.iter().flatten().any(|e| e.value.as_deref() == Some("sk-ant-real")));
        }
    }
}

#[tokio::test]
async fn injection_matrix() {
    let s = start(config()).await;
    let yes = json!({"sanctum.dev/inject": "true"});

    // Annotated: injected; fed back, the injected pod is left alone (idempotent).
    let input = pod(yes.clone(), json!([agent("claude")]));
    let r = admit(&s, "/mutate", &input, "team").await;
    assert!(r.allowed, "{}", r.message);
    let injected = r.patched.unwrap();
    assert_injected(&injected, &["claude"]);
    let again = admit(&s, "/mutate", &serde_json::to_value(&injected).unwrap(), "team").await;
    assert!(again.allowed && again.patched.is_none());

    // Namespace-labelled entry: no annotation needed; "false" opts out.
    let r = admit(&s, "/mutate/namespace", &pod(json!({}), json!([agent("a")])), "team").await;
    assert_injected(&r.patched.unwrap(), &["a"]);
    let out = pod(json!({"sanctum.dev/inject": "false"}), json!([agent("a")]));
    let r = admit(&s, "/mutate/namespace", &out, "team").await;
    assert!(r.allowed && r.patched.is_none());

    // Not annotated on the annotation entry: untouched.
    let r = admit(&s, "/mutate", &pod(json!({}), json!([agent("a")])), "team").await;
    assert!(r.allowed && r.patched.is_none());

    // Marked injected by hand (issue 12 item 4): the mark is checked, not trusted. A pod
    // that wrote the annotation itself, with or without a look-alike `sanctum-bridge` and
    // its real key still in its env, is refused on both entries.
    let marked = pod(
        json!({"sanctum.dev/inject": "true", "sanctum.dev/status": "injected"}),
        json!([agent("a")]),
    );
    let mut forged = marked.clone();
    forged["spec"]["initContainers"] =
        json!([{"name": "sanctum-bridge", "image": "busybox", "restartPolicy": "Always"}]);
    for (input, field) in [(&marked, "spec.initContainers"), (&forged, "spec.initContainers")] {
        for path in ["/mutate", "/mutate/namespace"] {
            let r = admit(&s, path, input, "team").await;
            assert!(!r.allowed, "{path}: {}", r.message);
            assert!(r.message.contains("marked sanctum.dev/status: injected"), "{}", r.message);
            assert!(r.message.contains(field), "{}", r.message);
        }
    }
    // An injected pod whose agent got its real key back is refused too.
    let mut keyed = serde_json::to_value(&injected).unwrap();
    let agent_env = keyed["spec"]["containers"][0]["env"].as_array_mut().unwrap();
    for e in agent_env.iter_mut().filter(|e| e["name"] == "ANTHROPIC_API_KEY") {
        e["value"] = json!("sk-ant-real");
    }
    let r = admit(&s, "/mutate", &keyed, "team").await;
    assert!(!r.allowed, "{}", r.message);
    assert!(r.message.contains("spec.containers[claude].env"), "{}", r.message);

    // Never kube-system or the operator's namespace.
    for ns in ["kube-system", "sanctum-system"] {
        let r = admit(&s, "/mutate", &pod(yes.clone(), json!([agent("a")])), ns).await;
        assert!(r.allowed && r.patched.is_none(), "{ns}");
    }

    // hostNetwork: refused, saying why.
    let mut host = pod(yes.clone(), json!([agent("a")]));
    host["spec"]["hostNetwork"] = json!(true);
    let r = admit(&s, "/mutate", &host, "team").await;
    assert!(!r.allowed);
    assert!(r.message.contains("hostNetwork"), "{}", r.message);

    // Clashing names: refused, naming them.
    let clash = pod(yes.clone(), json!([agent("a"), {"name": "sanctum-bridge", "image": "x"}]));
    let r = admit(&s, "/mutate", &clash, "team").await;
    assert!(!r.allowed);
    assert!(r.message.contains("'sanctum-bridge'"), "{}", r.message);
    let mut vclash = pod(yes.clone(), json!([agent("a")]));
    vclash["spec"]["volumes"] = json!([{"name": "sanctum-sage", "emptyDir": {}}]);
    let r = admit(&s, "/mutate", &vclash, "team").await;
    assert!(!r.allowed && r.message.contains("'sanctum-sage'"), "{}", r.message);

    // Several containers, only the named ones are agents; unknown names are refused.
    let several = pod(
        json!({"sanctum.dev/inject": "true", "sanctum.dev/containers": "claude, reviewer"}),
        json!([agent("claude"), {"name": "db", "image": "postgres:17"}, agent("reviewer")]),
    );
    let r = admit(&s, "/mutate", &several, "team").await;
    assert_injected(&r.patched.unwrap(), &["claude", "reviewer"]);
    let unknown = pod(
        json!({"sanctum.dev/inject": "true", "sanctum.dev/containers": "nope"}),
        json!([agent("a")]),
    );
    let r = admit(&s, "/mutate", &unknown, "team").await;
    assert!(!r.allowed && r.message.contains("nope"), "{}", r.message);

    // envFrom secrets: an explicit empty ANTHROPIC_AUTH_TOKEN shadows whatever they bring.
    let mut from = pod(yes.clone(), json!([agent("a")]));
    from["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "anthropic"}}]);
    let r = admit(&s, "/mutate", &from, "team").await;
    let p = r.patched.unwrap();
    assert_eq!(env(&p.spec.as_ref().unwrap().containers[0], "ANTHROPIC_AUTH_TOKEN"), Some(""));
    assert_injected(&p, &["a"]);

    // User init containers run after ours; existing security contexts are kept.
    let mut user = pod(yes.clone(), json!([agent("a")]));
    user["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "m", "futureField": true}]);
    user["spec"]["securityContext"] = json!({"runAsUser": 1000, "fsGroup": 2000});
    user["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1234});
    let r = admit(&s, "/mutate", &user, "team").await;
    let p = r.patched.unwrap();
    assert_injected(&p, &["a"]);
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.init_containers.as_ref().unwrap().last().unwrap().name, "migrate");
    assert_eq!(spec.security_context.as_ref().unwrap().fs_group, Some(2000));
    assert_eq!(spec.containers[0].security_context.as_ref().unwrap().run_as_user, Some(1234));

    // Per-pod overrides: gateway, model, a TraT Secret instead of the token service.
    let over = pod(
        json!({"sanctum.dev/inject": "true", "sanctum.dev/gateway": "https://gw.example:8443",
               "sanctum.dev/model": "claude-opus-4-1", "sanctum.dev/trat-secret": "my-trat"}),
        json!([agent("a")]),
    );
    let r = admit(&s, "/mutate", &over, "team").await;
    let p = r.patched.unwrap();
    let spec = p.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init[0].args.as_ref().unwrap()[0], "write-trat");
    assert!(init[1].args.as_ref().unwrap().contains(&"--upstream=https://gw.example:8443".into()));
    assert_eq!(env(&spec.containers[0], "ANTHROPIC_MODEL"), Some("claude-opus-4-1"));
    let secret = spec.volumes.iter().flatten().find(|v| v.name == "sanctum-run-secret").unwrap();
    assert_eq!(secret.secret.as_ref().unwrap().secret_name.as_deref(), Some("my-trat"));
    let bad = pod(
        json!({"sanctum.dev/inject": "true", "sanctum.dev/gateway": "ftp://x"}),
        json!([agent("a")]),
    );
    let r = admit(&s, "/mutate", &bad, "team").await;
    assert!(!r.allowed && r.message.contains("sanctum.dev/gateway"), "{}", r.message);
    // Issue 12 item 6: the annotation sends both tokens where it points, so only the
    // configured gateway and gateway.allowedUrls may be named, and only over https.
    for url in ["http://evil.example:8080", "https://evil.example", "http://gw.example:8443"] {
        let elsewhere = pod(
            json!({"sanctum.dev/inject": "true", "sanctum.dev/gateway": url}),
            json!([agent("a")]),
        );
        let r = admit(&s, "/mutate", &elsewhere, "team").await;
        assert!(!r.allowed, "{url} was admitted");
        assert!(r.message.contains("annotation sanctum.dev/gateway"), "{}", r.message);
        assert!(
            r.message.contains("https://gw.example:8443"),
            "names the allowed list: {}",
            r.message
        );
        assert!(r.message.contains("gateway.allowedUrls"), "{}", r.message);
    }

    // dryRun: the same answer, nothing else happens.
    let (mut sender, _) = connect(s.addr, &s.ca).await;
    let mut dry = review(&pod(yes.clone(), json!([agent("a")])), "team");
    dry["request"]["dryRun"] = json!(true);
    let (status, body) = post(&mut sender, "/mutate", dry.to_string()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"]["patch"].is_string());
    let _ = r.raw;
}

/// Posts `pod` and applies the returned patch to the raw JSON of `pod`, as the API server
/// does: the pod it would store.
async fn admit_raw(s: &Server, pod: &Value) -> Value {
    use base64::Engine as _;
    let (mut sender, _) = connect(s.addr, &s.ca).await;
    let (status, body) = post(&mut sender, "/mutate", review(pod, "team").to_string()).await;
    assert_eq!(status, 200);
    let raw: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(raw["response"]["allowed"], true, "{raw}");
    let b64 = raw["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

/// Issue 13 item 7: an agent container with `env[].valueFrom.fileKeyRef` (Kubernetes
/// 1.34+) came back as `valueFrom: {}` and the API server refused the pod. Fields this
/// build's types do not know, on the env entry, the container, the pod spec and the
/// metadata, reach the pod exactly as sent.
#[tokio::test]
async fn fields_newer_than_our_types_are_kept() {
    let s = start(config()).await;
    let file_key = json!({"name": "REPO_TOKEN", "valueFrom": {"fileKeyRef":
        {"volumeName": "cfg", "path": "app.env", "key": "REPO_TOKEN", "optional": false}}});
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "namespace": "team",
            "annotations": {"sanctum.dev/inject": "true"}, "futureMetadata": {"a": 1}},
        "spec": {
            "futurePodField": {"mode": "x"},
            "volumes": [{"name": "cfg", "emptyDir": {}}],
            "containers": [{
                "name": "claude", "image": "ghcr.io/example/claude:1",
                "futureContainerField": [1, 2],
                "env": [file_key.clone(),
                    {"name": "ANTHROPIC_API_KEY", "valueFrom": {"fileKeyRef":
                        {"volumeName": "cfg", "path": "app.env", "key": "KEY"}}},
                    {"name": "KEEP", "value": "1", "futureEnvField": true}]
            }, {
                "name": "helper", "image": "busybox", "futureContainerField": "h",
                "env": [file_key.clone()]
            }]
        }
    });
    let out = admit_raw(&s, &pod).await;
    let claude = &out["spec"]["containers"][0];
    let env = claude["env"].as_array().unwrap();
    assert_eq!(env[0], file_key, "untouched entry, byte for byte");
    assert_eq!(env[1], json!({"name": "KEEP", "value": "1", "futureEnvField": true}));
    assert!(
        !env.iter().any(|e| e["name"] == "ANTHROPIC_API_KEY" && e.get("valueFrom").is_some()),
        "the real key (from a file) is gone: {env:?}"
    );
    assert!(
        env.iter().any(|e| *e == json!({"name": "ANTHROPIC_API_KEY", "value": "gateway-injected"}))
    );
    assert!(!env.iter().any(|e| e.get("valueFrom") == Some(&json!({}))), "{env:?}");
    assert_eq!(claude["futureContainerField"], json!([1, 2]));
    let helper = &out["spec"]["containers"][1];
    assert_eq!(helper["futureContainerField"], "h");
    assert_eq!(helper["env"][0], file_key);
    assert_eq!(out["spec"]["futurePodField"], json!({"mode": "x"}));
    assert_eq!(out["metadata"]["futureMetadata"], json!({"a": 1}));
    assert_eq!(out["spec"]["volumes"][0], json!({"name": "cfg", "emptyDir": {}}));
    assert_eq!(out["spec"]["initContainers"][2]["name"], "sanctum-bridge");
    // Without opting in, the same pod is allowed untouched.
    let mut plain = pod.clone();
    plain["metadata"]["annotations"] = json!({});
    let (mut sender, _) = connect(s.addr, &s.ca).await;
    let (_, body) = post(&mut sender, "/mutate", review(&plain, "team").to_string()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());
}

/// Issue 13 item 8: under a ResourceQuota on `limits.cpu` the API server refused an
/// injected pod whose own containers were complete: "must specify limits.cpu for:
/// fetch-jwt, sanctum-bridge, sanctum-forwarder, write-trat". Every injected container has
/// cpu and memory requests and limits, from the config and the pod's annotation.
#[tokio::test]
async fn every_injected_container_has_requests_and_limits() {
    let mut c = config();
    c.identity.source = IdentitySource::Spiffe; // fetch-jwt too
    c.pod.sidecar_resources = sanctum_operator::resources::parse_annotation(
        "sanctum-forwarder: {limits: {memory: 96Mi}}",
    )
    .unwrap();
    let s = start(c).await;
    let annotations = json!({"sanctum.dev/inject": "true",
        "sanctum.dev/sidecar-resources": "{\"sanctum-bridge\": {\"limits\": {\"cpu\": \"1\", \"memory\": \"128Mi\"}}}"});
    let mut p = pod(annotations, json!([agent("claude")]));
    p["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}});
    let out = admit_raw(&s, &p).await;
    let init = out["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fetch-jwt", "write-trat", "sanctum-forwarder", "sanctum-bridge"]);
    let quantity =
        |c: &Value, kind: &str, r: &str| c["resources"][kind][r].as_str().unwrap_or("").to_owned();
    for c in init {
        for kind in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(!quantity(c, kind, r).is_empty(), "{} has no {kind}.{r}", c["name"]);
            }
        }
    }
    let by = |n: &str| init.iter().find(|c| c["name"] == n).unwrap();
    assert_eq!(quantity(by("sanctum-bridge"), "limits", "cpu"), "1", "the annotation");
    assert_eq!(quantity(by("sanctum-bridge"), "limits", "memory"), "128Mi");
    assert_eq!(quantity(by("sanctum-bridge"), "requests", "memory"), "16Mi", "the default");
    assert_eq!(quantity(by("sanctum-forwarder"), "limits", "memory"), "96Mi", "the config");
    assert_eq!(quantity(by("sanctum-forwarder"), "limits", "cpu"), "500m");
    assert_eq!(quantity(by("write-trat"), "limits", "memory"), "32Mi");
    assert_eq!(quantity(by("fetch-jwt"), "limits", "memory"), "64Mi");
    assert_eq!(out["spec"]["containers"][0]["resources"], p["spec"]["containers"][0]["resources"]);

    // A wrong annotation is refused with what to fix.
    let bad = pod(
        json!({"sanctum.dev/inject": "true", "sanctum.dev/sidecar-resources": "claude: {limits: {cpu: 1}}"}),
        json!([agent("claude")]),
    );
    let r = admit(&s, "/mutate", &bad, "team").await;
    assert!(!r.allowed);
    assert!(
        r.message.contains("sanctum.dev/sidecar-resources")
            && r.message.contains("'claude' is not a container Sanctum adds"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn bad_input_is_answered_and_the_server_keeps_serving() {
    let s = start(config()).await;
    let (mut sender, _) = connect(s.addr, &s.ca).await;
    // Garbage: 400 with a message, on the same keep-alive connection as what follows.
    for garbage in [&b"not json"[..], b"{}", b"{\"request\": 5}", b"\xff\xfe", b""] {
        let (status, body) = post(&mut sender, "/mutate", Bytes::copy_from_slice(garbage)).await;
        assert_eq!(status, 400, "{garbage:?}");
        assert!(String::from_utf8_lossy(&body).contains("AdmissionReview"), "{body:?}");
    }
    // Not a Pod (a Deployment, an UPDATE, a subresource): allowed, no patch.
    let mut deployment = review(
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}),
        "team",
    );
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut update =
        review(&pod(json!({"sanctum.dev/inject": "true"}), json!([agent("a")])), "team");
    update["request"]["operation"] = json!("UPDATE");
    let mut sub = review(&pod(json!({"sanctum.dev/inject": "true"}), json!([agent("a")])), "team");
    sub["request"]["subResource"] = json!("ephemeralcontainers");
    for r in [deployment, update, sub] {
        let (status, body) = post(&mut sender, "/mutate", r.to_string()).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true, "{v}");
        assert!(v["response"].get("patch").is_none(), "{v}");
    }
    // A Pod object that is not a pod: refused with a message, not a crash.
    let broken = review(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "nope"}}),
        "team",
    );
    let (status, body) = post(&mut sender, "/mutate", broken.to_string()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], false, "{v}");
    // Wrong method and path; the token service is not part of `webhook`.
    let req =
        http::Request::get("/mutate").header("host", "x").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 405);
    let (status, _) = post(&mut sender, "/nope", "").await;
    assert_eq!(status, 404);
    let (status, body) = post(&mut sender, "/v1/trat", "").await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("sanctum-operator run"));
    // Still serving.
    let r = admit(
        &s,
        "/mutate",
        &pod(json!({"sanctum.dev/inject": "true"}), json!([agent("a")])),
        "team",
    )
    .await;
    assert!(r.patched.is_some());
    let mut registry = sanctum_common::metrics::Registry::default();
    s.state.counters.register(&mut registry);
    let metrics = sanctum_common::metrics::encode(&registry);
    assert!(
        metrics.contains("sanctum_webhook_reviews_total{outcome=\"bad_request\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn certificate_reload_keeps_open_connections() {
    let s = start(config()).await;
    let (mut old, old_chain) = connect(s.addr, &s.ca).await;
    let (status, _) = post(&mut old, "/mutate", "x").await;
    assert_eq!(status, 400);

    // Rotate to a pair from another CA, written the way a Secret volume update lands.
    let (ca2, cert2, key2) = ca_and_cert("rotated").unwrap();
    let dir: &Path = s.dir.path();
    std::fs::write(dir.join("tls.key.new"), &key2).unwrap();
    std::fs::write(dir.join("tls.crt.new"), &cert2).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    let mut rotated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let chain = try_connect(s.addr, &ca2).await.map(|(_, c)| c).unwrap_or_default();
        if !chain.is_empty() && chain != old_chain {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "new handshakes use the new certificate");
    // The connection made before the rotation still works.
    let (status, _) = post(&mut old, "/mutate", "x").await;
    assert_eq!(status, 400);
}

/// Sends `object` (and `old`) as an UPDATE, optionally of a subresource.
async fn admit_update(s: &Server, old: &Value, object: &Value, sub_resource: &str) -> Reply {
    let mut body = review(object, "team");
    body["request"]["operation"] = json!("UPDATE");
    body["request"]["oldObject"] = old.clone();
    if !sub_resource.is_empty() {
        body["request"]["subResource"] = json!(sub_resource);
    }
    let (mut sender, _) = connect(s.addr, &s.ca).await;
    let (status, bytes) = post(&mut sender, "/mutate", body.to_string()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let raw: Value = serde_json::from_slice(&bytes).unwrap();
    let response = &raw["response"];
    assert!(response.get("patch").is_none(), "an UPDATE is never patched");
    Reply {
        allowed: response["allowed"].as_bool().unwrap(),
        message: response["status"]["message"].as_str().unwrap_or("").to_owned(),
        patched: None,
        raw,
    }
}

/// Issue 12 item 5: pod specs that would hand the agent the pod's tokens are refused, each
/// with a message naming the field; the agent loses its Kubernetes API token mount unless
/// the pod opts in.
#[tokio::test]
async fn specs_that_reach_the_tokens_are_refused() {
    let s = start(config()).await;
    let yes = json!({"sanctum.dev/inject": "true"});

    // An app container mounting an injected volume by name, at a path of its own.
    for volume in ["sanctum-sage", "sanctum-spiffe", "sanctum-sa-token"] {
        let mut p = pod(yes.clone(), json!([agent("a")]));
        p["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": volume, "mountPath": "/tmp/loot", "readOnly": true}]);
        let r = admit(&s, "/mutate", &p, "team").await;
        assert!(!r.allowed, "{volume}");
        assert!(r.message.contains("spec.containers[a].volumeMounts"), "{}", r.message);
        assert!(r.message.contains(volume), "{}", r.message);
    }
    // The same from one of the pod's own init containers.
    let mut p = pod(yes.clone(), json!([agent("a")]));
    p["spec"]["initContainers"] = json!([{"name": "warm", "image": "x",
        "volumeMounts": [{"name": "sanctum-sage", "mountPath": "/x"}]}]);
    let r = admit(&s, "/mutate", &p, "team").await;
    assert!(!r.allowed && r.message.contains("spec.initContainers[warm]"), "{}", r.message);

    // A shared process namespace.
    let mut p = pod(yes.clone(), json!([agent("a")]));
    p["spec"]["shareProcessNamespace"] = json!(true);
    let r = admit(&s, "/mutate", &p, "team").await;
    assert!(!r.allowed && r.message.contains("spec.shareProcessNamespace"), "{}", r.message);

    // An app container running as the sidecars' UID, set on the container or the pod.
    let uid = OperatorConfig::default().pod.run_as_user;
    let mut p = pod(yes.clone(), json!([agent("a")]));
    p["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": uid});
    let r = admit(&s, "/mutate", &p, "team").await;
    assert!(
        !r.allowed && r.message.contains("spec.containers[a].securityContext.runAsUser"),
        "{}",
        r.message
    );
    let mut p = pod(yes.clone(), json!([agent("a")]));
    p["spec"]["securityContext"] = json!({"runAsUser": uid});
    let r = admit(&s, "/mutate", &p, "team").await;
    assert!(!r.allowed && r.message.contains("spec.securityContext.runAsUser"), "{}", r.message);

    // The API server's automounted API token: gone from the agent unless the pod opts in.
    let sa_mount = json!([{"name": "kube-api-access-x1",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]);
    let mut p = pod(yes.clone(), json!([agent("a"), {"name": "db", "image": "pg"}]));
    p["metadata"]["annotations"]["sanctum.dev/containers"] = json!("a");
    p["spec"]["containers"][0]["volumeMounts"] = sa_mount.clone();
    p["spec"]["containers"][1]["volumeMounts"] = sa_mount.clone();
    p["spec"]["volumes"] = json!([{"name": "kube-api-access-x1", "projected": {"sources": []}}]);
    let r = admit(&s, "/mutate", &p, "team").await;
    let injected = r.patched.expect("injected");
    let spec = injected.spec.as_ref().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(spec.containers[0].volume_mounts.is_none(), "agent keeps no API token");
    assert_eq!(spec.containers[1].volume_mounts.as_ref().unwrap().len(), 1, "db is no agent");
    p["metadata"]["annotations"]["sanctum.dev/allow-api-token"] = json!("true");
    let r = admit(&s, "/mutate", &p, "team").await;
    let kept = r.patched.expect("injected");
    assert_eq!(kept.spec.as_ref().unwrap().containers[0].volume_mounts.as_ref().unwrap().len(), 1);

    // UPDATEs of an injected pod.
    let r = admit(&s, "/mutate", &pod(yes.clone(), json!([agent("a")])), "team").await;
    let old = serde_json::to_value(r.patched.unwrap()).unwrap();
    let same = admit_update(&s, &old, &old, "").await;
    assert!(same.allowed, "{}", same.message);
    // The image of a Sanctum container swapped.
    let mut swapped = old.clone();
    let bridge = swapped["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "sanctum-bridge")
        .unwrap();
    bridge["image"] = json!("evil/bridge:1");
    let r = admit_update(&s, &old, &swapped, "").await;
    assert!(!r.allowed, "{}", r.message);
    assert!(r.message.contains("spec.initContainers[sanctum-bridge].image"), "{}", r.message);
    // The app's own image may change.
    let mut app = old.clone();
    app["spec"]["containers"][0]["image"] = json!("ghcr.io/example/claude:2");
    assert!(admit_update(&s, &old, &app, "").await.allowed);
    // Ephemeral containers: a token volume, or a sidecar's process namespace, is refused;
    // debugging the agent is not.
    for (ephemeral, field) in [
        (
            json!({"name": "dbg", "image": "busybox",
                "volumeMounts": [{"name": "sanctum-sage", "mountPath": "/loot"}]}),
            Some("spec.ephemeralContainers[dbg].volumeMounts[sanctum-sage]"),
        ),
        (
            json!({"name": "dbg", "image": "busybox", "targetContainerName": "sanctum-bridge"}),
            Some("spec.ephemeralContainers[dbg].targetContainerName"),
        ),
        (json!({"name": "dbg", "image": "busybox", "targetContainerName": "a"}), None),
    ] {
        let mut debugged = old.clone();
        debugged["spec"]["ephemeralContainers"] = json!([ephemeral]);
        let r = admit_update(&s, &old, &debugged, "ephemeralcontainers").await;
        match field {
            Some(field) => {
                assert!(!r.allowed, "{ephemeral}");
                assert!(r.message.contains(field), "{}", r.message);
            }
            None => assert!(r.allowed, "{}", r.message),
        }
    }
    // A pod Sanctum did not inject is not Sanctum's to guard.
    let plain = pod(json!({}), json!([agent("a")]));
    let mut plain_debug = plain.clone();
    plain_debug["spec"]["shareProcessNamespace"] = json!(true);
    assert!(admit_update(&s, &plain, &plain_debug, "").await.allowed);
}
