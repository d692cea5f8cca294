"""A signer that keeps its private key in Vault only: it logs in with its ServiceAccount (kubernetes auth),
reads the ServiceKey's KV v2 secret, and signs JWTs with the private key and kid of the same version.

It re-reads the secret every REREAD_SECONDS (a rotation reaches it within that), keeps no copy on disk and
never logs the key. With VERIFIER_URL it signs a token every SIGN_INTERVAL seconds and sends it there, and
serves its tally at GET /stats (what the end-to-end tests read).

Configuration: VAULT_ADDR, VAULT_ROLE, VAULT_AUTH_MOUNT (kubernetes), SECRET_MOUNT (secret), SECRET_PATH
(servicekeys/<namespace>/<name>), AUDIENCE, VERIFIER_URL, SIGN_INTERVAL, REREAD_SECONDS, PORT.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hvac
import jwt

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
REREAD_SECONDS = float(os.environ.get("REREAD_SECONDS", "10"))
SIGN_INTERVAL = float(os.environ.get("SIGN_INTERVAL", "0.1"))
AUDIENCE = os.environ.get("AUDIENCE", "orders")
STATS: dict = {"signed": 0, "verified": 0, "failed": 0, "errors": 0, "kids": {}, "failures": []}
LOCK = threading.Lock()


def read_key() -> dict:
    """The current key version: private_key, algorithm and kid, read together (they must match)."""
    client = hvac.Client(url=os.environ["VAULT_ADDR"])
    with open(SA_TOKEN) as token:
        client.auth.kubernetes.login(role=os.environ["VAULT_ROLE"], jwt=token.read(),
                                     mount_point=os.environ.get("VAULT_AUTH_MOUNT", "kubernetes"))
    return client.secrets.kv.v2.read_secret_version(path=os.environ["SECRET_PATH"],
                                                    mount_point=os.environ.get("SECRET_MOUNT", "secret"),
                                                    raise_on_deleted_version=True)["data"]["data"]


def sign(key: dict) -> str:
    now = int(time.time())
    claims = {"sub": "payments", "aud": AUDIENCE, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key["private_key"], algorithm=key["algorithm"], headers={"kid": key["kid"]})


def send(url: str, token: str) -> tuple[bool, str]:
    request = urllib.request.Request(url, data=token.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return True, json.loads(reply.read()).get("kid", "")
    except urllib.error.HTTPError as refused:
        return False, refused.read().decode(errors="replace")[:200]


def loop() -> None:
    url = os.environ.get("VERIFIER_URL")
    key, read_at = read_key(), time.monotonic()
    print("signing with kid", key["kid"], "alg", key["algorithm"], flush=True)
    while True:
        if time.monotonic() - read_at >= REREAD_SECONDS:
            try:
                fresh = read_key()
            except (hvac.exceptions.VaultError, OSError) as failed:  # keep signing with the key we have
                print("could not re-read the key:", type(failed).__name__, flush=True)
            else:
                if fresh["kid"] != key["kid"]:
                    print("signing with kid", fresh["kid"], "alg", fresh["algorithm"], flush=True)
                key = fresh
            read_at = time.monotonic()
        token = sign(key)
        with LOCK:
            STATS["signed"] += 1
        if url:
            try:
                ok, detail = send(url, token)
            except OSError as unreachable:
                with LOCK:
                    STATS["errors"] += 1
                print("verifier unreachable:", unreachable, flush=True)
            else:
                with LOCK:
                    STATS["verified" if ok else "failed"] += 1
                    STATS["kids"][key["kid"]] = STATS["kids"].get(key["kid"], 0) + 1
                    if not ok:
                        STATS["failures"] = [*STATS["failures"][-19:], {"kid": key["kid"], "at": time.time(),
                                                                          "reason": detail}]
        time.sleep(SIGN_INTERVAL)


class Stats(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with LOCK:
            data = json.dumps(STATS).encode()
        self.send_response(200 if self.path in ("/stats", "/healthz") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


if __name__ == "__main__":
    # As PID 1 of its container the process has no default action for SIGTERM: without this, every pod
    # deletion would wait out the whole grace period.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Stats).serve_forever,
                     daemon=True).start()
    loop()
