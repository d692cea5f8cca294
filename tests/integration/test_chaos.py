"""Chaos: a seeded workload of creates, rotations, spec changes and deletes while the operator is
SIGKILLed, OpenBao and kube-apiserver are restarted and ConfigMaps vanish; then everything converges
and the invariant checker finds nothing.

CI runs a short seeded round. A longer one:
    SERVICEKEY_CHAOS_SECONDS=600 SERVICEKEY_CHAOS_KEYS=300 python3 -m pytest tests/integration/test_chaos.py -s
and SERVICEKEY_CHAOS_SEED=<n> replays a failed round (the seed is printed and in every failure message).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import time
from collections import Counter
from collections.abc import Callable

import hvac.exceptions
import pytest
import urllib3.exceptions
from kubernetes.client.rest import ApiException

from devcluster.environment import DevEnvironment
from devcluster.openbao import OpenBaoServer
from devcluster.operator_process import OperatorProcess
from servicekey_operator import invariants
from servicekey_operator.spec import rotate_request_digest
from tests.support import MakeNamespace, ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("SERVICEKEY_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
SECONDS = float(os.environ.get("SERVICEKEY_CHAOS_SECONDS", "45"))
KEYS = int(os.environ.get("SERVICEKEY_CHAOS_KEYS", "40"))
CONVERGENCE_BOUND_SECONDS = 120
ALGORITHMS = ("ES256", "EdDSA", "ES384", "RS256")
TRANSIENT = (ApiException, urllib3.exceptions.HTTPError, OSError)


class Workload:
    """The seeded sequence of user actions, and a ledger of every rotation request made."""

    def __init__(self, servicekeys: ServiceKeys, rng: random.Random, vault: OpenBaoServer,
                 intruder: ServiceKeys) -> None:
        self.servicekeys = servicekeys
        self.vault = vault
        # A hostile tenant that the chaos namespace accepts copies from: it names its keys like ours.
        self.intruder = intruder
        self.intrusions: set[str] = set()
        self.rng = rng
        self.live: dict[str, str] = {}          # name -> algorithm currently asked for
        self.requested: Counter[str] = Counter()  # name -> rotation requests (annotation values)
        self.deleted: set[str] = set()
        self.deletion_policy: dict[str, str] = {}
        self.operations = Counter()
        self.next_index = 0

    def step(self) -> None:
        """One random action; API errors while the apiserver is down are part of the weather."""
        choice = self.rng.random()
        with contextlib.suppress(*TRANSIENT):
            if choice < 0.35 and self.next_index < KEYS:
                self._create()
            elif choice < 0.6 and self.live:
                self._rotate()
            elif choice < 0.75 and self.live:
                self._change_algorithm()
            elif choice < 0.8 and self.live:
                self._intrude()
            elif self.live and len(self.live) > 5:
                self._delete()

    def _create(self) -> None:
        name = f"chaos-{self.next_index}"
        self.next_index += 1
        algorithm = self.rng.choice(ALGORITHMS)
        spec = {"algorithm": algorithm, "deletionPolicy": self.rng.choice(["Retain", "Delete"]),
                "rotation": {"retainPrevious": self.rng.randint(0, 3)}}
        if self.rng.random() < 0.2:
            # rotation.period is at least a minute: a key seeded that old ticks within the workload.
            spec["rotation"]["period"] = "1m"
            self.servicekeys.seed_key(name, algorithm, datetime.timedelta(seconds=self.rng.uniform(45, 58)),
                                      vault=self.vault)
        self.servicekeys.create(name, spec)
        self.live[name] = algorithm
        self.deletion_policy[name] = spec["deletionPolicy"]
        self.operations["create"] += 1

    def _rotate(self) -> None:
        name = self.rng.choice(sorted(self.live))
        value = f"r{self.requested[name] + 1}"
        self.servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": value}}})
        self.requested[name] += 1
        self.operations["rotate"] += 1

    def _change_algorithm(self) -> None:
        name = self.rng.choice(sorted(self.live))
        algorithm = self.rng.choice([a for a in ALGORITHMS if a != self.live[name]])
        self.servicekeys.patch(name, {"spec": {"algorithm": algorithm}})
        self.live[name] = algorithm
        self.operations["spec-change"] += 1

    def _intrude(self) -> None:
        name = self.rng.choice(sorted(set(self.live) - self.intrusions) or sorted(self.live))
        if name in self.intrusions:
            return
        self.intruder.create(name, {"algorithm": "ES256", "publicKey": {"namespaces": [self.servicekeys.namespace]}})
        self.intrusions.add(name)
        self.operations["intrude"] += 1

    def _delete(self) -> None:
        name = self.rng.choice(sorted(self.live))
        self.servicekeys.delete(name)
        del self.live[name]
        self.deleted.add(name)
        self.operations["delete"] += 1


def _record_versions(vault: OpenBaoServer, namespace: str, name: str) -> list[dict[str, str]]:
    kv = vault.client().secrets.kv.v2
    path = f"servicekeys/{namespace}/{name}"
    current = int(kv.read_secret_metadata(path=path, mount_point="secret")["data"]["current_version"])
    return [kv.read_secret_version(path=path, version=version, mount_point="secret",
                                   raise_on_deleted_version=False)["data"]["data"] for version in range(1, current + 1)]


def test_everything_converges_and_holds_the_invariants_after_chaos(
        dev_env: DevEnvironment, persistent_vault: OpenBaoServer, start_operator: Callable[..., OperatorProcess],
        servicekeys: ServiceKeys, kube_client, make_namespace: MakeNamespace):
    rng = random.Random(SEED)
    print(f"chaos seed {SEED}: {KEYS} keys, {SECONDS:.0f}s of workload")
    env = {"VAULT_ADDR": persistent_vault.addr, "VAULT_TOKEN": persistent_vault.root_token}
    operator = start_operator(**env)
    intruder = ServiceKeys(kube_client, make_namespace(), dev_env)
    servicekeys.core.patch_namespace(servicekeys.namespace, {"metadata": {"annotations": {
        "servicekey.io/accept-from": intruder.namespace}}})
    workload = Workload(servicekeys, rng, persistent_vault, intruder)
    faults: Counter[str] = Counter()
    deadline = time.monotonic() + SECONDS
    next_fault = time.monotonic() + rng.uniform(3, 8)
    while time.monotonic() < deadline:
        workload.step()
        if time.monotonic() >= next_fault:
            fault = rng.choice(["kill-operator", "kill-operator", "restart-openbao", "restart-apiserver",
                                "delete-configmaps"])
            if fault == "kill-operator":
                operator.kill()
                operator = start_operator(**env)
            elif fault == "restart-openbao":
                persistent_vault.restart()
            elif fault == "restart-apiserver":
                dev_env.kube.apiserver.stop()
                dev_env.kube.start_apiserver()
            else:
                with contextlib.suppress(*TRANSIENT):
                    for configmap in servicekeys.core.list_namespaced_config_map(servicekeys.namespace).items:
                        if configmap.metadata.name.endswith("-public") and rng.random() < 0.5:
                            servicekeys.core.delete_namespaced_config_map(configmap.metadata.name,
                                                                          servicekeys.namespace)
            faults[fault] += 1
            next_fault = time.monotonic() + rng.uniform(4, 10)
        time.sleep(rng.uniform(0.05, 0.3))
    context = f"(seed {SEED}, operations {dict(workload.operations)}, faults {dict(faults)})"

    converging_since = time.monotonic()

    def converged() -> bool:
        with contextlib.suppress(*TRANSIENT):
            for name, algorithm in workload.live.items():
                obj = servicekeys.get(name)
                status = (obj or {}).get("status") or {}
                if not (ready_condition(obj or {}).get("status") == "True" and status.get("algorithm") == algorithm
                        and ready_condition(obj)["observedGeneration"] == obj["metadata"]["generation"]):
                    return False
            return all(servicekeys.get(name) is None for name in workload.deleted)
        return False
    wait_for(converged, CONVERGENCE_BOUND_SECONDS, f"every ServiceKey to converge {context}", interval=0.5)

    def blocking_violations() -> list[invariants.Violation]:
        violations = invariants.check(kube_client, persistent_vault.client(), namespaces=[servicekeys.namespace],
                                      etcd_endpoint=dev_env.kube.etcd_endpoint)
        return [v for v in violations if not v.informational]
    # Ready is not the end: a ConfigMap repaired on the next retry, and the garbage collector removing the
    # deleted keys' ConfigMaps, both take a moment; the bound covers them.
    remaining = CONVERGENCE_BOUND_SECONDS - (time.monotonic() - converging_since)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not blocking_violations(), max(remaining, 1), "the checker to pass", interval=2)
    convergence_seconds = time.monotonic() - converging_since
    blocking = blocking_violations()
    assert blocking == [], f"invariant violations {context}: {[str(v) for v in blocking]}"

    for name in workload.live:
        versions = _record_versions(persistent_vault, servicekeys.namespace, name)
        answered = [v["rotate_annotation"] for v in versions if v.get("rotation_reason") == "Requested"]
        assert len(answered) == len(set(answered)), f"{name}: a rotation request answered twice {context}"
        assert len(answered) <= workload.requested[name], f"{name}: more rotations than requests {context}"
        if workload.requested[name]:
            assert versions[-1]["rotate_annotation"] == rotate_request_digest(f"r{workload.requested[name]}"), \
                f"{name}: the last request is unanswered {context}"
    # The intruder's copies never replaced a ConfigMap of ours (the checker above would have said so too).
    for name in workload.intrusions & set(workload.live):
        labels = servicekeys.configmap(f"{name}-public").metadata.labels
        assert "servicekey.io/source-namespace" not in labels, f"{name}: an intruder's copy replaced ours {context}"
    metadata = persistent_vault.client().secrets.kv.v2
    for name in (n for n in workload.deleted if workload.deletion_policy[n] == "Delete"):
        with pytest.raises(hvac.exceptions.InvalidPath):
            metadata.read_secret_metadata(path=f"servicekeys/{servicekeys.namespace}/{name}", mount_point="secret")
    print(f"chaos seed {SEED}: converged in {convergence_seconds:.1f}s; {context}; "
          f"{sum(workload.requested.values())} rotation requests; violations: 0")
