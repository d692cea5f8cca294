"""Optional sampling profile of the operator process with py-spy (``--profile``; ``pip install py-spy``).

Only the thread that holds the GIL is sampled (``--gil``), so the samples are where the operator's
Python CPU goes; the summary attributes them to libraries by the frames in each stack.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")

# Where a frame's file belongs, checked in order: the first match names the library.
LIBRARIES: list[tuple[str, str]] = [
    ("servicekey_operator", "servicekey_operator"),
    ("/kopf/", "kopf"),
    ("/kubernetes/", "kubernetes client"),
    ("/hvac/", "hvac"),
    ("/requests/", "requests"),
    ("/urllib3/", "urllib3"),
    ("/aiohttp/", "aiohttp"),
    ("/cryptography/", "cryptography"),
    ("/prometheus_client/", "prometheus_client"),
    ("/yaml/", "yaml"),
    ("/dateutil/", "dateutil"),
    ("/json/", "json"),
    ("/logging/", "logging"),
    ("/asyncio/", "asyncio"),
    ("/concurrent/", "concurrent.futures"),
    ("/ssl.py", "ssl"),
    ("/http/", "http.client"),
    ("/email/", "http.client"),
    ("/copy.py", "copy"),
    ("/threading.py", "threading"),
]


# Each sample goes to the first category whose marker is in one of its frames' files (or functions).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("key generation (cryptography)", ("/cryptography/", "generate_keypair")),
    ("Vault requests (hvac + requests + urllib3)", ("/hvac/",)),
    ("Kubernetes client requests (sync, in threads)", ("/kubernetes/",)),
    ("Prometheus metrics", ("/prometheus_client/",)),
    ("logging", ("/logging/",)),
    ("kopf API requests (aiohttp)", ("/aiohttp/",)),
    ("kopf watch-event processing and bookkeeping", ("/kopf/",)),
    ("servicekey_operator code (excluding the above)", ("servicekey_operator/handlers", "servicekey_operator/reconcile",
                                                       "servicekey_operator/publish", "servicekey_operator/status",
                                                       "servicekey_operator/spec", "servicekey_operator/keys",
                                                       "servicekey_operator/vault", "servicekey_operator/kubeapi",
                                                       "servicekey_operator/metrics", "servicekey_operator/keygen")),
    ("asyncio event loop", ("/asyncio/", "selectors.py")),
]
# Frames on (nearly) every stack, which say nothing about where the time goes.
_ENTRY_FILES = ("asyncio/", "threading.py", "<frozen runpy>", "concurrent/futures/", "servicekey_operator/cli.py",
                "servicekey_operator/__main__.py", "kopf/_core/reactor/running.py")


class Profiler:
    """``py-spy record`` attached to a running process until ``stop()``."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        self.output = output
        self.available = shutil.which("py-spy") is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._argv = ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--gil", "--nonblocking",
                      "--format", "raw", "--output", str(output)]

    def start(self) -> Profiler:
        """Attach (does nothing if py-spy is not installed)."""
        if self.available:
            self._process = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self) -> dict[str, Any]:
        """Detach, then summarise the stacks."""
        if self._process is None:
            return {"error": "py-spy is not installed (pip install py-spy)"}
        self._process.send_signal(signal.SIGINT)
        try:
            _, errors = self._process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, errors = self._process.communicate()
        if not self.output.exists():
            return {"error": f"py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}"}
        return summarise(self.output.read_text())


def _category(frames: list[tuple[str, str]]) -> str:
    texts = ["/" + file.lstrip("/") + " " + function for function, file in frames]
    for name, markers in CATEGORIES:
        if any(marker in text for marker in markers for text in texts):
            return name
    return "other (threads, stdlib)"


def _library(file: str) -> str:
    path = "/" + file.lstrip("/")  # py-spy prints paths relative to site-packages or the stdlib
    return next((name for marker, name in LIBRARIES if marker in path), "other")


def summarise(raw: str, top: int = 25) -> dict[str, Any]:
    """From py-spy's raw (collapsed) stacks: total samples, inclusive share per library (a stack counts
    once for every library on it), self share per library and the hottest functions (self and inclusive)."""
    total = 0
    categories: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf_library: Counter[str] = Counter()
    leaf_function: Counter[str] = Counter()
    inclusive_function: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame.strip())
            frames.append((match["function"], match["file"]) if match else (frame.strip(), ""))
        if not frames:
            continue
        categories[_category(frames)] += count
        for library in {_library(file) for _, file in frames}:
            inclusive[library] += count
        for name in {f"{function} ({file})" for function, file in frames
                     if not any(entry in "/" + file for entry in _ENTRY_FILES)}:
            inclusive_function[name] += count
        function, file = frames[-1]
        leaf_library[_library(file)] += count
        leaf_function[f"{function} ({file})"] += count

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(100.0 * count / total, 1)) for name, count in counter.most_common(limit)] if total else []

    return {"samples": total, "breakdown_percent": shares(categories, 20),
            "inclusive_percent_by_library": shares(inclusive, 30),
            "self_percent_by_library": shares(leaf_library, 30),
            "hottest_functions_self_percent": shares(leaf_function, top),
            "hottest_functions_inclusive_percent": shares(inclusive_function, top)}
