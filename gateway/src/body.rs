//! Reading a request body: within a deadline, and within a cap on the body bytes each run
//! (and the whole gateway) holds in memory at once.
//!
//! A body is buffered whole before it is forwarded (the DLP scan and the budget's input
//! bound need all of it), so a client that sends most of a large body and stalls pins that
//! memory. Issue 12 item 10: 12 such requests held 362 MiB of the shared gateway. The
//! deadline frees a stalled body; the caps stop one run, or many, from holding more than
//! their share while it runs. Bytes are counted as they are promised (`content-length`) or
//! arrive (chunked), before they are buffered, and released when the request has been sent
//! upstream ([`Hold`] is dropped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use thiserror::Error;
use tokio::time::Instant;

/// The pipeline's body step, only after both tokens proved who is asking: refuses a
/// compressed body (it could not be scanned), then reads it whole within
/// `--body-read-timeout-secs`, `--max-body-bytes` and the in-flight caps. Returns the head,
/// the body and the bytes it holds (released once the request has been sent upstream).
pub async fn receive(
    gw: &super::gateway::Gateway,
    req: http::Request<Incoming>,
    txn: &str,
) -> Result<(http::request::Parts, Bytes, Hold), super::reject::Rejection> {
    use super::reject::{self, Reason};
    if let Some(enc) = req.headers().get(http::header::CONTENT_ENCODING)
        && enc.as_bytes() != b"identity"
    {
        return Err(reject::bad_request(
            Reason::UnsupportedEncoding,
            "compressed request bodies are not accepted: the gateway must scan the body; \
             send it uncompressed",
        ));
    }
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let mut hold = gw.inflight.hold(txn);
    let timeout = gw.settings.body_read_timeout;
    let deadline = Instant::now() + timeout;
    let body = read(body, declared, gw.settings.max_body, deadline, timeout.as_secs(), &mut hold)
        .await
        .map_err(|e| reject::body(&e, txn))?;
    Ok((parts, body, hold))
}

/// Body bytes held in memory, per run and in all.
#[derive(Debug)]
pub struct InFlight {
    per_run: usize,
    total: usize,
    held: Mutex<(HashMap<String, usize>, usize)>,
}

/// Why a body was not read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the run already has {held} bytes of request bodies in flight (limit {limit})")]
    RunFull { held: usize, limit: usize },
    #[error("the gateway already holds {held} bytes of request bodies (limit {limit})")]
    GatewayFull { held: usize, limit: usize },
    #[error("the request body did not arrive within {0} s")]
    Timeout(u64),
    #[error("the request body could not be read ({0})")]
    Broken(String),
}

/// Bytes one request holds; released on drop.
#[derive(Debug)]
pub struct Hold {
    inflight: Arc<InFlight>,
    txn: String,
    bytes: usize,
}

impl InFlight {
    /// `per_run` and `total` are byte caps.
    pub fn new(per_run: usize, total: usize) -> Arc<Self> {
        Arc::new(Self { per_run, total, held: Mutex::new((HashMap::new(), 0)) })
    }

    /// An empty hold for run `txn`.
    pub fn hold(self: &Arc<Self>, txn: &str) -> Hold {
        Hold { inflight: self.clone(), txn: txn.to_owned(), bytes: 0 }
    }

    /// Bytes held now by `txn` (`None`: by everyone).
    pub fn held(&self, txn: Option<&str>) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match txn {
            Some(t) => held.0.get(t).copied().unwrap_or(0),
            None => held.1,
        }
    }
}

impl Hold {
    /// Grows this hold to `bytes` in all, if both caps allow it.
    fn grow_to(&mut self, bytes: usize) -> Result<(), ReadError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = bytes - self.bytes;
        let inf = &self.inflight;
        let mut held = inf.held.lock().unwrap_or_else(|e| e.into_inner());
        let run = held.0.get(&self.txn).copied().unwrap_or(0);
        if run + more > inf.per_run {
            return Err(ReadError::RunFull { held: run, limit: inf.per_run });
        }
        if held.1 + more > inf.total {
            return Err(ReadError::GatewayFull { held: held.1, limit: inf.total });
        }
        *held.0.entry(self.txn.clone()).or_default() += more;
        held.1 += more;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.inflight.held.lock().unwrap_or_else(|e| e.into_inner());
        held.1 -= self.bytes;
        if let Some(n) = held.0.get_mut(&self.txn) {
            *n -= self.bytes;
            if *n == 0 {
                held.0.remove(&self.txn);
            }
        }
    }
}

/// Reads `body` whole: at most `max` bytes, by `deadline`, counting what it holds in `hold`.
/// `declared` is the `content-length`, if any: it is held at once, so a request the caps
/// cannot take is refused before a byte of it is read.
pub async fn read(
    mut body: Incoming,
    declared: Option<u64>,
    max: usize,
    deadline: Instant,
    timeout_secs: u64,
    hold: &mut Hold,
) -> Result<Bytes, ReadError> {
    if let Some(len) = declared {
        if len > max as u64 {
            return Err(ReadError::TooLarge(max));
        }
        hold.grow_to(len as usize)?;
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ReadError::Timeout(timeout_secs)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > max {
            return Err(ReadError::TooLarge(max));
        }
        hold.grow_to(buf.len() + data.len())?;
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_capped_per_run_and_in_all_and_released_on_drop() {
        let inf = InFlight::new(100, 150);
        let mut a = inf.hold("a");
        a.grow_to(60).unwrap();
        let mut a2 = inf.hold("a");
        assert_eq!(a2.grow_to(41), Err(ReadError::RunFull { held: 60, limit: 100 }));
        a2.grow_to(40).unwrap();
        let mut b = inf.hold("b");
        assert_eq!(b.grow_to(51), Err(ReadError::GatewayFull { held: 100, limit: 150 }));
        b.grow_to(50).unwrap();
        assert_eq!((inf.held(Some("a")), inf.held(None)), (100, 150));
        drop(a);
        drop(a2);
        assert_eq!((inf.held(Some("a")), inf.held(None)), (0, 50));
        drop(b);
        assert_eq!(inf.held(None), 0);
    }
}
