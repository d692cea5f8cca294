"""The floor: the operator's essential work per key, done by a plain script with no framework.

Per key: an ES256 key pair (``generate_keypair``), one KV v2 check-and-set write with hvac, one
ConfigMap create (public.pem, jwks.json, kid, labels, owner reference) and one merge patch of the
ServiceKey's status. The ServiceKey objects exist beforehand (their creation is timed separately),
so the figure is the cost of the work itself, sequentially and from a thread pool.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import time
from collections.abc import Callable
from typing import Any

from bench.cluster import GROUP, PLURAL, VERSION, Cluster
from bench.probes import curve, say
from servicekey_operator.keys import generate_keypair, jwk_set

FLOOR_PREFIX = "bench-floor"
STEPS = ("keygen", "vault_write", "configmap_create", "status_patch")


def _one_key(cluster: Cluster, namespace: str, name: str, uid: str, algorithm: str) -> dict[str, float]:
    """Do one key's work; return the seconds spent in each step."""
    spent: dict[str, float] = {}
    mark = time.perf_counter()

    def step(label: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        spent[label] = now - mark
        mark = now

    keypair = generate_keypair(algorithm)
    step("keygen")
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    cluster.vault.secrets.kv.v2.create_or_update_secret(
        path=f"{FLOOR_PREFIX}/{namespace}/{name}", mount_point="secret", cas=0,
        secret={"private_key": keypair.private_pem, "public_key": keypair.public_pem, "algorithm": algorithm,
                "kid": keypair.kid, "service_name": name, "created_at": now})
    step("vault_write")
    cluster.core.create_namespaced_config_map(namespace, {
        "metadata": {"name": f"{name}-public", "labels": {"app.kubernetes.io/managed-by": "bench-floor",
                                                          "servicekey.io/name": name},
                     "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceKey", "name": name,
                                          "uid": uid, "controller": True, "blockOwnerDeletion": True}]},
        "data": {"public.pem": keypair.public_pem, "kid": keypair.kid,
                 "jwks.json": json.dumps(jwk_set([(keypair.public_pem, algorithm)]), indent=2) + "\n"}})
    step("configmap_create")
    cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": {
        "keyId": keypair.kid, "keyVersion": 1, "algorithm": algorithm, "lastRotationTime": now,
        "configMapName": f"{name}-public", "vaultPath": f"secret/{FLOOR_PREFIX}/{namespace}/{name}",
        "conditions": [{"type": "Ready", "status": "True", "reason": "KeyReady", "message": "floor",
                        "lastTransitionTime": now}]}})
    step("status_patch")
    return spent


def run_floor(cluster: Cluster, namespace: str, count: int, workers: int, algorithm: str = "ES256",
              timeout: float = 600.0, on_work_start: Callable[[], object] | None = None) -> dict[str, Any]:
    """Create ``count`` ServiceKeys (timed apart), then do the work for all of them with ``workers``
    threads (1 = sequential, in one thread); return the timings and the completion curve."""
    cluster.create_namespace(namespace)
    names = [f"floor-{index:05d}" for index in range(count)]
    create_seconds, _, objects = cluster.create_many(namespace, names, {"algorithm": algorithm})
    say(f"floor[{workers}]: {count} ServiceKeys created in {create_seconds:.1f}s (not counted); doing the work")
    done_at: list[float] = []
    totals = dict.fromkeys(STEPS, 0.0)
    errors: list[str] = []
    if on_work_start:
        on_work_start()
    started = time.monotonic()
    deadline = started + timeout

    def work(name: str) -> Callable[[], None]:
        def run() -> None:
            if time.monotonic() > deadline:
                return
            try:
                spent = _one_key(cluster, namespace, name, objects[name]["metadata"]["uid"], algorithm)
            except Exception as failed:
                errors.append(f"{name}: {type(failed).__name__}: {failed}"[:300])
                return
            for label, seconds in spent.items():
                totals[label] += seconds
            done_at.append(time.monotonic() - started)
        return run

    if workers <= 1:
        for name in names:
            work(name)()
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(work(name)) for name in names]
            for future in futures:
                future.result()
    elapsed = time.monotonic() - started
    completed = len(done_at)
    say(f"floor[{workers}]: {completed}/{count} keys in {elapsed:.1f}s ({completed / elapsed:.1f} keys/s)"
        + (f", {len(errors)} errors" if errors else ""))
    return {
        "workers": workers, "keys": count, "completed": completed, "seconds": round(elapsed, 3),
        "keys_per_second": round(completed / elapsed, 2) if elapsed else None,
        "servicekey_create_seconds": round(create_seconds, 3),
        "step_seconds_per_key": {label: round(total / max(completed, 1), 5) for label, total in totals.items()},
        "completion_curve": curve(done_at),
        "errors": errors[:5],
        "error_count": len(errors),
    }
