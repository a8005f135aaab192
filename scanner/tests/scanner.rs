//! `sanctum-scanner run` as a process, with the real native Claude Code CLI (2.1.332, from
//! `tests/clients/install.sh`) against the stand-in provider playing its scripted review
//! (`sanctum_testkit::review`) over `examples/vulnerable-app`: directly, and through the real
//! `sanctum-bridge` when it is built. Then every way a run can go wrong, each with its exit
//! status, summary and (partial) SARIF, the SARIF always valid against the SARIF 2.1.0 schema
//! (vendored from serde-sarif as `sarif-schema-2.1.0.json`).
//!
//! Without the CLI: a loud SKIP line, or a failure when `SANCTUM_REQUIRE_ALL=1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sanctum_testkit::{Provider, ProviderConfig, Refuse, clients, jwt, review};
use serde_json::{Value, json};

const PLACEHOLDER: &str = clients::PLACEHOLDER_KEY;

/// One Claude Code at a time: each is a 400 MB process, and the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn claude() -> Option<PathBuf> {
    clients::installed(
        "node_modules/@anthropic-ai/claude-code-linux-x64/claude",
        "the native Claude Code CLI (npm @anthropic-ai/claude-code-linux-x64)",
    )
}

fn example_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/vulnerable-app")
}

/// A copy of `examples/vulnerable-app` in a temp dir.
fn copy_of_example(into: &Path) -> PathBuf {
    let repo = into.join("repo");
    copy_dir(&example_app(), &repo);
    repo
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

struct Scan {
    code: i32,
    summary: Value,
    sarif: Value,
    stderr: String,
    took: Duration,
    /// The uid that owns the SARIF file: who the scanner ran as.
    sarif_owner: u32,
}

/// Runs `sanctum-scanner run` over `repo` against `base_url` with a clean environment.
async fn scan(claude: &Path, base_url: &str, repo: &Path, extra: &[(&str, &str)]) -> Scan {
    scan_with(claude, base_url, repo, extra, None, None).await
}

/// The uid and gid scanner pods run as (distroless `nonroot`).
const POD_USER: u32 = 65532;

/// [`scan`]; with `stop_when`, sends the scanner SIGTERM once that provider got a request.
async fn scan_with(
    claude: &Path,
    base_url: &str,
    repo: &Path,
    extra: &[(&str, &str)],
    stop_when: Option<&Provider>,
    as_user: Option<u32>,
) -> Scan {
    let work = tempfile::tempdir().unwrap();
    let (home, tmp, out) =
        (work.path().join("home"), work.path().join("tmp"), work.path().join("out"));
    for d in [&home, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
    let log = work.path().join("termination-log");
    let scanner = env!("CARGO_BIN_EXE_sanctum-scanner");
    let mut cmd = match as_user {
        None => tokio::process::Command::new(scanner),
        Some(uid) => {
            // Everything the scanner writes belongs to that user, as the pod's emptyDirs do.
            for d in [work.path(), &home, &tmp] {
                std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
            }
            let mut c = tokio::process::Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
                .arg("--")
                .arg(scanner);
            c
        }
    };
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("SANCTUM_REPO", repo)
        .env("SANCTUM_OUTPUT", &out)
        .env("SANCTUM_RUN", "review-test")
        .env("SANCTUM_TERMINATION_LOG", &log)
        .env("SANCTUM_CLAUDE", claude)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", PLACEHOLDER)
        .env("ANTHROPIC_MODEL", "claude-sonnet-4-5")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("run sanctum-scanner");
    if let Some(provider) = stop_when {
        let deadline = Instant::now() + Duration::from_secs(60);
        while provider.served() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = child.id().expect("the scanner runs").to_string();
        let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("sanctum-scanner did not finish in 120 s")
        .expect("run sanctum-scanner");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("no summary at {} ({e}); stderr: {stderr}", log.display()));
    assert!(text.len() <= 4096, "summary over 4 KiB: {}", text.len());
    let summary: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(stdout.trim(), text, "the summary is also printed on stdout");
    let sarif_path = out.join("results.sarif");
    assert_eq!(summary["sarif"], sarif_path.to_string_lossy().as_ref());
    let sarif: Value = serde_json::from_str(
        &std::fs::read_to_string(&sarif_path)
            .unwrap_or_else(|e| panic!("no SARIF ({e}); stderr: {stderr}")),
    )
    .unwrap();
    assert_valid_sarif(&sarif);
    assert_counts_match(&summary, &sarif);
    let sarif_owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&sarif_path).unwrap());
    Scan { code: output.status.code().unwrap_or(-1), summary, sarif, stderr, took, sarif_owner }
}

