//! Paths, ports and names fixed by the design contract (`shared/DESIGN.md`).

/// SPIFFE JWT-SVID written by `fetch-jwt` (or a projected ServiceAccount token).
pub const JWT_FILE: &str = "/var/run/spiffe/jwt";
/// Directory holding [`JWT_FILE`].
pub const JWT_DIR: &str = "/var/run/spiffe";
/// Transaction token written by `write-trat`.
pub const TRAT_FILE: &str = "/run/sage/trat.jwt";
/// Directory shared by the token init container, the bridge and the forwarder.
pub const SAGE_DIR: &str = "/run/sage";
/// Unix socket between bridge and forwarder.
pub const LLM_SOCKET: &str = "/run/sage/llm.sock";
/// Loopback address the bridge listens on.
pub const BRIDGE_LISTEN: &str = "127.0.0.1:8082";
/// Port of the bridge (the agent's `ANTHROPIC_BASE_URL`).
pub const BRIDGE_PORT: u16 = 8082;
/// HTTPS port and path of the mutating admission webhook.
pub const WEBHOOK_PORT: u16 = 8443;
pub const WEBHOOK_PATH: &str = "/mutate";

/// Admin ports (health, readiness, metrics) of the long-running binaries.
pub const OPERATOR_ADMIN_PORT: u16 = 8080;
pub const BRIDGE_ADMIN_PORT: u16 = 9082;
pub const FORWARDER_ADMIN_PORT: u16 = 9083;

pub const TRUST_DOMAIN: &str = "sage-sanctum.local";
/// `aud` of both the JWT-SVID and the TraT.
pub const GATEWAY_AUDIENCE: &str = "sanctum-gateway";
/// Scope a TraT must carry to call the Messages API.
pub const SCOPE_LLM_MESSAGES: &str = "llm.messages";
/// Placeholder key the agent sees; worth nothing outside the pod.
pub const PLACEHOLDER_API_KEY: &str = "gateway-injected";

/// Where the operator's admin port serves the TraT verification keys and the revoked list.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const REVOKED_PATH: &str = "/revoked";
