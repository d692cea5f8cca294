"""What the benchmark measures outside the operator: /proc CPU and memory, Prometheus text, percentiles."""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START = time.monotonic()


def say(message: str) -> None:
    """Progress line on stderr, with the seconds since the bench started."""
    print(f"[bench {time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2:].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def cpu_seconds(pid: int | None, *, tree: bool = True) -> float:
    """User + system CPU of ``pid`` (and its descendants): live processes' utime+stime plus their
    cutime+cstime, which covers descendants that already exited and were reaped."""
    if pid is None:
        return 0.0
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        fields = _stat_fields(member)
        if fields:  # fields[11:15] are utime stime cutime cstime (stat fields 14-17)
            total += sum(int(value) for value in fields[11:15])
    return total / CLOCK_TICKS


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def rss_bytes(pid: int | None, *, tree: bool = True) -> int:
    """Resident memory (VmRSS) of ``pid``, summed over its descendants by default (shared pages count
    once per process, so the sum is an upper bound)."""
    if pid is None:
        return 0
    return 1024 * sum(_status_kib(member, "VmRSS") for member in (process_tree(pid) if tree else [pid]))


def peak_rss_bytes(pid: int | None) -> int:
    """VmHWM (the high-water mark of resident memory) of the process itself."""
    return 1024 * _status_kib(pid, "VmHWM") if pid else 0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, every process), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def load_average() -> float:
    """The one-minute load average."""
    return os.getloadavg()[0]


class CpuMeter:
    """CPU seconds per named component between ``start()`` and ``stop()``."""

    def __init__(self, pids: Mapping[str, tuple[int | None, bool]]) -> None:
        self.pids = dict(pids)
        self._begin: dict[str, float] = {}
        self._wall = 0.0

    def _read(self) -> dict[str, float]:
        readings = {name: cpu_seconds(pid, tree=tree) for name, (pid, tree) in self.pids.items()}
        readings["machine"] = machine_busy_seconds()
        return readings

    def start(self) -> CpuMeter:
        """Take the first reading."""
        self._begin, self._wall = self._read(), time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds used by each component since ``start()``, plus ``wall`` seconds."""
        end = self._read()
        used = {name: round(end[name] - self._begin.get(name, 0.0), 2) for name in end}
        used["wall"] = round(time.monotonic() - self._wall, 2)
        # Whatever else ran on the machine meanwhile (other test suites on a shared box skew every figure).
        used["other_processes"] = round(used["machine"] - sum(value for name, value in used.items()
                                                              if name not in ("machine", "wall")), 2)
        return used


# ---------------------------------------------------------------- Prometheus text

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_prometheus(text: str, prefixes: Sequence[str] = ()) -> Samples:
    """Samples of the exposition text, keyed by (name, labels); only names with one of ``prefixes``."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or (prefixes and not line.startswith(tuple(prefixes))):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = number
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample_name, sample_labels), value in samples.items()
               if sample_name == name and wanted <= sample_labels)


def by_label(samples: Samples, name: str, *keys: str) -> dict[str, float]:
    """``name`` summed per combination of the label values ``keys`` (joined with ' ')."""
    grouped: Counter[str] = Counter()
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name:
            labels = dict(sample_labels)
            grouped[" ".join(labels.get(key, "") for key in keys).strip()] += value
    return dict(grouped)


def etcd_summary(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float | None]:
    """WAL fsyncs and backend commits between two ``Cluster.etcd_counters()`` readings, with mean latency."""
    out: dict[str, float | None] = {}
    for name, short in (("etcd_disk_wal_fsync_duration_seconds", "wal_fsync"),
                        ("etcd_disk_backend_commit_duration_seconds", "backend_commit")):
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        seconds = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        out[f"{short}s"] = count
        out[f"{short}_mean_ms"] = round(1000 * seconds / count, 2) if count else None
    return out


def diff_counts(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Per-key increase, dropping keys that did not move."""
    return {key: after[key] - before.get(key, 0.0) for key in sorted(after)
            if after[key] - before.get(key, 0.0) > 0}


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear-interpolated percentile (``fraction`` in 0..1); None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, min, p50, p95, p99, max and mean of ``values`` (seconds), rounded to the millisecond."""
    data = list(values)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {"n": len(data), "min": rounded(min(data, default=None)), "p50": rounded(percentile(data, 0.50)),
            "p95": rounded(percentile(data, 0.95)), "p99": rounded(percentile(data, 0.99)),
            "max": rounded(max(data, default=None)), "mean": rounded(sum(data) / len(data) if data else None)}


def curve(times: Iterable[float], points: int = 200) -> list[tuple[float, int]]:
    """A completion curve: (seconds, how many done by then) at up to ``points`` evenly spaced completions."""
    ordered = sorted(times)
    if not ordered:
        return []
    step = max(1, len(ordered) // points)
    sampled = [(round(ordered[index], 3), index + 1) for index in range(step - 1, len(ordered), step)]
    if sampled[-1][1] != len(ordered):
        sampled.append((round(ordered[-1], 3), len(ordered)))
    return [(0.0, 0), *sampled]


# ---------------------------------------------------------------- operator log

_LOG_NORMALISERS = [
    (re.compile(r"^\[\d{4}-\d\d-\d\d [\d:.,]+\]\s*"), ""),              # kopf's timestamp
    (re.compile(r"\[[a-z0-9.-]+/[a-z0-9.-]+\]"), "[ns/name]"),            # the object
    (re.compile(r"\b[A-Za-z0-9_-]{43}\b"), "<kid>"),                     # RFC 7638 key ids
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"bench-[a-z0-9-]+"), "<bench-object>"),
    (re.compile(r"\d+(\.\d+)?"), "N"),
]


def log_patterns(text: str, top: int = 15) -> list[tuple[str, int]]:
    """The most frequent log lines, with timestamps, object names, key ids and numbers blanked."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        for pattern, replacement in _LOG_NORMALISERS:
            line = pattern.sub(replacement, line)
        counts[line[:160]] += 1
    return counts.most_common(top)