fn assert_valid_sarif(sarif: &Value) {
    // The published schema's `run.language` pattern has a stray `]` that a strict regex
    // engine refuses while checking the schema itself; it is the one thing corrected here
    // (in memory, so the vendored file stays byte for byte serde-sarif's).
    let text = include_str!("sarif-schema-2.1.0.json")
        .replace(r"^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$", r"^[a-zA-Z]{2}(-[a-zA-Z]{2})?$");
    let schema: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the SARIF schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(sarif).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "SARIF invalid against the 2.1.0 schema: {errors:#?}\n{sarif:#}");
}

/// The summary's counts are the SARIF's results by severity.
fn assert_counts_match(summary: &Value, sarif: &Value) {
    let results = sarif["runs"][0]["results"].as_array().cloned().unwrap_or_default();
    for sev in ["critical", "high", "medium", "low", "note"] {
        let n = results.iter().filter(|r| r["properties"]["severity"] == sev).count();
        assert_eq!(summary["findings"][sev], n, "{sev}: {summary} vs SARIF");
    }
}

fn line_of(file: &Path, snippet: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().position(|l| l.contains(snippet)).expect(snippet) as u64 + 1
}

/// The Messages API bodies the provider got, as JSON.
fn bodies(provider: &Provider) -> Vec<Value> {
    provider
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/v1/messages"))
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

/// Every `tool_result` of the longest conversation: (text, is_error).
fn tool_results(bodies: &[Value]) -> Vec<(String, bool)> {
    let longest =
        bodies.iter().max_by_key(|b| b["messages"].as_array().map_or(0, Vec::len)).unwrap();
    longest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| (b["content"].to_string(), b["is_error"] == true))
        .collect()
}

