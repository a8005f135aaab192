//! The mutating admission webhook: the pure decision and patch ([`admission`], [`patch`]),
//! the same steps for files ([`manifests`], `sanctum-operator inject`), and the HTTPS
//! server ([`server`], [`tls`]) that also carries the token service.

pub mod admission;
pub mod manifests;
pub mod patch;
pub mod server;
pub mod subset;
pub use sanctum_common::tls;
