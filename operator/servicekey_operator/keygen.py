"""Key generation off the event loop: RSA in worker processes, the fast curves in a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import multiprocessing
import os
from pathlib import Path

from servicekey_operator.keys import KeyPair, generate_keypair, is_rsa

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_cpus(quota_file: Path, period_file: Path | None) -> float | None:
    """CPUs from a cgroup quota: v2 ``cpu.max`` ("<quota> <period>", quota "max" = none), or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none). None when there is no quota."""
    try:
        fields = quota_file.read_text().split()
        if period_file is not None:
            fields.append(period_file.read_text().strip())
    except OSError:
        return None
    if len(fields) != 2 or fields[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs this process's cgroup may use (its CPU quota, as in a container's ``resources.limits.cpu``), or
    None when it has none (or the cgroup files cannot be read). cgroup v2 and v1.

    Source: the kernel's cgroup documentation (v2 ``cpu.max``; v1 CFS bandwidth control, ``cpu.cfs_quota_us``).
    """
    try:
        memberships = self_cgroup.read_text().splitlines()
    except OSError:
        memberships = []
    candidates: list[tuple[Path, Path | None]] = []
    for line in memberships:
        controllers, _, path = line.partition(":")[2].partition(":")
        relative = path.lstrip("/")
        if controllers == "":  # v2: one hierarchy
            candidates += [(root / relative / "cpu.max", None), (root / "cpu.max", None)]
        elif "cpu" in controllers.split(","):
            for mount in (root / "cpu", root / "cpu,cpuacct"):
                candidates += [(mount / relative / "cpu.cfs_quota_us", mount / relative / "cpu.cfs_period_us"),
                               (mount / "cpu.cfs_quota_us", mount / "cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        if quota_file.exists():
            return _quota_cpus(quota_file, period_file)
    return None


def usable_cpus() -> float:
    """The CPUs this process may use: those it may run on, capped by its cgroup's quota."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


class KeyGenerator:
    """Async keygen. RSA (up to a second for 4096 bits) runs in a process pool so it neither blocks
    the event loop nor holds the GIL against the other keys' I/O; EC and Ed25519 take microseconds."""

    def __init__(self, rsa_workers: int | None = None) -> None:
        # forkserver: forking the operator itself would copy its threads and sockets into workers.
        context = multiprocessing.get_context("forkserver")
        # One core stays free for the event loop and the I/O threads, and the workers run at a lower
        # priority, so an RSA-4096 burst does not starve the fast keys' requests. Cores are the container's
        # CPU limit, not the node's: on a 64-core node a 1-CPU operator forking 63 workers would only queue
        # them inside its quota and throttle the event loop with them.
        workers = rsa_workers or max(1, math.ceil(usable_cpus()) - 1)
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                            initializer=os.nice, initargs=(10,))

    async def __call__(self, algorithm: str, key_size: int | None) -> KeyPair:
        """Generate a key pair for ``algorithm`` (and ``key_size`` for RSA)."""
        loop = asyncio.get_running_loop()
        if is_rsa(algorithm):
            return await loop.run_in_executor(self._pool, generate_keypair, algorithm, key_size)
        return await asyncio.to_thread(generate_keypair, algorithm, key_size)

    def shutdown(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown(wait=False, cancel_futures=True)
