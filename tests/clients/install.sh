#!/usr/bin/env bash
# Installs the real clients of the bridge tests into ignored folders next to this script:
#   node_modules/  npm @anthropic-ai/claude-code (the last JS build) and
#                  @anthropic-ai/claude-code-linux-x64 (the native binary), pinned in package-lock.json
#   .venv/         PyPI anthropic and claude-agent-sdk, the versions pinned in requirements.txt
# Idempotent: a second run only checks the stamps and exits in well under a second.
# Needs: node >= 18 with npm, python3 >= 3.9 with the venv module (Debian: python3-venv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

fail() { echo "tests/clients/install.sh: $*" >&2; exit 1; }
command -v npm >/dev/null || fail "npm not found: install Node.js >= 18 (Debian: apt-get install nodejs npm)"
command -v python3 >/dev/null || fail "python3 not found: install Python >= 3.9 (Debian: apt-get install python3 python3-venv)"

# npm: reinstall only when the lock file changed since the last successful install.
npm_stamp="node_modules/.sanctum-installed"
if [[ ! -x node_modules/.bin/claude ]] || ! cmp -s package-lock.json "$npm_stamp"; then
    echo "installing npm clients (package-lock.json)..." >&2
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json "$npm_stamp"
fi

# Python: same idea with requirements.txt.
py_stamp=".venv/.sanctum-installed"
if [[ ! -x .venv/bin/python ]] || ! cmp -s requirements.txt "$py_stamp"; then
    echo "installing Python clients (requirements.txt)..." >&2
    rm -rf .venv
    python3 -m venv .venv || fail "python3 -m venv failed: install the venv module (Debian: apt-get install python3-venv)"
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt "$py_stamp"
fi

node_modules/.bin/claude --version >/dev/null || fail "claude did not start after install"
native=node_modules/@anthropic-ai/claude-code-linux-x64/claude
"$native" --version >/dev/null || fail "the native Claude Code binary ($native) did not start after install"
.venv/bin/python -c 'import anthropic' || fail "the anthropic package does not import after install"
.venv/bin/python -c 'import claude_agent_sdk' || fail "the claude-agent-sdk package does not import after install"
echo "real clients ready: claude $(node_modules/.bin/claude --version 2>/dev/null | head -1) (JS), $("$native" --version | head -1) (native), anthropic $(.venv/bin/python -c 'import anthropic; print(anthropic.__version__)')" >&2
