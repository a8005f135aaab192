#!/usr/bin/env bash
# CPU per request of sanctum-forwarder (Unix socket -> forwarder -> TCP stand-in), measured
# so that a busy machine moves it little: what the forwarder process itself spent
# (utime + stime from /proc/PID/stat, all threads) over N sequential small keep-alive
# requests after a warm-up, divided by N. Wall time does not enter, so other load on the
# machine only shows through cache and frequency effects. Every binary given is measured
# ROUNDS times, interleaved (A B A B ...), so two builds compared in one run see the same
# machine; the median per binary is printed.
#
# With INSTR=1 (needs valgrind), also the user-space instructions per request, which no
# other load changes: valgrind's cachegrind over 200 and then 1200 requests (plus 10 %
# warm-up each), the difference divided by the 1100 extra requests.
#
# usage: bench/cpu.sh [FORWARDER_BINARY...]   (default: the release build)
#   N=20000 ROUNDS=3 INSTR=1 bench/cpu.sh target/baseline/old target/release/sanctum-forwarder
# Needs the release sanctum-standin and sanctum-bench (bench/run.sh builds them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
rel="$target_dir/release"
N=${N:-20000}
ROUNDS=${ROUNDS:-3}
bins=("$@")
[[ ${#bins[@]} -gt 0 ]] || bins=("$rel/sanctum-forwarder")
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$rel/sanctum-standin" --no-record --listen "127.0.0.1:$port" >/dev/null & pids+=($!)
sleep 0.5
tck=$(getconf CLK_TCK)

# cpu_ticks PID: "utime stime" of every thread of PID, in clock ticks.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

# measure BINARY: print the forwarder's CPU µs per request over N requests, as
# "total/user" (user: the process's own code; the rest is the kernel's socket work).
measure() {
    local sock="$tmp/fwd.sock"
    rm -f "$sock"
    "$1" forward --listen-socket "$sock" --upstream "http://127.0.0.1:$port" \
        --allow-insecure-upstream --admin-listen 127.0.0.1:0 --log-format json >/dev/null 2>&1 &
    local fpid=$!
    # Warm-up (connections, pools, page faults), then the measured run.
    "$rel/sanctum-bench" --drive 1000 --drive-target "$sock" >/dev/null
    local u0 s0 u1 s1
    read -r u0 s0 < <(cpu_ticks "$fpid")
    "$rel/sanctum-bench" --drive "$N" --drive-target "$sock" >/dev/null
    read -r u1 s1 < <(cpu_ticks "$fpid")
    kill -TERM "$fpid"; wait "$fpid" || true
    # --drive N sends N + N/10 requests.
    python3 -c "k = 1e6 / $tck / ($N + $N // 10); print(f'{($u1 - $u0 + $s1 - $s0) * k:.1f}/{($u1 - $u0) * k:.1f}')"
}

# instructions BINARY N: user-space instructions the forwarder ran serving N requests.
instructions() {
    local sock="$tmp/fwd.sock"
    rm -f "$sock"
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$1" forward \
        --listen-socket "$sock" --upstream "http://127.0.0.1:$port" --allow-insecure-upstream \
        --admin-listen 127.0.0.1:0 --log-format json >/dev/null 2>"$tmp/cg.log" &
    local vpid=$!
    "$rel/sanctum-bench" --drive "$2" --drive-target "$sock" >/dev/null
    kill -TERM "$vpid"; wait "$vpid" || true
    # "==123== I   refs:      12,345,678"
    sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$tmp/cg.log" | tr -d ,
}

declare -A results
for ((r = 0; r < ROUNDS; r++)); do
    for b in "${bins[@]}"; do
        results[$b]+="$(measure "$b") "
    done
done
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| forwarder binary | CPU µs per request, median (rounds) | of which user space |"
echo "|---|---:|---:|"
for b in "${bins[@]}"; do
    python3 - "$b" ${results[$b]} <<'PY'
import sys, statistics
name, runs = sys.argv[1], [r.split("/") for r in sys.argv[2:]]
tot, usr = [float(t) for t, _ in runs], [float(u) for _, u in runs]
show = lambda xs: f"{statistics.median(xs):.1f} ({', '.join(f'{x:.1f}' for x in xs)})"
print(f"| {name} | {show(tot)} | {show(usr)} |")
PY
done
if [[ ${INSTR:-} == 1 ]]; then
    command -v valgrind >/dev/null || { echo "INSTR=1 needs valgrind: apt-get install valgrind" >&2; exit 1; }
    echo
    echo "| forwarder binary | instructions per request (user space) |"
    echo "|---|---:|"
    for b in "${bins[@]}"; do
        i1=$(instructions "$b" 200)
        i2=$(instructions "$b" 1200)
        echo "| $b | $(( (i2 - i1) / 1100 )) |"
    done
fi
