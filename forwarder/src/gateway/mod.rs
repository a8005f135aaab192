//! `gateway` mode: the central gateway.

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
