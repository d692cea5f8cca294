"""A verifier that trusts only the public keys the operator publishes: the ConfigMap mounted as a directory.

    POST /verify   body: a JWT  ->  200 {"kid": ...} or 401 {"error": ...}
    GET  /kids     the key ids it accepts now (the mounted file, re-read if it changed)
    GET  /healthz

It re-reads jwks.json whenever the kubelet has swapped the mounted file (a rotation), and looks each token's
kid up in it; the algorithm is the JWK's, never the token's. Configuration: JWKS_FILE, PORT, AUDIENCE.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

JWKS_FILE = os.environ.get("JWKS_FILE", "/etc/servicekey/jwks.json")
AUDIENCE = os.environ.get("AUDIENCE", "orders")


class Keys:
    """The JWK Set from the mounted file, reloaded when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.stamp: tuple[int, int] | None = None
        self.keys: dict[str, jwt.PyJWK] = {}

    def current(self) -> dict[str, jwt.PyJWK]:
        with self.lock:
            info = os.stat(self.path)  # follows the ..data symlink the kubelet swaps on an update
            if (info.st_ino, info.st_mtime_ns) != self.stamp:
                with open(self.path) as jwks:
                    self.keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(json.load(jwks)).keys}
                self.stamp = (info.st_ino, info.st_mtime_ns)
            return self.keys

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self.current().get(kid)


KEYS = Keys(JWKS_FILE)


class Handler(BaseHTTPRequestHandler):
    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/kids":
            self._reply(200, {"kids": list(KEYS.current())})
            return
        self._reply(200 if self.path == "/healthz" else 404, {"ok": self.path == "/healthz"})

    def do_POST(self) -> None:
        token = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = KEYS.get(kid) if kid else None
            if key is None:
                self._reply(401, {"error": f"unknown kid {kid}"})
                return
            jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=AUDIENCE)
        except jwt.InvalidTokenError as invalid:
            self._reply(401, {"error": f"{type(invalid).__name__}: {invalid}"})
            return
        self._reply(200, {"kid": kid})

    def log_message(self, *_: object) -> None:  # one line per token would drown the log
        pass


if __name__ == "__main__":
    # As PID 1 of its container the process has no default action for SIGTERM (see signer.py).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
