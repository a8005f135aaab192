//! `sanctum-bridge fetch-trat`: the `write-trat` init container of webhook-injected pods —
//! trade the pod's projected ServiceAccount token (audience `sanctum`) for a TraT at the
//! operator's token service and write it to `/run/sage/trat.jwt` (mode 0600, atomically).
//!
//! Protocol ([`sanctum_common::token_service`]): `POST <token-service>/v1/trat` with
//! `Authorization: Bearer <SA token>`; `200 {"token":"…","expiresAt":…}` or
//! `4xx/5xx {"error":"…"}`. The operator's CA comes
//! from `--ca-file` or, as the webhook injects it, the PEM text in
//! `SANCTUM_TOKEN_SERVICE_CA`; without either, the system roots. Transient failures
//! (connection, timeouts, 429, 5xx) are retried a bounded number of times; a refusal (401,
//! 403) is final, since retrying the same token cannot change the answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args as ClapArgs;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sanctum_common::defaults;
use sanctum_common::token_service::{ErrorReply, PATH, TratReply};

use crate::write_trat::write_owner_only;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Base URL of the operator's token service (https).
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
    /// PEM file of the CA that signed the token service's certificate.
    #[arg(long, env = "SANCTUM_CA_FILE", conflicts_with = "ca_pem")]
    pub ca_file: Option<PathBuf>,
    /// The same CA as PEM text (the webhook sets this environment variable).
    #[arg(long, env = "SANCTUM_TOKEN_SERVICE_CA", hide_env_values = true)]
    pub ca_pem: Option<String>,
    /// Attempts before giving up on transient failures.
    #[arg(long, env = "SANCTUM_ATTEMPTS", default_value_t = 6)]
    pub attempts: u32,
    /// Seconds per attempt (connect, TLS, answer).
    #[arg(long, env = "SANCTUM_TIMEOUT", default_value_t = 10)]
    pub timeout: u64,
}

/// Why one attempt failed; `retry` says whether another attempt may help.
#[derive(Debug)]
struct Failure {
    message: String,
    retry: bool,
}

fn transient(message: impl Into<String>) -> Failure {
    Failure { message: message.into(), retry: true }
}

fn tls_config(args: &Args) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem: Option<(Vec<u8>, String)> = match (&args.ca_file, &args.ca_pem) {
        (Some(path), _) => Some((
            std::fs::read(path)
                .with_context(|| format!("cannot read --ca-file {}", path.display()))?,
            path.display().to_string(),
        )),
        (None, Some(pem)) if !pem.trim().is_empty() => {
            Some((pem.as_bytes().to_vec(), "SANCTUM_TOKEN_SERVICE_CA".into()))
        }
        _ => None,
    };
    match pem {
        Some((bytes, origin)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("the CA in {origin} is not PEM: {e}"))?;
            if certs.is_empty() {
                anyhow::bail!("the CA in {origin} holds no PEM certificate");
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("the CA in {origin} is not usable: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                anyhow::bail!(
                    "no CA to trust the token service with: set SANCTUM_TOKEN_SERVICE_CA or --ca-file"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Splits `https://host[:port][/base]` into what a connection needs.
fn target(url: &str) -> anyhow::Result<(String, u16, String)> {
    let uri: Uri =
        url.parse().map_err(|_| anyhow::anyhow!("--token-service '{url}' is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        anyhow::bail!(
            "--token-service '{url}' must be an https:// URL: the pod's ServiceAccount token is sent there"
        );
    }
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("--token-service '{url}' has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let base = uri.path().trim_end_matches('/');
    Ok((host, uri.port_u16().unwrap_or(443), format!("{base}{PATH}")))
}

async fn attempt(
    connector: &tokio_rustls::TlsConnector,
    (host, port, path): &(String, u16, String),
    sa_token: &str,
) -> Result<String, Failure> {
    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(|e| transient(format!("cannot connect to {host}:{port}: {e}")))?;
    let name = ServerName::try_from(host.clone()).map_err(|_| Failure {
        message: format!("'{host}' is not a valid TLS name"),
        retry: false,
    })?;
    let tls = connector.connect(name, tcp).await.map_err(|e| {
        // A certificate the CA does not vouch for will not fix itself quickly either,
        // but a rotating certificate might: retry.
        transient(format!("TLS with {host}:{port} failed: {e} (is the token service CA right?)"))
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| transient(format!("HTTP with {host}:{port} failed: {e}")))?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(Method::POST)
        .uri(path.as_str())
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {sa_token}"))
        .header(http::header::CONTENT_LENGTH, "0")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure { message: format!("cannot build the request: {e}"), retry: false })?;
    let response = sender.send_request(request).await.map_err(|e| {
        transient(format!("the token service at {host}:{port} did not answer: {e}"))
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| transient(format!("cannot read the token service's answer: {e}")))?
        .to_bytes();
    if status == StatusCode::OK {
        return serde_json::from_slice::<TratReply>(&body)
            .ok()
            .map(|reply| reply.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| transient("the token service answered 200 without a token"));
    }
    let why = serde_json::from_slice::<ErrorReply>(&body).map_or_else(
        |_| String::from_utf8_lossy(&body).trim().chars().take(300).collect(),
        |reply| reply.error,
    );
    let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    Err(Failure { message: format!("the token service refused ({status}): {why}"), retry })
}

async fn fetch(args: &Args, sa_token: &str) -> anyhow::Result<String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(args)?));
    let target = target(&args.token_service)?;
    let attempts = args.attempts.max(1);
    let mut delay = Duration::from_secs(1);
    for n in 1..=attempts {
        let outcome = tokio::time::timeout(
            Duration::from_secs(args.timeout),
            attempt(&connector, &target, sa_token),
        )
        .await
        .unwrap_or_else(|_| {
            Err(transient(format!(
                "the token service at {}:{} did not answer within {} s",
                target.0, target.1, args.timeout
            )))
        });
        match outcome {
            Ok(token) => return Ok(token),
            Err(f) if f.retry && n < attempts => {
                eprintln!(
                    "fetch-trat: attempt {n}/{attempts}: {}; retrying in {delay:?}",
                    f.message
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(f) if f.retry => anyhow::bail!("{} (gave up after {attempts} attempts)", f.message),
            Err(f) => anyhow::bail!("{}", f.message),
        }
    }
    anyhow::bail!("no attempt made")
}

fn read_sa_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the ServiceAccount token at {} (is the projected token volume mounted?)",
            path.display()
        )
    })?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("the ServiceAccount token file {} is empty", path.display());
    }
    Ok(token)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sa_token = read_sa_token(Path::new(&args.sa_token_file))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let trat = runtime.block_on(fetch(&args, &sa_token))?;
    // The answer must at least look like a JWT before the bridge is pointed at it.
    if let Err(e) = sanctum_common::claims::unverified_expiry(&trat) {
        anyhow::bail!("the token service answered with a TraT that {e}");
    }
    write_owner_only(Path::new(&args.out), trat.as_bytes())?;
    eprintln!("fetch-trat: wrote {}", args.out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            target("https://op.ns.svc:8443").unwrap(),
            ("op.ns.svc".into(), 8443, "/v1/trat".into())
        );
        assert_eq!(target("https://127.0.0.1/base/").unwrap().2, "/base/v1/trat");
        assert!(target("http://op:8443").unwrap_err().to_string().contains("https://"));
        assert!(target("not a url").is_err());
    }
}
