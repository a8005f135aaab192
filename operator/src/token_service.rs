//! The token service: an injected pod has no ScannerRun, so nobody minted its TraT in
//! advance. Its `write-trat` container (`sanctum-bridge fetch-trat`) posts the pod's
//! projected ServiceAccount token (audience `sanctum`) to `POST /v1/trat`; the operator
//! checks it with a TokenReview, requires the pod the token is bound to to exist with the
//! same UID and to be one Sanctum injected, and answers with a short-lived TraT:
//!
//! ```text
//! POST /v1/trat                      Authorization: Bearer <projected SA token>
//! 200 {"token":"<TraT>","expiresAt":<unix seconds>}
//! 4xx/5xx {"error":"<what failed and what to do>"}
//! ```
//!
//! (The wire contract, shared with the bridge, is [`sanctum_common::token_service`].)
//!
//! Claims: `sub` is the identity the pod's JWT-SVID carries, so the gateway can bind the
//! two: `system:serviceaccount:<ns>:<sa>` in `serviceAccountToken` mode (the `sub` of the
//! projected token the bridge sends), `spiffe://<td>/ns/<ns>/sa/<sa>` in `spiffe` mode (the
//! SPIRE Kubernetes registrar's default template). `txn` is the pod UID (unique for all
//! time: the unit of budget), `tctx` names the namespace, ServiceAccount, pod and UID, and
//! the org and budget come from the namespace's `tenancy` policy in the operator config
//! (the same policy that confines ScannerRuns, see [`crate::tenancy`]).

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use sanctum_common::claims::{Audience, TransactionContext, TratClaims};
use sanctum_common::defaults::SCOPE_LLM_MESSAGES;
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::crd::IdentitySource;
use crate::names::{ANNOTATION_STATUS, CONTAINER_WRITE_TRAT, STATUS_INJECTED};
use crate::tokens::SignerSlot;
use crate::webhook::admission::{Settings, check_injected};

use sanctum_common::token_service::{ErrorReply, TratReply};
pub use sanctum_common::token_service::{PATH, SA_TOKEN_AUDIENCE};

const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenServiceError {
    #[error("no bearer token: send the pod's projected ServiceAccount token (audience sanctum)")]
    NoToken,
    #[error("the ServiceAccount token was not accepted: {0}")]
    Unauthenticated(String),
    #[error(
        "the token is not bound to a pod: use a projected ServiceAccount token (a pod volume), not a Secret-based or TokenRequest token without a pod"
    )]
    NotPodBound,
    #[error("the token's user '{0}' is not a ServiceAccount")]
    NotServiceAccount(String),
    #[error(
        "pod {namespace}/{name} (uid {uid}) no longer exists; a TraT is only minted for a running pod"
    )]
    PodGone { namespace: String, name: String, uid: String },
    #[error("pod {namespace}/{name} was not injected by Sanctum: {reason}")]
    NotInjected { namespace: String, name: String, reason: String },
    #[error(
        "namespace {0} bills no org: add `tenancy: {{namespaces: {{{0}: {{orgId: <org>}}}}}}` to the operator config (or `tenancy: {{defaultOrg: <org>}}` for a single-tenant install)"
    )]
    NoPolicy(String),
    #[error("the token service is not available: {0}; retry later")]
    Unavailable(String),
}

impl TokenServiceError {
    pub fn status(&self) -> u16 {
        match self {
            Self::NoToken | Self::Unauthenticated(_) => 401,
            Self::NotPodBound
            | Self::NotServiceAccount(_)
            | Self::PodGone { .. }
            | Self::NotInjected { .. }
            | Self::NoPolicy(_) => 403,
            Self::Unavailable(_) => 503,
        }
    }
}

/// Who the TokenReview says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

fn first<'a>(extra: Option<&'a BTreeMap<String, Vec<String>>>, key: &str) -> Option<&'a str> {
    extra?.get(key)?.first().map(String::as_str).filter(|s| !s.is_empty())
}

