#!/usr/bin/env bash
# Reproduces bench/gateway/README.md: installs the LiteLLM peer (setup.sh), then runs the
# DLP scan benchmark and the gateway benchmark (gateway vs direct vs LiteLLM) on loopback.
# Settings: BENCH_ROUNDS, BENCH_REQUESTS, BENCH_LARGE, BENCH_SECS, BENCH_CONNS (see
# gateway/benches/gateway.rs). About 3 minutes on a 2-core machine.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup.sh"
cd "$here/../.."
cargo bench -p sanctum-gateway --bench dlp
cargo bench -p sanctum-gateway --bench gateway
