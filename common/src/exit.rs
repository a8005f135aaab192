//! How every Sanctum binary ends on an error (design contract "Command lines",
//! `shared/DESIGN.md`: "Exit status 0 on success; non-zero with a one-line reason on
//! standard error otherwise"): one line `<binary>: <error chain>` on standard error, causes
//! outermost first and joined by `: `, then exit status 1 — whatever `RUST_BACKTRACE` says.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     sanctum_common::exit::report("sanctum-example", run())
//! }
//! # fn run() -> Result<(), std::io::Error> { Ok(()) }
//! ```

use std::error::Error;
use std::process::ExitCode;

/// The error and its causes on one line: `outer: cause: root cause`. Line breaks inside a
/// message become spaces, so the reason stays one line.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        // A wrapper that already shows its source's message (`#[error(transparent)]`-like,
        // or `"...: {source}"`) adds nothing to the line by repeating it.
        if !parts.last().is_some_and(|outer| outer.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// `ExitCode::SUCCESS` for `Ok`; for `Err`, writes `<binary>: <one_line(error)>` to
/// standard error and returns exit status 1. Takes any error that converts into a boxed
/// error (every `std::error::Error`, and `anyhow::Error` with its chain kept).
pub fn report<E>(binary: &str, result: Result<(), E>) -> ExitCode
where
    E: Into<Box<dyn Error + Send + Sync + 'static>>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let error: Box<dyn Error + Send + Sync + 'static> = error.into();
            eprintln!("{binary}: {}", one_line(&*error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_on_one_line() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "no such\nfile"));
        assert_eq!(one_line(&e), "cannot read /x: no such file");
        assert_eq!(report::<Outer>("t", Ok(())), ExitCode::SUCCESS);
        assert_eq!(report("t", Err(e)), ExitCode::FAILURE);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("config c.yaml is invalid: {0}")]
    struct Shows(#[source] std::io::Error);

    /// A message that already holds its source's (`"...: {source}"`) is not followed by it
    /// again.
    #[test]
    fn a_shown_source_is_not_repeated() {
        let e = Shows(std::io::Error::other("tenancy: unknown field `defaultOrgg`"));
        assert_eq!(one_line(&e), "config c.yaml is invalid: tenancy: unknown field `defaultOrgg`");
    }
}
