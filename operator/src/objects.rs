//! Everything a ScannerRun needs, built in one pure step: the pod, the Secret holding the
//! run's TraT (and spiffe-helper's configuration), and the NetworkPolicy. `render` prints
//! these; the controller applies them.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use sanctum_common::defaults::JWT_DIR;
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::crd::{IdentitySource, ScannerRun};
use crate::inject::InjectError;
use crate::labels::owned_meta;
use crate::names::{SECRET_KEY_HELPER_CONF, SECRET_KEY_TRAT};
use crate::netpol::build_network_policy;
use crate::plan::{PlanError, RunPlan};
use crate::pod::build_pod;
use crate::tenancy::TenancyError;
use crate::tokens::{Signer, TokenError, trat_claims};

/// Where spiffe-helper finds the SPIRE agent inside `fetch-jwt`.
const SPIRE_AGENT_SOCKET: &str = "/spiffe-workload-api/spire-agent.sock";

#[derive(Debug, Clone)]
pub struct RunObjects {
    pub pod: Pod,
    pub secret: Secret,
    pub network_policy: NetworkPolicy,
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot build the scanner pod: {0}")]
    Inject(#[from] InjectError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
}

impl BuildError {
    /// Condition reason (PascalCase).
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::Plan(e) => e.reason(),
            BuildError::Inject(_) => "InvalidPodSpec",
            BuildError::Token(_) => "SigningKeyUnavailable",
            BuildError::Tenancy(e) => e.reason(),
        }
    }
}

pub fn helper_config(plan: &RunPlan, config: &OperatorConfig) -> String {
    config
        .spiffe
        .helper_config
        .replace("{socket}", SPIRE_AGENT_SOCKET)
        .replace("{audience}", &plan.audience)
        .replace("{jwt_dir}", JWT_DIR)
}

/// The per-run Secret: the signed TraT, and spiffe-helper's configuration in SPIFFE mode.
pub fn build_secret(
    run: &ScannerRun,
    plan: &RunPlan,
    config: &OperatorConfig,
    trat: &str,
) -> Secret {
    let mut data =
        BTreeMap::from([(SECRET_KEY_TRAT.to_owned(), ByteString(trat.as_bytes().to_vec()))]);
    if plan.identity == IdentitySource::Spiffe {
        data.insert(
            SECRET_KEY_HELPER_CONF.into(),
            ByteString(helper_config(plan, config).into_bytes()),
        );
    }
    Secret {
        metadata: owned_meta(run, plan, &plan.secret_name, "trat"),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(data),
        ..Default::default()
    }
}

/// Builds all of a run's objects. `now` is seconds since the epoch (the TraT's `iat`).
///
/// Errors: the spec cannot be built ([`BuildError::Plan`], [`BuildError::Inject`]), the
/// run's namespace may not bill `spec.orgId` ([`BuildError::Tenancy`]: checked here, where
/// the token is minted, so no path mints one for a forbidden org), or signing failed.
pub fn build(
    run: &ScannerRun,
    config: &OperatorConfig,
    signer: &Signer,
    now: u64,
) -> Result<RunObjects, BuildError> {
    build_planned(run, &RunPlan::new(run, config)?, config, signer, now)
}

/// [`build`] from the run's plan, made once by the caller (the reconciler plans a run once
/// per pass and hands the same plan to every step).
pub fn build_planned(
    run: &ScannerRun,
    plan: &RunPlan,
    config: &OperatorConfig,
    signer: &Signer,
    now: u64,
) -> Result<RunObjects, BuildError> {
    let policy = config.tenancy.allow_run(&plan.namespace, &plan.org_id)?;
    policy.allow_env(&plan.namespace, run.spec.env.as_deref().unwrap_or_default())?;
    let pod = build_pod(run, plan, config)?;
    let claims = trat_claims(
        plan,
        policy.budget_tokens,
        &config.trat.issuer,
        config.trat.expiry_margin_seconds,
        now,
    );
    let trat = signer.sign(&claims)?;
    Ok(RunObjects {
        secret: build_secret(run, plan, config, &trat),
        network_policy: build_network_policy(run, plan, config),
        pod,
    })
}
