//! The injection: what turns a pod into one that holds no credentials yet can call the LLM.
//! It adds the token init containers (`fetch-jwt`, `write-trat`), the native sidecars
//! (`sanctum-forwarder`, `sanctum-bridge`, with startup probes so the agent starts only once
//! the bridge is ready, and a Job still completes when the agent exits), their volumes, the
//! hardening of every injected container, and the agent environment.
//!
//! The ScannerRun pod builder and the admission webhook both call [`inject`], so the two
//! can never drift. It is a pure function of the pod and an [`Injection`].

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    HTTPGetAction, KeyToPath, PodSpec, Probe, ProjectedVolumeSource, SeccompProfile,
    SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sanctum_common::defaults;
use thiserror::Error;

use crate::config::{OperatorConfig, PodSettings};
use crate::names::*;

/// Where the pod's JWT-SVID comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMount {
    /// SPIRE through the SPIFFE CSI driver: `fetch-jwt` (spiffe-helper, a native sidecar so
    /// the short-lived SVID stays fresh) writes it, configured from `helper_config`.
    Spiffe { helper_config: ConfigFile },
    /// A projected, audience-bound ServiceAccount token that the kubelet rotates.
    ServiceAccountToken { audience: String, expiration_seconds: i64 },
}

/// A file taken from a key of a Secret or ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    Secret { name: String, key: String },
    ConfigMap { name: String, key: String },
}

/// Where `write-trat` gets the transaction token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TratSource {
    /// Copied from a key of a Secret (ScannerRuns, or `sanctum.dev/trat-secret`).
    Secret { name: String, key: String },
    /// Traded at the operator's token service for the pod's projected ServiceAccount token.
    /// `ca_bundle` (PEM) is what `fetch-trat` trusts for that HTTPS call; it reaches the
    /// container in its environment (`SANCTUM_TOKEN_SERVICE_CA`): a public certificate, so
    /// no Secret or per-namespace ConfigMap has to be made first.
    TokenService { url: String, ca_bundle: Option<String> },
}

/// Which app containers get the agent environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agents {
    All,
    Named(Vec<String>),
}

/// Everything [`inject`] needs besides the pod.
#[derive(Debug, Clone)]
pub struct Injection<'a> {
    pub config: &'a OperatorConfig,
    pub identity: IdentityMount,
    pub trat: TratSource,
    pub gateway_url: String,
    pub agents: Agents,
    pub model: Option<String>,
    /// Requests and limits of the injected containers, by name
    /// ([`crate::resources::effective`]).
    pub resources: crate::resources::Overrides,
    /// Whether agent containers keep a Kubernetes API token mount (the pod opted in with
    /// `sanctum.dev/allow-api-token: "true"`). Off by default: an agent has no business
    /// with the API server, and a prompt-injected one would hold a credential.
    pub allow_api_token: bool,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InjectError {
    #[error("container name(s) {0} clash with the containers Sanctum injects; rename them")]
    ContainerClash(String),
    #[error("volume name(s) {0} clash with the volumes Sanctum injects; rename them")]
    VolumeClash(String),
    #[error(
        "container '{container}' mounts {path}, where Sanctum keeps the pod's tokens; agent containers must not see them — remove that mount"
    )]
    MountClash { container: String, path: String },
    #[error(
        "container '{container}' declares port {port}, which the Sanctum sidecars use; choose another port"
    )]
    PortClash { container: String, port: i32 },
    #[error(
        "spec.{list}[{container}].volumeMounts: container '{container}' mounts volume '{volume}', which holds the pod's tokens; only Sanctum's containers may mount it — remove that mount"
    )]
    TokenVolumeMount { list: &'static str, container: String, volume: String },
    #[error(
        "spec.shareProcessNamespace: true lets every container read the Sanctum sidecars' memory and files through /proc (the pod's tokens with them); remove it or the injection opt-in"
    )]
    SharedProcessNamespace,
    #[error("sanctum.dev/containers names '{0}', which is not a container of this pod")]
    UnknownContainer(String),
    #[error("the pod has no containers to inject into")]
    NoContainers,
}

use sanctum_common::token_service::SA_TOKEN_AUDIENCE;
const SA_TOKEN_DIR: &str = "/var/run/sanctum/sa";
const RUN_SECRET_DIR: &str = "/var/run/sanctum/run-secret";
const SPIRE_AGENT_DIR: &str = "/spiffe-workload-api";
const HELPER_CONFIG_DIR: &str = "/etc/spiffe-helper";
const VOLUME_SPIFFE_HELPER: &str = "sanctum-spiffe-helper";
const VOLUME_SA_TOKEN: &str = "sanctum-sa-token";
/// The containers injection adds (never a pod's own).
pub const INJECTED_CONTAINERS: [&str; 4] =
    [CONTAINER_FETCH_JWT, CONTAINER_WRITE_TRAT, CONTAINER_FORWARDER, CONTAINER_BRIDGE];
