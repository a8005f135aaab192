//! What the scanner pod says about the run, as a pure function: phase, a condition reason
//! a person can act on, times, and the result summary from the termination message.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{Phase, RunResult};
use crate::pod::SCANNER_CONTAINER;

/// The largest summary the run result contract allows.
pub const MAX_SUMMARY_BYTES: usize = 4096;

// Condition types of a ScannerRun.
pub const PROVISIONED: &str = "Provisioned";
pub const STARTED: &str = "Started";
pub const FINISHED: &str = "Finished";
pub const RESULT_RECORDED: &str = "ResultRecorded";
/// True once this run created its Secret (the TraT): a Secret of that name that the run
/// did not create is never used (the operator may only `create` Secrets, not read them, so
/// this record is how it tells its own Secret from a planted one).
pub const SECRET_CREATED: &str = "SecretCreated";

/// What one look at the pod tells.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub phase: Phase,
    /// PascalCase reason of the phase (`Running`, `Succeeded`, `OOMKilled`, …).
    pub reason: String,
    pub message: String,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
    /// Set once the scanner has terminated: the summary, or why there is none.
    pub result: Option<Result<RunResult, ResultError>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultError {
    Missing,
    TooLarge(usize),
    Malformed(String),
}

impl ResultError {
    pub fn reason(&self) -> &'static str {
        match self {
            ResultError::Missing => "MissingSummary",
            ResultError::TooLarge(_) | ResultError::Malformed(_) => "MalformedSummary",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ResultError::Missing => "the scanner wrote no summary to /dev/termination-log; it should end by writing {\"findings\":{…},\"costUsd\":…}".into(),
            ResultError::TooLarge(n) => format!("the scanner's summary is {n} bytes; the limit is {MAX_SUMMARY_BYTES}: put details in the SARIF file"),
            ResultError::Malformed(e) => format!("the scanner's summary in /dev/termination-log is not the expected JSON: {e}"),
        }
    }
}

/// Longest `sarif` path kept in status, in bytes.
const MAX_SARIF_PATH: usize = 256;

/// A plain path on the output volume: under `/output/`, no `..`, no control characters.
fn valid_sarif_path(path: &str) -> bool {
    path.len() <= MAX_SARIF_PATH
        && path.starts_with("/output/")
        && !path.split('/').any(|c| c == "..")
        && !path.chars().any(char::is_control)
}

/// Parses the run result contract. The message is never echoed back: it is the scanner's
/// output and may hold anything.
pub fn parse_summary(message: Option<&str>) -> Result<RunResult, ResultError> {
    let text = message.map(str::trim).filter(|m| !m.is_empty()).ok_or(ResultError::Missing)?;
    if text.len() > MAX_SUMMARY_BYTES {
        return Err(ResultError::TooLarge(text.len()));
    }
    let result: RunResult =
        serde_json::from_str(text).map_err(|e| ResultError::Malformed(e.to_string()))?;
    if !result.cost_usd.is_finite() || result.cost_usd < 0.0 {
        return Err(ResultError::Malformed("costUsd must be a non-negative number".into()));
    }
    // The path is free text from the scanner, copied into status: only a plain path on the
    // output volume (the design contract's `/output/...`) is kept.
    if let Some(sarif) = &result.sarif
        && !sarif.is_empty()
        && !valid_sarif_path(sarif)
    {
        return Err(ResultError::Malformed(format!(
            "sarif must be a path under /output of at most {MAX_SARIF_PATH} bytes without '..' or control characters"
        )));
    }
    Ok(result)
}

fn statuses(pod: &Pod, init: bool) -> &[ContainerStatus] {
    let status = pod.status.as_ref();
    let list = if init {
        status.and_then(|s| s.init_container_statuses.as_ref())
    } else {
        status.and_then(|s| s.container_statuses.as_ref())
    };
    list.map_or(&[], Vec::as_slice)
}

/// Image problems a retry will not fix by itself soon.
const IMAGE_ERRORS: [&str; 4] =
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];
const CONFIG_ERRORS: [&str; 2] = ["CreateContainerConfigError", "CreateContainerError"];

