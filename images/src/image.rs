//! An image definition: its layers' trees plus the runtime config and annotations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::elf;
use crate::error::{Error, Result};
use crate::layer::{Node, Source, Tree};

/// Everything that goes into one image. Same `Image` → same bytes → same digest.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// The reference containerd tags it as, e.g. `ghcr.io/sanctum-dev/sanctum-bridge:0.1.0`.
    pub reference: String,
    /// Lower layers shared with other images, bottom first, each written as its own layer
    /// under [`Image::tree`]. Why: containerd keys blobs by digest and snapshots by chain id
    /// (the digests of a layer and of every layer under it, OCI image-spec `config.md`), so a
    /// tree written with the same content and the same [`Image::epoch`] is the same blob in
    /// every image that carries it, stored and unpacked once, and pulled once; it must be at
    /// the bottom, since a layer's chain id covers everything beneath it. The 402 MB native
    /// Claude Code CLI of the agent and scanner images is the case ([`crate::builder`]).
    pub shared_layers: Vec<Tree>,
    /// The image's own (top) layer: its binary, libraries, users, CA bundle.
    pub tree: Tree,
    /// `Entrypoint` (exec form; there is no shell).
    pub entrypoint: Vec<String>,
    /// `Cmd`: default arguments after the entrypoint.
    pub cmd: Vec<String>,
    /// `User`, e.g. `65532:65532`; `None` runs as root.
    pub user: Option<String>,
    /// `Env`, each `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// Config labels.
    pub labels: BTreeMap<String, String>,
    /// Manifest annotations (`org.opencontainers.image.*`).
    pub annotations: BTreeMap<String, String>,
    /// Seconds since the epoch used for every timestamp (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
}

impl Image {
    /// `created` of the config: `epoch` as RFC 3339 UTC (`1970-01-01T00:00:00Z` for 0).
    pub fn created(&self) -> String {
        rfc3339(self.epoch)
    }

    /// The layers' trees, bottom first: [`Image::shared_layers`], then [`Image::tree`].
    pub fn layers(&self) -> impl Iterator<Item = &Tree> {
        self.shared_layers.iter().chain(std::iter::once(&self.tree))
    }

    /// Adds to the top layer the loader and the shared libraries every ELF regular file of any
    /// layer needs, at the paths this host's loader would open them (distroless `cc` by
    /// construction). A library a shared layer already holds from the same host file is not
    /// added again.
    ///
    /// # Errors
    /// As [`elf::resolve`].
    pub fn add_shared_libraries(&mut self) -> Result<()> {
        let mut binaries = Vec::new();
        for tree in self.layers() {
            for dest in tree.files() {
                if let Some(Source::Host(src)) = tree.source_of(&dest)
                    && elf::is_elf(&src)?
                {
                    binaries.push(src);
                }
            }
        }
        for (dest, src) in elf::resolve(&binaries, &elf::library_dirs())? {
            let below = Some(Source::Host(src.clone()));
            if self.shared_layers.iter().any(|t| t.source_of(&dest) == below) {
                continue;
            }
            self.tree.insert_host_file(&src, &dest, 0)?;
        }
        Ok(())
    }

    /// Adds `/etc/passwd` and `/etc/group` with `root` and `nonroot` (uid/gid 65532, home
    /// `/home/nonroot`), `/home/nonroot` owned by it, and `/tmp` (`1777`), as distroless does.
    ///
    /// # Errors
    /// Never in practice (the paths are fixed and valid).
    pub fn add_nonroot_user(&mut self) -> Result<()> {
        let file = |text: &str| Node::File {
            source: Source::Bytes(text.as_bytes().to_vec()),
            mode: 0o644,
        };
        self.tree.insert(
            "/etc/passwd",
            file("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"),
        )?;
        self.tree.insert("/etc/group", file("root:x:0:\nnonroot:x:65532:\n"))?;
        self.tree.insert("/home/nonroot", Node::Dir { mode: 0o700, uid: 65532, gid: 65532 })?;
        self.tree.insert("/tmp", Node::Dir { mode: 0o1777, uid: 0, gid: 0 })
    }

    /// Adds this host's CA bundle at `/etc/ssl/certs/ca-certificates.crt` (where rustls-native-certs
    /// and OpenSSL look), for binaries that call TLS endpoints outside the cluster.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the host has no bundle (install Debian's `ca-certificates`).
    pub fn add_ca_certificates(&mut self) -> Result<()> {
        let bundle = Path::new(CA_BUNDLE);
        if !bundle.is_file() {
            return Err(Error::Invalid(format!(
                "{CA_BUNDLE} is missing on this host; install it with `apt-get install ca-certificates`"
            )));
        }
        self.tree.insert_host_file(bundle, CA_BUNDLE, 0)
    }
}

/// Where Debian (and distroless) keep the CA bundle.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `SOURCE_DATE_EPOCH` from the environment, 0 when unset.
///
/// # Errors
/// [`Error::Invalid`] when it is set but not a whole number of seconds.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(s) if s.trim().is_empty() => Ok(0),
        Ok(s) => s.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "SOURCE_DATE_EPOCH={s} is not a number of seconds since 1970 (try `git log -1 --format=%ct`)"
            ))
        }),
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(epoch: u64) -> String {
    let secs = i64::try_from(epoch).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parses `SRC=DST` (a host path, an absolute image path).
///
/// # Errors
/// [`Error::Invalid`] when there is no `=` or DST is not absolute.
pub fn parse_file_arg(arg: &str) -> Result<(PathBuf, PathBuf)> {
    let (src, dst) = arg
        .split_once('=')
        .ok_or_else(|| Error::Invalid(format!("--file {arg}: expected SRC=DST")))?;
    if !dst.starts_with('/') {
        return Err(Error::Invalid(format!(
            "--file {arg}: the destination must be an absolute path in the image"
        )));
    }
    Ok((PathBuf::from(src), PathBuf::from(dst)))
}
