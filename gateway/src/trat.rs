//! TraT checks: what the verified caller may do.
//!
//! After the signature (against the operator's JWKS): `aud`, `exp` (with leeway), optional
//! `iss`, scope `llm.messages`, not revoked, and bound to the caller — `sub` equal to the
//! JWT-SVID's `sub` and, when both tokens name the pod, the same pod UID. A TraT that names
//! its pod (`tctx.pod_name`) presented with a Kubernetes ServiceAccount token must come from
//! that very pod: the ServiceAccount `sub` alone would let any pod of the ServiceAccount use
//! it. (A SPIRE JWT-SVID names no pod; its per-run SPIFFE ID is the binding.)

use thiserror::Error;

use sanctum_common::TratClaims;

use super::svid::Identity;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TratError {
    #[error("has claims that are not a transaction token ({0})")]
    Shape(String),
    #[error("expired at {exp} (now {now}); the run's token must be renewed by the operator")]
    Expired { exp: u64, now: u64 },
    #[error("is not issued for audience '{0}'")]
    Audience(String),
    #[error("is issued by '{got}', not by the operator this gateway trusts ('{want}')")]
    Issuer { got: String, want: String },
    #[error("lacks scope '{0}'")]
    Scope(String),
    #[error(
        "is not bound to this caller: its sub '{trat_sub}' differs from the JWT-SVID's '{svid_sub}'"
    )]
    NotBound { trat_sub: String, svid_sub: String },
    #[error("is bound to pod UID '{trat}', but the caller's token names pod UID '{svid}'")]
    PodMismatch { trat: String, svid: String },
    #[error(
        "is bound to pod '{trat}', but the caller's ServiceAccount token belongs to pod '{svid}': only the run's own pod may present it"
    )]
    PodNameMismatch { trat: String, svid: String },
    #[error(
        "is bound to pod '{0}', but the caller's ServiceAccount token is not bound to a pod: send the pod's projected ServiceAccount token (a pod volume), not a Secret-based or TokenRequest token"
    )]
    PodUnbound(String),
    #[error("has an empty '{0}' claim")]
    Empty(&'static str),
    #[error("was revoked: run txn '{0}' has ended")]
    Revoked(String),
}

#[derive(Debug, Clone)]
pub struct TratPolicy {
    pub audience: String,
    pub issuer: Option<String>,
    pub scope: String,
    pub leeway: u64,
}

