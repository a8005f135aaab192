"""mitmproxy addon: the header-injecting "auth proxy" peer of sanctum-bridge.

Run as a reverse proxy: `mitmdump --mode reverse:http://UPSTREAM -s mitm_addon.py`, with
SANCTUM_JWT_FILE and SANCTUM_TRAT_FILE naming the token files. Like the bridge it drops the
client's credentials, re-reads both files on every request and adds them; responses are
streamed so SSE events pass as they arrive.
"""

import os

from mitmproxy import http

JWT_FILE = os.environ.get("SANCTUM_JWT_FILE", "/var/run/spiffe/jwt")
TRAT_FILE = os.environ.get("SANCTUM_TRAT_FILE", "/run/sage/trat.jwt")
STRIP = ("authorization", "proxy-authorization", "x-api-key", "txn-token")


def _read(path):
    with open(path) as f:
        return f.read().strip()


class InjectIdentity:
    def request(self, flow: http.HTTPFlow) -> None:
        for name in STRIP:
            flow.request.headers.pop(name, None)
        flow.request.headers["authorization"] = "Bearer " + _read(JWT_FILE)
        flow.request.headers["txn-token"] = _read(TRAT_FILE)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        flow.response.stream = True


addons = [InjectIdentity()]
