//! AWS credentials for Bedrock: static ones from an org's mounted Secret, or temporary ones
//! from STS `AssumeRoleWithWebIdentity` (EKS IRSA: `AWS_ROLE_ARN` +
//! `AWS_WEB_IDENTITY_TOKEN_FILE`).
//!
//! Secrets never leave this module in text: [`AwsCredentials`]' `Debug` shows only the
//! access key id's first four characters, and every error names files and STS error codes,
//! never their contents.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sanctum_common::proxy::{Limits, ProxyBody, ProxyMetrics, Upstream, UpstreamClient};
use serde::Deserialize;
use thiserror::Error;

use super::request::encode_label;

/// One set of AWS credentials (SigV4 signing input).
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    /// When temporary credentials stop working; `None` for long-term keys.
    expires: Option<SystemTime>,
}

impl AwsCredentials {
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
        expires: Option<SystemTime>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
            expires,
        }
    }
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &format_args!("{shown}…"))
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("expires", &self.expires)
            .finish()
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error(
        "AWS credentials file {0} is missing: the org's Secret must hold aws_access_key_id and aws_secret_access_key"
    )]
    Missing(String),
    #[error("AWS credentials file {0} is empty")]
    Empty(String),
    #[error("AWS credentials file {0} holds characters that cannot be sent in a header")]
    NotHeaderSafe(String),
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("web identity: {0}")]
    Config(String),
    #[error("STS AssumeRoleWithWebIdentity at {endpoint} failed: {reason}")]
    Sts { endpoint: String, reason: String },
    #[error("the STS answer could not be read: {0}")]
    StsAnswer(String),
    #[error(
        "no AWS credentials from web identity yet (the last STS call failed or is under way): {0}"
    )]
    NotYet(String),
}

/// File names in the org's Secret (the keys of the AWS CLI's credentials file).
pub const ACCESS_KEY_FILE: &str = "aws_access_key_id";
pub const SECRET_KEY_FILE: &str = "aws_secret_access_key";
pub const SESSION_TOKEN_FILE: &str = "aws_session_token";

#[derive(Clone, PartialEq, Eq)]
struct Stamp([(i64, i64, u64, u64); 3]);

struct Cached {
    creds: Arc<AwsCredentials>,
    stamp: Stamp,
    checked: Instant,
}

/// Static credentials from a mounted Secret directory, re-read when a file changes (checked
/// with one `stat` per file at most every `recheck`; a Secret update swaps the `..data`
/// symlink, which changes the resolved files' inode), like [`crate::keys::ProviderKeys`].
pub struct SecretDirCredentials {
    dir: PathBuf,
    recheck: Duration,
    cache: Mutex<Option<Cached>>,
}

impl SecretDirCredentials {
    pub fn new(dir: impl Into<PathBuf>, recheck: Duration) -> Self {
        Self { dir: dir.into(), recheck, cache: Mutex::new(None) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current credentials. Errors: a missing, empty, unreadable or non-header-safe file.
    pub fn get(&self) -> Result<Arc<AwsCredentials>, CredentialsError> {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref()
            && now.duration_since(c.checked) < self.recheck
        {
            return Ok(c.creds.clone());
        }
        let stamp = Stamp([
            self.stamp(ACCESS_KEY_FILE)?,
            self.stamp(SECRET_KEY_FILE)?,
            self.stamp(SESSION_TOKEN_FILE)?,
        ]);
        if let Some(c) = cache.as_mut()
            && c.stamp == stamp
        {
            c.checked = now;
            return Ok(c.creds.clone());
        }
        let id = self.read(ACCESS_KEY_FILE)?.ok_or_else(|| self.missing(ACCESS_KEY_FILE))?;
        let secret = self.read(SECRET_KEY_FILE)?.ok_or_else(|| self.missing(SECRET_KEY_FILE))?;
        let token = self.read(SESSION_TOKEN_FILE)?;
        let creds = Arc::new(AwsCredentials::new(id, secret, token, None));
        *cache = Some(Cached { creds: creds.clone(), stamp, checked: now });
        Ok(creds)
    }

    fn missing(&self, name: &str) -> CredentialsError {
        CredentialsError::Missing(self.dir.join(name).display().to_string())
    }

    /// `(mtime, mtime_nsec, len, ino)`, zeros when absent.
    fn stamp(&self, name: &str) -> Result<(i64, i64, u64, u64), CredentialsError> {
        let path = self.dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) => Ok((m.mtime(), m.mtime_nsec(), m.len(), m.ino())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, 0, 0, 0)),
            Err(e) => Err(CredentialsError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The trimmed content, `None` when the file does not exist.
    fn read(&self, name: &str) -> Result<Option<String>, CredentialsError> {
        let path = self.dir.join(name);
        let shown = || path.display().to_string();
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CredentialsError::Io { path: shown(), reason: e.to_string() }),
        };
        let text = String::from_utf8(raw).map_err(|_| CredentialsError::NotHeaderSafe(shown()))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(CredentialsError::Empty(shown()));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialsError::NotHeaderSafe(shown()));
        }
        Ok(Some(text.to_owned()))
    }
}

