//! Writes an image as an OCI image-layout archive (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>` in one tar), the format `ctr images import` reads.
//!
//! One layer per tree of the image, bottom first ([`Image::layers`]), each stored uncompressed
//! (`application/vnd.oci.image.layer.v1.tar`, so its diff_id is its digest): the archive goes
//! straight from this disk into containerd's content store, so compressing would only cost
//! time (the agent image carries a 400 MB binary). A blob two layers share is stored once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    OciLayoutBuilder, PlatformBuilder, RootFsBuilder, Sha256Digest,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result, io};
use crate::image::Image;

/// The annotation containerd's `ctr images import` names the image by.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the reference (tag) of a manifest in `index.json`.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What was written: the digests containerd will show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:<hex>` of the manifest: the image's digest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config: the image id.
    pub config_digest: String,
    /// Bytes of the archive file.
    pub archive_size: u64,
    /// Bytes of the (uncompressed) layers, summed over all of them (a layer the image holds
    /// twice counts twice).
    pub layer_size: u64,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sha256_digest(hex: &str) -> Digest {
    // A hex string made by sha2 is always a valid sha256 digest.
    Sha256Digest::from_str(hex)
        .map(Digest::from)
        .unwrap_or_else(|e| unreachable!("sha256 hex from sha2 is valid: {e}"))
}

