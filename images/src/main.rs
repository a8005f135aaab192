//! `sanctum-images`: builds OCI image archives on this machine (no daemon, no registry).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use sanctum_images::builder::{self, Context};
use sanctum_images::catalog::{self, ImageDef};
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
    /// Builds Sanctum's images from the release binaries, one `<name>.tar` each.
    Build(BuildArgs),
    /// Lists Sanctum's images (`NAME DESCRIPTION` per line).
    List {
        /// Print the release binaries to build instead: `PACKAGE BIN required|optional` per line.
        /// An image asked for by name is `required`.
        #[arg(long)]
        binaries: bool,
        /// Only these images (default: all).
        names: Vec<String>,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Where the archives go.
    #[arg(long, default_value = "target/images")]
    out: PathBuf,
    /// The workspace root (where `tests/clients/` is).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where the release binaries are; default `<root>/target/release`.
    #[arg(long)]
    release_dir: Option<PathBuf>,
    /// The images to build (default: all; an image whose binary is not built is then skipped
    /// with a message, e.g. the scanner).
    names: Vec<String>,
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

/// The images called `names`, or all of them when there are none.
fn select(names: &[String]) -> Result<Vec<&'static ImageDef>> {
    if names.is_empty() {
        return Ok(catalog::IMAGES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            catalog::find(n).with_context(|| {
                let all: Vec<_> = catalog::IMAGES.iter().map(|d| d.name).collect();
                format!("no image called {n}; the images are {}", all.join(", "))
            })
        })
        .collect()
}

/// `git` output in `root`, trimmed; `None` when git or the repository is not there.
fn git(root: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn build(args: BuildArgs) -> Result<()> {
    let defs = select(&args.names)?;
    // Reproducible by default: the commit's time, unless SOURCE_DATE_EPOCH says otherwise.
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(_) => source_date_epoch()?,
        Err(_) => git(&args.root, &["log", "-1", "--format=%ct"])
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    };
    let ctx = Context {
        release_dir: args.release_dir.unwrap_or_else(|| args.root.join("target/release")),
        root: args.root.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: git(&args.root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        epoch,
    };
    let explicit = !args.names.is_empty();
    for def in defs {
        match builder::build(def, &ctx, &args.out) {
            Ok(built) => println!(
                "{:<18} {}  {:>7.1} MiB  {}{}",
                def.name,
                built.written.manifest_digest,
                built.written.archive_size as f64 / (1024.0 * 1024.0),
                built.path.display(),
                if built.reused { "  (up to date)" } else { "" }
            ),
            Err(e @ sanctum_images::Error::MissingInput { .. }) if def.optional && !explicit => {
                eprintln!("skipped {}: {e}", def.name);
            }
            Err(e) => return Err(e).with_context(|| format!("build the {} image", def.name)),
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    sanctum_common::exit::report("sanctum-images", run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pack(args) => pack(args),
        Command::Build(args) => build(args),
        Command::List { binaries, names } => {
            for def in select(&names)? {
                if binaries {
                    for (package, bin) in def.release_binaries() {
                        let need =
                            if def.optional && names.is_empty() { "optional" } else { "required" };
                        println!("{package} {bin} {need}");
                    }
                } else {
                    println!("{:<18} {}", def.name, def.description);
                }
            }
            Ok(())
        }
    }
}
