//! What the API server's refusal of an object the operator creates means for the run
//! (issue 13 item 10): a ScannerRun whose pod a ResourceQuota refused kept an empty status,
//! no Event, and a reconcile loop spinning. Each refusal now either ends the run or waits
//! with a condition, and the Event quotes the API server.
//!
//! Which is which (codes and messages from k8s.io/apiserver admission and the quota
//! plugin, k8s.io/kubernetes/plugin/pkg/admission/resourcequota):
//! - `403` with `exceeded quota`: the namespace's quota is used up *now*; finished pods
//!   free it, so the run waits ([`Refused::Wait`], condition `Provisioned=False`,
//!   reason `QuotaExceeded`) and retries with backoff.
//! - `403` naming the operator's own account (`cannot create resource`, `cannot patch
//!   resource`: RBAC): not the run's fault; reconcile fails and retries with backoff
//!   ([`Refused::Operator`]).
//! - Any other `400`, `403`, `404`, `409`, `422`: the object as built is not admitted and
//!   retrying the same object cannot change that (`failed quota: must specify limits.cpu`,
//!   PodSecurity, an admission webhook or policy, an invalid field, a namespace being
//!   deleted): the run ends `Failed` ([`Refused::Fail`]).
//! - Everything else (timeouts, `429`, `5xx`): a transient API error, retried with backoff.

/// What a refusal means for the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The run fails: `reason` for its condition and Event, `message` quoting the server.
    Fail { reason: &'static str, message: String },
    /// The run waits and tries again later.
    Wait { reason: &'static str, message: String },
    /// The operator's own permissions: a reconcile error, retried with backoff.
    Operator,
}

/// Classifies the API server's answer to creating or applying `what` (e.g. `pod
/// run-1-scanner`); `None` for errors that are not a refusal (retried with backoff).
pub fn classify(what: &str, error: &kube::Error) -> Option<Refused> {
    let kube::Error::Api(status) = error else { return None };
    let message = &status.message;
    let quoted = format!("the API server refused {what}: {message}");
    match status.code {
        403 if message.contains("exceeded quota") => Some(Refused::Wait {
            reason: "QuotaExceeded",
            message: format!(
                "{quoted}; the run waits and retries until the namespace's quota has room (finished pods free it, or raise the ResourceQuota)"
            ),
        }),
        403 if message.contains("cannot create resource")
            || message.contains("cannot patch resource") =>
        {
            Some(Refused::Operator)
        }
        400 | 403 | 404 | 409 | 422 => Some(Refused::Fail {
            reason: "Rejected",
            message: format!("{quoted}; fix what it names and create a new ScannerRun"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            message: message.into(),
            reason: "Forbidden".into(),
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn which_refusals_end_the_run() {
        let must = "pods \"run-1-scanner\" is forbidden: failed quota: q: must specify limits.cpu for: scanner";
        assert_eq!(
            classify("pod run-1-scanner", &api(403, must)),
            Some(Refused::Fail {
                reason: "Rejected",
                message: format!(
                    "the API server refused pod run-1-scanner: {must}; fix what it names and create a new ScannerRun"
                ),
            })
        );
        let exceeded = "pods \"run-1-scanner\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2";
        assert!(matches!(
            classify("pod run-1-scanner", &api(403, exceeded)),
            Some(Refused::Wait { reason: "QuotaExceeded", .. })
        ));
        let rbac = "pods \"x\" is forbidden: User \"system:serviceaccount:sanctum-system:sanctum-operator\" cannot patch resource \"pods\" in API group \"\" in the namespace \"ns\"";
        assert_eq!(classify("pod x", &api(403, rbac)), Some(Refused::Operator));
        assert!(matches!(classify("pod x", &api(422, "invalid")), Some(Refused::Fail { .. })));
        assert_eq!(classify("pod x", &api(500, "etcd")), None);
        assert_eq!(classify("pod x", &api(429, "slow down")), None);
    }
}
