#!/usr/bin/env bash
# Counts heap allocations per request on the hot path of sanctum-bridge and
# sanctum-forwarder with valgrind's DHAT: each binary runs under valgrind twice, serving
# N1 and then N2 sequential small requests (plus N/10 warm-up each); the difference of the
# totals divided by N2-N1 is what one request costs, start-up and pools excluded.
# Needs valgrind (Debian: apt-get install valgrind) and the release binaries (bench/run.sh
# builds them). Bounded: a few thousand requests, about a minute.
# FORWARDER=path measures another forwarder build (e.g. a copy kept before a change);
# ONLY=forwarder skips the bridge.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
rel="$target_dir/release"
N1=${N1:-200}
N2=${N2:-1200}
FORWARDER=${FORWARDER:-$rel/sanctum-forwarder}
ONLY=${ONLY:-}
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

python3 - "$tmp" <<'PY'
import base64, json, sys, time
b = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
tok = b({"alg": "ES256"}) + "." + b({"sub": "spiffe://sage-sanctum.local/scanner/b", "exp": int(time.time()) + 86400}) + ".sig"
open(sys.argv[1] + "/jwt", "w").write(tok)
open(sys.argv[1] + "/trat.jwt", "w").write(tok)
PY
"$rel/sanctum-standin" --no-record --socket "$tmp/llm.sock" >/dev/null & pids+=($!)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$rel/sanctum-standin" --no-record --listen "127.0.0.1:$port" >/dev/null & pids+=($!)
sleep 0.5

# run NAME N TARGET CMD...: serve N requests under DHAT, print "blocks bytes".
run() {
    local n=$1 target=$2; shift 2
    valgrind --tool=dhat --dhat-out-file=/dev/null "$@" 2>"$tmp/dhat.log" & local vpid=$!
    "$rel/sanctum-bench" --drive "$n" --drive-target "$target"
    kill -TERM "$vpid"; wait "$vpid" || true
    # "Total:     123,456 bytes in 1,234 blocks"
    sed -n 's/.*Total: *\([0-9,]*\) bytes in \([0-9,]*\) blocks.*/\2 \1/p' "$tmp/dhat.log" | tr -d ,
}

report() {
    local name=$1 target=$2; shift 2
    rm -f "$target"
    read -r b1 y1 < <(run "$N1" "$target" "$@")
    rm -f "$target"
    read -r b2 y2 < <(run "$N2" "$target" "$@")
    # Warm-up requests are N/10 of each run.
    local d=$(( (N2 + N2/10) - (N1 + N1/10) ))
    python3 -c "print(f'| $name | {($b2-$b1)/$d:.1f} | {($y2-$y1)/$d:.0f} |')"
}

echo "| per request (small body, keep-alive) | allocations | bytes allocated |"
echo "|---|---:|---:|"
[[ $ONLY == forwarder ]] || report sanctum-bridge 127.0.0.1:18399 "$rel/sanctum-bridge" --listen 127.0.0.1:18399 --admin-listen 127.0.0.1:0 \
    --upstream-socket "$tmp/llm.sock" --jwt-file "$tmp/jwt" --trat-file "$tmp/trat.jwt" --log-format json
report "sanctum-forwarder ($(basename "$FORWARDER"))" "$tmp/fwd.sock" "$FORWARDER" forward --listen-socket "$tmp/fwd.sock" \
    --upstream "http://127.0.0.1:$port" --allow-insecure-upstream --admin-listen 127.0.0.1:0 --log-format json
