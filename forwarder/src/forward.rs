//! `forward` mode: Unix socket -> gateway, headers unchanged.

use clap::Args as ClapArgs;
use sanctum_common::defaults;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Unix socket to listen on.
    #[arg(long, env = "SANCTUM_LISTEN_SOCKET", default_value = defaults::LLM_SOCKET)]
    pub listen_socket: String,
    /// Gateway URL (http or https).
    #[arg(long, env = "SANCTUM_UPSTREAM")]
    pub upstream: String,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("forward mode is not implemented yet")
}
