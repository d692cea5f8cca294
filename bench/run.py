"""Benchmark servicekey-operator on a fresh local cluster (real kube-apiserver + etcd + OpenBao).

    python3 -m bench.run [--keys N] [--algorithms ES256,EdDSA,RS256] [--quick]

Phases, in order, on one operator process (then a second one for the restart):
  1. latency   create -> Ready, one key at a time on an idle operator, per algorithm
  2. rotation  servicekey.io/rotate set to a new value -> new kid in the ConfigMap
  3. burst     ES256 create -> Ready while 20 RS256/4096 keys are being generated
  4. throughput N ServiceKeys applied at once from a thread pool -> all Ready (list polling), per algorithm;
               operator RSS and CPU, API calls per key (apiserver_request_total), operator metrics and log
  5. restart   stop the operator, start a new one over every Ready key, time until it settles, and count
               the Vault and ConfigMap writes it made (the target is zero)
  6. floor     the same per-key work (ES256 keygen, KV write, ConfigMap create, status patch) from a plain
               script, sequential and from thread pools; ratio operator / floor

Results: bench/results/latest.json (and a timestamped copy); a full run (not --quick) also renders
docs/benchmarks.png and the figures section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import floor, report
from bench.cluster import (
    GROUP,
    MANAGED_SELECTOR,
    PLURAL,
    VERSION,
    Cluster,
    Watcher,
    configmap_kid,
    object_key,
    ready_kid,
)
from bench.probes import (
    CpuMeter,
    cpu_seconds,
    curve,
    diff_counts,
    etcd_summary,
    load_average,
    log_patterns,
    metric,
    parse_prometheus,
    peak_rss_bytes,
    rss_bytes,
    say,
    summary,
)
from bench.profile import Profiler
from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS_DIR = REPO_ROOT / "docs"
LATENCY_NAMESPACE = "bench-latency"
BURST_NAMESPACE = "bench-burst"
KEY_TIMEOUT = 60.0          # one key, create -> Ready, on an idle operator
PAUSE_BETWEEN_SAMPLES = 0.2  # let the operator finish its trailing writes (kopf annotations, events)
QUIET_SECONDS = 3.0
MIB = 1024 * 1024
PHASES = ("latency", "rotation", "burst", "throughput", "restart", "floor")


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run."""

    keys: int
    algorithms: tuple[str, ...]
    latency_samples: int
    rotation_samples: int
    burst_rsa_keys: int
    burst_max_samples: int
    secondary_keys: int       # throughput of the algorithms other than ES256 (RSA is slow by nature)
    floor_workers: tuple[int, ...]
    quick: bool
    profile: bool = False
    phases: tuple[str, ...] = PHASES

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        """Defaults for a full run, or a small version with --quick."""
        algorithms = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
        if "ES256" not in algorithms:
            algorithms = ("ES256", *algorithms)  # the burst, rotation and floor phases compare against ES256
        operator_threads = operator_io_threads()
        keys = args.keys if args.keys else (100 if args.quick else 1000)
        return cls(
            keys=keys, algorithms=algorithms,
            latency_samples=args.samples or (10 if args.quick else 30),
            rotation_samples=5 if args.quick else 20,
            burst_rsa_keys=8 if args.quick else 20,
            burst_max_samples=15 if args.quick else 60,
            secondary_keys=max(10, keys // 5),
            floor_workers=tuple(sorted({1, 6, operator_threads, 32})),
            quick=args.quick, profile=args.profile,
            phases=tuple(p.strip() for p in args.only.split(",") if p.strip()) if args.only else PHASES,
        )


def operator_io_threads() -> int:
    """The operator's concurrency for blocking Vault and Kubernetes calls: its ``IO_THREADS`` executor if it
    sets one, else what ``asyncio.to_thread`` gets by default, ``min(32, cpus + 4)``."""
    try:
        from servicekey_operator import handlers

        return int(handlers.IO_THREADS)
    except (ImportError, AttributeError, TypeError, ValueError):
        return min(32, (os.cpu_count() or 1) + 4)


def spec_for(algorithm: str, key_size: int | None = None) -> dict[str, Any]:
    """A ServiceKey spec for ``algorithm`` that rotates at once (publishAhead 0s: the bench times rotations)."""
    spec: dict[str, Any] = {"algorithm": algorithm, "rotation": {"publishAhead": "0s"}}
    if key_size:
        spec["keySize"] = key_size
    return spec


def short(algorithm: str) -> str:
    """A DNS-label friendly algorithm name."""
    return algorithm.lower()


class Operator:
    """One operator subprocess plus what the bench reads from it."""

    def __init__(self, env: DevEnvironment, log_path: Path, name: str) -> None:
        self.log_path = log_path
        self.name = name
        log_path.unlink(missing_ok=True)
        self.handle = OperatorProcess(env.operator_env(), log_path, name=name)
        self.start_seconds = 0.0

    def start(self) -> Operator:
        """Start and wait for /healthz; remember how long that took."""
        started = time.monotonic()
        self.handle.start(timeout_seconds=120)
        self.start_seconds = time.monotonic() - started
        say(f"{self.name}: pid {self.pid}, healthy after {self.start_seconds:.1f}s")
        return self

    @property
    def pid(self) -> int | None:
        """The operator's process id."""
        return self.handle.process.pid

    def metrics(self) -> dict:
        """The operator's servicekey_* Prometheus samples (empty if it does not answer)."""
        try:
            return parse_prometheus(self.handle.metrics_text(), ("servicekey_",))
        except OSError:
            return {}

    def passes(self, samples: dict | None = None) -> float:
        """Reconcile passes so far."""
        return metric(samples if samples is not None else self.metrics(), "servicekey_reconcile_duration_seconds_count")

    def log_size(self) -> int:
        """Bytes logged so far (to slice the log per phase)."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        """What was logged after ``offset``."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def memory(self) -> dict[str, float]:
        """RSS of the operator (MiB): the whole process tree, the main process, and its high-water mark."""
        return {"rss_tree_mib": round(rss_bytes(self.pid) / MIB, 1),
                "rss_main_mib": round(rss_bytes(self.pid, tree=False) / MIB, 1),
                "peak_main_mib": round(peak_rss_bytes(self.pid) / MIB, 1)}

    def stop(self) -> float:
        """Graceful stop; return the seconds it took."""
        started = time.monotonic()
        self.handle.stop()
        return time.monotonic() - started


def operator_summary(before: dict, after: dict, per: int) -> dict[str, Any]:
    """What the operator's own metrics say happened between two scrapes."""
    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    passes = delta("servicekey_reconcile_duration_seconds_count")
    vault_ops = {}
    for (name, labels), _ in after.items():
        if name == "servicekey_vault_request_duration_seconds_count":
            operation = dict(labels).get("operation", "")
            vault_ops[operation] = delta(name, operation=operation)
    vault_time = {}
    for operation in vault_ops:
        seconds = delta("servicekey_vault_request_duration_seconds_sum", operation=operation)
        vault_time[operation] = round(seconds / vault_ops[operation], 4) if vault_ops[operation] else None
    errors = {dict(labels).get("reason", ""): value - before.get((name, labels), 0.0)
              for (name, labels), value in after.items()
              if name == "servicekey_reconcile_errors_total" and value - before.get((name, labels), 0.0) > 0}
    pass_seconds = delta("servicekey_reconcile_duration_seconds_sum")
    return {
        "reconcile_passes": passes,
        "reconcile_passes_per_key": round(passes / per, 2) if per else None,
        "mean_pass_seconds": round(pass_seconds / passes, 4) if passes else None,
        "vault_requests": {op: count for op, count in vault_ops.items() if count},
        "vault_requests_per_key": {op: round(count / per, 2) for op, count in vault_ops.items() if count and per},
        "vault_mean_seconds": {op: value for op, value in vault_time.items() if value is not None},
        "reconcile_errors": errors,
    }


class Bench:
    """The environment, the current operator and the results, shared by the phases."""

    def __init__(self, env: DevEnvironment, plan: Plan, out_dir: Path) -> None:
        self.env = env
        self.plan = plan
        self.out_dir = out_dir
        self.cluster = Cluster(env)
        self.operator: Operator | None = None
        self.results: dict[str, Any] = {}
        self.watchers: dict[str, Watcher] = {}

    # -- bookkeeping
    def save(self) -> Path:
        """Write what we have so far (a crash later keeps the finished phases)."""
        path = self.out_dir / "latest.json"
        path.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        return path

    def component_pids(self) -> dict[str, tuple[int | None, bool]]:
        """The processes whose CPU is accounted per phase (operator with its children)."""
        kube = self.env.kube
        return {"operator": (self.operator.pid if self.operator else None, True),
                "kube-apiserver": (kube.apiserver.pid, False), "etcd": (kube.etcd.pid, False),
                "kube-controller-manager": (kube.controller_manager.pid, False),
                "openbao": (self.env.vault.process.pid, True), "bench": (os.getpid(), False)}

    def profiler(self, label: str) -> Profiler | None:
        """A py-spy profile of the operator, when asked for with --profile."""
        if not self.plan.profile or self.operator is None or self.operator.pid is None:
            return None
        return Profiler(self.operator.pid, self.out_dir / f"operator-profile-{label}.txt").start()

    def servicekey_watcher(self, namespace: str) -> Watcher:
        """A watcher of Ready key ids in ``namespace``."""
        key = f"sk/{namespace}"
        if key not in self.watchers:
            self.watchers[key] = Watcher(key, self.cluster.custom.list_namespaced_custom_object, ready_kid,
                                         GROUP, VERSION, namespace, PLURAL).start()
        return self.watchers[key]

    def configmap_watcher(self, namespace: str) -> Watcher:
        """A watcher of published kids in ``namespace``."""
        key = f"cm/{namespace}"
        if key not in self.watchers:
            self.watchers[key] = Watcher(key, self.cluster.core.list_namespaced_config_map, configmap_kid,
                                         namespace).start()
        return self.watchers[key]

    def one_key(self, namespace: str, name: str, spec: dict[str, Any], timeout: float = KEY_TIMEOUT) -> float | None:
        """Create one ServiceKey and return the seconds until the watch shows it Ready (None: timeout)."""
        watcher = self.servicekey_watcher(namespace)
        started = time.monotonic()
        self.cluster.create_servicekey(namespace, name, spec)
        ready_at = watcher.wait(name, lambda kid: kid is not None, timeout)
        return None if ready_at is None else ready_at - started

    def wait_quiet(self, *, timeout: float, min_ready: float = 0.0, label: str = "",
                   timeline: list[tuple[float, float, float]] | None = None) -> dict[str, Any]:
        """Wait until the operator stops working and writing: its reconcile pass count and Vault request
        count (scraped every 1.5 s) unchanged, and no ServiceKey or managed ConfigMap write seen by a
        cluster-wide watch, for QUIET_SECONDS (and at least ``min_ready`` keys reported Ready in its
        metrics, after a pass or taken in from their status). Returns when the last change was seen."""
        assert self.operator is not None
        started = time.monotonic()
        writes = [Watcher("all-servicekeys", self.cluster.custom.list_cluster_custom_object, lambda _: None,
                          GROUP, VERSION, PLURAL).start(),
                  Watcher("managed-configmaps", self.cluster.core.list_config_map_for_all_namespaces,
                          lambda _: None, label_selector=MANAGED_SELECTOR).start()]
        try:
            for watcher in writes:
                watcher.listed.wait(60)
            last_change, fingerprint, passes = started, None, 0.0
            next_report = started + 10
            while True:
                now = time.monotonic()
                samples = self.operator.metrics()
                passes = self.operator.passes(samples)
                ready = metric(samples, "servicekey_ready_status", condition="True")
                current = (passes, ready, metric(samples, "servicekey_vault_request_duration_seconds_count"))
                if timeline is not None:
                    timeline.append((round(now - started, 2), passes, ready))
                if current != fingerprint:
                    fingerprint, last_change = current, now
                last_change = max([last_change, *(watcher.last_event for watcher in writes)])
                quiet_for = time.monotonic() - last_change
                if quiet_for >= QUIET_SECONDS and ready >= min_ready:
                    return {"settled": True, "seconds": round(max(0.0, last_change - started), 2),
                            "passes": passes, "ready": ready, "write_events_seen": sum(w.events for w in writes)}
                if now - started > timeout:
                    say(f"{label}: not quiet after {timeout:.0f}s (passes {passes:.0f}, Ready {ready:.0f})")
                    return {"settled": False, "seconds": round(now - started, 2), "passes": passes,
                            "ready": ready, "write_events_seen": sum(w.events for w in writes)}
                if now >= next_report:
                    say(f"{label}: settling, {passes:.0f} passes, {ready:.0f} Ready, "
                        f"{sum(w.events for w in writes)} writes seen")
                    next_report = now + 10
                time.sleep(1.5)
        finally:
            for watcher in writes:
                watcher.stop()

    def total_keys(self) -> int:
        """ServiceKeys that exist (a rough count kept by the phases)."""
        return int(self.results.get("_total_keys", 0))

    def add_keys(self, count: int) -> None:
        """Remember that ``count`` more ServiceKeys exist."""
        self.results["_total_keys"] = self.total_keys() + count

    # -- phases
    def phase_latency(self) -> None:
        """create -> Ready, one at a time, idle operator; the first key of each algorithm apart (warm-up)."""
        namespace = LATENCY_NAMESPACE
        self.cluster.create_namespace(namespace)
        self.servicekey_watcher(namespace)
        self.configmap_watcher(namespace)
        time.sleep(1.0)  # the watches have listed
        out: dict[str, Any] = {}
        for algorithm in self.plan.algorithms:
            spec = spec_for(algorithm)
            first = self.one_key(namespace, f"lat-{short(algorithm)}-warmup", spec)
            values, timeouts = [], 0
            cpu = CpuMeter(self.component_pids()).start()
            for index in range(self.plan.latency_samples):
                seconds = self.one_key(namespace, f"lat-{short(algorithm)}-{index:03d}", spec)
                if seconds is None:
                    timeouts += 1
                else:
                    values.append(seconds)
                time.sleep(PAUSE_BETWEEN_SAMPLES)
            used = cpu.stop()
            self.add_keys(self.plan.latency_samples + 1)
            stats = summary(values)
            out[algorithm] = {**stats, "first_key_seconds": round(first, 4) if first else None,
                              "timeouts": timeouts, "samples": [round(v, 4) for v in values],
                              "operator_cpu_seconds_per_key": round(used["operator"] / max(len(values), 1), 4)}
            say(f"latency {algorithm}: p50 {stats['p50']}s p95 {stats['p95']}s p99 {stats['p99']}s "
                f"(n={stats['n']}, first key {first and round(first, 3)}s, timeouts {timeouts})")
        self.results["latency"] = out
        self.save()

    def phase_rotation(self) -> None:
        """Annotation set -> new kid in the ConfigMap, on the idle ES256 latency keys."""
        namespace = LATENCY_NAMESPACE
        watcher = self.configmap_watcher(namespace)
        values, timeouts = [], 0
        for index in range(self.plan.rotation_samples):
            name = f"lat-es256-{index % self.plan.latency_samples:03d}"
            configmap = f"{name}-public"
            before = watcher.values_of(configmap)
            started = time.monotonic()
            self.cluster.rotate(namespace, name, f"bench-{index}-{time.time_ns()}")
            seen = watcher.wait(configmap, lambda kid, before=before: kid is not None and kid not in before,
                                KEY_TIMEOUT)
            if seen is None:
                timeouts += 1
            else:
                values.append(seen - started)
            time.sleep(PAUSE_BETWEEN_SAMPLES)
        stats = summary(values)
        self.results["rotation"] = {**stats, "algorithm": "ES256", "timeouts": timeouts,
                                    "samples": [round(v, 4) for v in values]}
        say(f"rotation ES256: p50 {stats['p50']}s p95 {stats['p95']}s (n={stats['n']}, timeouts {timeouts})")
        self.save()

    def phase_burst(self) -> None:
        """ES256 create -> Ready, sequentially, while RS256/4096 keys are being generated."""
        namespace = BURST_NAMESPACE
        self.cluster.create_namespace(namespace)
        watcher = self.servicekey_watcher(namespace)
        time.sleep(1.0)
        rsa_names = [f"burst-rs4096-{index:02d}" for index in range(self.plan.burst_rsa_keys)]
        cpu = CpuMeter(self.component_pids()).start()
        started = time.monotonic()
        creator = concurrent.futures.ThreadPoolExecutor(1)
        creation = creator.submit(self.cluster.create_many, namespace, rsa_names, spec_for("RS256", 4096))

        def rsa_pending() -> int:
            with watcher.condition:
                return sum(1 for name in rsa_names if watcher.values.get(name) is None)

        values, timeouts, index = [], 0, 0
        deadline = started + 300
        while (not creation.done() or rsa_pending()) and index < self.plan.burst_max_samples \
                and time.monotonic() < deadline:
            seconds = self.one_key(namespace, f"burst-es256-{index:03d}", spec_for("ES256"))
            index += 1
            if seconds is None:
                timeouts += 1
            else:
                values.append(seconds)
        creation.result(timeout=120)
        creator.shutdown()
        rsa_ready = []
        for name in rsa_names:
            at = watcher.wait(name, lambda kid: kid is not None, max(1.0, deadline - time.monotonic()))
            if at is not None:
                rsa_ready.append(at - started)
        used = cpu.stop()
        self.add_keys(len(rsa_names) + index)
        stats = summary(values)
        idle = self.results.get("latency", {}).get("ES256", {})
        self.results["burst"] = {
            "rsa_keys": len(rsa_names), "rsa_key_size": 4096,
            "rsa_all_ready_seconds": round(max(rsa_ready), 3) if rsa_ready else None,
            "rsa_ready": summary(rsa_ready), "rsa_timeouts": len(rsa_names) - len(rsa_ready),
            "es256_during_burst": {**stats, "timeouts": timeouts, "samples": [round(v, 4) for v in values]},
            "es256_idle_p99": idle.get("p99"), "es256_idle_p50": idle.get("p50"),
            "p99_ratio_burst_over_idle": round(stats["p99"] / idle["p99"], 2) if stats["p99"] and idle.get("p99")
            else None,
            "cpu_seconds": used,
        }
        say(f"burst: {len(rsa_ready)}/{len(rsa_names)} RS256/4096 ready in "
            f"{self.results['burst']['rsa_all_ready_seconds']}s; ES256 meanwhile p50 {stats['p50']}s "
            f"p99 {stats['p99']}s (n={stats['n']}) vs idle p99 {idle.get('p99')}s")
        self.save()

    def phase_throughput(self, algorithm: str, count: int) -> dict[str, Any]:
        """``count`` ServiceKeys created at once from a thread pool; time until the list shows all Ready."""
        assert self.operator is not None
        namespace = f"bench-throughput-{short(algorithm)}"
        self.cluster.create_namespace(namespace)
        time.sleep(1.0)  # the controller manager's writes for a new namespace are not the operator's
        names = [f"tp-{short(algorithm)}-{index:05d}" for index in range(count)]
        timeout = 120 + count * (0.5 if algorithm == "ES256" or algorithm == "EdDSA" else 1.5)
        say(f"throughput {algorithm}: creating {count} ServiceKeys (timeout {timeout:.0f}s)")
        api_before, bench_calls_before = self.cluster.apiserver_requests(), dict(self.cluster.calls)
        metrics_before, log_offset = self.operator.metrics(), self.operator.log_size()
        etcd_before = self.cluster.etcd_counters()
        profiler = self.profiler(f"throughput-{short(algorithm)}") if algorithm == "ES256" else None
        cpu = CpuMeter(self.component_pids()).start()
        started = time.monotonic()
        creator = concurrent.futures.ThreadPoolExecutor(1)
        creation = creator.submit(self.cluster.create_many, namespace, names, spec_for(algorithm))
        ready_at: dict[str, float] = {}
        polls, peak_rss, next_report, slowest_poll = 0, 0, started + 5, 0.0
        interval = min(5.0, max(0.5, count / 1000))
        timeline: list[tuple[float, int]] = []
        while len(ready_at) < count and time.monotonic() - started < timeout:
            time.sleep(interval)
            asked = time.monotonic()
            items = self.cluster.list_servicekeys(namespace, from_cache=True)
            polls += 1
            slowest_poll = max(slowest_poll, time.monotonic() - asked)
            now = time.monotonic() - started
            for item in items:
                name = item["metadata"]["name"]
                if name not in ready_at and ready_kid(item):
                    ready_at[name] = now
            timeline.append((round(now, 2), len(ready_at)))
            peak_rss = max(peak_rss, rss_bytes(self.operator.pid))
            if time.monotonic() >= next_report:
                created = len(items)
                say(f"throughput {algorithm}: {now:6.1f}s created {created}/{count} ready {len(ready_at)}/{count}")
                next_report = time.monotonic() + 5
        all_ready = max(ready_at.values()) if len(ready_at) == count else None
        create_seconds, created_at, _ = creation.result(timeout=300)
        creator.shutdown()
        self.add_keys(count)
        settle = self.wait_quiet(timeout=120 + count * 0.1, label=f"throughput {algorithm}")
        used = cpu.stop()
        profile = profiler.stop() if profiler else None
        memory = self.operator.memory()
        memory["peak_tree_mib_during"] = round(max(peak_rss, rss_bytes(self.operator.pid)) / MIB, 1)
        metrics_after = self.operator.metrics()
        api_after = self.cluster.apiserver_requests()
        bench_calls = diff_counts(dict(self.cluster.calls), bench_calls_before)
        api_calls = diff_counts(api_after, api_before)
        operator_calls = {call: value - bench_calls.get(call, 0) for call, value in api_calls.items()
                          if value - bench_calls.get(call, 0) > 0 and not call.startswith("WATCH")}
        latencies = [ready_at[name] - (created_at[name] - started) for name in ready_at if name in created_at]
        elapsed = all_ready if all_ready is not None else time.monotonic() - started
        result = {
            "algorithm": algorithm, "keys": count, "ready": len(ready_at), "all_ready": all_ready is not None,
            "all_ready_seconds": round(all_ready, 2) if all_ready is not None else None,
            "keys_per_second": round(len(ready_at) / elapsed, 2) if elapsed else None,
            "create_seconds": round(create_seconds, 2), "poll_interval_seconds": interval, "polls": polls,
            "slowest_poll_seconds": round(slowest_poll, 2),
            "create_to_ready": summary(latencies),
            "ready_curve": curve(list(ready_at.values())),
            "timeline": timeline,
            "settle_after_all_ready": settle,
            "cpu_seconds": used,
            "operator_cpu_seconds_per_key": round(used["operator"] / count, 4),
            "memory": memory,
            "api_requests": {call: int(value) for call, value in sorted(operator_calls.items())},
            "api_requests_per_key": {call: round(value / count, 2) for call, value in sorted(operator_calls.items())},
            "api_write_requests_per_key": round(sum(value for call, value in operator_calls.items()
                                                    if call.split()[0] in ("POST", "PUT", "PATCH", "DELETE")
                                                    and "->" not in call and not call.endswith(("endpoints", "leases")))
                                                / count, 2),
            "bench_requests": {call: int(value) for call, value in bench_calls.items()},
            "operator": operator_summary(metrics_before, metrics_after, count),
            "events": self.cluster.event_reasons(namespace),
            "etcd": etcd_summary(self.cluster.etcd_counters(), etcd_before),
            "log_lines": len(self.operator.log_since(log_offset).splitlines()),
            "log_top": log_patterns(self.operator.log_since(log_offset)),
        }
        if profile:
            result["profile"] = profile
        say(f"throughput {algorithm}: {len(ready_at)}/{count} Ready in {elapsed:.1f}s "
            f"({result['keys_per_second']} keys/s); operator CPU {used['operator']:.1f}s, "
            f"RSS {memory['rss_tree_mib']} MiB; {result['api_write_requests_per_key']} API writes/key")
        return result

    def phase_restart(self) -> None:
        """Stop the operator; start a new one over every Ready key; time until quiet; count its writes."""
        assert self.operator is not None
        stop_seconds = self.operator.stop()
        say(f"restart: operator stopped in {stop_seconds:.1f}s; taking the before picture")
        servicekeys = self.cluster.list_servicekeys()
        total = len(servicekeys)
        vault_paths = [s["status"]["vaultPath"] for s in servicekeys if (s.get("status") or {}).get("vaultPath")]
        kv_before = self.cluster.kv_versions(vault_paths)
        cm_before = {object_key(c): c for c in self.cluster.list_configmaps()}
        sk_before = {object_key(s): s for s in servicekeys}
        api_before = self.cluster.apiserver_requests()
        bench_calls_before = dict(self.cluster.calls)
        say(f"restart: {total} ServiceKeys, {sum(kv_before.values())} KV versions, {len(cm_before)} ConfigMaps; "
            "starting a new operator")
        self.operator = Operator(self.env, self.out_dir / "operator-restarted.log", "operator-restarted").start()
        profiler = self.profiler("restart")
        timeline: list[tuple[float, float, float]] = []
        settle = self.wait_quiet(timeout=120 + total * 0.3, min_ready=total, label="restart", timeline=timeline)
        profile = profiler.stop() if profiler else None
        settled_seconds = self.operator.start_seconds + settle["seconds"]
        cpu = cpu_seconds(self.operator.pid)
        memory = self.operator.memory()
        samples = self.operator.metrics()
        api_after = self.cluster.apiserver_requests()
        bench_calls = diff_counts(dict(self.cluster.calls), bench_calls_before)
        kv_after = self.cluster.kv_versions(vault_paths)
        cm_after = {object_key(c): c for c in self.cluster.list_configmaps()}
        sk_after = {object_key(s): s for s in self.cluster.list_servicekeys()}
        cm_writes = sum(1 for key, cm in cm_after.items()
                        if key not in cm_before
                        or cm["metadata"]["resourceVersion"] != cm_before[key]["metadata"]["resourceVersion"])
        sk_changes: dict[str, int] = {}
        for key, obj in sk_after.items():
            old = sk_before.get(key)
            if old is None or obj["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"]:
                continue
            parts = [part for part, read in (("status", lambda o: o.get("status")),
                                             ("annotations", lambda o: o["metadata"].get("annotations")),
                                             ("finalizers", lambda o: o["metadata"].get("finalizers")),
                                             ("spec", lambda o: o.get("spec"))) if read(obj) != read(old)]
            label = "+".join(parts) or "metadata-only"
            sk_changes[label] = sk_changes.get(label, 0) + 1
        api_calls = diff_counts(api_after, api_before)
        operator_calls = {call: int(value - bench_calls.get(call, 0)) for call, value in api_calls.items()
                          if value - bench_calls.get(call, 0) > 0 and not call.startswith("WATCH")}
        vault_writes = sum(kv_after.values()) - sum(kv_before.values())
        self.results["restart"] = {
            "servicekeys": total, "stop_seconds": round(stop_seconds, 2),
            "healthy_seconds": round(self.operator.start_seconds, 2),
            "settled": settle["settled"], "settled_seconds": round(settled_seconds, 2),
            "reconcile_passes": settle["passes"], "reported_ready": settle["ready"],
            "operator_cpu_seconds": round(cpu, 2), "memory": memory,
            "vault_writes": vault_writes, "kv_versions_before": sum(kv_before.values()),
            "configmap_writes": cm_writes, "servicekey_writes": sum(sk_changes.values()),
            "servicekey_writes_by_part": sk_changes,
            "api_requests": operator_calls,
            "api_writes": {call: value for call, value in operator_calls.items()
                           if call.split()[0] in ("POST", "PUT", "PATCH", "DELETE")},
            "operator": operator_summary({}, samples, total),
            "timeline": timeline,
            "log_top": log_patterns(self.operator.log_since(0)),
        }
        if profile:
            self.results["restart"]["profile"] = profile
        say(f"restart: settled {settled_seconds:.1f}s after start ({settle['passes']:.0f} passes, "
            f"CPU {cpu:.1f}s); Vault writes {vault_writes}, ConfigMap writes {cm_writes}, "
            f"ServiceKey writes {sum(sk_changes.values())} {sk_changes}")
        self.save()

    def phase_floor(self) -> None:
        """The same work without the operator (stopped by now): sequential and from thread pools."""
        out = {}
        for workers in self.plan.floor_workers:
            etcd_before = self.cluster.etcd_counters()
            cpu = CpuMeter(self.component_pids())
            out[str(workers)] = floor.run_floor(self.cluster, f"bench-floor-{workers}", self.plan.keys, workers,
                                                on_work_start=cpu.start)
            out[str(workers)]["cpu_seconds"] = cpu.stop()
            out[str(workers)]["etcd"] = etcd_summary(self.cluster.etcd_counters(), etcd_before)
            self.save()
        throughput = self.results.get("throughput", {}).get("ES256", {})
        operator_seconds = throughput.get("all_ready_seconds")
        self.results["floor"] = {
            "runs": out, "same_concurrency_workers": operator_io_threads(),
            "ratio_operator_over_floor": {
                workers: round(operator_seconds / run["seconds"], 1) if operator_seconds and run["seconds"] else None
                for workers, run in out.items()},
        }
        say(f"floor: ratios operator/floor {self.results['floor']['ratio_operator_over_floor']}")
        self.save()


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    model = ""
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release()}