impl TratPolicy {
    /// Checks that do not depend on the caller or the revoked list (cacheable until `exp`).
    pub fn check_claims(&self, claims: &TratClaims, now: u64) -> Result<(), TratError> {
        if now > claims.exp.saturating_add(self.leeway) {
            return Err(TratError::Expired { exp: claims.exp, now });
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TratError::Audience(self.audience.clone()));
        }
        if let Some(want) = &self.issuer
            && &claims.iss != want
        {
            return Err(TratError::Issuer { got: claims.iss.clone(), want: want.clone() });
        }
        if !claims.has_scope(&self.scope) {
            return Err(TratError::Scope(self.scope.clone()));
        }
        for (name, value) in
            [("txn", &claims.txn), ("tctx.org_id", &claims.tctx.org_id), ("sub", &claims.sub)]
        {
            if value.is_empty() {
                return Err(TratError::Empty(name));
            }
        }
        Ok(())
    }

    /// The binding of the TraT to the caller that presented it.
    pub fn check_binding(&self, claims: &TratClaims, caller: &Identity) -> Result<(), TratError> {
        if claims.sub != caller.sub {
            return Err(TratError::NotBound {
                trat_sub: claims.sub.clone(),
                svid_sub: caller.sub.clone(),
            });
        }
        if let (Some(trat), Some(svid)) = (&claims.tctx.pod_uid, &caller.pod_uid)
            && trat != svid
        {
            return Err(TratError::PodMismatch { trat: trat.clone(), svid: svid.clone() });
        }
        if let Some(trat) = &claims.tctx.pod_name
            && caller.is_service_account()
        {
            match &caller.pod_name {
                None => return Err(TratError::PodUnbound(trat.clone())),
                Some(svid) if svid != trat => {
                    return Err(TratError::PodNameMismatch {
                        trat: trat.clone(),
                        svid: svid.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn sample_claims(sub: &str, exp: u64) -> TratClaims {
    use sanctum_common::TransactionContext;
    use sanctum_common::claims::Audience;
    TratClaims {
        iss: "sanctum-operator".into(),
        aud: Audience::One("sanctum-gateway".into()),
        iat: 0,
        exp,
        txn: "txn-1".into(),
        sub: sub.into(),
        scope: "llm.messages".into(),
        tctx: TransactionContext::new("run-1", "acme"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sanctum_common::claims::Audience;

    const SUB: &str = "spiffe://sage-sanctum.local/scanner/run-1";

    fn policy() -> TratPolicy {
        TratPolicy {
            audience: "sanctum-gateway".into(),
            issuer: Some("sanctum-operator".into()),
            scope: "llm.messages".into(),
            leeway: 30,
        }
    }

    fn caller() -> Identity {
        Identity { sub: SUB.into(), exp: 2000, nbf: None, pod_uid: None, pod_name: None }
    }

    #[test]
    fn good_trat() {
        let c = sample_claims(SUB, 2000);
        policy().check_claims(&c, 1000).unwrap();
        policy().check_binding(&c, &caller()).unwrap();
    }

    #[test]
    fn bad_trats() {
        let p = policy();
        let mut c = sample_claims(SUB, 900);
        assert_eq!(p.check_claims(&c, 1000), Err(TratError::Expired { exp: 900, now: 1000 }));
        c.exp = 2000;
        c.aud = Audience::Many(vec!["other".into()]);
        assert!(matches!(p.check_claims(&c, 1000), Err(TratError::Audience(_))));
        c.aud = Audience::One("sanctum-gateway".into());
        c.iss = "someone-else".into();
        assert!(matches!(p.check_claims(&c, 1000), Err(TratError::Issuer { .. })));
        c.iss = "sanctum-operator".into();
        c.scope = "llm.messagesX admin".into();
        assert!(matches!(p.check_claims(&c, 1000), Err(TratError::Scope(_))));
        c.scope = "llm.messages".into();
        c.txn = String::new();
        assert_eq!(p.check_claims(&c, 1000), Err(TratError::Empty("txn")));
    }

    #[test]
    fn binding() {
        let p = policy();
        let mut c = sample_claims("spiffe://sage-sanctum.local/scanner/run-2", 2000);
        assert!(matches!(p.check_binding(&c, &caller()), Err(TratError::NotBound { .. })));
        c.sub = SUB.into();
        c.tctx.pod_uid = Some("u1".into());
        // The SVID names no pod (SPIRE): the sub binding alone applies.
        p.check_binding(&c, &caller()).unwrap();
        let mut sa = caller();
        sa.pod_uid = Some("u2".into());
        assert!(matches!(p.check_binding(&c, &sa), Err(TratError::PodMismatch { .. })));
        sa.pod_uid = Some("u1".into());
        p.check_binding(&c, &sa).unwrap();
    }

    /// Issue 12 item 2: a ScannerRun's TraT names its pod; another pod of the same
    /// ServiceAccount (same `sub`) is refused, and so is a token bound to no pod.
    #[test]
    fn service_account_caller_must_be_the_named_pod() {
        let p = policy();
        let sub = "system:serviceaccount:team-a:default";
        let mut c = sample_claims(sub, 2000);
        c.tctx.pod_name = Some("run-1-scanner".into());
        let pod = |name: Option<&str>| Identity {
            sub: sub.into(),
            exp: 2000,
            nbf: None,
            pod_uid: name.map(|_| "u".into()),
            pod_name: name.map(Into::into),
        };
        p.check_binding(&c, &pod(Some("run-1-scanner"))).unwrap();
        let err = p.check_binding(&c, &pod(Some("intruder"))).unwrap_err();
        assert!(err.to_string().contains("bound to pod 'run-1-scanner'"), "{err}");
        assert!(err.to_string().contains("'intruder'"), "{err}");
        assert!(matches!(p.check_binding(&c, &pod(None)), Err(TratError::PodUnbound(_))));
        // A TraT naming no pod (older operators) keeps the sub binding alone.
        c.tctx.pod_name = None;
        p.check_binding(&c, &pod(Some("intruder"))).unwrap();
        // A SPIRE caller names no pod: its SPIFFE ID is the binding.
        let mut spire = sample_claims(SUB, 2000);
        spire.tctx.pod_name = Some("run-1-scanner".into());
        p.check_binding(&spire, &caller()).unwrap();
    }
}
