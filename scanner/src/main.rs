//! sanctum-scanner: the scanner image's entrypoint. `run` (the default) reviews the repository
//! the environment names; `mcp` serves the report_finding tool over stdio for Claude Code.
//! Exit status: see `sanctum_scanner::run::Exit` and scanner/README.md.

use std::process::ExitCode;

use sanctum_common::exit;
use sanctum_scanner::{mcp, run};

const USAGE: &str = "usage: sanctum-scanner [run|mcp]
  run   review $SANCTUM_REPO with Claude Code; SARIF to $SANCTUM_OUTPUT/results.sarif,
        the summary to /dev/termination-log (the default)
  mcp   the report_finding MCP server over stdio (started by Claude Code)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("run");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            return exit::report(
                "sanctum-scanner",
                Err(format!("cannot start the async runtime: {e}")),
            );
        }
    };
    match command {
        "run" => {
            let outcome = runtime.block_on(run::run_from_env());
            if let Some(error) = &outcome.summary.error {
                eprintln!("sanctum-scanner: {error}");
            }
            println!("{}", outcome.summary.to_json());
            ExitCode::from(outcome.exit as u8)
        }
        "mcp" => exit::report("sanctum-scanner mcp", runtime.block_on(mcp::serve_stdio())),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("sanctum-scanner: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
