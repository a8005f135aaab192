#!/usr/bin/env bash
# Installs the gateway benchmark's peer into an ignored venv next to this script:
#   .venv/  PyPI litellm[proxy], the version pinned below.
# Idempotent: a second run only checks the stamp.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
LITELLM_VERSION="1.100.5"
stamp=".venv/.sanctum-litellm-$LITELLM_VERSION"
if [[ -f "$stamp" ]]; then
    exit 0
fi
command -v python3 >/dev/null || { echo "setup.sh: python3 not found (Debian: apt-get install python3 python3-venv)" >&2; exit 1; }
rm -rf .venv
python3 -m venv .venv || { echo "setup.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
echo "installing litellm[proxy]==$LITELLM_VERSION into bench/gateway/.venv ..." >&2
.venv/bin/pip install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
.venv/bin/litellm --version >/dev/null 2>&1 || .venv/bin/python -c 'import litellm' \
    || { echo "setup.sh: litellm does not import after install" >&2; exit 1; }
touch "$stamp"
