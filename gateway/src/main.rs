//! sanctum-gateway: validates the JWT-SVID and the TraT on every call, scans, budgets and
//! adds the org's provider credentials. Everything is in the library; this is the shell.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    sanctum_common::exit::report(
        "sanctum-gateway",
        sanctum_gateway::run(sanctum_gateway::Options::parse()),
    )
}
