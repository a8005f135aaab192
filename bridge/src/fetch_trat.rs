//! `sanctum-bridge fetch-trat`: the `write-trat` init container of webhook-injected pods —
//! trade the pod's projected ServiceAccount token for a TraT at the operator's token
//! service and write it to `/run/sage/trat.jwt`. Implemented by the webhook/operator work;
//! this module only fixes the command line of the design contract.

use clap::Args as ClapArgs;
use sanctum_common::defaults;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// URL of the operator's token service.
    #[arg(long, env = "SANCTUM_TOKEN_SERVICE")]
    pub token_service: String,
    /// Projected ServiceAccount token to trade.
    #[arg(
        long,
        env = "SANCTUM_SA_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/sanctum-token"
    )]
    pub sa_token_file: String,
    /// Where to write the TraT (mode 0600).
    #[arg(long, env = "SANCTUM_OUT", default_value = defaults::TRAT_FILE)]
    pub out: String,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("fetch-trat is not implemented in this build of sanctum-bridge")
}
