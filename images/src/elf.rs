//! The shared libraries (and dynamic loader) an ELF binary needs, found on this host.
//!
//! This is what distroless `cc` provides by hand-picking Debian packages; here the binary itself
//! says what it needs: its `PT_INTERP` and the transitive closure of `DT_NEEDED`. `RPATH`,
//! `RUNPATH` and `dlopen` are not followed: Sanctum's binaries and the native Claude Code CLI
//! use none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::elf::{DT_NEEDED, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, ReadCache};

use crate::error::{Error, Result, io};

/// Whether `path` starts with the ELF magic bytes.
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened or read.
pub fn is_elf(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(io("open", path))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"\x7fELF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// What one ELF file asks of the dynamic linker.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// The `PT_INTERP` path (e.g. `/lib64/ld-linux-x86-64.so.2`), absent for static binaries.
    pub interpreter: Option<PathBuf>,
    /// The `DT_NEEDED` sonames, in file order.
    pub needed: Vec<String>,
}

/// Reads `PT_INTERP` and `DT_NEEDED` of a 64-bit ELF file without loading it whole (the native
/// Claude Code binary is 400 MB).
///
/// # Errors
/// [`Error::Io`] when it cannot be opened, [`Error::Elf`] when it is not a valid 64-bit ELF.
pub fn dependencies(path: &Path) -> Result<Dependencies> {
    let file = File::open(path).map_err(io("open", path))?;
    let cache = ReadCache::new(file);
    let elf_err = |source| Error::Elf { path: path.to_owned(), source };
    let header = FileHeader64::<Endianness>::parse(&cache).map_err(elf_err)?;
    let endian = header.endian().map_err(elf_err)?;
    let mut deps = Dependencies::default();
    for segment in header.program_headers(endian, &cache).map_err(elf_err)? {
        if let Some(interp) = segment.interpreter(endian, &cache).map_err(elf_err)? {
            deps.interpreter = Some(PathBuf::from(String::from_utf8_lossy(interp).into_owned()));
        }
    }
    let sections = header.sections(endian, &cache).map_err(elf_err)?;
    let table = sections.dynamic_table(endian, &cache).map_err(elf_err)?;
    for entry in &table {
        if entry.tag == DT_NEEDED {
            let name = table.string(entry).map_err(elf_err)?;
            deps.needed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(deps)
}

/// The directories searched for a soname, in order: the loader's default trusted directories on
/// Debian (multiarch first). Returned paths keep the directory they were found in, which is also
/// where the loader of the image looks for them.
pub fn library_dirs() -> Vec<PathBuf> {
    let triplet = match std::env::consts::ARCH {
        "aarch64" => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// The loader and every shared library `binaries` need, transitively: a map from the path in the
/// image to the host file to copy there (symlinks are followed when copying, so the image holds
/// plain files at the paths the loader opens).
///
/// # Errors
/// [`Error::LibraryNotFound`] when a soname is in none of `dirs`; [`Error::Elf`]/[`Error::Io`]
/// when a binary or library cannot be read.
pub fn resolve(binaries: &[PathBuf], dirs: &[PathBuf]) -> Result<BTreeMap<PathBuf, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut queue: Vec<PathBuf> = binaries.to_vec();
    while let Some(elf) = queue.pop() {
        let deps = dependencies(&elf)?;
        if let Some(loader) = deps.interpreter.as_ref().and_then(|i| i.file_name()) {
            // libc names the loader in DT_NEEDED; the loader is already mapped by then, so it
            // is never searched for and needs no second copy.
            seen.insert(loader.to_string_lossy().into_owned());
        }
        if let Some(interp) = deps.interpreter
            && found.insert(interp.clone(), interp.clone()).is_none()
        {
            // The loader's own dependencies are none; nothing to queue.
            if !interp.exists() {
                return Err(Error::LibraryNotFound {
                    name: interp.display().to_string(),
                    needed_by: elf,
                    searched: vec![],
                });
            }
        }
        for name in deps.needed {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(path) = dirs.iter().map(|d| d.join(&name)).find(|p| p.exists()) else {
                return Err(Error::LibraryNotFound {
                    name,
                    needed_by: elf,
                    searched: dirs.to_vec(),
                });
            };
            found.insert(path.clone(), path.clone());
            queue.push(path);
        }
    }
    Ok(found)
}
