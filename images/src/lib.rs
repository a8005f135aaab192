//! Sanctum's image builder: OCI image-layout archives written on this machine, without a
//! container daemon or a registry, byte-for-byte reproducible.
//!
//! - [`layer`]: one reproducible tar layer from a tree of files.
//! - [`elf`]: the shared libraries and loader an ELF binary needs on this host.
//! - [`image`]: an image definition (tree, entrypoint, user, env, annotations).
//! - [`layout`]: the OCI archive `ctr images import` reads.
//! - [`catalog`]: Sanctum's own images; [`builder`]: builds them from the release binaries.

pub mod builder;
pub mod catalog;
pub mod elf;
pub mod error;
pub mod image;
pub mod layer;
pub mod layout;

pub use error::{Error, Result};
