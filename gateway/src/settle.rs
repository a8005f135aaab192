//! The end of a forwarded request: the run's budget settled from the usage seen (or the
//! reservation, when the answer was not seen whole), the token metrics, and the audit line.
//! Settling happens once, from the metered body's end ([`crate::metered`]) or from a send
//! that failed; with a Redis store it runs on its own task, retried until recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::audit::AuditRecord;
use super::body::Hold;
use super::budget;
use super::gateway::{Gateway, now_unix};
use super::reject::Reason;
use super::state::Store as _;
use super::usage::Usage;

/// What an admitted request carries to settlement.
pub(crate) struct Run {
    pub txn: String,
    pub org: String,
    pub keep_until: u64,
    pub reservation: Option<String>,
    /// Tokens reserved for this request (0 when nothing was reserved).
    pub reserved: u64,
    /// The request body's bytes in memory, released once it has been sent upstream.
    pub body_hold: Option<Hold>,
}

/// Settlement of one forwarded request: budget, metrics, audit.
pub(crate) struct Finish {
    pub gw: Arc<Gateway>,
    pub run: Run,
    pub audit: AuditRecord,
    pub start: Instant,
}

/// How much of the provider's usage report the gateway saw, which decides the charge
/// ([`budget::charge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The whole answer, usage included: charged what the provider reported.
    Full,
    /// Part of it (client gone, stream broken, answer too large to read): charged at least
    /// the reservation.
    Partly,
    /// The request never reached the provider: charged nothing.
    NotSent,
}

impl Finish {
    pub fn done(self, status: u16, usage: Usage, seen: Seen, rejected: Option<Reason>) {
        let Finish { gw, run, mut audit, start } = self;
        let incomplete = seen != Seen::Full;
        let charged = match seen {
            Seen::Full | Seen::NotSent => usage.total(),
            Seen::Partly => budget::charge(usage.total(), false, run.reserved),
        };
        audit.charged_tokens = charged;
        gw.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        audit.status = status;
        audit.rejected = rejected;
        if let Some(reason) = rejected {
            gw.metrics.rejection(reason.label());
        }
        audit.incomplete = incomplete;
        audit.input_tokens = usage.input_tokens;
        audit.output_tokens = usage.output_tokens;
        audit.cache_creation_input_tokens = usage.cache_creation_input_tokens;
        audit.cache_read_input_tokens = usage.cache_read_input_tokens;
        audit.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        gw.metrics.tokens(&run.org, &run.txn, run.keep_until, &usage);
        let in_memory = match &run.reservation {
            None => true,
            Some(id) => gw.state.settle_in_memory(&run.txn, id, charged).is_some(),
        };
        if in_memory {
            gw.audit.write(&audit);
            return;
        }
        let settle = async move {
            if let Some(id) = &run.reservation {
                settle_until_recorded(&gw, &run, id, charged).await;
            }
            gw.audit.write(&audit);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(settle);
            }
            Err(_) => tracing::error!("no runtime to settle a request on; budget not updated"),
        }
    }
}

/// Records `charged` tokens for reservation `id`, retrying (200 ms doubling to 5 s) until the
/// store takes it; meanwhile the run is held in [`Gateway::unsettled`] and refused new
/// admissions. Retrying is safe: the store counts each reservation id once.
async fn settle_until_recorded(gw: &Gateway, run: &Run, id: &str, charged: u64) {
    let mut delay = Duration::from_millis(200);
    let mut held = false;
    loop {
        match gw.state.settle(&run.txn, id, charged, now_unix(), run.keep_until).await {
            Ok(_) => break,
            Err(error) => {
                if !held {
                    held = true;
                    gw.unsettled.hold(&run.txn);
                    tracing::warn!(%error, txn = %run.txn, tokens = charged,
                        "budget settlement failed; retrying, and refusing the run until it is recorded");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    if held {
        gw.unsettled.release(&run.txn);
        tracing::info!(txn = %run.txn, tokens = charged, "budget settlement recorded after retries");
    }
}
