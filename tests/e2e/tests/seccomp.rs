//! The scanner seccomp profile (`sanctum/scanner.json`) loaded into a real process through
//! libseccomp, the library container runtimes use: AF_INET and AF_UNIX work; AF_INET6,
//! packet and raw sockets, and namespace escapes are refused.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use sanctum_e2e::{required, workspace};

#[test]
fn scanner_profile_allows_only_what_the_design_says() {
    let python = "/usr/bin/python3";
    let has_binding = Command::new(python)
        .args(["-c", "import seccomp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_binding {
        assert!(!required(), "python3-seccomp is missing (scripts/setup installs it)");
        eprintln!("e2e: SKIPPED: Debian's python3-seccomp is not installed");
        return;
    }
    let out = Command::new(python)
        .arg(workspace().join("tests/seccomp/check_profile.py"))
        .arg(workspace().join("charts/sanctum/files/scanner.json"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the profile misbehaves:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report.lines().filter(|l| l.starts_with("ok ")).count(), 9, "{report}");
}
