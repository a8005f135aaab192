//! The first step: which Messages API endpoint a request is for. Nothing else is served.

use http::Method;
use hyper::body::Incoming;

use super::provider::Endpoint;
use super::reject::{self, Rejection};

/// `GET /` or `HEAD /`: some Claude Code versions probe the base URL first; answered empty
/// (it reveals nothing) and not counted as a request.
pub fn is_probe(req: &http::Request<Incoming>) -> bool {
    req.uri().path() == "/" && (req.method() == Method::HEAD || req.method() == Method::GET)
}

/// `POST /v1/messages` or `POST /v1/messages/count_tokens`; anything else is a 404.
pub fn route(req: &http::Request<Incoming>) -> Result<Endpoint, Rejection> {
    let path = req.uri().path();
    let endpoint = match path {
        "/v1/messages" => Endpoint::Messages,
        "/v1/messages/count_tokens" => Endpoint::CountTokens,
        _ => return Err(reject::not_found(req.method().as_str(), path)),
    };
    if req.method() != Method::POST {
        return Err(reject::not_found(req.method().as_str(), path));
    }
    Ok(endpoint)
}
