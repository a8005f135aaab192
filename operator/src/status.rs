//! The status of a ScannerRun, as pure functions: what the scanner pod says about the run
//! ([`observe`]: phase, a condition reason a person can act on, times, and the result
//! summary from the termination message), and every transition the reconciler writes into
//! `.status` (built, provisioned, waiting, failed, one observation folded in: [`step`]).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sanctum_common::text::truncate;

use crate::crd::{Phase, RunResult, ScannerRun, ScannerRunStatus};
use crate::objects::BuildError;
use crate::plan::RunPlan;
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
/// False while the scheduler cannot place the pod (the run stays `Pending`: the scheduler
/// retries, and what it names, a missing PersistentVolumeClaim or room on a node, may come);
/// set True again once it is placed.
pub const SCHEDULED: &str = "Scheduled";

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
    /// The pod's `PodScheduled` condition, while the run is `Pending`.
    pub scheduling: Option<Scheduling>,
}

/// What the pod's `PodScheduled` condition says while the run waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduling {
    pub scheduled: bool,
    /// The scheduler's reason (`Unschedulable`, `SchedulerError`), or `Scheduled`.
    pub reason: String,
    /// The scheduler's words, cut to [`MAX_SCHEDULER_MESSAGE`] bytes.
    pub message: String,
}

/// Longest scheduler message copied into status, in bytes.
pub const MAX_SCHEDULER_MESSAGE: usize = 512;

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

/// Longest part of the scanner's `error` quoted in status, in bytes.
pub const MAX_ERROR_BYTES: usize = 512;

/// The summary's `error` (DESIGN.md "Run result contract": what went wrong, absent on
/// success), made fit to quote in a status message: control and bidirectional-formatting
/// characters become spaces, and it is cut to [`MAX_ERROR_BYTES`] on a character boundary
/// with `…`. `None` when there is no summary, it is over [`MAX_SUMMARY_BYTES`], it is not a
/// JSON object, or its `error` is absent, not a string or blank. The text is the scanner's,
/// so untrusted; it holds no secret by construction (the gateway never echoes a key).
pub fn summary_error(message: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithError {
        error: Option<String>,
    }
    let text = message.map(str::trim).filter(|m| m.len() <= MAX_SUMMARY_BYTES)?;
    let error = serde_json::from_str::<WithError>(text).ok()?.error?;
    let clean = printable(&error);
    let clean = clean.trim();
    if clean.is_empty() {
        return None;
    }
    Some(truncate(clean, MAX_ERROR_BYTES))
}

/// `text` with control and bidirectional-formatting characters turned into spaces, so text
/// from a pod (the scanner's error, the scheduler's message) cannot reshape a status line.
fn printable(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    text.chars().map(|c| if hidden(c) { ' ' } else { c }).collect()
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
        scheduling: None,
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

/// The pod's `PodScheduled` condition, if the scheduler set one.
fn scheduling(pod: &Pod) -> Option<Scheduling> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == "PodScheduled")?;
    let scheduled = c.status == "True";
    let default = if scheduled { "Scheduled" } else { "Unschedulable" };
    // A condition reason is CamelCase (metav1.Condition's pattern); any other is replaced.
    let camel = |r: &&str| {
        r.len() <= 64
            && r.starts_with(|c: char| c.is_ascii_alphabetic())
            && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let reason = c.reason.as_deref().filter(camel).unwrap_or(default);
    let message = match c.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => m,
        None if scheduled => "the scheduler placed the pod on a node",
        None => "the scheduler gave no reason",
    };
    let message = printable(message);
    Some(Scheduling {
        scheduled,
        reason: reason.into(),
        message: truncate(&message, MAX_SCHEDULER_MESSAGE),
    })
}

