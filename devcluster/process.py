"""Start, probe and stop one background server process, with its output kept in a log file."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StartError(RuntimeError):
    """A server did not start or did not become ready; the message carries its log tail."""


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, so that no outgoing connection (etcd's clients,
    the apiserver's, ...) is given it as its local port between this choice and the server's bind. A race
    with another process choosing the same way remains; a start error names the port."""
    low = _ephemeral_ports()[0]
    for _ in range(200):
        candidate = random.randrange(10000, low) if low > 11000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free loopback port below the ephemeral range")


def log_tail(log_path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


class ManagedProcess:
    """A server started in its own process group, so that stopping it also stops its children."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        """Launch the process; its stdout and stderr go to the log file (appended across restarts)."""
        if not Path(self.argv[0]).exists() and "/" in self.argv[0]:
            raise StartError(f"{self.name}: binary {self.argv[0]} does not exist")
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                           start_new_session=True)

    def running(self) -> bool:
        """True while the process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def wait_ready(self, probe: Callable[[], bool], timeout_seconds: float) -> None:
        """Poll ``probe`` until it returns True; fail early, with the log, if the process dies."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if not self.running():
                code = self._popen.returncode if self._popen else None
                raise StartError(f"{self.name} exited with code {code} before becoming ready; "
                                 f"log {self.log_path}:\n{log_tail(self.log_path)}")
            with contextlib.suppress(Exception):
                if probe():
                    return
            time.sleep(0.1)
        raise StartError(f"{self.name} was not ready after {timeout_seconds:.0f}s; "
                         f"log {self.log_path}:\n{log_tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash would."""
        self._signal_group(signal.SIGKILL)
        if self._popen:
            self._popen.wait()

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after the grace period."""
        if not self._popen:
            return
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait()
        # Children that outlived the leader still belong to the group.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        if self._popen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signum)
