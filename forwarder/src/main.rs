//! sanctum-forwarder: the zero-logic UDS -> gateway sidecar. The central gateway that used to
//! be its `gateway` mode is the `sanctum-gateway` binary now (crate `gateway/`).

use clap::{Parser, Subcommand};

mod forward;

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
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().mode {
        Mode::Forward(args) => forward::run(args),
    };
    sanctum_common::exit::report("sanctum-forwarder", result)
}