pub fn observe(pod: &Pod) -> Observation {
    let status = pod.status.clone().unwrap_or_default();
    let start_time = status.start_time.clone();
    let scanner = statuses(pod, false).iter().find(|s| s.name == SCANNER_CONTAINER);
    let terminated = scanner.and_then(|s| s.state.as_ref()?.terminated.clone());
    let finished_at = terminated.as_ref().and_then(|t| t.finished_at.clone());
    let result = terminated.as_ref().map(|t| parse_summary(t.message.as_deref()));
    let scheduling = scheduling(pod);

    let mut obs = match status.phase.as_deref() {
        Some("Succeeded") => Observation {
            phase: Phase::Succeeded,
            reason: "Succeeded".into(),
            message: "the scanner finished".into(),
            start_time: None,
            completion_time: None,
            result: None,
            scheduling: None,
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
                    let why = summary_error(t.message.as_deref())
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    failed(
                        "ScannerFailed",
                        format!("the scanner exited with code {}{why}", t.exit_code),
                    )
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
                scheduling: None,
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
            scheduling: None,
        },
        _ => stuck(pod).or_else(|| failed_init(pod)).unwrap_or_else(|| {
            let (reason, message) = match &scheduling {
                Some(s) if !s.scheduled => (
                    s.reason.clone(),
                    format!(
                        "the pod cannot be scheduled yet: {}; the scheduler keeps trying, so fix what it names (e.g. create the PersistentVolumeClaim, free or add node capacity)",
                        s.message
                    ),
                ),
                _ => (
                    "Starting".into(),
                    "waiting for the pod to be scheduled and its init containers and sidecars to start"
                        .into(),
                ),
            };
            Observation {
                phase: Phase::Pending,
                reason,
                message,
                start_time: None,
                completion_time: None,
                result: None,
                scheduling: None,
            }
        }),
    };
    obs.start_time = start_time;
    // In every phase, so a `Scheduled=False` the run got while waiting turns True.
    obs.scheduling = scheduling;
    if obs.phase.is_terminal() {
        obs.completion_time = finished_at;
        obs.result = result.or(Some(Err(ResultError::Missing)));
    }
    obs
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The status after the run could not be built: `Failed`, with the error's reason on
/// `Provisioned=False` and `Finished=True`.
pub fn failed_to_build(run: &ScannerRun, error: &BuildError, now: &Time) -> ScannerRunStatus {
    conflict(run, error.reason(), &error.to_string(), now)
}

/// The status after the run could not be provisioned because an object of its name exists
/// that it does not own (`reason`: `PodConflict`, `SecretConflict`), or the API server
/// refused one of its objects for good ([`crate::refusal`]): `Failed`.
pub fn conflict(run: &ScannerRun, reason: &str, message: &str, now: &Time) -> ScannerRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    set_condition(
        &mut status.conditions,
        condition(PROVISIONED, false, reason, message, generation, now),
    );
    set_condition(
        &mut status.conditions,
        condition(FINISHED, true, reason, message, generation, now),
    );
    status.phase = Some(Phase::Failed);
    status.message = Some(message.to_owned());
    status.observed_generation = generation;
    status.completion_time = Some(now.clone());
    status
}

/// The status right after this run created its Secret: the record that the Secret of the
/// run's name is its own.
pub fn secret_created(run: &ScannerRun, plan: &RunPlan, now: &Time) -> ScannerRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    let message = format!("created Secret {} holding the run's TraT", plan.secret_name);
    set_condition(
        &mut status.conditions,
        condition(SECRET_CREATED, true, "Created", &message, generation, now),
    );
    status.phase = Some(Phase::Pending);
    status.observed_generation = generation;
    status
}

/// Whether the run's status records that it created its Secret.
pub fn created_its_secret(run: &ScannerRun) -> bool {
    run.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| c.type_ == SECRET_CREATED && c.status == "True")
    })
}

/// The status right after the run's objects were created.
pub fn provisioned(run: &ScannerRun, plan: &RunPlan, now: &Time) -> ScannerRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    let message = format!(
        "created pod {}, Secret {} and NetworkPolicy {}",
        plan.pod_name, plan.secret_name, plan.network_policy_name
    );
    set_condition(
        &mut status.conditions,
        condition(PROVISIONED, true, "Created", &message, generation, now),
    );
    status.phase = Some(Phase::Pending);
    status.pod_name = Some(plan.pod_name.clone());
    status.message = Some(message);
    status.observed_generation = generation;
    status
}

/// The status after the pod vanished under an unfinished run.
pub fn pod_deleted(run: &ScannerRun, pod_name: &str, now: &Time) -> ScannerRunStatus {
    let obs = Observation {
        phase: Phase::Failed,
        reason: "PodDeleted".into(),
        message: format!(
            "pod {pod_name} was deleted before the run finished; create a new ScannerRun to run again"
        ),
        start_time: None,
        completion_time: Some(now.clone()),
        result: None,
        scheduling: None,
    };
    next_status(run, obs, now)
}

