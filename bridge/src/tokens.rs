//! The two token files the bridge adds to every request, read as they are on disk *now*.
//!
//! Every request reads both files in full (a few hundred bytes each, on a tmpfs): that is
//! exact whether the kubelet or SPIRE replaced the file by rename or something rewrote it
//! in place, where a stat-based check could miss a same-size rewrite within one mtime tick.
//! What is cached is only the work done on the content — the `exp` parse and the header
//! value — keyed by the content itself, so an unchanged file costs two syscalls and a
//! memcmp, and reuses the header bytes without allocating.

use std::io::Read as _;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::HeaderValue;
use sanctum_common::ApiError;
use sanctum_common::claims::unverified_expiry;
use sanctum_common::time::now_unix;
use thiserror::Error;

/// Token files larger than this are refused: a JWT-SVID or TraT is a few KiB at most.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token file cannot be used. Messages name the file and what to check; they never
/// contain the token.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "the {label} file {path} does not exist: {writer} has not written it yet (or set {flag} to where it is)"
    )]
    Missing { label: &'static str, path: PathBuf, writer: &'static str, flag: &'static str },
    #[error(
        "the {label} file {path} cannot be read ({why}): check the volume mount and the file's permissions"
    )]
    Unreadable { label: &'static str, path: PathBuf, why: String },
    #[error("the {label} file {path} is empty: {writer} has not finished writing it")]
    Empty { label: &'static str, path: PathBuf, writer: &'static str },
    #[error(
        "the {label} file {path} is larger than {MAX_TOKEN_BYTES} bytes, so it cannot hold a single token"
    )]
    TooLarge { label: &'static str, path: PathBuf },
    #[error(
        "the {label} file {path} does not hold a JWT (it {why}); it should contain one compact JWT"
    )]
    NotJwt { label: &'static str, path: PathBuf, why: String },
    #[error("the {label} in {path} expired {ago} s ago (exp {exp}): {writer} is not refreshing it")]
    Expired { label: &'static str, path: PathBuf, writer: &'static str, exp: u64, ago: u64 },
}

impl TokenError {
    /// 503 with `retry-after`: a token being written or rotated is usually fixed in seconds.
    pub fn to_api_error(&self) -> ApiError {
        ApiError::unavailable(format!("sanctum-bridge cannot authenticate this request: {self}"))
    }
}

struct Cached {
    /// The trimmed file content this entry was built from.
    raw: Vec<u8>,
    value: HeaderValue,
    exp: u64,
}

/// One token file and how to turn it into a header value.
pub struct TokenFile {
    path: PathBuf,
    label: &'static str,
    writer: &'static str,
    flag: &'static str,
    prefix: &'static str,
    cache: Mutex<Option<Cached>>,
}

