#!/usr/bin/env bash
# Installs what the benchmarks compare against (not needed by the test suite):
#   nginx      Debian package (the forwarder's peer: UDS -> TCP reverse proxy)
#   mitmproxy  PyPI, pinned in peers/requirements.txt, into bench/.venv (git ignores it)
# The Python asyncio bridge (peers/bridge.py) needs only python3.
# Idempotent: a second run only checks and exits.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    echo "installing nginx (apt-get)..." >&2
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    else
        echo "bench/setup.sh: nginx is missing; install it: sudo apt-get install nginx" >&2
        exit 1
    fi
fi

stamp=".venv/.sanctum-installed"
if [[ ! -x .venv/bin/mitmdump ]] || ! cmp -s peers/requirements.txt "$stamp"; then
    echo "installing mitmproxy into bench/.venv..." >&2
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r peers/requirements.txt
    cp peers/requirements.txt "$stamp"
fi
echo "benchmark peers ready: $(/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1), mitmproxy $(.venv/bin/mitmdump --version 2>/dev/null | head -1)" >&2
