//! sanctum-forwarder: zero-logic UDS -> gateway proxy (`forward`), or the central gateway (`gateway`).

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "sanctum-forwarder", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Zero-logic sidecar: Unix socket -> gateway.
    Forward,
    /// The central gateway: validates both tokens and adds the provider key.
    Gateway,
}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("sanctum-forwarder: not implemented yet")
}
