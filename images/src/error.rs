//! Errors of the image builder.

use std::path::PathBuf;

/// What failed while building an image, with the path or name involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that looked like an ELF binary could not be parsed.
    #[error("read the ELF headers of {path}: {source} (only 64-bit ELF files are supported)")]
    Elf {
        /// The binary.
        path: PathBuf,
        /// The parser's error.
        source: object::read::Error,
    },
    /// A shared library named in DT_NEEDED is not on this host.
    #[error(
        "{needed_by} needs {name}, which is in none of {searched:?}; install the Debian package that ships it (apt-file search {name})"
    )]
    LibraryNotFound {
        /// The library's soname.
        name: String,
        /// The binary or library that needs it.
        needed_by: PathBuf,
        /// The directories searched.
        searched: Vec<PathBuf>,
    },
    /// A file an image is built from is not on this machine.
    #[error("image {image} needs {path}, which does not exist; {hint}")]
    MissingInput {
        /// The image's name.
        image: String,
        /// The missing file.
        path: PathBuf,
        /// The command that makes it.
        hint: String,
    },
    /// The image definition is invalid (bad path, conflicting entries, bad argument).
    #[error("invalid image definition: {0}")]
    Invalid(String),
    /// Building an OCI document failed.
    #[error("build the OCI {what}: {source}")]
    Spec {
        /// Which document ("config", "manifest", "index").
        what: &'static str,
        /// The builder's error.
        source: oci_spec::OciSpecError,
    },
    /// Serializing an OCI document failed.
    #[error("serialize JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was done and to which path.
pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { action, path, source }
}