/// Reads the identity from a TokenReview's status.
pub fn identity_of(status: &TokenReviewStatus) -> Result<PodIdentity, TokenServiceError> {
    if status.authenticated != Some(true) {
        let why = status.error.clone().unwrap_or_else(|| "not authenticated".into());
        return Err(TokenServiceError::Unauthenticated(why));
    }
    if !status.audiences.as_ref().is_some_and(|a| a.iter().any(|a| a == SA_TOKEN_AUDIENCE)) {
        return Err(TokenServiceError::Unauthenticated(format!(
            "the token is not for audience '{SA_TOKEN_AUDIENCE}'"
        )));
    }
    let user = status.user.as_ref().ok_or_else(|| {
        TokenServiceError::Unauthenticated("the TokenReview named no user".into())
    })?;
    let username = user.username.clone().unwrap_or_default();
    let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
        return Err(TokenServiceError::NotServiceAccount(username));
    };
    let Some((namespace, service_account)) = rest.split_once(':') else {
        return Err(TokenServiceError::NotServiceAccount(username));
    };
    let extra = user.extra.as_ref();
    let (Some(pod_name), Some(pod_uid)) =
        (first(extra, EXTRA_POD_NAME), first(extra, EXTRA_POD_UID))
    else {
        return Err(TokenServiceError::NotPodBound);
    };
    Ok(PodIdentity {
        namespace: namespace.into(),
        service_account: service_account.into(),
        pod_name: pod_name.into(),
        pod_uid: pod_uid.into(),
    })
}

/// `sub` of an injected pod's tokens (see the module documentation).
pub fn subject(id: &PodIdentity, config: &OperatorConfig) -> String {
    match config.identity.source {
        IdentitySource::ServiceAccountToken => {
            format!("system:serviceaccount:{}:{}", id.namespace, id.service_account)
        }
        IdentitySource::Spiffe => format!(
            "spiffe://{}/ns/{}/sa/{}",
            config.identity.trust_domain, id.namespace, id.service_account
        ),
    }
}

/// The token service's CA that `write-trat` of `pod` was given at admission.
fn admitted_ca_bundle(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER_WRITE_TRAT)?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SANCTUM_TOKEN_SERVICE_CA")?
        .value
        .clone()
}

/// The TraT claims for a reviewed identity and the pod it is bound to. Pure.
pub fn claims_for(
    id: &PodIdentity,
    pod: Option<&Pod>,
    config: &OperatorConfig,
    now: u64,
) -> Result<TratClaims, TokenServiceError> {
    let gone = || TokenServiceError::PodGone {
        namespace: id.namespace.clone(),
        name: id.pod_name.clone(),
        uid: id.pod_uid.clone(),
    };
    let pod = pod.ok_or_else(gone)?;
    if pod.metadata.uid.as_deref() != Some(id.pod_uid.as_str())
        || pod.metadata.deletion_timestamp.is_some()
    {
        return Err(gone());
    }
    let injected = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_STATUS))
        .is_some_and(|s| s == STATUS_INJECTED);
    let not_injected = |reason: String| TokenServiceError::NotInjected {
        namespace: id.namespace.clone(),
        name: id.pod_name.clone(),
        reason,
    };
    if !injected {
        return Err(not_injected("it has no sanctum.dev/status: injected annotation".into()));
    }
    // The mark alone proves nothing (anyone who may create a pod can write it): the live
    // pod must be exactly what injection makes of it (issue 12 item 4). The CA bundle is
    // the one the pod was admitted with: it rotates, and it is a public certificate.
    let settings = Settings { ca_bundle: admitted_ca_bundle(pod) };
    check_injected(pod, config, &settings).map_err(|e| not_injected(e.to_string()))?;
    let policy = config
        .tenancy
        .policy(&id.namespace)
        .ok_or_else(|| TokenServiceError::NoPolicy(id.namespace.clone()))?;
    let ttl = u64::try_from(config.token_service.trat_ttl_seconds).unwrap_or(3600);
    Ok(TratClaims {
        iss: config.trat.issuer.clone(),
        aud: Audience::One(config.identity.audience.clone()),
        iat: now,
        exp: now.saturating_add(ttl),
        txn: id.pod_uid.clone(),
        sub: subject(id, config),
        scope: SCOPE_LLM_MESSAGES.into(),
        tctx: TransactionContext {
            run_id: format!("{}/{}", id.namespace, id.pod_name),
            org_id: policy.org_id.clone(),
            repo: None,
            budget_tokens: policy.budget_tokens,
            namespace: Some(id.namespace.clone()),
            service_account: Some(id.service_account.clone()),
            pod_name: Some(id.pod_name.clone()),
            pod_uid: Some(id.pod_uid.clone()),
        },
    })
}

