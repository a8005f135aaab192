//! Reads an OCI image-layout archive back and checks it against the image-layout spec's rules.
#![allow(dead_code)]

pub mod containerd;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest, Sha256};

/// One entry of the image's layer.
#[derive(Debug, Clone)]
pub struct LayerEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
}

/// One layer of the image, as the manifest lists it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `sha256:<hex>`.
    pub digest: String,
    pub entries: Vec<LayerEntry>,
    pub bytes: Vec<u8>,
}

impl Layer {
    pub fn paths(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.path.as_str()).collect()
    }
}

/// An archive read back and checked.
pub struct Checked {
    pub index: ImageIndex,
    pub manifest: ImageManifest,
    pub manifest_digest: String,
    pub config: ImageConfiguration,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// The entries of all layers, bottom layer's first (a directory two layers hold is listed
    /// twice): what the image's root filesystem holds.
    pub layer: Vec<LayerEntry>,
}

impl Checked {
    /// The bytes of the regular file at relative path `path` in the topmost layer holding it.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.layers.iter().rev().find_map(|l| {
            read_entries(&l.bytes)
                .into_iter()
                .find(|(h, _)| h.entry_type() == tar::EntryType::Regular && path_of(h) == path)
                .map(|(_, data)| data)
        })
    }
}

fn read_entries(bytes: &[u8]) -> Vec<(tar::Header, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        out.push((header, data));
    }
    out
}

fn path_of(h: &tar::Header) -> String {
    h.path().expect("a path").to_string_lossy().trim_end_matches('/').to_owned()
}

/// Reads `archive` and asserts the image-layout rules: `oci-layout` version, `index.json`
/// with one manifest named `reference` (both annotations), every blob is in the archive once,
/// its name is the sha256 of its bytes and its size is the descriptor's, the config's diff_ids
/// are the layers' digests in order with one history entry each, and every layer is sorted with
/// every parent before its children.
pub fn check(archive: &Path, reference: &str) -> Checked {
    let bytes = std::fs::read(archive).expect("the archive");
    let mut files = BTreeMap::new();
    for (h, data) in read_entries(&bytes) {
        assert_eq!(h.uid().unwrap(), 0, "archive entries are owned by root");
        if h.entry_type() == tar::EntryType::Regular {
            let path = path_of(&h);
            assert!(!files.contains_key(&path), "{path} is in the archive once");
            files.insert(path, data);
        }
    }
    let layout: serde_json::Value = serde_json::from_slice(&files["oci-layout"]).unwrap();
    assert_eq!(layout, serde_json::json!({"imageLayoutVersion": "1.0.0"}));

    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(format!("{:x}", Sha256::digest(data)), hex, "blob {name} is its sha256");
        }
    }
    let blob = |digest: &str, size: u64| -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let data = files
            .get(&format!("blobs/sha256/{hex}"))
            .unwrap_or_else(|| panic!("blob {digest} is in the archive"))
            .clone();
        assert_eq!(data.len() as u64, size, "size of {digest}");
        data
    };

    let index: ImageIndex = serde_json::from_slice(&files["index.json"]).unwrap();
    assert_eq!(index.schema_version(), 2);
    assert_eq!(index.manifests().len(), 1);
    let desc = &index.manifests()[0];
    assert_eq!(desc.media_type(), &MediaType::ImageManifest);
    let ann = desc.annotations().as_ref().expect("manifest annotations");
    assert_eq!(ann["org.opencontainers.image.ref.name"], reference);
    assert_eq!(ann["io.containerd.image.name"], reference);
    assert!(desc.platform().is_some(), "the manifest descriptor names its platform");

    let manifest: ImageManifest =
        serde_json::from_slice(&blob(desc.digest().as_ref(), desc.size())).unwrap();
    assert_eq!(manifest.schema_version(), 2);
    assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
    let config: ImageConfiguration = serde_json::from_slice(&blob(
        manifest.config().digest().as_ref(),
        manifest.config().size(),
    ))
    .unwrap();
    assert!(!manifest.layers().is_empty(), "the image has a layer");
    let layers: Vec<Layer> = manifest
        .layers()
        .iter()
        .map(|d| {
            assert_eq!(d.media_type(), &MediaType::ImageLayer);
            let bytes = blob(d.digest().as_ref(), d.size());
            Layer { digest: d.digest().to_string(), entries: check_layer(&bytes), bytes }
        })
        .collect();
    assert_eq!(
        config.rootfs().diff_ids(),
        &layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
        "an uncompressed layer's diff_id is its digest, in the manifest's order"
    );
    assert_eq!(
        config.history().as_ref().map(Vec::len),
        Some(layers.len()),
        "one history entry per layer"
    );
    let layer = layers.iter().flat_map(|l| l.entries.iter().cloned()).collect();
    let manifest_digest = desc.digest().to_string();
    Checked { index, manifest_digest, manifest, config, layers, layer }
}

/// A layer's entries, asserting they are relative, sorted, and every parent comes first.
fn check_layer(bytes: &[u8]) -> Vec<LayerEntry> {
    let mut layer = Vec::new();
    let mut seen_dirs = std::collections::BTreeSet::new();
    for (h, _) in read_entries(bytes) {
        let path = path_of(&h);
        assert!(!path.starts_with('/') && !path.contains(".."), "{path} is relative");
        if let Some(parent) = Path::new(&path).parent().filter(|p| !p.as_os_str().is_empty()) {
            assert!(
                seen_dirs.contains(parent.to_str().unwrap()),
                "{path}'s parent comes before it"
            );
        }
        if h.entry_type() == tar::EntryType::Directory {
            seen_dirs.insert(path.clone());
        }
        layer.push(LayerEntry {
            path,
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            size: h.size().unwrap(),
        });
    }
    let paths: Vec<_> = layer.iter().map(|e| e.path.clone()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "layer entries are sorted");
    layer
}

/// A containerd and ctr to import into, when this machine has them: `SANCTUM_CONTAINERD_BIN`
/// (a directory holding `containerd` and `ctr`), else the first of the known build places.
pub fn containerd_bin() -> Option<std::path::PathBuf> {
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("SANCTUM_CONTAINERD_BIN") {
        candidates.push(dir.into());
    }
    if let Ok(home) = std::env::var("HOME") {
        let cache = Path::new(&home).join(".cache/sanctum");
        if let Ok(read) = std::fs::read_dir(&cache) {
            for d in read.flatten() {
                candidates.push(d.path().join("bin"));
                candidates.push(d.path());
            }
        }
    }
    candidates.push("/tmp/prebuild".into());
    candidates.into_iter().find(|d| d.join("containerd").is_file() && d.join("ctr").is_file())
}
