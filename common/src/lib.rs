//! What several Sanctum binaries share, written once: the header names, the default paths
//! and ports of the design contract, the token claim types, the Anthropic-shaped error body,
//! logging set-up, the small admin server (`/healthz`, `/readyz`, `/metrics` from one
//! [`metrics`] registry per process), the wire contracts between binaries ([`revoked`],
//! [`token_service`]), the clock ([`time`]), quoting text from elsewhere ([`text`]), the
//! exit-on-error convention ([`exit`]), and the one server shell every listener runs on
//! ([`proxy::Server`]: accept loop, TLS, connection cap and header deadline from [`accept`],
//! head guard, hop-by-hop removal, shutdown).

pub mod accept;
pub mod admin;
pub mod claims;
pub mod defaults;
pub mod error;
pub mod exit;
pub mod headers;
pub mod metrics;
pub mod proxy;
pub mod revoked;
pub mod runtime;
pub mod spiffe;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod tls;
pub mod token_service;

pub use claims::{SvidClaims, TransactionContext, TratClaims};
pub use error::{ApiError, ErrorKind, Retry};
pub use spiffe::SpiffeId;
