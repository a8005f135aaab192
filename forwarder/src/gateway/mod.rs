//! `gateway` mode: the central gateway.

// Pure checks, one concept each; the server shell wires them together.
#![allow(dead_code)]
pub mod audit;
pub mod budget;
pub mod dlp;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod revocation;
pub mod state;
pub mod svid;
pub mod tokencache;
pub mod trat;
pub mod usage;

use clap::Args as ClapArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "SANCTUM_LISTEN")]
    pub listen: String,
    /// Provider URL.
    #[arg(long, env = "SANCTUM_UPSTREAM")]
    pub upstream: String,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("gateway mode is not implemented yet")
}