/// The answer body of a minted TraT.
pub fn success_body(token: &str, exp: u64) -> String {
    TratReply { token: token.to_owned(), expires_at: exp }.to_json()
}

/// The answer body of a refusal.
pub fn error_body(error: &TokenServiceError) -> String {
    ErrorReply { error: error.to_string() }.to_json()
}

/// The shell: TokenReview and pod lookup through the API, then [`claims_for`] and signing.
pub struct TokenService {
    client: Client,
    config: OperatorConfig,
    /// The process's one signing key holder, shared with the controller.
    signer: std::sync::Arc<SignerSlot>,
}

impl TokenService {
    pub fn new(client: Client, config: OperatorConfig, signer: std::sync::Arc<SignerSlot>) -> Self {
        Self { client, config, signer }
    }

    /// Trades `bearer` (never logged) for a TraT: `(token, exp)`.
    pub async fn exchange(
        &self,
        bearer: &str,
        now: u64,
    ) -> Result<(String, u64), TokenServiceError> {
        if bearer.is_empty() {
            return Err(TokenServiceError::NoToken);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(bearer.to_owned()),
                audiences: Some(vec![SA_TOKEN_AUDIENCE.into()]),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenServiceError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        let id = identity_of(&status)?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &id.namespace);
        let pod = pods
            .get_opt(&id.pod_name)
            .await
            .map_err(|e| TokenServiceError::Unavailable(format!("cannot read the pod: {e}")))?;
        let claims = claims_for(&id, pod.as_ref(), &self.config, now)?;
        let signer = self
            .signer
            .get()
            .map_err(|e| TokenServiceError::Unavailable(format!("no signing key: {e}")))?;
        let token =
            signer.sign(&claims).map_err(|e| TokenServiceError::Unavailable(e.to_string()))?;
        tracing::info!(
            namespace = %id.namespace, pod = %id.pod_name, pod_uid = %id.pod_uid,
            service_account = %id.service_account, org = %claims.tctx.org_id, exp = claims.exp,
            "TraT minted for injected pod"
        );
        Ok((token, claims.exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::NamespacePolicy;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(audiences: &[&str], extra: bool) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|s| (*s).into()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:team:agent".into()),
                extra: extra.then(|| {
                    BTreeMap::from([
                        (EXTRA_POD_NAME.into(), vec!["p".into()]),
                        (EXTRA_POD_UID.into(), vec!["u1".into()]),
                    ])
                }),
                ..Default::default()
            }),
            error: None,
        }
    }

    /// A pod as the webhook admits it (`injected`), or as its author wrote it.
    fn pod(uid: &str, injected: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "team", "uid": uid,
                "annotations": {"sanctum.dev/inject": "true"}},
            "spec": {"containers": [{"name": "claude", "image": "claude:1",
                "env": [{"name": "ANTHROPIC_API_KEY", "value": "sk-ant-real"}]}]}
        }))
        .unwrap();
        if injected {
            let settings = Settings { ca_bundle: Some("-----BEGIN CERTIFICATE-----".into()) };
            crate::webhook::admission::inject_pod(&mut pod, &config(), &settings).unwrap();
        }
        pod
    }

    /// Issue 12 item 4: a pod that wrote the mark itself, with a look-alike bridge and its
    /// real key, gets no TraT; neither does an injected pod whose agent got a key back.
    #[test]
    fn the_mark_alone_gets_no_token() {
        let id = identity_of(&status(&["sanctum"], true)).unwrap();
        let mut forged = pod("u1", false);
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_STATUS.to_owned(), STATUS_INJECTED.to_owned());
        forged.spec.as_mut().unwrap().init_containers = Some(vec![Default::default()]);
        forged.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].name =
            "sanctum-bridge".into();
        let err = claims_for(&id, Some(&forged), &config(), 1).unwrap_err();
        assert!(matches!(err, TokenServiceError::NotInjected { .. }), "{err}");
        assert!(err.to_string().contains("spec.initContainers"), "{err}");
        assert_eq!(err.status(), 403);

        let mut keyed = pod("u1", true);
        for e in keyed.spec.as_mut().unwrap().containers[0].env.iter_mut().flatten() {
            if e.name == "ANTHROPIC_API_KEY" {
                e.value = Some("sk-ant-real".into());
            }
        }
        let err = claims_for(&id, Some(&keyed), &config(), 1).unwrap_err();
        assert!(err.to_string().contains("spec.containers[claude].env"), "{err}");
        // As the API server returns it: with defaults filled in, it still counts.
        let mut live = serde_json::to_value(pod("u1", true)).unwrap();
        for c in live["spec"]["initContainers"].as_array_mut().unwrap() {
            c["terminationMessagePath"] = serde_json::json!("/dev/termination-log");
        }
        live["spec"]["dnsPolicy"] = serde_json::json!("ClusterFirst");
        let live: Pod = serde_json::from_value(live).unwrap();
        assert!(claims_for(&id, Some(&live), &config(), 1).is_ok());
    }

    fn config() -> OperatorConfig {
        let mut c = OperatorConfig::default();
        c.identity.source = IdentitySource::ServiceAccountToken;
        c.tenancy.namespaces.insert(
            "team".into(),
            NamespacePolicy {
                org_id: "acme".into(),
                other_orgs: vec![],
                budget_tokens: Some(5),
                allow_secret_env: false,
            },
        );
        c
    }

    #[test]
    fn identity_needs_audience_and_pod_binding() {
        let id = identity_of(&status(&["sanctum"], true)).unwrap();
        assert_eq!((id.namespace.as_str(), id.pod_uid.as_str()), ("team", "u1"));
        assert!(matches!(
            identity_of(&status(&["other"], true)),
            Err(TokenServiceError::Unauthenticated(_))
        ));
        assert_eq!(identity_of(&status(&["sanctum"], false)), Err(TokenServiceError::NotPodBound));
        let mut s = status(&["sanctum"], true);
        s.authenticated = Some(false);
        assert_eq!(TokenServiceError::Unauthenticated("x".into()).status(), 401);
        assert!(identity_of(&s).is_err());
    }

    #[test]
    fn claims_bind_the_pod_and_follow_the_policy() {
        let id = identity_of(&status(&["sanctum"], true)).unwrap();
        let c = claims_for(&id, Some(&pod("u1", true)), &config(), 100).unwrap();
        assert_eq!(c.sub, "system:serviceaccount:team:agent");
        assert_eq!(c.txn, "u1");
        assert_eq!(c.exp, 3700);
        assert_eq!(c.tctx.org_id, "acme");
        assert_eq!(c.tctx.budget_tokens, Some(5));
        assert_eq!(c.tctx.pod_name.as_deref(), Some("p"));
        let gone = claims_for(&id, Some(&pod("u2", true)), &config(), 100).unwrap_err();
        assert_eq!(gone.status(), 403);
        assert!(matches!(
            claims_for(&id, None, &config(), 1),
            Err(TokenServiceError::PodGone { .. })
        ));
        assert!(matches!(
            claims_for(&id, Some(&pod("u1", false)), &config(), 1),
            Err(TokenServiceError::NotInjected { .. })
        ));
        let mut other = config();
        other.tenancy.namespaces.clear();
        assert!(matches!(
            claims_for(&id, Some(&pod("u1", true)), &other, 1),
            Err(TokenServiceError::NoPolicy(_))
        ));
        other.identity.source = IdentitySource::Spiffe;
        assert_eq!(subject(&id, &other), "spiffe://sage-sanctum.local/ns/team/sa/agent");
    }
}