fn failed(reason: &str, message: String) -> Observation {
    Observation {
        phase: Phase::Failed,
        reason: reason.into(),
        message,
        start_time: None,
        completion_time: None,
        result: None,
    }
}

/// A container stuck waiting on something that will not come by itself.
fn stuck(pod: &Pod) -> Option<Observation> {
    for (init, status) in statuses(pod, true)
        .iter()
        .map(|s| (true, s))
        .chain(statuses(pod, false).iter().map(|s| (false, s)))
    {
        let Some(waiting) = status.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or("");
        let detail = waiting.message.as_deref().unwrap_or("");
        let kind = if init { "init container" } else { "container" };
        if IMAGE_ERRORS.contains(&reason) {
            return Some(failed(
                "ImagePullFailed",
                format!(
                    "{kind} '{}' cannot pull image '{}' ({reason}: {detail}); check the image name and the pull secret",
                    status.name, status.image
                ),
            ));
        }
        if CONFIG_ERRORS.contains(&reason) {
            return Some(failed(
                "ContainerConfigError",
                format!(
                    "{kind} '{}' cannot be created ({reason}: {detail}); check its volumes, Secrets and security settings",
                    status.name
                ),
            ));
        }
    }
    None
}

/// The first init container that ended with an error (ours or the git clone).
fn failed_init(pod: &Pod) -> Option<Observation> {
    statuses(pod, true).iter().find_map(|s| {
        let t =
            s.state.as_ref()?.terminated.as_ref().or(s.last_state.as_ref()?.terminated.as_ref())?;
        (t.exit_code != 0).then(|| {
            let detail = t.message.as_deref().map(|m| format!(": {}", tail(m))).unwrap_or_default();
            failed(
                "InitFailed",
                format!(
                    "init container '{}' failed with exit code {}{detail}",
                    s.name, t.exit_code
                ),
            )
        })
    })
}

/// The end of a long message: the last lines are where errors are.
fn tail(message: &str) -> &str {
    let m = message.trim();
    if m.len() <= 300 {
        return m;
    }
    let mut start = m.len() - 300;
    while !m.is_char_boundary(start) {
        start += 1;
    }
    &m[start..]
}

pub fn observe(pod: &Pod) -> Observation {
    let status = pod.status.clone().unwrap_or_default();
    let start_time = status.start_time.clone();
    let scanner = statuses(pod, false).iter().find(|s| s.name == SCANNER_CONTAINER);
    let terminated = scanner.and_then(|s| s.state.as_ref()?.terminated.clone());
    let finished_at = terminated.as_ref().and_then(|t| t.finished_at.clone());
    let result = terminated.as_ref().map(|t| parse_summary(t.message.as_deref()));

    let mut obs = match status.phase.as_deref() {
        Some("Succeeded") => Observation {
            phase: Phase::Succeeded,
            reason: "Succeeded".into(),
            message: "the scanner finished".into(),
            start_time: None,
            completion_time: None,
            result: None,
        },
        Some("Failed") => {
            if status.reason.as_deref() == Some("DeadlineExceeded") {
                failed("DeadlineExceeded", "the run exceeded spec.timeoutSeconds and was stopped; raise the timeout or narrow the task".into())
            } else if status.reason.as_deref() == Some("Evicted") {
                failed(
                    "Evicted",
                    format!(
                        "the pod was evicted: {}; give the scanner resource requests that fit its use",
                        status.message.as_deref().unwrap_or("")
                    ),
                )
            } else if let Some(obs) = failed_init(pod) {
                obs
            } else if let Some(t) = &terminated {
                if t.reason.as_deref() == Some("OOMKilled") {
                    failed("OOMKilled", "the scanner ran out of memory and was killed; raise spec.resources.limits.memory".into())
                } else {
                    failed("ScannerFailed", format!("the scanner exited with code {}", t.exit_code))
                }
            } else {
                failed(
                    "PodFailed",
                    format!(
                        "the pod failed: {}",
                        status.message.as_deref().unwrap_or("no reason given")
                    ),
                )
            }
        }
        Some("Running")
            if terminated.is_none()
                && scanner
                    .is_some_and(|s| s.state.as_ref().is_some_and(|st| st.running.is_some())) =>
        {
            Observation {
                phase: Phase::Running,
                reason: "Running".into(),
                message: "the scanner is running".into(),
                start_time: None,
                completion_time: None,
                result: None,
            }
        }
        // The scanner exited and its native sidecars are being stopped: still Running (a
        // run's phase never goes back to Pending), the pod's own phase decides the end.
        Some("Running") if terminated.is_some() => Observation {
            phase: Phase::Running,
            reason: "Finishing".into(),
            message: "the scanner exited; its sidecars are stopping".into(),
            start_time: None,
            completion_time: None,
            result: None,
        },
        _ => stuck(pod).or_else(|| failed_init(pod)).unwrap_or(Observation {
            phase: Phase::Pending,
            reason: "Starting".into(),
            message:
                "waiting for the pod to be scheduled and its init containers and sidecars to start"
                    .into(),
            start_time: None,
            completion_time: None,
            result: None,
        }),
    };
    obs.start_time = start_time;
    if obs.phase.is_terminal() {
        obs.completion_time = finished_at;
        obs.result = result.or(Some(Err(ResultError::Missing)));
    }
    obs
}