def wait_for_quiet_machine(max_seconds: float, threshold: float = 1.0) -> None:
    """Wait (bounded) until nothing else keeps the machine busy."""
    deadline = time.monotonic() + max_seconds
    while max_seconds > 0 and load_average() >= threshold and time.monotonic() < deadline:
        say(f"waiting for a quiet machine: load average {load_average():.2f}")
        time.sleep(10)


def run_phase(bench: Bench, name: str, action: Callable[[], None]) -> None:
    """Run one phase; a failure is recorded and the next phases still run."""
    say(f"=== {name} (load average {load_average():.1f})")
    started = time.monotonic()
    load_before = load_average()
    try:
        action()
    except Exception as failed:
        say(f"{name} failed: {type(failed).__name__}: {failed}")
        bench.results.setdefault("errors", []).append(f"{name}: {type(failed).__name__}: {failed}"[:500])
    bench.results.setdefault("phase_seconds", {})[name] = round(time.monotonic() - started, 1)
    bench.results.setdefault("load_average", {})[name] = [round(load_before, 2), round(load_average(), 2)]
    bench.save()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=0, help="N for the throughput phase (default 1000, quick 100)")
    parser.add_argument("--algorithms", default="ES256,EdDSA,RS256",
                        help="comma-separated; ES256 gets N keys, the others N/5 (default ES256,EdDSA,RS256)")
    parser.add_argument("--samples", type=int, default=0, help="latency samples per algorithm (default 30, quick 10)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about 3 minutes)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the operator with py-spy during the ES256 throughput and the restart")
    parser.add_argument("--only", default="", help=f"comma-separated subset of the phases {','.join(PHASES)} "
                        "(for development; docs are not updated)")
    parser.add_argument("--quiet-machine", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for the 1-minute load average to drop below 1 "
                        "(the box may be shared with other test runs)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ even on a full run")
    args = parser.parse_args(argv)
    plan = Plan.from_args(args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    run_started = time.monotonic()
    arguments = sys.argv[1:] if argv is None else argv
    command = " ".join(["python3 -m bench.run", *arguments])
    say(f"plan: {plan}")
    wait_for_quiet_machine(args.quiet_machine)
    with DevEnvironment() as env:
        env.install_crds()
        bench = Bench(env, plan, RESULTS_DIR)
        bench.results.update({
            "command": command,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "plan": asdict(plan), "machine": machine(), "load_average_at_start": round(load_average(), 2),
            "environment": {"kubernetes": env.kube.version(), "openbao": env.vault.version(),
                            "startup_seconds": round(env.startup_seconds, 1)},
        })
        try:
            bench.operator = Operator(env, RESULTS_DIR / "operator.log", "operator").start()
            bench.results["operator_start"] = {"healthy_seconds": round(bench.operator.start_seconds, 2),
                                               "memory_idle": bench.operator.memory()}
            for name, action in (("latency", bench.phase_latency), ("rotation", bench.phase_rotation),
                                 ("burst", bench.phase_burst)):
                if name in plan.phases:
                    run_phase(bench, name, action)
            bench.results["throughput"] = {}
            for algorithm in plan.algorithms if "throughput" in plan.phases else ():
                count = plan.keys if algorithm == "ES256" else plan.secondary_keys

                def throughput(algorithm: str = algorithm, count: int = count) -> None:
                    bench.results["throughput"][algorithm] = bench.phase_throughput(algorithm, count)

                run_phase(bench, f"throughput-{algorithm}", throughput)
            if bench.operator:
                bench.results["memory_at_end"] = {"servicekeys": bench.total_keys(), **bench.operator.memory()}
            if "restart" in plan.phases:
                run_phase(bench, "restart", bench.phase_restart)
        finally:
            for watcher in bench.watchers.values():
                watcher.stop()
            if bench.operator:
                bench.operator.stop()
        if "floor" in plan.phases:
            bench.operator = None
            run_phase(bench, "floor", bench.phase_floor)
    bench.results.pop("_total_keys", None)
    bench.results["total_seconds"] = round(time.monotonic() - run_started, 1)
    path = bench.save()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS_DIR / f"{stamp}-{'quick' if plan.quick else 'full'}.json").write_text(path.read_text())
    update_docs = not plan.quick and not args.no_docs and plan.phases == PHASES
    chart = DOCS_DIR / "benchmarks.png" if update_docs else RESULTS_DIR / "latest.png"
    report.render_chart(bench.results, chart)
    say(f"chart: {chart}")
    if update_docs:
        report.update_markdown(bench.results, DOCS_DIR / "benchmarks.md")
        say(f"figures written to {DOCS_DIR / 'benchmarks.md'}")
    print(report.text_summary(bench.results), flush=True)
    say(f"done in {bench.results['total_seconds']:.0f}s; results {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