/// Where and how to assume a role with a web identity token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebIdentityConfig {
    /// `AWS_ROLE_ARN`.
    pub role_arn: String,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`: the projected service-account token, re-read at each
    /// STS call (the kubelet rotates it).
    pub token_file: PathBuf,
    /// `AWS_ROLE_SESSION_NAME`; default `sanctum-gateway`.
    pub session_name: String,
    /// STS endpoint base URL; default `https://sts.<region>.amazonaws.com` (the regional
    /// endpoint, as the AWS SDKs use for web identity). Overridable for tests.
    pub sts_endpoint: String,
    /// Asked-for lifetime, 900 s … the role's maximum; default 3600 s.
    pub duration: Duration,
}

impl WebIdentityConfig {
    pub fn new(role_arn: impl Into<String>, token_file: impl Into<PathBuf>, region: &str) -> Self {
        Self {
            role_arn: role_arn.into(),
            token_file: token_file.into(),
            session_name: "sanctum-gateway".into(),
            sts_endpoint: format!("https://sts.{region}.amazonaws.com"),
            duration: Duration::from_secs(3600),
        }
    }

    /// From `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE` and (optional)
    /// `AWS_ROLE_SESSION_NAME`, as EKS IRSA injects them; `None` when either of the first
    /// two is unset.
    pub fn from_env(region: &str) -> Option<Self> {
        let arn = std::env::var("AWS_ROLE_ARN").ok().filter(|s| !s.is_empty())?;
        let file = std::env::var("AWS_WEB_IDENTITY_TOKEN_FILE").ok().filter(|s| !s.is_empty())?;
        let mut c = Self::new(arn, file, region);
        if let Ok(name) = std::env::var("AWS_ROLE_SESSION_NAME")
            && !name.is_empty()
        {
            c.session_name = name;
        }
        Some(c)
    }
}

/// Refresh this long before expiry (the AWS SDKs use 5 minutes too).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// Largest STS answer read.
const MAX_STS_ANSWER: usize = 64 * 1024;

