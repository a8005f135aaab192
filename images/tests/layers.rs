//! Images with shared lower layers ([`Image::shared_layers`]): libraries follow the ELF files of
//! every layer into the top one, each tree is its own layer in order, and a blob two layers
//! share is stored once in the archive.

mod common;

use std::path::PathBuf;

use sanctum_images::elf;
use sanctum_images::image::Image;
use sanctum_images::layer::{Node, Source, Tree};
use sanctum_images::layout::write_archive;

const REF: &str = "example.test/sanctum/layers:1";

/// A tree holding `/bin/true` (an ELF needing the loader and libc) at `dest`.
fn elf_tree(dest: &str) -> Tree {
    let mut t = Tree::new();
    t.insert(dest, Node::File { source: Source::Host("/bin/true".into()), mode: 0o555 }).unwrap();
    t
}

fn text_tree(path: &str, text: &str) -> Tree {
    let mut t = Tree::new();
    t.insert(path, Node::File { source: Source::Bytes(text.as_bytes().to_vec()), mode: 0o644 })
        .unwrap();
    t
}

#[test]
fn libraries_of_a_shared_layers_elf_go_into_the_top_layer() {
    let mut image = Image {
        reference: REF.into(),
        shared_layers: vec![elf_tree("/usr/local/bin/claude")],
        tree: text_tree("/etc/motd", "hi\n"),
        ..Image::default()
    };
    image.add_shared_libraries().unwrap();
    let needed = elf::resolve(&[PathBuf::from("/bin/true")], &elf::library_dirs()).unwrap();
    assert!(needed.keys().any(|p| p.ends_with("libc.so.6")), "{needed:?}");
    for dest in needed.keys() {
        assert!(image.tree.get(dest).is_some(), "{} is in the top layer", dest.display());
        assert!(image.shared_layers[0].get(dest).is_none(), "the shared layer stays as it was");
    }
    assert_eq!(image.shared_layers[0], elf_tree("/usr/local/bin/claude"));
}

#[test]
fn a_library_a_shared_layer_already_holds_is_not_added_again() {
    let needed = elf::resolve(&[PathBuf::from("/bin/true")], &elf::library_dirs()).unwrap();
    let (libc_dest, libc_src) = needed.iter().find(|(d, _)| d.ends_with("libc.so.6")).unwrap();
    let mut shared = elf_tree("/usr/local/bin/claude");
    shared.insert_host_file(libc_src, libc_dest, 0).unwrap();
    let mut image = Image {
        reference: REF.into(),
        shared_layers: vec![shared],
        tree: text_tree("/etc/motd", "hi\n"),
        ..Image::default()
    };
    image.add_shared_libraries().unwrap();
    assert!(image.tree.get(libc_dest).is_none(), "libc is already below");
    for dest in needed.keys().filter(|d| *d != libc_dest) {
        assert!(image.tree.get(dest).is_some(), "{} is in the top layer", dest.display());
    }
}

#[test]
fn each_tree_is_a_layer_in_order_and_a_repeated_blob_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let image = Image {
        reference: REF.into(),
        // The same tree twice: the same bytes, so one blob listed twice in the manifest.
        shared_layers: vec![text_tree("/opt/a", "a\n"), text_tree("/opt/b", "b\n")]
            .into_iter()
            .chain(std::iter::once(text_tree("/opt/a", "a\n")))
            .collect(),
        tree: text_tree("/etc/top", "top\n"),
        epoch: 1_700_000_000,
        ..Image::default()
    };
    let out = dir.path().join("x.tar");
    let written = write_archive(&image, &out).unwrap();
    let checked = common::check(&out, REF); // also asserts every blob is in the archive once
    let paths: Vec<Vec<&str>> = checked.layers.iter().map(common::Layer::paths).collect();
    assert_eq!(
        paths,
        [vec!["opt", "opt/a"], vec!["opt", "opt/b"], vec!["opt", "opt/a"], vec!["etc", "etc/top"]]
    );
    assert_eq!(checked.layers[0].digest, checked.layers[2].digest);
    assert_ne!(checked.layers[0].digest, checked.layers[1].digest);
    assert_eq!(
        written.layer_size,
        checked.layers.iter().map(|l| l.bytes.len() as u64).sum::<u64>(),
        "layer_size sums the layers"
    );
    assert_eq!(written.manifest_digest, checked.manifest_digest);
    let history = checked.config.history().as_ref().unwrap();
    let comments: Vec<_> = history.iter().map(|h| h.comment().clone().unwrap()).collect();
    assert_eq!(
        comments,
        ["shared layer 1 of 3", "shared layer 2 of 3", "shared layer 3 of 3", "image layer"]
    );
    assert_eq!(checked.file("opt/b").unwrap(), b"b\n");

    // Same inputs, same bytes; no scratch file is left beside the archive.
    let again = dir.path().join("y.tar");
    write_archive(&image, &again).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap());
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["x.tar", "y.tar"]);
}

/// The same shared tree with the same epoch is the same first layer in two different images.
#[test]
fn a_shared_tree_is_the_same_blob_in_different_images() {
    let dir = tempfile::tempdir().unwrap();
    let shared = elf_tree("/usr/local/bin/claude");
    let write = |name: &str, top: Tree, epoch: u64| {
        let image = Image {
            reference: REF.into(),
            shared_layers: vec![shared.clone()],
            tree: top,
            epoch,
            ..Image::default()
        };
        let out = dir.path().join(name);
        write_archive(&image, &out).unwrap();
        common::check(&out, REF)
    };
    let a = write("a.tar", text_tree("/etc/a", "a\n"), 7);
    let b = write("b.tar", text_tree("/etc/b", "b\n"), 7);
    assert_eq!(a.layers[0].digest, b.layers[0].digest);
    assert_ne!(a.layers[1].digest, b.layers[1].digest);
    assert_ne!(a.manifest_digest, b.manifest_digest);
    let later = write("c.tar", text_tree("/etc/a", "a\n"), 8);
    assert_ne!(a.layers[0].digest, later.layers[0].digest, "the epoch is in the layer's bytes");
}