/// The volumes injection adds; they hold the pod's tokens.
pub const INJECTED_VOLUMES: [&str; 6] = [
    VOLUME_SAGE,
    VOLUME_SPIFFE,
    VOLUME_SPIRE_AGENT,
    VOLUME_RUN_SECRET,
    VOLUME_SPIFFE_HELPER,
    VOLUME_SA_TOKEN,
];
/// Directories holding tokens: no agent container may mount anything there.
const TOKEN_DIRS: [&str; 2] = [defaults::SAGE_DIR, defaults::JWT_DIR];
const SIDECAR_PORTS: [i32; 3] = [
    defaults::BRIDGE_PORT as i32,
    defaults::BRIDGE_ADMIN_PORT as i32,
    defaults::FORWARDER_ADMIN_PORT as i32,
];

/// The security context of every container Sanctum injects (and of every container of a
/// ScannerRun pod): Pod Security Standards `restricted`, and then some.
pub fn hardened(settings: &PodSettings) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(settings.run_as_user),
        run_as_group: Some(settings.run_as_user),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(seccomp(settings)),
        ..Default::default()
    }
}

pub fn seccomp(settings: &PodSettings) -> SeccompProfile {
    match &settings.seccomp_localhost_profile {
        Some(profile) => {
            SeccompProfile { type_: "Localhost".into(), localhost_profile: Some(profile.clone()) }
        }
        None => SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None },
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn memory_dir(size: &str) -> EmptyDirVolumeSource {
    EmptyDirVolumeSource { medium: Some("Memory".into()), size_limit: Some(Quantity(size.into())) }
}

fn volume(name: &str) -> Volume {
    Volume { name: name.into(), ..Default::default() }
}

fn http_probe(port: u16, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn base_container(name: &str, image: &str, injection: &Injection<'_>) -> Container {
    let config = injection.config;
    Container {
        name: name.into(),
        image: Some(image.into()),
        image_pull_policy: config.images.pull_policy.clone(),
        security_context: Some(hardened(&config.pod)),
        resources: crate::resources::requirements(&injection.resources, name),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn config_file_volume(name: &str, file: &ConfigFile, path: &str) -> Volume {
    let items =
        |key: &str| Some(vec![KeyToPath { key: key.into(), path: path.into(), mode: None }]);
    match file {
        ConfigFile::Secret { name: secret, key } => Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: items(key),
                // Only the one container that needs it mounts this volume; it runs as a
                // non-root UID without fsGroup in injected pods, so the file must be readable.
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..volume(name)
        },
        ConfigFile::ConfigMap { name: map, key } => Volume {
            config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                name: map.clone(),
                items: items(key),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..volume(name)
        },
    }
}

fn projected_sa_token(name: &str, audience: &str, expiration: i64, path: &str) -> Volume {
    Volume {
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.into()),
                    expiration_seconds: Some(expiration),
                    path: path.into(),
                }),
                ..Default::default()
            }]),
        }),
        ..volume(name)
    }
}

