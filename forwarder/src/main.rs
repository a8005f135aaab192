//! sanctum-forwarder: the zero-logic UDS -> gateway sidecar (`forward`), or the central
//! gateway that checks both tokens and adds the provider key (`gateway`).

use clap::{Parser, Subcommand};

mod forward;
mod gateway;

#[derive(Parser, Debug)]
#[command(name = "sanctum-forwarder", version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Zero-logic sidecar: every request on the Unix socket goes to the gateway unchanged.
    Forward(forward::Args),
    /// The central gateway: validates JWT-SVID and TraT, scans, budgets, adds the provider key.
    Gateway(gateway::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Forward(args) => forward::run(args),
        Mode::Gateway(args) => gateway::run(args),
    }
}
