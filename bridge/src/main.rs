//! sanctum-bridge: loopback HTTP proxy that adds the pod's JWT-SVID and TraT to every LLM call.

use clap::Parser;
use sanctum_common::defaults;

/// Loopback proxy inside the agent's pod: adds `Authorization: Bearer <JWT-SVID>` and
/// `Txn-Token: <TraT>` to every request and forwards it over a Unix socket.
#[derive(Parser, Debug)]
#[command(name = "sanctum-bridge", version)]
struct Cli {
    /// Loopback address to listen on.
    #[arg(long, env = "SANCTUM_LISTEN", default_value = defaults::BRIDGE_LISTEN)]
    listen: String,
    /// Unix socket of the forwarder.
    #[arg(long, env = "SANCTUM_UPSTREAM_SOCKET", default_value = defaults::LLM_SOCKET)]
    upstream_socket: String,
    /// JWT-SVID file, re-read on every request.
    #[arg(long, env = "SANCTUM_JWT_FILE", default_value = defaults::JWT_FILE)]
    jwt_file: String,
    /// Transaction token file, re-read on every request.
    #[arg(long, env = "SANCTUM_TRAT_FILE", default_value = defaults::TRAT_FILE)]
    trat_file: String,
}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("sanctum-bridge: not implemented yet")
}
