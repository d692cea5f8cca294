"""Run the operator as a real subprocess (``python -m servicekey_operator run``) against a DevEnvironment."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from devcluster.process import ManagedProcess, free_port


class OperatorProcess:
    """One operator process; ``kill()`` is a crash (SIGKILL), ``stop()`` a graceful shutdown."""

    def __init__(self, env: Mapping[str, str], log_path: Path, name: str = "operator") -> None:
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.update(env)
        full_env.update({"SERVICEKEY_HEALTH_PORT": str(self.health_port),
                         "SERVICEKEY_METRICS_PORT": str(self.metrics_port),
                         "PYTHONUNBUFFERED": "1"})
        self.process = ManagedProcess(name, [sys.executable, "-m", "servicekey_operator", "run"], log_path,
                                      env=full_env)

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as reply:
            return reply.status == 200

    def start(self, timeout_seconds: float = 60.0) -> OperatorProcess:
        """Start and wait for kopf's liveness endpoint."""
        self.process.start()
        self.process.wait_ready(self._healthy, timeout_seconds)
        return self

    def metrics_text(self) -> str:
        """The Prometheus exposition text from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crash, no cleanup."""
        self.process.kill()

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.stop()