impl TokenFile {
    /// `label` names the token in messages ("JWT-SVID"), `writer` what writes the file,
    /// `flag` the option that moves it, `prefix` goes before the token ("Bearer ").
    pub fn new(
        path: impl Into<PathBuf>,
        label: &'static str,
        writer: &'static str,
        flag: &'static str,
        prefix: &'static str,
    ) -> Self {
        Self { path: path.into(), label, writer, flag, prefix, cache: Mutex::new(None) }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header value for the token on disk now, or why there is none.
    pub fn current(&self) -> Result<HeaderValue, TokenError> {
        let mut buf = [0u8; MAX_TOKEN_BYTES + 1];
        let len = self.read(&mut buf)?;
        let token = buf[..len].trim_ascii_end();
        if token.is_empty() {
            return Err(TokenError::Empty {
                label: self.label,
                path: self.path.clone(),
                writer: self.writer,
            });
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match &*cache {
            Some(c) if c.raw == token => c,
            _ => cache.insert(self.parse(token)?),
        };
        let now = now_unix();
        if entry.exp <= now {
            return Err(TokenError::Expired {
                label: self.label,
                path: self.path.clone(),
                writer: self.writer,
                exp: entry.exp,
                ago: now - entry.exp,
            });
        }
        Ok(entry.value.clone())
    }

    fn read(&self, buf: &mut [u8]) -> Result<usize, TokenError> {
        let mut file = std::fs::File::open(&self.path).map_err(|e| self.io_error(e))?;
        let mut len = 0;
        loop {
            match file.read(&mut buf[len..]) {
                Ok(0) => return Ok(len),
                Ok(n) => {
                    let asked = buf.len() - len;
                    len += n;
                    if len == buf.len() {
                        return Err(TokenError::TooLarge {
                            label: self.label,
                            path: self.path.clone(),
                        });
                    }
                    // A regular file reads short only at its end: skip the read that would
                    // return 0 (one syscall per file per request).
                    if n < asked {
                        return Ok(len);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn io_error(&self, e: std::io::Error) -> TokenError {
        if e.kind() == std::io::ErrorKind::NotFound {
            TokenError::Missing {
                label: self.label,
                path: self.path.clone(),
                writer: self.writer,
                flag: self.flag,
            }
        } else {
            TokenError::Unreadable {
                label: self.label,
                path: self.path.clone(),
                why: e.kind().to_string(),
            }
        }
    }

    fn parse(&self, token: &[u8]) -> Result<Cached, TokenError> {
        let not_jwt = |why: &str| TokenError::NotJwt {
            label: self.label,
            path: self.path.clone(),
            why: why.to_owned(),
        };
        let text = std::str::from_utf8(token).map_err(|_| not_jwt("is not UTF-8 text"))?;
        if text.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(not_jwt("contains spaces or control characters"));
        }
        let exp = unverified_expiry(text).map_err(|e| not_jwt(&e.to_string()))?;
        let mut header = Vec::with_capacity(self.prefix.len() + token.len());
        header.extend_from_slice(self.prefix.as_bytes());
        header.extend_from_slice(token);
        let value = HeaderValue::from_maybe_shared(Bytes::from(header))
            .map_err(|_| not_jwt("contains characters not allowed in an HTTP header"))?;
        Ok(Cached { raw: token.to_vec(), value, exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt(exp: u64) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"ES256"}"#), b64(&format!(r#"{{"exp":{exp}}}"#)))
    }

    fn file(dir: &Path) -> TokenFile {
        TokenFile::new(dir.join("jwt"), "JWT-SVID", "fetch-jwt", "--jwt-file", "Bearer ")
    }

    #[test]
    fn errors_name_the_file_and_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let t = file(dir.path());
        assert!(matches!(t.current(), Err(TokenError::Missing { .. })));
        std::fs::write(t.path(), " \n").unwrap();
        assert!(matches!(t.current(), Err(TokenError::Empty { .. })));
        std::fs::write(t.path(), "secret-not-a-jwt").unwrap();
        let e = t.current().unwrap_err();
        assert!(matches!(e, TokenError::NotJwt { .. }));
        assert!(!e.to_string().contains("secret"));
        let expired = jwt(now_unix() - 10);
        std::fs::write(t.path(), &expired).unwrap();
        let e = t.current().unwrap_err();
        assert!(matches!(e, TokenError::Expired { .. }), "{e}");
        assert!(e.to_string().contains(&t.path().display().to_string()));
        assert!(!e.to_string().contains(&expired));
        std::fs::write(t.path(), vec![b'a'; MAX_TOKEN_BYTES + 10]).unwrap();
        assert!(matches!(t.current(), Err(TokenError::TooLarge { .. })));
    }

    #[test]
    fn same_size_in_place_rewrite_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let t = file(dir.path());
        let (a, b) = (jwt(now_unix() + 1000), jwt(now_unix() + 2000));
        assert_eq!(a.len(), b.len());
        std::fs::write(t.path(), format!("{a}\n")).unwrap();
        assert_eq!(t.current().unwrap(), format!("Bearer {a}").as_str());
        std::fs::write(t.path(), &b).unwrap();
        assert_eq!(t.current().unwrap(), format!("Bearer {b}").as_str());
    }
}
