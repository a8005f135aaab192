//! Sending the admitted request on the org's provider, and turning its answer into the
//! client's response: metered ([`crate::metered`]) when it came, settled at once when the
//! provider could not be reached.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Request, Response};
use sanctum_common::proxy::{ProxyBody, UpstreamError};

use super::audit::AuditRecord;
use super::gateway::Gateway;
use super::metered::GatewayBody;
use super::provider::Provider;
use super::reject::Reason;
use super::settle::{Finish, Run, Seen};
use super::usage::Usage;

/// The pipeline's forward step: sends `req` on `provider`'s client and answers with the
/// metered body (or the error the send failed with, settled right away).
pub(crate) async fn forward(
    gw: &Arc<Gateway>,
    provider: &dyn Provider,
    req: Request<ProxyBody>,
    mut run: Run,
    mut audit: AuditRecord,
    start: Instant,
) -> Response<GatewayBody> {
    let sent = provider.client().send(req).await;
    // The provider has answered (or failed): the body is no longer held.
    run.body_hold = None;
    match sent {
        Ok(response) => {
            let (mut head, body) = response.into_parts();
            let answer = provider.answer(&mut head);
            let status = head.status.as_u16();
            audit.status = status;
            let finish = Finish { gw: gw.clone(), run, audit, start };
            Response::from_parts(head, GatewayBody::metered(body, answer, finish))
        }
        Err(error) => {
            gw.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(request_id = %audit.request_id, provider = provider.name(), %error, "provider unreachable");
            let api = error.to_api_error("check the gateway's --upstream");
            // A request that never left costs nothing; one that may have reached the
            // provider (no answer in time, a broken answer) may have cost its reservation.
            let seen = match error {
                UpstreamError::ResponseTimeout { .. } | UpstreamError::Protocol { .. } => {
                    Seen::Partly
                }
                _ => Seen::NotSent,
            };
            let finish = Finish { gw: gw.clone(), run, audit, start };
            finish.done(
                api.status.as_u16(),
                Usage::default(),
                seen,
                Some(Reason::UpstreamUnreachable),
            );
            api.to_response::<GatewayBody>()
        }
    }
}