/// Temporary credentials from STS, kept in memory and refreshed before they expire.
/// [`WebIdentity::current`] is synchronous (the request path); [`WebIdentity::refresh`]
/// does the STS call (run it from [`WebIdentity::spawn_refresher`]).
pub struct WebIdentity {
    config: WebIdentityConfig,
    client: UpstreamClient,
    current: RwLock<Option<Arc<AwsCredentials>>>,
    last_error: Mutex<Option<String>>,
    /// One STS call at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl WebIdentity {
    /// Errors: an STS endpoint that is not an http(s) URL.
    pub fn new(config: WebIdentityConfig) -> Result<Self, CredentialsError> {
        let upstream = Upstream::url(&config.sts_endpoint)
            .map_err(|e| CredentialsError::Config(e.to_string()))?;
        let limits = Limits {
            connect_timeout: Duration::from_secs(5),
            response_head_timeout: Duration::from_secs(15),
            body_idle_timeout: Duration::from_secs(15),
            pool_max_idle: 1,
            ..Limits::default()
        };
        let client = UpstreamClient::new(
            upstream,
            &limits,
            Arc::new(ProxyMetrics::new("sanctum_gateway_sts")),
        )
        .map_err(|e| CredentialsError::Config(e.to_string()))?;
        Ok(Self {
            config,
            client,
            current: RwLock::new(None),
            last_error: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &WebIdentityConfig {
        &self.config
    }

    /// The credentials in memory, if still valid at `now`.
    ///
    /// Errors: [`CredentialsError::NotYet`] with the last STS failure, if any.
    pub fn current(&self, now: SystemTime) -> Result<Arc<AwsCredentials>, CredentialsError> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        match cur {
            Some(c) if c.expires.is_none_or(|t| t > now) => Ok(c),
            _ => {
                let why = self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Err(CredentialsError::NotYet(why.unwrap_or_else(|| "no STS answer yet".into())))
            }
        }
    }

    /// Whether the credentials in memory expire within [`REFRESH_BEFORE_EXPIRY`] of `now`.
    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        match cur.as_ref().and_then(|c| c.expires) {
            None => cur.is_none(),
            Some(t) => t <= now + REFRESH_BEFORE_EXPIRY,
        }
    }

    /// The valid credentials, calling STS first when they are missing or about to expire.
    pub async fn get(&self) -> Result<Arc<AwsCredentials>, CredentialsError> {
        if self.needs_refresh(SystemTime::now()) {
            self.refresh().await?;
        }
        self.current(SystemTime::now())
    }

    /// Calls STS (unless another caller just did) and keeps the answer.
    pub async fn refresh(&self) -> Result<(), CredentialsError> {
        let _one = self.refreshing.lock().await;
        if !self.needs_refresh(SystemTime::now()) {
            return Ok(());
        }
        let result = self.assume().await;
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(creds) => {
                *last = None;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(creds));
                Ok(())
            }
            Err(e) => {
                *last = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Refreshes in the background: at start, then [`REFRESH_BEFORE_EXPIRY`] before each
    /// expiry; after a failure, again in 1 s doubling to 60 s.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match this.refresh().await {
                    Ok(()) => {
                        backoff = Duration::from_secs(1);
                        let expires = this.current(SystemTime::now()).ok().and_then(|c| c.expires);
                        expires.and_then(|t| t.duration_since(SystemTime::now()).ok()).map_or(
                            Duration::from_secs(60),
                            |left| {
                                left.saturating_sub(REFRESH_BEFORE_EXPIRY)
                                    .max(Duration::from_secs(1))
                            },
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, role = %this.config.role_arn, "web identity: STS call failed; retrying");
                        let w = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        w
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }

    async fn assume(&self) -> Result<AwsCredentials, CredentialsError> {
        let endpoint = &self.config.sts_endpoint;
        let path = &self.config.token_file;
        let token = std::fs::read_to_string(path).map_err(|e| CredentialsError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let form = sts_form(&self.config, token.trim());
        let req = Request::builder()
            .method(Method::POST)
            .uri("/")
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "text/xml")
            .body(ProxyBody::full(form))
            .map_err(|e| CredentialsError::Config(e.to_string()))?;
        let sts = |reason: String| CredentialsError::Sts { endpoint: endpoint.clone(), reason };
        let resp = self.client.send(req).await.map_err(|e| sts(e.to_string()))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_STS_ANSWER)
            .collect()
            .await
            .map_err(|e| sts(format!("reading the answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(sts(format!("HTTP {}: {}", status.as_u16(), sts_error(&body))));
        }
        parse_sts_answer(&body)
    }
}

/// The form body of `AssumeRoleWithWebIdentity` (STS API reference; Query API, version
/// 2011-06-15). The call is unsigned: the token is the proof.
pub fn sts_form(config: &WebIdentityConfig, token: &str) -> Bytes {
    let fields = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", config.role_arn.as_str()),
        ("RoleSessionName", config.session_name.as_str()),
        ("DurationSeconds", &config.duration.as_secs().to_string()),
        ("WebIdentityToken", token),
    ];
    let form: Vec<String> =
        fields.iter().map(|(k, v)| format!("{k}={}", encode_label(v))).collect();
    Bytes::from(form.join("&"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeResponse {
    assume_role_with_web_identity_result: AssumeResult,
}
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeResult {
    credentials: StsCredentials,
}
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// Reads an `AssumeRoleWithWebIdentityResponse` XML document.
///
/// Errors: [`CredentialsError::StsAnswer`] naming what is missing (never a value).
pub fn parse_sts_answer(xml: &[u8]) -> Result<AwsCredentials, CredentialsError> {
    let text =
        std::str::from_utf8(xml).map_err(|_| CredentialsError::StsAnswer("not UTF-8".into()))?;
    let resp: AssumeResponse = quick_xml::de::from_str(text).map_err(|e| {
        // The deserializer's message names fields, not values.
        CredentialsError::StsAnswer(format!("not an AssumeRoleWithWebIdentityResponse ({e})"))
    })?;
    let c = resp.assume_role_with_web_identity_result.credentials;
    let expires = chrono::DateTime::parse_from_rfc3339(c.expiration.trim())
        .map_err(|_| CredentialsError::StsAnswer("Expiration is not an RFC 3339 time".into()))?;
    let expires = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(expires.timestamp()).unwrap_or(0));
    for (name, v) in [
        ("AccessKeyId", &c.access_key_id),
        ("SecretAccessKey", &c.secret_access_key),
        ("SessionToken", &c.session_token),
    ] {
        if v.trim().is_empty() || !v.trim().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialsError::StsAnswer(format!("{name} is empty or not header-safe")));
        }
    }
    Ok(AwsCredentials::new(
        c.access_key_id.trim(),
        c.secret_access_key.trim(),
        Some(c.session_token.trim().to_owned()),
        Some(expires),
    ))
}

/// `Code: Message` of an STS `ErrorResponse`, or a note that the body was not one.
pub fn sts_error(xml: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ErrorResponse {
        error: StsError,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct StsError {
        code: Option<String>,
        message: Option<String>,
    }
    match std::str::from_utf8(xml)
        .ok()
        .and_then(|t| quick_xml::de::from_str::<ErrorResponse>(t).ok())
    {
        Some(r) => format!(
            "{}: {}",
            r.error.code.as_deref().unwrap_or("(no code)"),
            r.error.message.as_deref().unwrap_or("(no message)")
        ),
        None => "the answer is not an STS ErrorResponse".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:sanctum:gateway</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/bedrock/sanctum-gateway</Arn>
      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:sanctum-gateway</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>AQoDYXdzEE0a8ANXXXXXXXXNO1ewxE5TijQyp+IEXAMPLE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-11-30T13:00:23Z</Expiration>
      <AccessKeyId>ASgeIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
    <Provider>www.amazon.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn parses_the_sts_answer() {
        let c = parse_sts_answer(ANSWER.as_bytes()).unwrap();
        assert_eq!(c.access_key_id(), "ASgeIAIOSFODNN7EXAMPLE");
        assert_eq!(c.secret_access_key(), "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY");
        assert_eq!(c.session_token(), Some("AQoDYXdzEE0a8ANXXXXXXXXNO1ewxE5TijQyp+IEXAMPLE"));
        let exp = c.expires().unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(exp, 1_796_043_623);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("wJalr") && !shown.contains("AQoD") && !shown.contains("EXAMPLE\""),
            "{shown}"
        );
        assert!(shown.contains("ASge…"), "{shown}");
    }

    #[test]
    fn bad_sts_answers_are_errors_without_values() {
        assert!(matches!(parse_sts_answer(b"<x/>"), Err(CredentialsError::StsAnswer(_))));
        let no_exp = ANSWER.replace("2026-11-30T13:00:23Z", "soon");
        let err = parse_sts_answer(no_exp.as_bytes()).unwrap_err().to_string();
        assert!(!err.contains("wJalr"), "{err}");
        let err = br#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Token expired</Message></Error><RequestId>r</RequestId></ErrorResponse>"#;
        assert_eq!(sts_error(err), "InvalidIdentityToken: Token expired");
        assert_eq!(sts_error(b"nope"), "the answer is not an STS ErrorResponse");
    }

    #[test]
    fn form_is_encoded() {
        let mut c = WebIdentityConfig::new("arn:aws:iam::1:role/r", "/t", "eu-west-1");
        assert_eq!(c.sts_endpoint, "https://sts.eu-west-1.amazonaws.com");
        c.session_name = "s n".into();
        let form = sts_form(&c, "a.b+c/d=");
        assert_eq!(
            &form[..],
            b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&RoleSessionName=s%20n&DurationSeconds=3600&WebIdentityToken=a.b%2Bc%2Fd%3D"
        );
    }

    #[test]
    fn secret_dir_reads_rereads_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let creds = SecretDirCredentials::new(dir.path(), Duration::ZERO);
        assert!(
            matches!(creds.get(), Err(CredentialsError::Missing(p)) if p.ends_with(ACCESS_KEY_FILE))
        );
        std::fs::write(dir.path().join(ACCESS_KEY_FILE), "AKIDEXAMPLE\n").unwrap();
        std::fs::write(dir.path().join(SECRET_KEY_FILE), "s3cr3t-one\n").unwrap();
        let c = creds.get().unwrap();
        assert_eq!(
            (c.access_key_id(), c.secret_access_key(), c.session_token()),
            ("AKIDEXAMPLE", "s3cr3t-one", None)
        );
        // A Secret update: new files renamed over the old ones.
        std::fs::write(dir.path().join(".t"), "s3cr3t-two-longer").unwrap();
        std::fs::rename(dir.path().join(".t"), dir.path().join(SECRET_KEY_FILE)).unwrap();
        std::fs::write(dir.path().join(SESSION_TOKEN_FILE), "tok").unwrap();
        let c = creds.get().unwrap();
        assert_eq!((c.secret_access_key(), c.session_token()), ("s3cr3t-two-longer", Some("tok")));
        std::fs::write(dir.path().join(SECRET_KEY_FILE), " \n").unwrap();
        assert!(matches!(creds.get(), Err(CredentialsError::Empty(_))));
        std::fs::write(dir.path().join(SECRET_KEY_FILE), "a\nSECRETVALUE").unwrap();
        let err = creds.get().unwrap_err();
        assert!(matches!(err, CredentialsError::NotHeaderSafe(_)));
        assert!(!err.to_string().contains("SECRETVALUE"));
    }

    #[test]
    fn secret_dir_caches_between_rechecks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ACCESS_KEY_FILE), "A").unwrap();
        std::fs::write(dir.path().join(SECRET_KEY_FILE), "one").unwrap();
        let creds = SecretDirCredentials::new(dir.path(), Duration::from_secs(3600));
        assert_eq!(creds.get().unwrap().secret_access_key(), "one");
        std::fs::write(dir.path().join(SECRET_KEY_FILE), "two").unwrap();
        assert_eq!(creds.get().unwrap().secret_access_key(), "one");
    }
}
