//! `sanctum-images`: builds OCI image archives on this machine (no daemon, no registry).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sanctum_images::image::{Image, parse_file_arg, source_date_epoch};
use sanctum_images::layer::Tree;
use sanctum_images::layout::write_archive;

#[derive(Parser)]
#[command(
    version,
    about = "Builds OCI image-layout archives that `ctr -n k8s.io images import` tags by their reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Packs host files into a one-layer image archive.
    Pack(PackArgs),
}

#[derive(clap::Args)]
struct PackArgs {
    /// The reference containerd tags the image as (e.g. `registry.k8s.io/pause:3.10`).
    #[arg(long = "ref")]
    reference: String,
    /// The archive to write (a tar in the OCI image layout).
    #[arg(long)]
    out: PathBuf,
    /// The entrypoint, an absolute path in the image.
    #[arg(long)]
    entrypoint: Option<String>,
    /// A default argument after the entrypoint (repeatable): the image's `Cmd`, which a pod's
    /// `args` replaces.
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// `SRC=DST`: copy host file SRC to absolute image path DST, keeping its mode (repeatable).
    #[arg(long = "file", required = true)]
    files: Vec<String>,
    /// The user to run as, e.g. `65532` or `65532:65532`.
    #[arg(long)]
    user: Option<String>,
    /// `KEY=VALUE` for the image's environment (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// `KEY=VALUE` manifest annotation (repeatable).
    #[arg(long = "annotation")]
    annotations: Vec<String>,
    /// Also add the loader and the shared libraries every ELF file needs, from this host.
    #[arg(long)]
    with_libs: bool,
}

fn pack(args: PackArgs) -> Result<()> {
    let mut image = Image {
        reference: args.reference,
        tree: Tree::new(),
        user: args.user,
        env: args.env,
        epoch: source_date_epoch()?,
        ..Image::default()
    };
    for file in &args.files {
        let (src, dst) = parse_file_arg(file)?;
        // The entrypoint must be executable whatever the host mode.
        let extra = if args.entrypoint.as_deref() == Some(dst.to_string_lossy().as_ref()) {
            0o555
        } else {
            0
        };
        image.tree.insert_host_file(&src, &dst, extra)?;
    }
    for kv in &args.annotations {
        let (k, v) =
            kv.split_once('=').with_context(|| format!("--annotation {kv}: expected KEY=VALUE"))?;
        image.annotations.insert(k.to_owned(), v.to_owned());
    }
    if let Some(ep) = args.entrypoint {
        anyhow::ensure!(
            image.tree.get(std::path::Path::new(&ep)).is_some(),
            "--entrypoint {ep} is not among the --file destinations; add --file SRC={ep}"
        );
        image.entrypoint = vec![ep];
    }
    image.cmd = args.args;
    if args.with_libs {
        image.add_shared_libraries()?;
    }
    let written = write_archive(&image, &args.out)
        .with_context(|| format!("write the image archive {}", args.out.display()))?;
    println!(
        "{}\t{}\t{} bytes\t{}",
        image.reference,
        written.manifest_digest,
        written.archive_size,
        args.out.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Pack(args) => pack(args),
    }
}