/// Refuses pods whose names, mounts or ports would collide with what is injected, and pods
/// whose own containers could reach the tokens: by mounting an injected volume by name
/// (it exists once the pod is injected, wherever the mount puts it), or through a shared
/// process namespace (`/proc/<pid>/root` of a sidecar).
fn check_clashes(spec: &PodSpec) -> Result<(), InjectError> {
    if spec.share_process_namespace == Some(true) {
        return Err(InjectError::SharedProcessNamespace);
    }
    let lists: [(&'static str, &[Container]); 2] = [
        ("containers", &spec.containers),
        ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
    ];
    for (list, containers) in lists {
        for c in containers.iter().filter(|c| !INJECTED_CONTAINERS.contains(&c.name.as_str())) {
            let mounts = c.volume_mounts.iter().flatten();
            if let Some(m) =
                mounts.into_iter().find(|m| INJECTED_VOLUMES.contains(&m.name.as_str()))
            {
                return Err(InjectError::TokenVolumeMount {
                    list,
                    container: c.name.clone(),
                    volume: m.name.clone(),
                });
            }
        }
    }
    let app = spec.containers.iter();
    let init = spec.init_containers.iter().flatten();
    let clashing: BTreeSet<&str> = app
        .clone()
        .chain(init.clone())
        .map(|c| c.name.as_str())
        .filter(|n| INJECTED_CONTAINERS.contains(n))
        .collect();
    if !clashing.is_empty() {
        return Err(InjectError::ContainerClash(join(&clashing)));
    }
    let clashing: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .filter(|n| INJECTED_VOLUMES.contains(n))
        .collect();
    if !clashing.is_empty() {
        return Err(InjectError::VolumeClash(join(&clashing)));
    }
    for c in app.chain(init) {
        for m in c.volume_mounts.iter().flatten() {
            let path = m.mount_path.trim_end_matches('/');
            let touches = |dir: &str| {
                path == dir
                    || path.starts_with(&format!("{dir}/"))
                    || dir.starts_with(&format!("{path}/"))
            };
            if TOKEN_DIRS.iter().any(|d| touches(d)) {
                return Err(InjectError::MountClash {
                    container: c.name.clone(),
                    path: m.mount_path.clone(),
                });
            }
        }
        for p in c.ports.iter().flatten() {
            if SIDECAR_PORTS.contains(&p.container_port) {
                return Err(InjectError::PortClash {
                    container: c.name.clone(),
                    port: p.container_port,
                });
            }
        }
    }
    Ok(())
}

fn join(names: &BTreeSet<&str>) -> String {
    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

/// Variables that give Claude Code a credential, or a route to a model provider other than
/// the bridge: with any of them in the pod, the agent could hold a key or call Bedrock,
/// Vertex or Foundry directly and the bridge would see nothing. Removed from every agent
/// container (issue 13 item 5). Sources: Claude Code's environment variable reference
/// (code.claude.com/docs/en/env-vars), its Bedrock/Vertex/Foundry pages, and the AWS and
/// Google SDKs' credential chains that those routes use.
pub const PROVIDER_ROUTE_ENV: [&str; 31] = [
    // Anthropic credentials and endpoint overrides.
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_REFRESH_TOKEN",
    "CLAUDE_CODE_API_BASE_URL",
    // Other providers.
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_FOUNDRY",
    "CLAUDE_CODE_SKIP_BEDROCK_AUTH",
    "CLAUDE_CODE_SKIP_VERTEX_AUTH",
    "CLAUDE_CODE_SKIP_FOUNDRY_AUTH",
    "ANTHROPIC_BEDROCK_BASE_URL",
    "ANTHROPIC_VERTEX_BASE_URL",
    "ANTHROPIC_VERTEX_PROJECT_ID",
    "ANTHROPIC_FOUNDRY_BASE_URL",
    "ANTHROPIC_FOUNDRY_API_KEY",
    "ANTHROPIC_FOUNDRY_RESOURCE",
    // The AWS credential chain (Bedrock).
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    // The Google credential chain (Vertex).
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUD_ML_REGION",
];

/// Hosts that must never go through an HTTP proxy: the bridge is on loopback, and a
/// cluster-wide `HTTPS_PROXY` would otherwise get `CONNECT 127.0.0.1:8082` (issue 13 item 4).
const NO_PROXY_LOOPBACK: [&str; 2] = ["127.0.0.1", "localhost"];

/// Adds `127.0.0.1,localhost` to `NO_PROXY` and `no_proxy` (both spellings are read, by
/// different clients). A literal value is extended; a missing one is set. A value taken
/// from a Secret or ConfigMap (`valueFrom`) cannot be extended, so it is replaced by the
/// loopback hosts and reported as removed.
fn keep_loopback_off_proxies(envs: &mut Vec<EnvVar>, removed: &mut Vec<String>) {
    for name in ["NO_PROXY", "no_proxy"] {
        // Taken out and put back last, so a second pass leaves the list as it is.
        let current = envs.iter().position(|e| e.name == name).map(|i| envs.remove(i));
        let literal = match current {
            Some(e) if e.value_from.is_some() => {
                removed.push(format!("{name} (valueFrom)"));
                String::new()
            }
            Some(e) => e.value.unwrap_or_default(),
            None => String::new(),
        };
        let mut hosts: Vec<&str> =
            literal.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
        for host in NO_PROXY_LOOPBACK {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        envs.retain(|e| e.name != name);
        envs.push(env(name, hosts.join(",")));
    }
}

/// Sets the agent environment: the bridge as the API, a worthless placeholder key, no
/// non-essential traffic, loopback never proxied, and no credential or other provider
/// route ([`PROVIDER_ROUTE_ENV`]) from `env` or `envFrom`. Returns what it removed, as
/// variable names (for the `sanctum.dev/removed-env` report); an `envFrom` source is
/// reported as `envFrom:<kind>/<name>` because its keys are unknown here.
pub fn set_agent_env(container: &mut Container, model: Option<&str>) -> Vec<String> {
    let mut removed = Vec::new();
    let envs = container.env.get_or_insert_with(Vec::new);
    let ours = [
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_MODEL",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "DISABLE_AUTOUPDATER",
    ];
    envs.retain(|e| {
        let name = e.name.as_str();
        if PROVIDER_ROUTE_ENV.contains(&name) {
            // The placeholder this function set on an earlier pass is not a credential.
            let placeholder = name == "ANTHROPIC_API_KEY"
                && e.value.as_deref() == Some(defaults::PLACEHOLDER_API_KEY);
            let shadow = e.value.as_deref() == Some("") && e.value_from.is_none();
            if !placeholder && !shadow && !removed.iter().any(|r| r == name) {
                removed.push(name.to_owned());
            }
            return false;
        }
        !ours.contains(&name) || (name == "ANTHROPIC_MODEL" && model.is_none())
    });
    envs.push(env("ANTHROPIC_BASE_URL", format!("http://{}", defaults::BRIDGE_LISTEN)));
    envs.push(env("ANTHROPIC_API_KEY", defaults::PLACEHOLDER_API_KEY));
    // An explicit `env` entry wins over `envFrom`: an empty value hides any credential or
    // route a Secret or ConfigMap would bring in under these names.
    if let Some(from) = container.env_from.as_ref().filter(|f| !f.is_empty()) {
        for source in from {
            if let Some(s) = &source.secret_ref {
                removed.push(format!("envFrom:secret/{}", s.name));
            }
        }
        for name in PROVIDER_ROUTE_ENV {
            if name != "ANTHROPIC_API_KEY" {
                envs.push(env(name, ""));
            }
        }
    }
    envs.push(env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"));
    envs.push(env("DISABLE_AUTOUPDATER", "1"));
    if let Some(model) = model {
        envs.push(env("ANTHROPIC_MODEL", model));
    }
    keep_loopback_off_proxies(envs, &mut removed);
    removed
}

/// Where the kubelet puts the Kubernetes API token of the pod's ServiceAccount.
pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Removes the Kubernetes API token mount (automounted or written by hand at the standard
/// path) from an agent container: the agent has no business with the API server, and a
/// prompt-injected one would hold a credential. Idempotent.
fn drop_api_token_mount(container: &mut Container) {
    if let Some(mounts) = container.volume_mounts.as_mut() {
        mounts.retain(|m| {
            let path = m.mount_path.trim_end_matches('/');
            !(path == API_TOKEN_DIR || path.starts_with(&format!("{API_TOKEN_DIR}/")))
        });
        if mounts.is_empty() {
            container.volume_mounts = None;
        }
    }
}

/// An agent container: an app container, or one of the pod's own init containers (which
/// may run Claude Code too, e.g. a warm-up step; ours start first, so they can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentRef {
    App(usize),
    Init(usize),
}

/// Injects Sanctum into `spec`. Fails, changing nothing, when the pod cannot take it.
///
/// The agent environment goes to the app containers (`Agents::All`) or to the named
/// containers, app or init (`sanctum.dev/containers`). Returns what was removed from
/// them, one `<container>: <variable>` per entry (see [`set_agent_env`]), for the
/// `sanctum.dev/removed-env` annotation; empty when nothing was.
///
/// Adds, in this order, the init containers `fetch-jwt` (SPIFFE mode), `write-trat`,
/// `sanctum-forwarder` and `sanctum-bridge` before the pod's own, and the volumes: the
/// token volume, the identity's, the TraT source's.
pub fn inject(spec: &mut PodSpec, injection: &Injection<'_>) -> Result<Vec<String>, InjectError> {
    if spec.containers.is_empty() {
        return Err(InjectError::NoContainers);
    }
    check_clashes(spec)?;
    let agents = agent_refs(spec, &injection.agents)?;
    let (write_trat, trat_volume) = write_trat(injection);
    let ours = fetch_jwt(injection).into_iter().chain([
        write_trat,
        // The sidecars: forwarder first, so the bridge finds its socket when it starts.
        forwarder(injection),
        bridge(injection),
    ]);
    let volumes = [token_volume(injection)]
        .into_iter()
        .chain(identity_volumes(injection))
        .chain([trat_volume]);
    let removed = configure_agents(spec, &agents, injection);
    // Ours run before the pod's own init containers, which may call the model too.
    let own = spec.init_containers.take().unwrap_or_default();
    spec.init_containers = Some(ours.chain(own).collect());
    spec.volumes.get_or_insert_with(Vec::new).extend(volumes);
    Ok(removed)
}

/// The containers `agents` names in `spec`; a name that is not there is an error.
fn agent_refs(spec: &PodSpec, agents: &Agents) -> Result<Vec<AgentRef>, InjectError> {
    match agents {
        Agents::All => Ok((0..spec.containers.len()).map(AgentRef::App).collect()),
        Agents::Named(names) => names
            .iter()
            .map(|n| {
                let app = spec.containers.iter().position(|c| &c.name == n).map(AgentRef::App);
                let init = || {
                    spec.init_containers
                        .iter()
                        .flatten()
                        .position(|c| &c.name == n)
                        .map(AgentRef::Init)
                };
                app.or_else(init).ok_or_else(|| InjectError::UnknownContainer(n.clone()))
            })
            .collect(),
    }
}

/// The agent containers' side of the injection: the agent environment and, unless the pod
/// opted in, no Kubernetes API token. Returns what was removed (see [`inject`]).
fn configure_agents(
    spec: &mut PodSpec,
    agents: &[AgentRef],
    injection: &Injection<'_>,
) -> Vec<String> {
    let mut removed = Vec::new();
    for agent in agents {
        let container = match *agent {
            AgentRef::App(i) => &mut spec.containers[i],
            AgentRef::Init(i) => &mut spec.init_containers.as_mut().expect("found above")[i],
        };
        for name in set_agent_env(container, injection.model.as_deref()) {
            removed.push(format!("{}: {name}", container.name));
        }
        if !injection.allow_api_token {
            drop_api_token_mount(container);
        }
    }
    if !injection.allow_api_token {
        // The API server mounted the token before the webhook ran; this keeps a second
        // pass of its ServiceAccount admission (webhook reinvocation) from mounting it again.
        spec.automount_service_account_token = Some(false);
    }
    removed
}

/// The in-memory volume the TraT (and the bridge's socket) live in.
fn token_volume(injection: &Injection<'_>) -> Volume {
    let size = &injection.config.pod.token_volume_size;
    Volume { empty_dir: Some(memory_dir(size)), ..volume(VOLUME_SAGE) }
}

/// The volumes the JWT-SVID comes through: in SPIFFE mode the in-memory JWT directory, the
/// SPIRE agent's socket (CSI) and spiffe-helper's configuration; otherwise a projected,
/// audience-bound ServiceAccount token in the JWT directory.
fn identity_volumes(injection: &Injection<'_>) -> Vec<Volume> {
    let config = injection.config;
    match &injection.identity {
        IdentityMount::Spiffe { helper_config } => vec![
            Volume {
                empty_dir: Some(memory_dir(&config.pod.token_volume_size)),
                ..volume(VOLUME_SPIFFE)
            },
            Volume {
                csi: Some(CSIVolumeSource {
                    driver: config.spiffe.csi_driver.clone(),
                    read_only: Some(true),
                    ..Default::default()
                }),
                ..volume(VOLUME_SPIRE_AGENT)
            },
            config_file_volume(VOLUME_SPIFFE_HELPER, helper_config, "helper.conf"),
        ],
        IdentityMount::ServiceAccountToken { audience, expiration_seconds } => {
            vec![projected_sa_token(VOLUME_SPIFFE, audience, *expiration_seconds, "jwt")]
        }
    }
}

/// `fetch-jwt` (spiffe-helper) in SPIFFE mode; none in ServiceAccount-token mode.
fn fetch_jwt(injection: &Injection<'_>) -> Option<Container> {
    let IdentityMount::Spiffe { .. } = injection.identity else { return None };
    let spiffe = &injection.config.spiffe;
    Some(Container {
        command: (!spiffe.fetch_jwt_command.is_empty()).then(|| spiffe.fetch_jwt_command.clone()),
        args: (!spiffe.fetch_jwt_args.is_empty()).then(|| spiffe.fetch_jwt_args.clone()),
        // A native sidecar: spiffe-helper in daemon mode renews the JWT-SVID
        // (minutes-lived) for as long as the pod runs.
        restart_policy: Some("Always".into()),
        volume_mounts: Some(vec![
            mount(VOLUME_SPIRE_AGENT, SPIRE_AGENT_DIR, true),
            mount(VOLUME_SPIFFE, defaults::JWT_DIR, false),
            mount(VOLUME_SPIFFE_HELPER, HELPER_CONFIG_DIR, true),
        ]),
        ..base_container(CONTAINER_FETCH_JWT, &spiffe.fetch_jwt_image, injection)
    })
}

/// `write-trat` and the volume it reads from: copies the TraT from the run's Secret, or
/// trades the pod's projected ServiceAccount token for one at the token service.
fn write_trat(injection: &Injection<'_>) -> (Container, Volume) {
    let trat_out = format!("--out={}", defaults::TRAT_FILE);
    let mut trat_env = Vec::new();
    let (trat_args, mut mounts, source) = match &injection.trat {
        TratSource::Secret { name, key } => (
            vec![
                "write-trat".into(),
                format!("--from={RUN_SECRET_DIR}/{SECRET_KEY_TRAT}"),
                trat_out,
            ],
            vec![mount(VOLUME_RUN_SECRET, RUN_SECRET_DIR, true)],
            config_file_volume(
                VOLUME_RUN_SECRET,
                &ConfigFile::Secret { name: name.clone(), key: key.clone() },
                SECRET_KEY_TRAT,
            ),
        ),
        TratSource::TokenService { url, ca_bundle } => {
            if let Some(pem) = ca_bundle {
                trat_env.push(env("SANCTUM_TOKEN_SERVICE_CA", pem.clone()));
            }
            (
                vec![
                    "fetch-trat".into(),
                    format!("--token-service={url}"),
                    format!("--sa-token-file={SA_TOKEN_DIR}/token"),
                    trat_out,
                ],
                vec![mount(VOLUME_SA_TOKEN, SA_TOKEN_DIR, true)],
                projected_sa_token(VOLUME_SA_TOKEN, SA_TOKEN_AUDIENCE, 600, "token"),
            )
        }
    };
    mounts.push(mount(VOLUME_SAGE, defaults::SAGE_DIR, false));
    let container = Container {
        command: Some(vec!["sanctum-bridge".into()]),
        args: Some(trat_args),
        env: (!trat_env.is_empty()).then_some(trat_env),
        volume_mounts: Some(mounts),
        ..base_container(CONTAINER_WRITE_TRAT, &injection.config.images.bridge, injection)
    };
    (container, source)
}

/// `sanctum-forwarder`: a native sidecar relaying the bridge's socket to the gateway.
fn forwarder(injection: &Injection<'_>) -> Container {
    let config = injection.config;
    let mut args = vec![
        "forward".into(),
        format!("--listen-socket={}", defaults::LLM_SOCKET),
        format!("--upstream={}", injection.gateway_url),
        format!("--admin-listen=0.0.0.0:{}", defaults::FORWARDER_ADMIN_PORT),
    ];
    // The forwarder refuses plain http unless told; the operator config already refuses an
    // http gateway unless gateway.allowInsecureHttp, so passing the flag here only carries
    // that decision to the sidecar.
    if injection.gateway_url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")) {
        args.push("--allow-insecure-upstream".into());
    }
    Container {
        command: Some(vec!["sanctum-forwarder".into()]),
        args: Some(args),
        env: config.gateway.ca_bundle.as_ref().map(|pem| vec![env("SANCTUM_CA_PEM", pem.clone())]),
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            name: Some("fwd-admin".into()),
            container_port: i32::from(defaults::FORWARDER_ADMIN_PORT),
            ..Default::default()
        }]),
        startup_probe: Some(http_probe(defaults::FORWARDER_ADMIN_PORT, "/healthz", 1, 60)),
        liveness_probe: Some(http_probe(defaults::FORWARDER_ADMIN_PORT, "/healthz", 10, 3)),
        volume_mounts: Some(vec![mount(VOLUME_SAGE, defaults::SAGE_DIR, false)]),
        ..base_container(CONTAINER_FORWARDER, &config.images.forwarder, injection)
    }
}

