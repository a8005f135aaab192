//! What the operator's golden-file tests share.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Compares `actual` with `operator/tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites it.
pub fn check_golden(name: &str, actual: &str) {
    let path = root().join("operator/tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{} differs; if intended, run with UPDATE_GOLDEN=1",
        path.display()
    );
}
