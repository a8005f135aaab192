//! `sanctum-operator`'s command line: parses the subcommands and hands each to the module
//! that does it (`run` and `webhook` to [`sanctum_operator::serve`], `render`, `inject`,
//! `crd`, `jwks`, `keygen`, `seccomp-install`); errors end here, as one line.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use sanctum_common::telemetry::{self, LogFormat};
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::{crd, render, tokens::Signer};

#[derive(Parser, Debug)]
#[command(
    name = "sanctum-operator",
    version,
    about = "Sanctum: AI coding agents on Kubernetes with no credentials in their pods"
)]
struct Cli {
    /// Log format: auto (JSON unless standard error is a terminal), json or text.
    #[arg(long, env = "SANCTUM_LOG_FORMAT", default_value = "auto", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller, webhook, token service and admin port in a cluster.
    Run(sanctum_operator::serve::RunArgs),
    /// Serve the mutating admission webhook alone (no cluster needed to inject).
    Webhook(sanctum_operator::serve::WebhookArgs),
    /// Print FILE with every opted-in pod (template) injected as the webhook would.
    Inject {
        /// YAML file (`-` for standard input): Pod, Deployment, StatefulSet, DaemonSet,
        /// ReplicaSet, Job, CronJob; other kinds are printed unchanged.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Operator config file.
        #[arg(long, env = "SANCTUM_CONFIG")]
        config: Option<PathBuf>,
        /// Treat the objects as living in a namespace labelled sanctum.dev/injection=enabled:
        /// inject every pod not annotated sanctum.dev/inject: "false".
        #[arg(long, env = "SANCTUM_NAMESPACE_ENABLED")]
        namespace_enabled: bool,
        /// PEM CA bundle to hand to fetch-trat (the token service's CA).
        #[arg(long, env = "SANCTUM_CA_BUNDLE_FILE")]
        ca_bundle_file: Option<PathBuf>,
    },
    /// Print the ScannerRun CRD (YAML).
    Crd,
    /// Print the objects the controller would create for each ScannerRun in FILE.
    Render {
        /// YAML file with ScannerRuns (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Operator config file.
        #[arg(long, env = "SANCTUM_CONFIG")]
        config: Option<PathBuf>,
        /// TraT signing key (overrides the config's trat.signingKeyFile).
        #[arg(long, env = "SANCTUM_SIGNING_KEY_FILE")]
        signing_key_file: Option<PathBuf>,
    },
    /// Print the JWKS that verifies the operator's TraTs.
    Jwks {
        /// TraT signing key (ES256/P-256 PEM).
        #[arg(long, env = "SANCTUM_SIGNING_KEY_FILE")]
        signing_key_file: Option<PathBuf>,
        /// Operator config file (its trat.signingKeyFile is used when no key is given).
        #[arg(long, env = "SANCTUM_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a new ES256 (P-256) signing key in PKCS#8 PEM.
    Keygen,
    /// Install the scanner seccomp profile into a kubelet seccomp directory and keep it
    /// there (checked every minute) until SIGTERM: the chart's DaemonSet runs this.
    SeccompInstall {
        /// The profile (JSON), e.g. mounted from the chart's ConfigMap.
        #[arg(long, env = "SANCTUM_SECCOMP_PROFILE")]
        profile: PathBuf,
        /// The kubelet's seccomp directory (e.g. /var/lib/kubelet/seccomp, on a hostPath).
        #[arg(long, env = "SANCTUM_SECCOMP_DIR")]
        dir: PathBuf,
    },
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

fn signer(key: Option<PathBuf>, config: &OperatorConfig) -> Result<Signer> {
    let key = key.or_else(|| config.trat.signing_key_file.clone());
    let signer = Signer::from_config(key.as_deref())?;
    if signer.is_ephemeral() {
        eprintln!(
            "warning: no TraT signing key configured; using an ephemeral key that no gateway knows"
        );
    }
    Ok(signer)
}

/// Installs the profile, then re-checks every minute (a node clean-up may remove it) until
/// SIGTERM. A failed first install is fatal (the DaemonSet pod restarts and says why).
async fn keep_seccomp_profile(profile: &Path, dir: &Path) -> Result<()> {
    use sanctum_operator::seccomp::{Installed, install};
    let report = |r: Installed| match r {
        Installed::Written(p) => tracing::info!(path = %p.display(), "seccomp profile installed"),
        Installed::Unchanged(_) => {}
    };
    report(install(profile, dir)?);
    let shutdown = sanctum_common::proxy::server::shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = tick.tick() => match install(profile, dir) {
                Ok(r) => report(r),
                Err(error) => tracing::warn!(%error, "seccomp profile check failed"),
            },
        }
    }
}

fn main() -> std::process::ExitCode {
    sanctum_common::exit::report("sanctum-operator", real_main(Cli::parse()))
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            telemetry::init(cli.log_format);
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(sanctum_operator::serve::run(args))
        }
        Command::Webhook(args) => {
            telemetry::init(cli.log_format);
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(sanctum_operator::serve::webhook(args))
        }
        Command::Inject { file, config, namespace_enabled, ca_bundle_file } => {
            use sanctum_operator::webhook::admission::{OptIn, Settings};
            let config = OperatorConfig::load(config.as_deref())?;
            let ca_file = ca_bundle_file.or_else(|| config.webhook.ca_bundle_file.clone());
            let ca_bundle = match ca_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read CA bundle {}", path.display()))?,
                ),
                None => None,
            };
            let opt_in = if namespace_enabled { OptIn::Namespace } else { OptIn::Annotation };
            let text = read_input(&file)?;
            let out = sanctum_operator::webhook::manifests::inject_file(
                &text,
                &config,
                &Settings { ca_bundle },
                opt_in,
            )
            .with_context(|| format!("cannot inject {}", file.display()))?;
            print!("{out}");
            Ok(())
        }
        Command::Crd => {
            print!("{}", crd::crd_yaml()?);
            Ok(())
        }
        Command::Render { file, config, signing_key_file } => {
            let config = OperatorConfig::load(config.as_deref())?;
            let signer = signer(signing_key_file, &config)?;
            let text = read_input(&file)?;
            let (out, skipped) =
                render::render(&text, &config, &signer, sanctum_common::time::now_unix())
                    .with_context(|| format!("cannot render {}", file.display()))?;
            for s in skipped {
                eprintln!("skipped {s} (not a sanctum.dev ScannerRun)");
            }
            print!("{out}");
            Ok(())
        }
        Command::Jwks { signing_key_file, config } => {
            let config = OperatorConfig::load(config.as_deref())?;
            let key = signing_key_file.or(config.trat.signing_key_file);
            let Some(key) = key else {
                anyhow::bail!(
                    "no signing key: pass --signing-key-file (an ephemeral key's JWKS would verify nothing)"
                );
            };
            println!("{}", serde_json::to_string_pretty(&Signer::load(&key)?.jwks())?);
            Ok(())
        }
        Command::Keygen => {
            print!("{}", Signer::generate_pem()?);
            Ok(())
        }
        Command::SeccompInstall { profile, dir } => {
            telemetry::init(cli.log_format);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(keep_seccomp_profile(&profile, &dir))
        }
    }
}