/// Sets a condition, keeping `lastTransitionTime` when its status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_contract() {
        let ok = parse_summary(Some(r#"{"findings":{"critical":0,"high":2,"medium":1,"low":0,"note":0},"costUsd":0.42,"sarif":"/output/results.sarif"}"#)).unwrap();
        assert_eq!(ok.findings.high, 2);
        assert_eq!(ok.findings.summary(), "C0 H2 M1 L0 N0");
        assert_eq!(parse_summary(None), Err(ResultError::Missing));
        assert_eq!(parse_summary(Some("  \n")), Err(ResultError::Missing));
        assert!(matches!(parse_summary(Some("Traceback: boom")), Err(ResultError::Malformed(_))));
        assert!(matches!(
            parse_summary(Some(r#"{"findings":{},"costUsd":-1}"#)),
            Err(ResultError::Malformed(_))
        ));
        let big = format!(r#"{{"findings":{{}},"x":"{}"}}"#, "a".repeat(5000));
        assert_eq!(parse_summary(Some(&big)), Err(ResultError::TooLarge(big.len())));
        // The sarif path is a plain path on the output volume, or nothing (issue 12 item 18).
        for bad in ["/etc/passwd", "/output/../etc/shadow", "relative.sarif", "/output/a\u{1b}[2Jb"]
        {
            let text = format!(r#"{{"findings":{{}},"costUsd":0,"sarif":"{bad}"}}"#);
            assert!(matches!(parse_summary(Some(&text)), Err(ResultError::Malformed(_))), "{bad}");
        }
        let long =
            format!(r#"{{"findings":{{}},"costUsd":0,"sarif":"/output/{}"}}"#, "a".repeat(300));
        assert!(matches!(parse_summary(Some(&long)), Err(ResultError::Malformed(_))));
        let empty = parse_summary(Some(r#"{"findings":{},"costUsd":0,"sarif":""}"#)).unwrap();
        assert_eq!(empty.sarif.as_deref(), Some(""));
        // The scanner's output never reaches the message.
        let err = parse_summary(Some("sk-ant-secret-value")).unwrap_err();
        assert!(!err.message().contains("sk-ant"));
    }

    /// What the kubelet reports between the scanner's exit and the pod's: the run stays
    /// Running (seen on a real node, where the phase went Running → Pending → Succeeded).
    #[test]
    fn a_scanner_that_exited_before_its_sidecars_keeps_the_run_running() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {
                "phase": "Running",
                "initContainerStatuses": [{"name": "sanctum-bridge", "image": "b", "imageID": "",
                    "ready": true, "restartCount": 0, "state": {"running": {}}}],
                "containerStatuses": [{"name": SCANNER_CONTAINER, "image": "s", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
            },
        }))
        .unwrap();
        let obs = observe(&pod);
        assert_eq!(obs.phase, Phase::Running);
        assert_eq!(obs.reason, "Finishing");
    }

    #[test]
    fn tail_respects_char_boundaries() {
        let s = "é".repeat(400);
        assert!(tail(&s).len() <= 300);
    }
}