/// `sanctum-bridge`: the native sidecar the agent talks to on loopback; the agent starts
/// only once its startup probe passes.
fn bridge(injection: &Injection<'_>) -> Container {
    Container {
        command: Some(vec!["sanctum-bridge".into()]),
        args: Some(vec![
            format!("--listen={}", defaults::BRIDGE_LISTEN),
            format!("--upstream-socket={}", defaults::LLM_SOCKET),
            format!("--jwt-file={}", defaults::JWT_FILE),
            format!("--trat-file={}", defaults::TRAT_FILE),
            format!("--admin-listen=0.0.0.0:{}", defaults::BRIDGE_ADMIN_PORT),
        ]),
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            name: Some("bridge-admin".into()),
            container_port: i32::from(defaults::BRIDGE_ADMIN_PORT),
            ..Default::default()
        }]),
        // The agent starts only after this passes: socket reachable, both tokens valid.
        startup_probe: Some(http_probe(defaults::BRIDGE_ADMIN_PORT, "/readyz", 1, 120)),
        readiness_probe: Some(http_probe(defaults::BRIDGE_ADMIN_PORT, "/readyz", 5, 3)),
        liveness_probe: Some(http_probe(defaults::BRIDGE_ADMIN_PORT, "/healthz", 10, 3)),
        volume_mounts: Some(vec![
            mount(VOLUME_SAGE, defaults::SAGE_DIR, false),
            mount(VOLUME_SPIFFE, defaults::JWT_DIR, true),
        ]),
        ..base_container(CONTAINER_BRIDGE, &injection.config.images.bridge, injection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &[&str]) -> PodSpec {
        PodSpec {
            containers: containers
                .iter()
                .map(|n| Container {
                    name: (*n).into(),
                    image: Some("img".into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn injection(config: &OperatorConfig) -> Injection<'_> {
        Injection {
            config,
            identity: IdentityMount::ServiceAccountToken {
                audience: "sanctum-gateway".into(),
                expiration_seconds: 3600,
            },
            trat: TratSource::TokenService { url: "https://op:8443".into(), ca_bundle: None },
            gateway_url: "http://gw:8080".into(),
            agents: Agents::All,
            model: Some("claude-sonnet-4-5".into()),
            resources: crate::resources::effective(&config.pod.sidecar_resources, None),
            allow_api_token: false,
        }
    }

    fn env_of<'a>(c: &'a Container, name: &str) -> Vec<&'a str> {
        c.env
            .iter()
            .flatten()
            .filter(|e| e.name == name)
            .map(|e| e.value.as_deref().unwrap_or(""))
            .collect()
    }

    #[test]
    fn replaces_real_keys_and_sets_agent_env() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["agent"]);
        spec.containers[0].env =
            Some(vec![env("ANTHROPIC_API_KEY", "sk-ant-real"), env("KEEP", "1")]);
        inject(&mut spec, &injection(&config)).unwrap();
        let agent = &spec.containers[0];
        assert_eq!(env_of(agent, "ANTHROPIC_API_KEY"), ["gateway-injected"]);
        assert_eq!(env_of(agent, "ANTHROPIC_BASE_URL"), ["http://127.0.0.1:8082"]);
        assert_eq!(env_of(agent, "ANTHROPIC_MODEL"), ["claude-sonnet-4-5"]);
        assert_eq!(env_of(agent, "KEEP"), ["1"]);
        assert!(env_of(agent, "ANTHROPIC_AUTH_TOKEN").is_empty());
        let names: Vec<_> =
            spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["write-trat", "sanctum-forwarder", "sanctum-bridge"]);
    }

    /// Issue 12 item 13: the forwarder refuses a plain-http gateway on its own, so the
    /// injected sidecar carries the opt-out exactly when the (already allowed) URL is http.
    #[test]
    fn forwarder_is_allowed_plain_http_only_for_an_http_gateway() {
        let config = OperatorConfig::default();
        for (url, allowed) in
            [("http://gw:8080", true), ("HTTP://gw:8080", true), ("https://gw:8443", false)]
        {
            let mut spec = pod(&["agent"]);
            let mut inj = injection(&config);
            inj.gateway_url = url.into();
            inject(&mut spec, &inj).unwrap();
            let forwarder = spec
                .init_containers
                .iter()
                .flatten()
                .find(|c| c.name == "sanctum-forwarder")
                .expect("forwarder injected");
            let args = forwarder.args.as_deref().unwrap_or_default();
            assert!(args.contains(&format!("--upstream={url}")), "{args:?}");
            assert_eq!(
                args.iter().any(|a| a == "--allow-insecure-upstream"),
                allowed,
                "{url}: {args:?}"
            );
        }
    }

    /// Issue 13 item 4: a cluster-wide proxy policy must not catch the loopback bridge.
    #[test]
    fn loopback_is_never_proxied() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["agent", "plain"]);
        spec.containers[0].env = Some(vec![
            env("HTTPS_PROXY", "http://proxy:3128"),
            env("NO_PROXY", ".cluster.local, 10.0.0.0/8"),
        ]);
        inject(&mut spec, &injection(&config)).unwrap();
        let agent = &spec.containers[0];
        assert_eq!(env_of(agent, "NO_PROXY"), [".cluster.local,10.0.0.0/8,127.0.0.1,localhost"]);
        assert_eq!(env_of(agent, "no_proxy"), ["127.0.0.1,localhost"]);
        assert_eq!(env_of(&spec.containers[1], "NO_PROXY"), ["127.0.0.1,localhost"]);
        // A second pass changes nothing.
        let before = spec.containers.clone();
        set_agent_env(&mut spec.containers[0], Some("claude-sonnet-4-5"));
        assert_eq!(spec.containers[0], before[0]);
    }

    /// Issue 13 item 5: every credential and other provider route goes, and is reported.
    #[test]
    fn other_provider_routes_are_removed_and_reported() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["agent"]);
        let secret = Some(k8s_openapi::api::core::v1::EnvVarSource {
            secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                name: "claude".into(),
                key: "token".into(),
                optional: None,
            }),
            ..Default::default()
        });
        spec.containers[0].env = Some(vec![
            EnvVar { name: "CLAUDE_CODE_OAUTH_TOKEN".into(), value_from: secret, value: None },
            env("CLAUDE_CODE_USE_BEDROCK", "1"),
            env("AWS_ACCESS_KEY_ID", "AKIA0000"),
            env("AWS_SECRET_ACCESS_KEY", "secret"),
            env("AWS_BEARER_TOKEN_BEDROCK", "bedrock-key"),
            env("ANTHROPIC_BEDROCK_BASE_URL", "https://bedrock"),
            env("CLAUDE_CODE_USE_VERTEX", "1"),
            env("AWS_REGION", "us-east-1"),
        ]);
        let removed = inject(&mut spec, &injection(&config)).unwrap();
        assert_eq!(
            removed,
            [
                "agent: CLAUDE_CODE_OAUTH_TOKEN",
                "agent: CLAUDE_CODE_USE_BEDROCK",
                "agent: AWS_ACCESS_KEY_ID",
                "agent: AWS_SECRET_ACCESS_KEY",
                "agent: AWS_BEARER_TOKEN_BEDROCK",
                "agent: ANTHROPIC_BEDROCK_BASE_URL",
                "agent: CLAUDE_CODE_USE_VERTEX",
            ]
        );
        let agent = &spec.containers[0];
        for name in PROVIDER_ROUTE_ENV {
            if name != "ANTHROPIC_API_KEY" {
                assert!(env_of(agent, name).is_empty(), "{name} left in the pod");
            }
        }
        assert_eq!(env_of(agent, "AWS_REGION"), ["us-east-1"], "not a credential: kept");
        assert_eq!(env_of(agent, "ANTHROPIC_API_KEY"), ["gateway-injected"]);
    }

    /// Issue 13 item 6: a named init container (a warm-up step running Claude Code) gets
    /// the agent environment and loses its real key.
    #[test]
    fn named_init_containers_are_agents_too() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["agent", "sidecar"]);
        spec.init_containers = Some(vec![Container {
            name: "warm-up".into(),
            env: Some(vec![env("ANTHROPIC_API_KEY", "sk-ant-real")]),
            ..Default::default()
        }]);
        let mut inj = injection(&config);
        inj.agents = Agents::Named(vec!["warm-up".into(), "agent".into()]);
        let removed = inject(&mut spec, &inj).unwrap();
        assert_eq!(removed, ["warm-up: ANTHROPIC_API_KEY"]);
        let init = spec.init_containers.as_ref().unwrap();
        let warm = init.iter().find(|c| c.name == "warm-up").unwrap();
        assert_eq!(env_of(warm, "ANTHROPIC_API_KEY"), ["gateway-injected"]);
        assert_eq!(env_of(warm, "ANTHROPIC_BASE_URL"), ["http://127.0.0.1:8082"]);
        assert_eq!(init.last().unwrap().name, "warm-up", "it runs after the sidecars start");
        assert!(env_of(&spec.containers[1], "ANTHROPIC_BASE_URL").is_empty());
    }

    #[test]
    fn env_from_secrets_are_shadowed() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["agent"]);
        spec.containers[0].env_from = Some(vec![Default::default()]);
        inject(&mut spec, &injection(&config)).unwrap();
        assert_eq!(env_of(&spec.containers[0], "ANTHROPIC_AUTH_TOKEN"), [""]);
    }

    #[test]
    fn clashes_are_refused_by_name_and_change_nothing() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["sanctum-bridge", "fetch-jwt"]);
        let before = spec.clone();
        let err = inject(&mut spec, &injection(&config)).unwrap_err();
        assert_eq!(err, InjectError::ContainerClash("'fetch-jwt', 'sanctum-bridge'".into()));
        assert_eq!(spec, before);

        let mut spec = pod(&["a"]);
        spec.volumes = Some(vec![volume(VOLUME_SAGE)]);
        assert!(matches!(inject(&mut spec, &injection(&config)), Err(InjectError::VolumeClash(_))));

        let mut spec = pod(&["a"]);
        spec.containers[0].volume_mounts = Some(vec![mount("x", "/run", false)]);
        assert!(matches!(
            inject(&mut spec, &injection(&config)),
            Err(InjectError::MountClash { .. })
        ));

        let mut spec = pod(&["a"]);
        spec.containers[0].ports =
            Some(vec![ContainerPort { container_port: 8082, ..Default::default() }]);
        assert!(matches!(
            inject(&mut spec, &injection(&config)),
            Err(InjectError::PortClash { port: 8082, .. })
        ));
    }

    #[test]
    fn named_agents_only() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["agent", "db"]);
        let mut inj = injection(&config);
        inj.agents = Agents::Named(vec!["agent".into()]);
        inject(&mut spec, &inj).unwrap();
        assert!(!env_of(&spec.containers[0], "ANTHROPIC_BASE_URL").is_empty());
        assert!(env_of(&spec.containers[1], "ANTHROPIC_BASE_URL").is_empty());
        inj.agents = Agents::Named(vec!["nope".into()]);
        assert_eq!(
            inject(&mut pod(&["a"]), &inj),
            Err(InjectError::UnknownContainer("nope".into()))
        );
    }

    #[test]
    fn user_init_containers_run_after_ours() {
        let config = OperatorConfig::default();
        let mut spec = pod(&["agent"]);
        spec.init_containers =
            Some(vec![Container { name: "migrate".into(), ..Default::default() }]);
        inject(&mut spec, &injection(&config)).unwrap();
        assert_eq!(spec.init_containers.unwrap().last().unwrap().name, "migrate");
    }
}