/// The full review of the example app: findings in SARIF and summary, the bad one refused.
fn assert_review(s: &Scan, repo: &Path, provider: &Provider) {
    assert_eq!(s.code, 0, "stderr: {}\nsummary: {}", s.stderr, s.summary);
    assert_eq!(s.summary["findings"], json!({"critical":1,"high":1,"medium":1,"low":0,"note":0}));
    assert!(s.summary.get("error").is_none(), "{}", s.summary);
    assert_eq!(s.summary["model"], "claude-sonnet-4-5");
    assert!(s.summary["turns"].as_u64() >= Some(7), "{}", s.summary);
    assert!(s.summary["costUsd"].as_f64() > Some(0.0), "{}", s.summary);

    let run = &s.sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "sanctum-scanner");
    assert_eq!(run["invocations"][0]["executionSuccessful"], true);
    assert_eq!(run["automationDetails"]["id"], "review-test/");
    let results = run["results"].as_array().unwrap();
    let app = repo.join(review::FILE);
    let got: Vec<(String, String, u64)> = results
        .iter()
        .map(|r| {
            let loc = &r["locations"][0]["physicalLocation"];
            assert_eq!(loc["artifactLocation"]["uri"], review::FILE);
            assert_eq!(loc["artifactLocation"]["uriBaseId"], "%SRCROOT%");
            (
                r["ruleId"].as_str().unwrap().to_owned(),
                r["level"].as_str().unwrap().to_owned(),
                loc["region"]["startLine"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, u64)> = review::FINDINGS
        .iter()
        .map(|p| {
            let level = if p.severity == "medium" { "warning" } else { "error" };
            (p.rule_id.to_owned(), level.to_owned(), line_of(&app, p.snippet))
        })
        .collect();
    assert_eq!(got, want, "one result per accepted finding, at the planted lines");
    assert_eq!(results[0]["properties"]["cwe"], "CWE-89");
    assert_eq!(results[1]["properties"]["security-severity"], "9.5");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);

    // The model saw only the read-only tools and report_finding.
    let bodies = bodies(provider);
    let main: Vec<&Value> = bodies.iter().filter(|b| review::wants_review(b)).collect();
    assert!(main.len() >= 7, "one request per step of the script: {}", main.len());
    let mut tools: Vec<String> = main[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    tools.sort();
    assert_eq!(tools, ["Glob", "Grep", "Read", "mcp__sanctum__report_finding"]);

    // The finding past the end of app.py was refused back to the model, with the reason.
    let results = tool_results(&bodies);
    assert_eq!(results.len(), 6, "{results:#?}");
    let (refused, is_error) = &results[2];
    assert!(*is_error, "the bad finding must come back as a tool error: {refused}");
    assert!(
        refused.contains(&format!("start_line {}", review::BAD_LINE))
            && refused.contains("the file has"),
        "{refused}"
    );
    assert!(results.iter().enumerate().all(|(i, (_, e))| *e == (i == 2)), "{results:#?}");
    assert!(results[3].0.contains("Recorded high finding"), "{}", results[3].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_the_example_app_with_the_real_claude_code() {
    let Some(claude) = claude() else { return };
    let _one = SERIAL.lock().await;
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = copy_of_example(dir.path());
    let s = scan(&claude, &provider.url().unwrap(), &repo, &[]).await;
    assert_review(&s, &repo, &provider);
    eprintln!("a full review against the stand-in took {:?}", s.took);
}

/// The same review as the pod's user (65532), not root: the permission mode and every path
/// the scanner and Claude Code write must work without privileges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_as_the_pod_user() {
    let Some(claude) = claude() else { return };
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("not root: every other test already runs unprivileged");
        return;
    }
    let _one = SERIAL.lock().await;
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let dir = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .unwrap();
    let repo = copy_of_example(dir.path());
    let s = scan_with(&claude, &provider.url().unwrap(), &repo, &[], None, Some(POD_USER)).await;
    assert_review(&s, &repo, &provider);
    assert_eq!(s.sarif_owner, POD_USER, "the scanner ran as the pod user");
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same review through the real `sanctum-bridge`: the provider, on the bridge's Unix
/// socket, accepts only requests that carry the pod's tokens and not the placeholder key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_through_the_real_bridge() {
    let Some(claude) = claude() else { return };
    let bridge = Path::new(env!("CARGO_BIN_EXE_sanctum-scanner")).with_file_name("sanctum-bridge");
    if !bridge.exists() {
        let message =
            format!("{} is not built: run `cargo build -p sanctum-bridge`", bridge.display());
        assert!(std::env::var("SANCTUM_REQUIRE_ALL").as_deref() != Ok("1"), "{message}");
        eprintln!("\n!!!!!!!!!! SKIPPED bridge test: {message} !!!!!!!!!!\n");
        return;
    }
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sub = "spiffe://sage-sanctum.local/scanner/review-test";
    let (jwt, trat) = (jwt::expiring_in(sub, 3600), jwt::expiring_in(sub, 3600));
    std::fs::write(dir.path().join("jwt"), format!("{jwt}\n")).unwrap();
    std::fs::write(dir.path().join("trat.jwt"), &trat).unwrap();
    let provider = Provider::start_unix(
        &dir.path().join("llm.sock"),
        ProviderConfig {
            require: vec![
                ("authorization".into(), format!("Bearer {jwt}")),
                ("txn-token".into(), trat.clone()),
            ],
            forbid_values: vec![PLACEHOLDER.into()],
            ..ProviderConfig::default()
        },
    )
    .await
    .unwrap();
    let (child, listen, _admin): (Child, SocketAddr, SocketAddr) =
        sanctum_testkit::bridge::spawn(&bridge, dir.path(), &[]);
    let _bridge = Kill(child);
    let repo = copy_of_example(dir.path());
    let s = scan(&claude, &format!("http://{listen}"), &repo, &[]).await;
    assert_review(&s, &repo, &provider);
    eprintln!("a full review through the bridge took {:?}", s.took);
}

/// Exit status, summary error and a partial (empty, valid) SARIF that says it failed.
fn assert_failed(s: &Scan, code: i32, words: &str) {
    assert_eq!(s.code, code, "stderr: {}\nsummary: {}", s.stderr, s.summary);
    let error = s.summary["error"].as_str().unwrap_or_else(|| panic!("no error: {}", s.summary));
    assert!(error.contains(words), "{error:?} should say {words:?}");
    let inv = &s.sarif["runs"][0]["invocations"][0];
    assert_eq!(inv["executionSuccessful"], false);
    assert_eq!(inv["toolExecutionNotifications"][0]["message"]["text"], error);
    assert!(!error.contains(PLACEHOLDER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_fails_in_seconds() {
    let Some(claude) = claude() else { return };
    let _one = SERIAL.lock().await;
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let repo = copy_of_example(dir.path());
    let s = scan(&claude, &format!("http://127.0.0.1:{port}"), &repo, &[]).await;
    assert_failed(&s, 4, "could not be reached");
    assert!(s.summary["error"].as_str().unwrap().contains("ECONNREFUSED"), "{}", s.summary);
    assert_eq!(s.summary["findings"], json!({"critical":0,"high":0,"medium":0,"low":0,"note":0}));
    assert!(s.took < Duration::from_secs(30), "a dead bridge took {:?}", s.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_after_retries_are_unreachable() {
    let Some(claude) = claude() else { return };
    let _one = SERIAL.lock().await;
    let refuse = Refuse {
        status: 503,
        kind: "overloaded_error".into(),
        message: "stand-in: down".into(),
        retry: true,
    };
    let provider = Provider::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        ProviderConfig { refuse: Some(refuse), ..ProviderConfig::default() },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = copy_of_example(dir.path());
    let s =
        scan(&claude, &provider.url().unwrap(), &repo, &[("CLAUDE_CODE_MAX_RETRIES", "1")]).await;
    assert_failed(&s, 4, "could not be reached");
    let calls = bodies(&provider).iter().filter(|b| review::wants_review(b)).count();
    assert_eq!(calls, 2, "one call and the one retry CLAUDE_CODE_MAX_RETRIES=1 allows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_stops_at_once() {
    let Some(claude) = claude() else { return };
    let _one = SERIAL.lock().await;
    let provider = Provider::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        ProviderConfig { refuse: Some(Refuse::budget_spent()), ..ProviderConfig::default() },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = copy_of_example(dir.path());
    let s = scan(&claude, &provider.url().unwrap(), &repo, &[]).await;
    assert_failed(&s, 5, "429");
    assert!(s.summary["error"].as_str().unwrap().contains("budget is spent"), "{}", s.summary);
    let calls = bodies(&provider).iter().filter(|b| review::wants_review(b)).count();
    assert_eq!(calls, 1, "x-should-retry: false means no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_limit_keeps_the_findings_so_far() {
    let Some(claude) = claude() else { return };
    let _one = SERIAL.lock().await;
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = copy_of_example(dir.path());
    // Turns: grep, read, the refused finding, the corrected one; then the limit.
    let s = scan(&claude, &provider.url().unwrap(), &repo, &[("SANCTUM_MAX_TURNS", "4")]).await;
    assert_failed(&s, 6, "turn limit");
    assert_eq!(
        s.summary["findings"]["high"], 1,
        "the finding reported before the limit: {}",
        s.summary
    );
    assert_eq!(s.sarif["runs"][0]["results"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_repository_fails_without_calling_the_model() {
    let Some(claude) = claude() else { return };
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join(".git/refs")).unwrap();
    std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    let s = scan(&claude, &provider.url().unwrap(), &repo, &[]).await;
    assert_failed(&s, 3, "holds no file");
    assert_eq!(provider.served(), 0, "the model was not called");
    assert!(s.took < Duration::from_secs(5), "{:?}", s.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_setting_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sanctum-scanner"))
        .env_clear()
        .env("SANCTUM_OUTPUT", dir.path())
        .env("SANCTUM_TERMINATION_LOG", &log)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert!(summary["error"].as_str().unwrap().contains("SANCTUM_REPO is not set"), "{summary}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SANCTUM_REPO is not set"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_still_writes_the_summary_and_sarif() {
    let Some(claude) = claude() else { return };
    let _one = SERIAL.lock().await;
    // The answer starts, then stalls for a minute: the scanner is stopped meanwhile, as the
    // kubelet does at the run's deadline.
    let provider = Provider::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        ProviderConfig { event_delay: Duration::from_secs(60), ..ProviderConfig::default() },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = copy_of_example(dir.path());
    let s = scan_with(&claude, &provider.url().unwrap(), &repo, &[], Some(&provider), None).await;
    assert_failed(&s, 8, "interrupted");
    assert!(s.took < Duration::from_secs(30), "{:?}", s.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_broken_claude_code_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let repo = copy_of_example(dir.path());
    // Not there at all: configuration (exit 2), told where to point SANCTUM_CLAUDE.
    let missing = dir.path().join("no-such-claude");
    let s = scan(&missing, "http://127.0.0.1:9", &repo, &[]).await;
    assert_failed(&s, 2, "set SANCTUM_CLAUDE");
    // There, but it ends without a result event (a crash): agent failure (exit 7).
    let s = scan(Path::new("/bin/false"), "http://127.0.0.1:9", &repo, &[]).await;
    assert_failed(&s, 7, "ended without a result (exit status: 1)");
}
