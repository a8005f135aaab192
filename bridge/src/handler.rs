//! The bridge's per-request work: drop every credential the client sent, add the pod's
//! JWT-SVID and TraT as they are on disk now, and stream the request to the forwarder.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sanctum_common::headers::{AUTHORIZATION, CLIENT_CREDENTIALS, TXN_TOKEN};
use sanctum_common::proxy::{Handler, ProxyBody, UpstreamClient};

use crate::tokens::TokenFile;

/// What the bridge needs per request; shared by all connections.
pub struct Bridge {
    pub jwt: TokenFile,
    pub trat: TokenFile,
    pub client: UpstreamClient,
    pub token_errors: TokenErrors,
}

impl Bridge {
    pub fn new(jwt: TokenFile, trat: TokenFile, client: UpstreamClient) -> Arc<Self> {
        Arc::new(Self { jwt, trat, client, token_errors: TokenErrors::default() })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    file: &'static str,
}

/// Requests answered 503 because a token file was not usable, by file (`jwt`, `trat`): the
/// family `sanctum_bridge_token_errors_total` and its two counters, resolved once.
pub struct TokenErrors {
    pub family: Family<FileLabels, Counter>,
    /// `[jwt, trat]`.
    by_file: [Counter; 2],
}

impl Default for TokenErrors {
    fn default() -> Self {
        let family = Family::<FileLabels, Counter>::default();
        let by_file = ["jwt", "trat"].map(|file| family.get_or_create_owned(&FileLabels { file }));
        Self { family, by_file }
    }
}

const UPSTREAM_HINT: &str =
    "check that the sanctum-forwarder sidecar is running and listening on this socket";

impl Handler for Bridge {
    type Body = ProxyBody;

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        // The server shell has already removed the hop-by-hop headers (and those a client's
        // `Connection` names), so a `Connection: txn-token` cannot remove the ones added here.
        let (mut parts, body) = req.into_parts();
        for name in CLIENT_CREDENTIALS {
            // `remove` drops every value of the name, whatever case it arrived in.
            parts.headers.remove(name);
        }
        for (i, file) in [&self.jwt, &self.trat].into_iter().enumerate() {
            match file.current() {
                Ok(value) => {
                    let name = if i == 0 { AUTHORIZATION } else { TXN_TOKEN };
                    parts.headers.insert(name, value);
                }
                Err(error) => {
                    self.token_errors.by_file[i].inc();
                    tracing::warn!(%error, "token file not usable; answering 503");
                    return error.to_api_error().to_response();
                }
            }
        }
        let method = parts.method.clone();
        match self.client.send(Request::from_parts(parts, ProxyBody::from(body))).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, %method, "upstream failed; answering 502");
                error.to_api_error(UPSTREAM_HINT).to_response()
            }
        }
    }
}
