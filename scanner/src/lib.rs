//! The reference scanner: Claude Code reviews a repository headless with read-only tools and
//! one MCP tool, `report_finding`; the scanner checks each finding against the repository,
//! writes SARIF 2.1.0 and the run summary of DESIGN.md's "Run result contract".
//!
//! `sanctum-scanner run` ([`run`]) is the image's entrypoint; `sanctum-scanner mcp` ([`mcp`])
//! is the tool's server, started by Claude Code.

pub mod claude;
pub mod config;
pub mod finding;
pub mod mcp;
pub mod prompt;
pub mod run;
pub mod sarif;
pub mod summary;
