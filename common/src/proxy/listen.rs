//! Binding the data listeners: loopback-only TCP (the bridge) and owner-only Unix sockets
//! that replace a stale socket but nothing else (the forwarder).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};

/// Why a listener could not be opened; each message says what to change.
#[derive(Debug, Error)]
pub enum ListenError {
    #[error(
        "refusing to listen on {0}: it is not a loopback address, and anyone who can reach this \
         port gets requests signed with the pod's identity; use 127.0.0.1, or force it explicitly"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error(
        "refusing to replace {0}: it exists and is not a socket; remove it or choose another path"
    )]
    NotASocket(PathBuf),
    #[error("refusing to replace {0}: another process is listening on it; stop it first")]
    InUse(PathBuf),
    #[error("cannot create the Unix socket {path}: {source}")]
    Unix { path: PathBuf, source: io::Error },
}

/// Binds a TCP listener, refusing a non-loopback address unless `allow_non_loopback`.
pub async fn loopback_tcp(
    addr: SocketAddr,
    allow_non_loopback: bool,
) -> Result<TcpListener, ListenError> {
    if !addr.ip().is_loopback() && !allow_non_loopback {
        return Err(ListenError::NotLoopback(addr));
    }
    TcpListener::bind(addr).await.map_err(|source| ListenError::Tcp { addr, source })
}

/// Creates a Unix socket at `path` that only its owner may connect to (mode 0600).
///
/// A socket file nobody listens on (left by a crashed process) is replaced; a socket in
/// use, or anything that is not a socket, is refused. The socket is bound under a temporary
/// name, restricted, then renamed into place, so it is never reachable with wider rights.
pub fn owner_only_unix(path: &Path) -> Result<UnixListener, ListenError> {
    let unix_err = |source: io::Error| ListenError::Unix { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.to_owned()));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.to_owned()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(unix_err(e)),
    }
    let file_name =
        path.file_name().ok_or_else(|| unix_err(io::Error::other("the path has no file name")))?;
    let mut temp_name = file_name.to_owned();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(unix_err)?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(unix_err(e));
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_non_loopback() {
        let err = loopback_tcp("0.0.0.0:0".parse().unwrap(), false).await.unwrap_err();
        assert!(err.to_string().contains("not a loopback address"));
        assert!(loopback_tcp("127.0.0.1:0".parse().unwrap(), false).await.is_ok());
    }

    #[tokio::test]
    async fn unix_socket_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llm.sock");
        let first = owner_only_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(owner_only_unix(&path), Err(ListenError::InUse(_))));
        drop(first); // the file stays behind: stale
        let _second = owner_only_unix(&path).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(owner_only_unix(&file), Err(ListenError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
