//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy removes
//! them before forwarding, together with every header the `Connection` field names.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1 (`Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`) and every field that a
/// `Connection` header lists. hyper re-adds the framing headers the next hop needs.
///
/// Allocation-free when no `Connection` header names other fields (the usual case).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        // Collect first: names listed in Connection cannot be removed while it is borrowed.
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TE, TRANSFER_ENCODING, UPGRADE] {
        if headers.contains_key(&name) {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_listed() {
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive, X-Secret-Hop".parse().unwrap());
        h.append("Connection", "upgrade".parse().unwrap());
        h.append("x-secret-hop", "1".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("proxy-connection", "keep-alive".parse().unwrap());
        h.append("te", "trailers".parse().unwrap());
        h.append("transfer-encoding", "chunked".parse().unwrap());
        h.append("upgrade", "websocket".parse().unwrap());
        h.append("content-type", "application/json".parse().unwrap());
        h.append("content-length", "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "content-type"]);
    }

    #[test]
    fn garbage_in_connection_is_ignored() {
        let mut h = HeaderMap::new();
        h.append("connection", "  , ,bad name, close".parse().unwrap());
        h.append("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