/// Folds one observation of the pod into the run's status.
pub fn next_status(run: &ScannerRun, obs: Observation, now: &Time) -> ScannerRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    status.observed_generation = generation;
    status.phase = Some(obs.phase);
    status.message = Some(obs.message.clone());
    if status.start_time.is_none() {
        status.start_time = obs.start_time.clone();
    }
    if let Some(s) = &obs.scheduling {
        // False while the scheduler cannot place the pod; True again once it could, and
        // only then (a run placed at once gets no extra condition, nor a write for it).
        let known = status.conditions.iter().any(|c| c.type_ == SCHEDULED);
        if !s.scheduled || known {
            set_condition(
                &mut status.conditions,
                condition(SCHEDULED, s.scheduled, &s.reason, &s.message, generation, now),
            );
        }
    }
    let started = matches!(obs.phase, Phase::Running)
        || (obs.phase.is_terminal() && status.start_time.is_some());
    if started {
        set_condition(
            &mut status.conditions,
            condition(STARTED, true, "Started", "the scanner container started", generation, now),
        );
    }
    if obs.phase.is_terminal() {
        status.completion_time = Some(obs.completion_time.clone().unwrap_or_else(|| now.clone()));
        // `Finished` is True once the run is over; its reason says how it ended.
        set_condition(
            &mut status.conditions,
            condition(FINISHED, true, &obs.reason, &obs.message, generation, now),
        );
        match &obs.result {
            Some(Ok(result)) => {
                status.findings = Some(result.findings.summary());
                status.result = Some(result.clone());
                set_condition(
                    &mut status.conditions,
                    condition(
                        RESULT_RECORDED,
                        true,
                        "Recorded",
                        if obs.phase == Phase::Failed {
                            "the scanner's summary is in status.result; the run failed, so its counts cover only what was reviewed before it stopped"
                        } else {
                            "the scanner's summary is in status.result"
                        },
                        generation,
                        now,
                    ),
                );
            }
            Some(Err(e)) => {
                set_condition(
                    &mut status.conditions,
                    condition(RESULT_RECORDED, false, e.reason(), &e.message(), generation, now),
                );
            }
            None => {}
        }
    }
    status
}

/// The status of a run whose object the API server refused for now (see
/// [`crate::refusal`]): still `Pending`, `Provisioned=False` with the server's reason.
pub fn waiting(run: &ScannerRun, reason: &str, message: &str, now: &Time) -> ScannerRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    set_condition(
        &mut status.conditions,
        condition(PROVISIONED, false, reason, message, generation, now),
    );
    status.phase = Some(Phase::Pending);
    status.message = Some(message.to_owned());
    status.observed_generation = generation;
    status
}

/// Whether a `Provisioned` condition with `reason` is new in `old`: the first refusal of a
/// kind gets an Event and a metric, the retries after it do not.
pub fn first_wait(old: &ScannerRunStatus, reason: &str) -> bool {
    !old.conditions.iter().any(|c| c.type_ == PROVISIONED && c.reason == reason)
}

/// Since when a waiting run has waited: its `Provisioned` condition's lastTransitionTime,
/// or `now` when it has none.
pub fn waiting_since<'a>(status: &'a ScannerRunStatus, now: &'a Time) -> &'a Time {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == PROVISIONED)
        .map_or(now, |c| &c.last_transition_time)
}

/// The phase a run entered on one observation, for its Event and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Entered {
    pub phase: Phase,
    pub reason: String,
    pub message: String,
    /// `ResultRecorded=False` when the run ended without a usable summary: a second,
    /// Warning Event.
    pub result_missing: Option<Condition>,
}

/// One observation of the pod folded into the run's status.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub status: ScannerRunStatus,
    /// Whether `status` differs from the run's: only then is it written.
    pub changed: bool,
    /// Set when the phase changed.
    pub entered: Option<Entered>,
    /// The run is over: its `txn` is revoked.
    pub terminal: bool,
}

