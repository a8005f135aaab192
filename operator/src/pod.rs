//! The scanner pod of a ScannerRun: the agent container, the repository and output mounts,
//! the pod-level hardening, then the shared [`inject`](crate::inject::inject).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::config::OperatorConfig;
use crate::crd::{IdentitySource, ScannerRun};
use crate::inject::{self, Agents, ConfigFile, IdentityMount, InjectError, Injection, TratSource};
use crate::labels::owned_meta;
use crate::names::*;
use crate::plan::{RepoSource, RunPlan};

pub const SCANNER_CONTAINER: &str = "scanner";
const VOLUME_REPO: &str = "repo";
const VOLUME_OUTPUT: &str = "output";
const VOLUME_TMP: &str = "tmp";
const VOLUME_HOME: &str = "home";
const HOME: &str = "/home/sanctum";

fn mount(name: &str, path: &str, read_only: bool, sub_path: Option<&String>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        sub_path: sub_path.cloned(),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn empty_dir(name: &str, size: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size.into())),
            medium: None,
        }),
        ..Default::default()
    }
}

fn pvc(name: &str, claim: &str, read_only: bool) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: read_only.then_some(true),
        }),
        ..Default::default()
    }
}

/// The git clone init container: URL and revision travel as environment variables, never
/// spliced into the script, so a hostile URL cannot inject shell.
fn git_clone(url: &str, revision: Option<&str>, config: &OperatorConfig) -> Container {
    const SCRIPT: &str = r#"set -eu
git init -q /repo
cd /repo
git remote add origin "$SANCTUM_GIT_URL"
git fetch -q --depth 1 origin "${SANCTUM_GIT_REVISION:-HEAD}"
git checkout -q FETCH_HEAD
"#;
    Container {
        name: "git-clone".into(),
        image: Some(config.images.git.clone()),
        image_pull_policy: config.images.pull_policy.clone(),
        command: Some(vec!["sh".into(), "-c".into(), SCRIPT.into()]),
        env: Some(
            [
                Some(env("SANCTUM_GIT_URL", url)),
                revision.map(|r| env("SANCTUM_GIT_REVISION", r)),
                Some(env("HOME", "/tmp")),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        volume_mounts: Some(vec![
            mount(VOLUME_REPO, "/repo", false, None),
            mount(VOLUME_TMP, "/tmp", false, None),
        ]),
        security_context: Some(inject::hardened(&config.pod)),
        // A quota on limits.cpu or memory refuses a pod with any container without them.
        resources: crate::resources::requirements(
            &crate::resources::effective(&config.pod.sidecar_resources, None),
            crate::resources::CONTAINER_GIT_CLONE,
        ),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The injection a ScannerRun pod gets: its own Secret for the TraT (and spiffe-helper's
/// configuration), the identity source of the plan, every app container an agent.
pub fn injection<'a>(
    plan: &RunPlan,
    run: &ScannerRun,
    config: &'a OperatorConfig,
) -> Injection<'a> {
    let identity = match plan.identity {
        IdentitySource::Spiffe => IdentityMount::Spiffe {
            helper_config: ConfigFile::Secret {
                name: plan.secret_name.clone(),
                key: SECRET_KEY_HELPER_CONF.into(),
            },
        },
        IdentitySource::ServiceAccountToken => IdentityMount::ServiceAccountToken {
            audience: plan.audience.clone(),
            expiration_seconds: config.identity.token_expiration_seconds,
        },
    };
    Injection {
        config,
        identity,
        trat: TratSource::Secret { name: plan.secret_name.clone(), key: SECRET_KEY_TRAT.into() },
        gateway_url: plan.gateway_url.clone(),
        agents: Agents::All,
        model: run.spec.agent.as_ref().and_then(|a| a.model.clone()),
        resources: crate::resources::effective(&config.pod.sidecar_resources, None),
        // The pod sets automountServiceAccountToken: false itself.
        allow_api_token: false,
    }
}

pub fn build_pod(
    run: &ScannerRun,
    plan: &RunPlan,
    config: &OperatorConfig,
) -> Result<Pod, InjectError> {
    let spec = &run.spec;
    let mut env_vars: Vec<EnvVar> = spec.env.clone().unwrap_or_default();
    env_vars.retain(|e| !e.name.starts_with("SANCTUM_") && e.name != "HOME" && e.name != "TMPDIR");
    env_vars.extend([
        env("HOME", HOME),
        // The root filesystem is read-only: temporary files go to the /tmp emptyDir.
        env("TMPDIR", "/tmp"),
        env("SANCTUM_REPO", "/repo"),
        env("SANCTUM_OUTPUT", "/output"),
        env("SANCTUM_RUN", &plan.name),
    ]);
    if let Some(agent) = &spec.agent {
        if let Some(prompt) = &agent.prompt {
            env_vars.push(env("SANCTUM_PROMPT", prompt));
        }
        if let Some(turns) = agent.max_turns {
            env_vars.push(env("SANCTUM_MAX_TURNS", turns.to_string()));
        }
    }

    let (repo_volume, repo_sub_path, init) = match &plan.source {
        RepoSource::Git { url, revision } => (
            empty_dir(VOLUME_REPO, "10Gi"),
            None,
            vec![git_clone(url, revision.as_deref(), config)],
        ),
        RepoSource::Volume { claim_name, sub_path } => {
            (pvc(VOLUME_REPO, claim_name, true), sub_path.as_ref(), vec![])
        }
    };
    let (output_volume, output_sub_path) = match &spec.output {
        Some(out) => (pvc(VOLUME_OUTPUT, &out.claim_name, false), out.sub_path.as_ref()),
        None => (empty_dir(VOLUME_OUTPUT, "1Gi"), None),
    };

    let scanner = Container {
        name: SCANNER_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: config.images.pull_policy.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: Some(env_vars),
        resources: spec.resources.clone(),
        working_dir: Some("/repo".into()),
        volume_mounts: Some(vec![
            mount(VOLUME_REPO, "/repo", true, repo_sub_path),
            mount(VOLUME_OUTPUT, "/output", false, output_sub_path),
            mount(VOLUME_TMP, "/tmp", false, None),
            mount(VOLUME_HOME, HOME, false, None),
        ]),
        security_context: Some(inject::hardened(&config.pod)),
        // The run result contract: a JSON summary, never log lines.
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };

    let mut pod_spec = PodSpec {
        containers: vec![scanner],
        init_containers: (!init.is_empty()).then_some(init),
        volumes: Some(vec![
            repo_volume,
            output_volume,
            empty_dir(VOLUME_TMP, &config.pod.tmp_size),
            empty_dir(VOLUME_HOME, "256Mi"),
        ]),
        restart_policy: Some("Never".into()),
        active_deadline_seconds: Some(plan.timeout_seconds),
        automount_service_account_token: Some(false),
        service_account_name: Some(config.pod.service_account_name.clone()),
        enable_service_links: Some(false),
        priority_class_name: config.pod.priority_class_name.clone(),
        node_selector: (!config.pod.node_selector.is_empty())
            .then(|| config.pod.node_selector.clone()),
        tolerations: (!config.pod.tolerations.is_empty()).then(|| config.pod.tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(config.pod.run_as_user),
            run_as_group: Some(config.pod.run_as_user),
            fs_group: Some(config.pod.run_as_user),
            seccomp_profile: Some(inject::seccomp(&config.pod)),
            ..Default::default()
        }),
        ..Default::default()
    };
    inject::inject(&mut pod_spec, &injection(plan, run, config))?;

    let mut meta = owned_meta(run, plan, &plan.pod_name, "scanner");
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(LABEL_RUN_ID.into(), plan.uid.clone());
    }
    meta.annotations = Some(BTreeMap::from([
        (ANNOTATION_STATUS.into(), STATUS_INJECTED.into()),
        // Keeps the webhook's hands off a pod the operator already built.
        (ANNOTATION_INJECT.into(), "false".into()),
    ]));
    Ok(Pod { metadata: meta, spec: Some(pod_spec), status: None })
}
