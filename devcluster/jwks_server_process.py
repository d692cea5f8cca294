"""Run the JWKS server as a real subprocess (``python -m servicekey_operator jwks-server``) against a
DevEnvironment's API server."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from devcluster.process import ManagedProcess, free_port


class JwksServerProcess:
    """One JWKS server process on a free port; ``url`` is its base URL."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Sequence[str] = (),
                 name: str = "jwks-server") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        # No endpoints to leave here: stop at once (a pod drains for a few seconds after SIGTERM).
        self.process = ManagedProcess(name, [sys.executable, "-m", "servicekey_operator", "jwks-server",
                                             "--port", str(self.port), "--drain-seconds", "0", *args], log_path,
                                      env=full_env)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as reply:
                return reply.status == 200
        except urllib.error.HTTPError:
            return False

    def start(self, timeout_seconds: float = 60.0) -> JwksServerProcess:
        """Start and wait until it is ready (its first full list is done)."""
        self.process.start()
        self.process.wait_ready(self._ready, timeout_seconds)
        return self

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.stop()
