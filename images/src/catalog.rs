//! Sanctum's images: what each holds and how it starts. The local builder ([`crate::builder`])
//! and the Dockerfiles (`images/<name>/Dockerfile`, checked against this list by
//! `tests/dockerfiles.rs`) both follow it.

/// Where a file of an image comes from on the build machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A release binary of the workspace, `target/release/<name>`, built from cargo package
    /// `package`.
    Release {
        /// The cargo package that builds it (`cargo build --release -p PACKAGE --bin NAME`).
        package: &'static str,
        /// The binary's name.
        bin: &'static str,
    },
    /// The pinned native Claude Code CLI installed by `tests/clients/install.sh`
    /// (npm `@anthropic-ai/claude-code-linux-x64`).
    NativeClaude,
}

/// Path of the native Claude Code CLI, relative to the workspace root.
pub const NATIVE_CLAUDE: &str =
    "tests/clients/node_modules/@anthropic-ai/claude-code-linux-x64/claude";
/// The pinned native Claude Code version (`tests/clients/install.sh`).
pub const NATIVE_CLAUDE_VERSION: &str = "2.1.332";
/// Where images put the native CLI.
pub const CLAUDE_IN_IMAGE: &str = "/usr/local/bin/claude";
/// The registry path of Sanctum's images.
pub const REGISTRY: &str = "ghcr.io/sanctum-dev";
/// The non-root user every image runs as (distroless `nonroot`).
pub const USER: &str = "65532:65532";
/// `PATH` in every image (what distroless sets).
pub const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One of Sanctum's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageDef {
    /// The image name: `ghcr.io/sanctum-dev/<name>:<version>`, `target/images/<name>.tar`.
    pub name: &'static str,
    /// One line for `images/README.md` and the `description` annotation.
    pub description: &'static str,
    /// The files the image carries besides shared libraries, `/etc/passwd`/`group` and CA
    /// certificates: (where from, absolute path in the image). All are executables.
    pub files: &'static [(Input, &'static str)],
    /// `Entrypoint` (exec form: there is no shell).
    pub entrypoint: &'static [&'static str],
    /// Extra `Env` entries besides [`PATH`].
    pub env: &'static [&'static str],
    /// Whether the image carries the CA bundle: its binary calls TLS endpoints outside the
    /// cluster with the system roots (the gateway calls api.anthropic.com; the bridge's
    /// fetch-trat and the forwarder fall back to system roots without `--ca-file`).
    pub ca_certificates: bool,
    /// Whether `build` without names may skip it when its inputs are missing (an image whose
    /// binary is not always built).
    pub optional: bool,
}

const fn release(package: &'static str, bin: &'static str) -> Input {
    Input::Release { package, bin }
}

/// The per-pod forwarder sidecar.
const FORWARDER: Input = release("sanctum-forwarder", "sanctum-forwarder");

/// All images, in build order.
pub const IMAGES: &[ImageDef] = &[
    ImageDef {
        name: "sanctum-operator",
        description: "The Sanctum operator: controller, admission webhook, token service",
        files: &[(
            release("sanctum-operator", "sanctum-operator"),
            "/usr/local/bin/sanctum-operator",
        )],
        entrypoint: &["/usr/local/bin/sanctum-operator"],
        env: &[],
        ca_certificates: false,
        optional: false,
    },
    ImageDef {
        name: "sanctum-bridge",
        description: "The in-pod bridge from the agent's loopback to the forwarder's socket",
        files: &[(release("sanctum-bridge", "sanctum-bridge"), "/usr/local/bin/sanctum-bridge")],
        entrypoint: &["/usr/local/bin/sanctum-bridge"],
        env: &[],
        ca_certificates: true,
        optional: false,
    },
    ImageDef {
        name: "sanctum-forwarder",
        description: "The per-pod forwarder from the bridge's socket to the gateway",
        files: &[(FORWARDER, "/usr/local/bin/sanctum-forwarder")],
        entrypoint: &["/usr/local/bin/sanctum-forwarder", "forward"],
        env: &[],
        ca_certificates: true,
        optional: false,
    },
    ImageDef {
        name: "sanctum-gateway",
        description: "The gateway that holds provider credentials and enforces budgets",
        files: &[(release("sanctum-gateway", "sanctum-gateway"), "/usr/local/bin/sanctum-gateway")],
        entrypoint: &["/usr/local/bin/sanctum-gateway"],
        env: &[],
        ca_certificates: true,
        optional: false,
    },
    ImageDef {
        name: "sanctum-standin",
        description: "The stand-in Anthropic Messages API for the e2e suite and the demo",
        files: &[(release("sanctum-testkit", "sanctum-standin"), "/usr/local/bin/sanctum-standin")],
        entrypoint: &["/usr/local/bin/sanctum-standin"],
        env: &[],
        ca_certificates: false,
        optional: false,
    },
    ImageDef {
        name: "sanctum-agent",
        description: "Test agent: one `claude -p` turn with the native Claude Code CLI, run summary to the termination log",
        files: &[
            (release("sanctum-testkit", "sanctum-agent"), "/usr/local/bin/sanctum-agent"),
            (Input::NativeClaude, CLAUDE_IN_IMAGE),
        ],
        entrypoint: &["/usr/local/bin/sanctum-agent"],
        env: &["SANCTUM_CLAUDE=/usr/local/bin/claude"],
        ca_certificates: false,
        optional: false,
    },
    ImageDef {
        name: "sanctum-scanner",
        description: "The reference scanner: Claude Code headless with the report_finding MCP server, SARIF out",
        files: &[
            (release("sanctum-scanner", "sanctum-scanner"), "/usr/local/bin/sanctum-scanner"),
            (Input::NativeClaude, CLAUDE_IN_IMAGE),
        ],
        entrypoint: &["/usr/local/bin/sanctum-scanner"],
        env: &["SANCTUM_CLAUDE=/usr/local/bin/claude"],
        ca_certificates: false,
        optional: true,
    },
];

/// The image called `name`.
pub fn find(name: &str) -> Option<&'static ImageDef> {
    IMAGES.iter().find(|d| d.name == name)
}

impl ImageDef {
    /// `ghcr.io/sanctum-dev/<name>:<version>`.
    pub fn reference(&self, version: &str) -> String {
        format!("{REGISTRY}/{}:{version}", self.name)
    }

    /// The cargo packages and binaries this image needs built, deduplicated.
    pub fn release_binaries(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<_> = self
            .files
            .iter()
            .filter_map(|(input, _)| match input {
                Input::Release { package, bin } => Some((*package, *bin)),
                Input::NativeClaude => None,
            })
            .collect();
        out.dedup();
        out
    }
}
