#!/usr/bin/env bash
# Reproduces bench/gateway/README.md: installs the LiteLLM peer (setup.sh), then runs the
# DLP scan benchmark and the gateway benchmark (gateway with the memory and the Redis state
# vs direct vs LiteLLM, and an optional older gateway binary as the baseline) on loopback.
#
# Settings (environment; see gateway/benches/gateway.rs): BENCH_ROUNDS, BENCH_REQUESTS,
# BENCH_LARGE, BENCH_SECS, BENCH_CONNS, BENCH_GATEWAY_THREADS, BENCH_STANDIN_THREADS,
# BENCH_LOAD_THREADS, BENCH_REDIS (auto|on|off), BENCH_BASELINE_GATEWAY, BENCH_BASELINE_ARGS.
# A few minutes on a 2-core machine after the release build (see the README for the split).
#
# Before/after in one run:
#   BASELINE_COMMIT=<rev> bash bench/gateway/run.sh
# builds the gateway of <rev> in a temporary git worktree (its own target directory under
# target/baseline/, so this checkout's release binaries are not overwritten; 10-15 minutes
# the first time on 2 cores), keeps the binary as target/baseline/<binary>-<short rev>, and
# measures it beside this build. Commits before the gateway had its own crate (9aa156f)
# ship it as `sanctum-forwarder gateway`; the bench passes the `gateway` argument by itself
# when the binary's name contains "forwarder". An existing binary can be given directly:
#   BENCH_BASELINE_GATEWAY=target/baseline/sanctum-forwarder-de5892b bash bench/gateway/run.sh
set -euo pipefail
shopt -s inherit_errexit  # a failed build inside $(build_baseline) stops the script
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# Builds the gateway of commit $1; prints the path of the binary.
build_baseline() {
    local rev short src pkg bin out
    rev="$(git -C "$root" rev-parse --verify "$1^{commit}")" \
        || { echo "run.sh: BASELINE_COMMIT=$1 is not a commit of this repository" >&2; exit 1; }
    short="$(git -C "$root" rev-parse --short "$rev")"
    if git -C "$root" cat-file -e "$rev:gateway/Cargo.toml" 2>/dev/null; then
        pkg=sanctum-gateway bin=sanctum-gateway
    else
        pkg=sanctum-forwarder bin=sanctum-forwarder
    fi
    out="$root/target/baseline/$bin-$short"
    if [[ -x "$out" ]]; then
        echo "$out"
        return
    fi
    mkdir -p "$root/target/baseline"
    src="$root/target/baseline/src-$short"
    rm -rf "$src"
    git -C "$root" worktree prune
    # A detached worktree (no branch is created), removed when this command substitution's
    # subshell exits, on success or failure.
    git -C "$root" worktree add --detach "$src" "$rev" >&2
    trap 'git -C "$root" worktree remove --force "$src" >/dev/null 2>&1 || true' EXIT
    echo "building $pkg at $short (target/baseline/target) ..." >&2
    CARGO_TARGET_DIR="$root/target/baseline/target" \
        cargo build --release --manifest-path "$src/Cargo.toml" -p "$pkg" --bin "$bin" >&2
    cp "$root/target/baseline/target/release/$bin" "$out"
    echo "$out"
}

if [[ -n "${BASELINE_COMMIT:-}" ]]; then
    BENCH_BASELINE_GATEWAY="$(build_baseline "$BASELINE_COMMIT")"
    export BENCH_BASELINE_GATEWAY
fi
bash "$here/setup.sh"
cd "$root"
cargo bench -p sanctum-gateway --bench dlp
cargo bench -p sanctum-gateway --bench gateway