/// What one observation of the run's pod changes ([`next_status`], plus what to report).
pub fn step(run: &ScannerRun, obs: Observation, now: &Time) -> Step {
    let old = run.status.clone().unwrap_or_default();
    let (phase, reason, message) = (obs.phase, obs.reason.clone(), obs.message.clone());
    let status = next_status(run, obs, now);
    let entered = (old.phase != Some(phase)).then(|| Entered {
        phase,
        reason,
        message,
        result_missing: status
            .conditions
            .iter()
            .find(|c| c.type_ == RESULT_RECORDED && c.status == "False")
            .cloned(),
    });
    Step { changed: status != old, status, entered, terminal: phase.is_terminal() }
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

    fn run() -> ScannerRun {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sanctum.dev/v1alpha1", "kind": "ScannerRun",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"image": "s", "orgId": "acme", "source": {"volume": {"claimName": "c"}}},
        }))
        .unwrap()
    }

    fn failed_scanner(summary: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [{"name": SCANNER_CONTAINER, "image": "s", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 4, "reason": "Error", "message": summary}}}],
            },
        }))
        .unwrap()
    }

    /// A failed run says why, in the scanner's words (its summary's `error`), not only its
    /// exit code; the counts it recorded are marked as partial.
    #[test]
    fn a_failed_scanner_s_error_is_in_the_message() {
        let error = "the model could not be reached: gateway answered 503 provider key file /etc/sanctum/provider-keys/acme is empty: write the org's API key into it";
        let summary = serde_json::json!({"findings": {}, "costUsd": 0, "turns": 0,
            "sarif": "/output/results.sarif", "error": error})
        .to_string();
        let obs = observe(&failed_scanner(&summary));
        assert_eq!((obs.phase, obs.reason.as_str()), (Phase::Failed, "ScannerFailed"));
        assert_eq!(obs.message, format!("the scanner exited with code 4: {error}"));
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let status = step(&run(), obs, &now).status;
        let recorded = status.conditions.iter().find(|c| c.type_ == RESULT_RECORDED).unwrap();
        assert!(recorded.message.contains("only what was reviewed before it stopped"));
        // Without a summary error, the exit code alone, as before.
        let plain = observe(&failed_scanner(r#"{"findings":{},"costUsd":0}"#));
        assert_eq!(plain.message, "the scanner exited with code 4");
        assert_eq!(observe(&failed_scanner("Traceback: boom")).message, plain.message);
    }

    #[test]
    fn a_summary_error_is_cleaned_and_cut() {
        let quote = |e: &str| summary_error(Some(&serde_json::json!({"error": e}).to_string()));
        assert_eq!(quote("a\nb\u{1b}[2Jc\u{202e}d").as_deref(), Some("a b [2Jc d"));
        assert_eq!(quote(" \n "), None);
        assert_eq!(summary_error(None), None);
        assert_eq!(summary_error(Some(r#"{"error": 4}"#)), None);
        assert_eq!(summary_error(Some(r#"{"findings":{}}"#)), None);
        assert_eq!(summary_error(Some("not json")), None);
        let long = quote(&"é".repeat(400)).unwrap();
        assert!(long.len() <= MAX_ERROR_BYTES && long.ends_with('…'), "{}", long.len());
        assert_eq!(quote(&"a".repeat(MAX_ERROR_BYTES)).unwrap().len(), MAX_ERROR_BYTES);
    }

    /// A pod the scheduler cannot place leaves the run `Pending` (the scheduler retries;
    /// the user may create the claim), saying why in the message and a `Scheduled=False`
    /// condition, which turns True once the pod is placed.
    #[test]
    fn an_unschedulable_pod_says_why_and_the_run_waits() {
        let why = "0/1 nodes are available: persistentvolumeclaim \"sanctum-checkout\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": why,
                "lastTransitionTime": "2026-11-22T10:00:05Z"}]},
        }))
        .unwrap();
        let obs = observe(&pod);
        assert_eq!((obs.phase, obs.reason.as_str()), (Phase::Pending, "Unschedulable"));
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut waiting = run();
        waiting.status =
            Some(ScannerRunStatus { phase: Some(Phase::Pending), ..Default::default() });
        let first = step(&waiting, obs, &now);
        assert!(first.changed && !first.terminal && first.entered.is_none(), "{first:?}");
        assert_eq!(first.status.phase, Some(Phase::Pending));
        let message = first.status.message.as_deref().unwrap();
        assert!(message.contains(why) && message.contains("keeps trying"), "{message}");
        let scheduled = first.status.conditions.iter().find(|c| c.type_ == SCHEDULED).unwrap();
        assert_eq!(
            (scheduled.status.as_str(), scheduled.reason.as_str()),
            ("False", "Unschedulable")
        );
        assert_eq!(scheduled.message, why);

        // Placed: the condition turns True.
        waiting.status = Some(first.status);
        let placed: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        }))
        .unwrap();
        let obs = observe(&placed);
        assert_eq!(obs.reason, "Starting");
        let status = step(&waiting, obs, &now).status;
        let scheduled = status.conditions.iter().find(|c| c.type_ == SCHEDULED).unwrap();
        assert_eq!((scheduled.status.as_str(), scheduled.reason.as_str()), ("True", "Scheduled"));

        // A run placed at once gets no Scheduled condition.
        let mut fresh = run();
        fresh.status = Some(ScannerRunStatus { phase: Some(Phase::Pending), ..Default::default() });
        let status = step(&fresh, observe(&placed), &now).status;
        assert!(status.conditions.iter().all(|c| c.type_ != SCHEDULED), "{status:?}");
    }

    #[test]
    fn tail_respects_char_boundaries() {
        let s = "é".repeat(400);
        assert!(tail(&s).len() <= 300);
    }
}