/// JSON with object keys sorted at every level, no whitespace: oci-spec keeps annotations in
/// `HashMap`s, whose order changes from run to run, and the digest must not.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    fn sort(v: Value) -> Value {
        match v {
            Value::Object(map) => {
                let sorted: BTreeMap<String, Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// A blob kept in memory (config, manifest) with its descriptor.
fn json_blob<T: Serialize>(
    media_type: MediaType,
    value: &T,
    blobs: &mut BTreeMap<String, Vec<u8>>,
) -> Result<Descriptor> {
    let bytes = canonical_json(value)?;
    let hex = format!("{:x}", Sha256::digest(&bytes));
    let desc = DescriptorBuilder::default()
        .media_type(media_type)
        .digest(sha256_digest(&hex))
        .size(bytes.len() as u64)
        .build()
        .map_err(|source| Error::Spec { what: "descriptor", source })?;
    blobs.insert(hex, bytes);
    Ok(desc)
}

fn spec_err(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> Error {
    move |source| Error::Spec { what, source }
}

/// The OCI names of this host's architecture (images are for the machine that builds them).
fn platform_arch() -> oci_spec::image::Arch {
    match std::env::consts::ARCH {
        "aarch64" => oci_spec::image::Arch::ARM64,
        _ => oci_spec::image::Arch::Amd64,
    }
}

/// One layer written to its scratch file (removed when dropped, also when writing fails):
/// `sha256` hex of its bytes and their count.
struct Layer {
    hex: String,
    size: u64,
    file: tempfile::NamedTempFile,
}

/// A blob of the archive: a JSON document in memory or a layer in its scratch file.
enum Blob<'a> {
    Bytes(&'a [u8]),
    Layer(&'a Layer),
}

/// One `history` entry per layer, bottom first (what `docker history` and `crane config`
/// show), so the shared ones say what they are.
fn history(image: &Image, created: &str) -> Result<Vec<oci_spec::image::History>> {
    let by = format!("sanctum-images {}", env!("CARGO_PKG_VERSION"));
    let shared = image.shared_layers.len();
    (0..=shared)
        .map(|i| {
            let comment = if i < shared {
                format!("shared layer {} of {shared}", i + 1)
            } else {
                "image layer".to_owned()
            };
            HistoryBuilder::default()
                .created(created.to_owned())
                .created_by(by.clone())
                .comment(comment)
                .build()
                .map_err(spec_err("history"))
        })
        .collect()
}

/// Writes `image` as an OCI image-layout archive at `out` (through `out.partial`, renamed at
/// the end so a reader never sees half an archive).
///
/// # Errors
/// [`Error::Io`] when a source cannot be read or `out`'s directory cannot be written;
/// [`Error::Spec`] when an OCI document cannot be built.
pub fn write_archive(image: &Image, out: &Path) -> Result<Written> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create the directory", dir))?;

    // 1. The layers, bottom first, each streamed to its own scratch file while hashing: a
    //    blob's size must be known before it goes into the archive.
    let mut layers: Vec<Layer> = Vec::new();
    for tree in image.layers() {
        let file =
            tempfile::NamedTempFile::new_in(dir).map_err(io("create a scratch file in", dir))?;
        let hashing =
            Hashing { inner: BufWriter::new(file.as_file()), hash: Sha256::new(), len: 0 };
        let mut hashing = tree.write_tar(image.epoch, hashing)?;
        hashing.flush().map_err(io("write", file.path()))?;
        let hex = format!("{:x}", hashing.hash.finalize_reset());
        let size = hashing.len;
        drop(hashing);
        layers.push(Layer { hex, size, file });
    }
    let layer_size = layers.iter().map(|l| l.size).sum();

    let created = image.created();
    let mut config = ConfigBuilder::default();
    if let Some(user) = &image.user {
        config = config.user(user.clone());
    }
    if !image.env.is_empty() {
        config = config.env(image.env.clone());
    }
    if !image.entrypoint.is_empty() {
        config = config.entrypoint(image.entrypoint.clone());
    }
    if !image.cmd.is_empty() {
        config = config.cmd(image.cmd.clone());
    }
    if let Some(wd) = &image.working_dir {
        config = config.working_dir(wd.clone());
    }
    if !image.labels.is_empty() {
        config = config
            .labels(image.labels.clone().into_iter().collect::<std::collections::HashMap<_, _>>());
    }
    let config = config.build().map_err(spec_err("config"))?;
    let image_config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(platform_arch())
        .os(oci_spec::image::Os::Linux)
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(layers.iter().map(|l| format!("sha256:{}", l.hex)).collect::<Vec<_>>())
                .build()
                .map_err(spec_err("rootfs"))?,
        )
        .history(history(image, &created)?)
        .build()
        .map_err(spec_err("config"))?;

    let mut blobs = BTreeMap::new();
    let config_desc = json_blob(MediaType::ImageConfig, &image_config, &mut blobs)?;
    let layer_descs = layers
        .iter()
        .map(|l| {
            DescriptorBuilder::default()
                .media_type(MediaType::ImageLayer)
                .digest(sha256_digest(&l.hex))
                .size(l.size)
                .build()
                .map_err(spec_err("layer descriptor"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc.clone())
        .layers(layer_descs);
    if !image.annotations.is_empty() {
        manifest = manifest.annotations(
            image.annotations.clone().into_iter().collect::<std::collections::HashMap<_, _>>(),
        );
    }
    let manifest = manifest.build().map_err(spec_err("manifest"))?;
    let mut manifest_desc = json_blob(MediaType::ImageManifest, &manifest, &mut blobs)?;
    manifest_desc.set_annotations(Some(
        [
            (OCI_REF_NAME.to_owned(), image.reference.clone()),
            (CONTAINERD_NAME.to_owned(), image.reference.clone()),
        ]
        .into_iter()
        .collect(),
    ));
    manifest_desc.set_platform(Some(
        PlatformBuilder::default()
            .architecture(platform_arch())
            .os(oci_spec::image::Os::Linux)
            .build()
            .map_err(spec_err("platform"))?,
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc.clone()])
        .build()
        .map_err(spec_err("index"))?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(spec_err("oci-layout"))?;

    // 2. The archive: directories first, then blobs by digest, then the two top-level files;
    //    one fixed mtime, root owner.
    let partial = out.with_extension("tar.partial");
    let file = File::create(&partial).map_err(io("create", &partial))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let wrap = |e| Error::Io { action: "write", path: partial.clone(), source: e };
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(image.epoch);
        h.set_size(size);
        h
    };
    for d in ["blobs", "blobs/sha256"] {
        tar.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), d, io::empty())
            .map_err(wrap)?;
    }
    // Blobs by digest: a layer that two of the image's trees share is stored once.
    let mut all: BTreeMap<&str, Blob> =
        blobs.iter().map(|(k, v)| (k.as_str(), Blob::Bytes(v.as_slice()))).collect();
    for l in &layers {
        all.entry(l.hex.as_str()).or_insert(Blob::Layer(l));
    }
    for (hex, blob) in all {
        let name = format!("blobs/sha256/{hex}");
        match blob {
            Blob::Bytes(b) => tar
                .append_data(&mut header(tar::EntryType::Regular, 0o644, b.len() as u64), &name, b)
                .map_err(wrap)?,
            Blob::Layer(l) => {
                let layer = l.file.reopen().map_err(io("open", l.file.path()))?;
                tar.append_data(
                    &mut header(tar::EntryType::Regular, 0o644, l.size),
                    &name,
                    io::Read::take(layer, l.size),
                )
                .map_err(wrap)?;
            }
        }
    }
    let index_bytes = canonical_json(&index)?;
    let layout_bytes = canonical_json(&layout)?;
    for (name, bytes) in [("index.json", &index_bytes), ("oci-layout", &layout_bytes)] {
        tar.append_data(
            &mut header(tar::EntryType::Regular, 0o644, bytes.len() as u64),
            name,
            bytes.as_slice(),
        )
        .map_err(wrap)?;
    }
    let mut buf = tar.into_inner().map_err(wrap)?;
    buf.flush().map_err(wrap)?;
    drop(buf);
    drop(layers);
    std::fs::rename(&partial, out).map_err(io("rename into place", PathBuf::from(out)))?;
    let archive_size = std::fs::metadata(out).map_err(io("stat", out))?.len();
    Ok(Written {
        manifest_digest: manifest_desc.digest().to_string(),
        config_digest: config_desc.digest().to_string(),
        archive_size,
        layer_size,
    })
}
