//! Builds Sanctum's images ([`crate::catalog`]) from the workspace's release binaries.
//!
//! Every image: the catalog's files, the loader and shared libraries they need, `/etc/passwd`
//! and `/etc/group` with `nonroot` (65532), the CA bundle when the binary calls out over TLS,
//! user `65532:65532`, and the `org.opencontainers.image.*` annotations. The native Claude Code
//! CLI goes alone into a shared bottom layer ([`Image::shared_layers`]); everything else is in
//! the image's own top layer. Nothing in an image is
//! written at run time outside `HOME`/`TMPDIR`: the root filesystem is read-only in the pod.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest as _, Sha256};

use crate::catalog::{self, ImageDef, Input};
use crate::error::{Error, Result, io};
use crate::image::Image;
use crate::layer::{Node, Source, Tree};
use crate::layout::{Written, write_archive};

/// Where the inputs are and what to stamp on the images.
#[derive(Debug, Clone)]
pub struct Context {
    /// The workspace root (holds `tests/clients/`).
    pub root: PathBuf,
    /// Where the release binaries are (`<root>/target/release`).
    pub release_dir: PathBuf,
    /// The version in references and annotations (the workspace version).
    pub version: String,
    /// The git commit the binaries come from (`org.opencontainers.image.revision`).
    pub revision: String,
    /// Seconds since the epoch for every timestamp and `org.opencontainers.image.created`.
    pub epoch: u64,
}

/// One built (or reused) image.
#[derive(Debug, Clone)]
pub struct Built {
    /// The reference containerd tags it as.
    pub reference: String,
    /// The archive.
    pub path: PathBuf,
    /// Digests and sizes.
    pub written: Written,
    /// True when the archive was already up to date and left as it was.
    pub reused: bool,
}

/// The host file behind `input`, or [`Error::MissingInput`] naming the command that makes it.
///
/// # Errors
/// [`Error::MissingInput`] when the file does not exist.
pub fn input_path(def: &ImageDef, input: Input, ctx: &Context) -> Result<PathBuf> {
    let (path, hint) = match input {
        Input::Release { package, bin } => (
            ctx.release_dir.join(bin),
            format!(
                "build it with `cargo build --release -p {package} --bin {bin}` (scripts/images does)"
            ),
        ),
        Input::NativeClaude => (
            ctx.root.join(catalog::NATIVE_CLAUDE),
            format!(
                "install the native Claude Code {} with tests/clients/install.sh",
                catalog::NATIVE_CLAUDE_VERSION
            ),
        ),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingInput { image: def.name.to_owned(), path, hint })
    }
}

/// The image `def` describes, assembled from this machine's files (nothing written yet).
///
/// # Errors
/// [`Error::MissingInput`] when a binary is not built; as [`Image::add_shared_libraries`].
pub fn assemble(def: &ImageDef, ctx: &Context) -> Result<Image> {
    let mut tree = Tree::new();
    let mut shared_layers = Vec::new();
    for (input, dest) in def.files {
        let src = input_path(def, *input, ctx)?;
        match input {
            // The native CLI (402 MB) is the same file in the agent and scanner images: alone
            // in a bottom layer, with a mode that does not depend on how npm unpacked it, it is
            // the same blob in both, so containerd stores and unpacks it once.
            Input::NativeClaude => {
                let mut shared = Tree::new();
                shared.insert(dest, Node::File { source: Source::Host(src), mode: 0o555 })?;
                shared_layers.push(shared);
            }
            // Executables whatever the host mode.
            Input::Release { .. } => tree.insert_host_file(&src, dest, 0o555)?,
        }
    }
    let reference = def.reference(&ctx.version);
    let annotations: BTreeMap<String, String> = [
        ("org.opencontainers.image.title", def.name.to_owned()),
        ("org.opencontainers.image.description", def.description.to_owned()),
        ("org.opencontainers.image.source", env!("CARGO_PKG_REPOSITORY").to_owned()),
        ("org.opencontainers.image.version", ctx.version.clone()),
        ("org.opencontainers.image.revision", ctx.revision.clone()),
        ("org.opencontainers.image.created", crate::image::rfc3339(ctx.epoch)),
        ("org.opencontainers.image.licenses", env!("CARGO_PKG_LICENSE").to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut image = Image {
        reference,
        shared_layers,
        tree,
        entrypoint: def.entrypoint.iter().map(|s| (*s).to_owned()).collect(),
        user: Some(catalog::USER.to_owned()),
        env: std::iter::once(catalog::PATH)
            .chain(def.env.iter().copied())
            .map(str::to_owned)
            .collect(),
        labels: annotations.clone(),
        annotations,
        epoch: ctx.epoch,
        ..Image::default()
    };
    image.add_shared_libraries()?;
    image.add_nonroot_user()?;
    if def.ca_certificates {
        image.add_ca_certificates()?;
        image.env.push(format!("SSL_CERT_FILE={}", crate::image::CA_BUNDLE));
    }
    Ok(image)
}

/// A fingerprint of everything that decides the archive's bytes: the definition as assembled
/// (paths, modes, generated files, config, annotations) and the size and mtime of every host
/// file. Equal fingerprints let `build` keep an archive instead of re-hashing 400 MB.
fn fingerprint(image: &Image) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(env!("CARGO_PKG_VERSION"));
    hash.update(format!("{image:?}"));
    for (_, node) in image.layers().flat_map(Tree::nodes) {
        if let Node::File { source: Source::Host(src), .. } = node {
            let meta = std::fs::metadata(src).map_err(io("stat", src))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            hash.update(format!("{}:{}:{mtime};", src.display(), meta.len()));
        }
    }
    Ok(format!("{:x}", hash.finalize()))
}

fn stamp_path(archive: &Path) -> PathBuf {
    archive.with_extension("tar.stamp")
}

/// The stamp's record of an earlier build, when it matches `key` and the archive is intact.
fn reusable(archive: &Path, key: &str) -> Option<Written> {
    let text = std::fs::read_to_string(stamp_path(archive)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let written = Written {
        manifest_digest: lines.next()?.to_owned(),
        config_digest: lines.next()?.to_owned(),
        archive_size: lines.next()?.parse().ok()?,
        layer_size: lines.next()?.parse().ok()?,
    };
    let size = std::fs::metadata(archive).ok()?.len();
    (size == written.archive_size).then_some(written)
}

/// Builds `def` into `<out_dir>/<name>.tar`, or keeps the archive there when nothing that goes
/// into it changed.
///
/// # Errors
/// As [`assemble`] and [`write_archive`].
pub fn build(def: &ImageDef, ctx: &Context, out_dir: &Path) -> Result<Built> {
    let image = assemble(def, ctx)?;
    let path = out_dir.join(format!("{}.tar", def.name));
    let key = fingerprint(&image)?;
    if let Some(written) = reusable(&path, &key) {
        return Ok(Built { reference: image.reference, path, written, reused: true });
    }
    let written = write_archive(&image, &path)?;
    let stamp = stamp_path(&path);
    let mut f = std::fs::File::create(&stamp).map_err(io("create", &stamp))?;
    writeln!(
        f,
        "{key}\n{}\n{}\n{}\n{}",
        written.manifest_digest, written.config_digest, written.archive_size, written.layer_size
    )
    .map_err(io("write", &stamp))?;
    Ok(Built { reference: image.reference, path, written, reused: false })
}
