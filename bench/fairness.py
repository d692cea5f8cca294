"""Tenant fairness: how long one namespace's small key waits while another namespace floods the operator.

    python3 -m bench.fairness [--flood 2000] [--samples 60]

Namespace A (the flood) creates ``--flood`` RS256/4096 ServiceKeys at once (32 client threads); while they
queue and generate (an RSA-4096 key takes the keygen workers about a CPU-second), namespace B creates ES256
keys one at a time, and each create -> Ready is timed from a watch, as in ``bench.run``'s latency phase. The
same is measured first on the idle operator. The run stops once B's samples are taken (the flood is still
going then: that is the point), and prints the figures and how far the flood had got.

Results: bench/results/fairness.json. The figures are reported in docs/benchmarks.md ("Tenant fairness").
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import time
from pathlib import Path

from bench.cluster import GROUP, PLURAL, VERSION, Cluster, Watcher, ready_kid
from bench.probes import load_average, say, summary
from bench.run import RESULTS_DIR, Operator, machine, spec_for
from devcluster.environment import DevEnvironment

FLOOD_NAMESPACE = "tenant-flood"
QUIET_NAMESPACE = "tenant-quiet"
KEY_TIMEOUT = 120.0
PAUSE_BETWEEN_SAMPLES = 0.2


def _timed_keys(cluster: Cluster, watcher: Watcher, prefix: str, count: int) -> tuple[list[float], int]:
    """Create ``count`` ES256 keys one after the other; return their create -> Ready seconds and timeouts."""
    values, timeouts = [], 0
    for index in range(count):
        name = f"{prefix}-{index:03d}"
        started = time.monotonic()
        cluster.create_servicekey(QUIET_NAMESPACE, name, spec_for("ES256"))
        ready_at = watcher.wait(name, lambda kid: kid is not None, KEY_TIMEOUT)
        if ready_at is None:
            timeouts += 1
        else:
            values.append(ready_at - started)
        time.sleep(PAUSE_BETWEEN_SAMPLES)
    return values, timeouts


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.fairness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=2000, help="RS256/4096 keys namespace A creates (2000)")
    parser.add_argument("--samples", type=int, default=60, help="ES256 keys timed in namespace B (60)")
    args = parser.parse_args(argv)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join(["python3 -m bench.fairness", *(argv or [])]), "machine": machine(),
                     "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    with DevEnvironment() as env:
        env.install_crds()
        cluster = Cluster(env)
        for namespace in (FLOOD_NAMESPACE, QUIET_NAMESPACE):
            cluster.create_namespace(namespace)
        operator = Operator(env, RESULTS_DIR / "fairness-operator.log", "operator").start()
        watchers = {namespace: Watcher(namespace, cluster.custom.list_namespaced_custom_object, ready_kid,
                                       GROUP, VERSION, namespace, PLURAL).start()
                    for namespace in (FLOOD_NAMESPACE, QUIET_NAMESPACE)}
        try:
            for watcher in watchers.values():
                watcher.listed.wait(30)
            say(f"idle: {args.samples // 2} ES256 keys in {QUIET_NAMESPACE}")
            idle, idle_timeouts = _timed_keys(cluster, watchers[QUIET_NAMESPACE], "idle", args.samples // 2)
            say(f"flood: {args.flood} RS256/4096 keys in {FLOOD_NAMESPACE}; meanwhile {args.samples} ES256 keys")
            load_before = load_average()
            flood_started = time.monotonic()
            creator = concurrent.futures.ThreadPoolExecutor(1)
            names = [f"flood-{index:04d}" for index in range(args.flood)]
            creator.submit(cluster.create_many, FLOOD_NAMESPACE, names, spec_for("RS256", 4096))
            during, during_timeouts = _timed_keys(cluster, watchers[QUIET_NAMESPACE], "during", args.samples)
            measured_seconds = time.monotonic() - flood_started
            flood_watcher = watchers[FLOOD_NAMESPACE]
            with flood_watcher.condition:
                flood_ready = sum(1 for name in names if flood_watcher.values.get(name) is not None)
            results.update({
                "flood_keys": args.flood, "flood_created_by_then": sum(
                    1 for name in names if name in flood_watcher.values),
                "flood_ready_by_then": flood_ready, "measured_seconds": round(measured_seconds, 1),
                "idle": {**summary(idle), "timeouts": idle_timeouts},
                "during_flood": {**summary(during), "timeouts": during_timeouts,
                                 "samples": [round(value, 4) for value in during]},
                "load_average": [round(load_before, 2), round(load_average(), 2)],
                "operator_memory": operator.memory(),
            })
            # The rest of the flood is cut short when the environment stops.
            creator.shutdown(wait=False, cancel_futures=True)
        finally:
            for watcher in watchers.values():
                watcher.stop()
            operator.stop()
    path = Path(RESULTS_DIR / "fairness.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    idle_stats, during_stats = results["idle"], results["during_flood"]
    say(f"namespace B, ES256 create -> Ready: idle p50 {idle_stats['p50']}s p99 {idle_stats['p99']}s "
        f"(n={idle_stats['n']}); during A's flood of {args.flood} RS256/4096 keys p50 {during_stats['p50']}s "
        f"p99 {during_stats['p99']}s max {during_stats['max']}s (n={during_stats['n']}, "
        f"{during_stats['timeouts']} timeouts); the flood had {results['flood_ready_by_then']} keys Ready and "
        f"{results['flood_created_by_then']} created after {results['measured_seconds']}s; operator RSS "
        f"{results['operator_memory']['rss_tree_mib']} MiB")
    say(f"results {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
