//! The Dockerfiles (`images/<name>/Dockerfile`, for users' CI) hold the same thing as the local
//! builder's images (`catalog::IMAGES`): same files at the same paths from the same binaries,
//! same user, entrypoint and environment, on distroless `cc` (which provides what the local
//! builder adds by hand: libraries, `nonroot`, CA bundle). They cannot drift apart silently.

use std::path::{Path, PathBuf};

use sanctum_images::catalog::{self, IMAGES, Input};

/// One instruction, continuation lines joined: (keyword upper-cased, the rest).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let full = std::mem::take(&mut current);
        if full.trim().is_empty() {
            continue;
        }
        let (kw, rest) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        out.push((kw.to_uppercase(), rest.trim().to_owned()));
    }
    out
}

/// The stages: (FROM line, instructions after it).
fn stages(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (kw, rest) in instructions(text) {
        if kw == "FROM" {
            out.push((rest, Vec::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push((kw, rest));
        }
    }
    out
}

fn dockerfile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name).join("Dockerfile")
}

#[test]
fn every_image_has_a_dockerfile_and_every_dockerfile_an_image() {
    for def in IMAGES {
        assert!(dockerfile(def.name).is_file(), "images/{}/Dockerfile is missing", def.name);
    }
    for entry in std::fs::read_dir(env!("CARGO_MANIFEST_DIR")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join("Dockerfile").is_file() {
            assert!(
                catalog::find(&name).is_some(),
                "images/{name}/Dockerfile has no catalog image"
            );
        }
    }
}

#[test]
fn each_dockerfile_final_stage_matches_the_local_image() {
    for def in IMAGES {
        let text = std::fs::read_to_string(dockerfile(def.name)).unwrap();
        let stages = stages(&text);
        let (base, last) = stages.last().expect("a final stage");
        assert_eq!(base, "gcr.io/distroless/cc-debian12:nonroot", "{}", def.name);
        let build = stages
            .iter()
            .find(|(from, _)| from.starts_with("rust:1-bookworm AS build"))
            .unwrap_or_else(|| panic!("{}: a `rust:1-bookworm AS build` stage", def.name));
        let cargo = build
            .1
            .iter()
            .find(|(kw, rest)| kw == "RUN" && rest.starts_with("cargo build --release"))
            .map(|(_, rest)| rest.clone())
            .unwrap_or_else(|| panic!("{}: the build stage runs cargo build --release", def.name));

        // COPY: (source, destination) in the final stage, against the catalog's files.
        let mut copies: Vec<(String, String)> = last
            .iter()
            .filter(|(kw, _)| kw == "COPY")
            .map(|(_, rest)| {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(parts.len(), 3, "{}: COPY --from=STAGE SRC DST: {rest}", def.name);
                (format!("{} {}", parts[0], parts[1]), parts[2].to_owned())
            })
            .collect();
        let mut expected: Vec<(String, String)> = def
            .files
            .iter()
            .map(|(input, dest)| {
                let src = match input {
                    Input::Release { package, bin } => {
                        assert!(
                            cargo.contains(&format!("-p {package} --bin {bin}")),
                            "{}: the build stage builds {package}/{bin}: {cargo}",
                            def.name
                        );
                        format!("--from=build /src/target/release/{bin}")
                    }
                    Input::NativeClaude => {
                        let npm = stages
                            .iter()
                            .find(|(from, _)| from.ends_with("AS claude"))
                            .map(|(_, i)| format!("{i:?}"))
                            .unwrap_or_default();
                        let pin = format!("claude-code-linux-x64@{}", catalog::NATIVE_CLAUDE_VERSION);
                        assert!(npm.contains(&pin), "{}: the claude stage installs {pin}", def.name);
                        "--from=claude /usr/local/lib/node_modules/@anthropic-ai/claude-code-linux-x64/claude"
                            .to_owned()
                    }
                };
                (src, (*dest).to_owned())
            })
            .collect();
        copies.sort();
        expected.sort();
        assert_eq!(copies, expected, "{}: COPY lines vs catalog files", def.name);

        let one = |kw: &str| -> Vec<String> {
            last.iter().filter(|(k, _)| k == kw).map(|(_, r)| r.clone()).collect()
        };
        assert_eq!(one("USER"), vec![catalog::USER.to_owned()], "{}", def.name);
        let entrypoint: Vec<String> =
            serde_json::from_str(&one("ENTRYPOINT").pop().expect("an ENTRYPOINT"))
                .expect("exec form");
        assert_eq!(entrypoint, def.entrypoint, "{}", def.name);
        // distroless sets PATH and SSL_CERT_FILE itself; the rest must match.
        assert_eq!(one("ENV"), def.env, "{}: ENV lines", def.name);
        assert!(one("RUN").is_empty(), "{}: no RUN in a shell-less final stage", def.name);
    }
}
