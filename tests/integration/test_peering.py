"""Several replicas, as the chart runs them with ``peering.enabled``: kopf peering keeps one replica active
and the others paused, a crashed active replica is replaced once its peering lease runs out, and across
all of it every request still yields exactly one key (invariant 4).

What kopf (1.45) does, and what these tests rely on:

- Every replica PATCHes its keep-alive ``{priority, lifetime, lastseen}`` into the ClusterKopfPeering's
  status, under its identity (``$POD_ID`` if set), every ``lifetime - 5..10`` s; ``lifetime``
  (SERVICEKEY_PEERING_LIFETIME) is 60 s by default. A replica that sees a live peer of higher priority
  pauses: it closes its watch streams and stops its daemons, so it handles nothing.
- With a peering name (``SERVICEKEY_PEERING``) peering is mandatory, and a replica starts *paused* until
  its first look at the peering object; so a replica that never becomes active logs nothing about it.
  A replica that becomes active logs ``Resuming operations after the pause...``; an active one that
  sees a higher priority appear logs ``Pausing operations in favour of [...]``.
- A graceful stop (SIGTERM) removes the replica's entry at once. A crashed one (SIGKILL) leaves it
  behind: the paused replicas sleep until that entry's ``lastseen + lifetime`` and then re-evaluate, so
  the hand-over takes whatever was left of the dead replica's lease — up to ``lifetime``.
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, metric_samples, metric_value, wait_for

pytestmark = pytest.mark.integration
StartOperator = Callable[..., OperatorProcess]

PEERING_CRDS = REPO_ROOT / "charts" / "servicekey-operator" / "crds" / "kopf.dev_peerings.yaml"
RESUMED = "Resuming operations after the pause."     # kopf: this replica has become the active one
PAUSED = "Pausing operations in favour of"           # kopf: an active replica saw a higher priority
SETTLE_SECONDS = 30.0       # replicas started -> exactly one active, every keep-alive in the peering object
HANDOVER_SLACK = 15.0       # lease expiry -> the new active replica has listed, reconciled and written status
GRACEFUL_HANDOVER = 10.0    # SIGTERM of the active replica -> the next one has handled a new request


@dataclass
class Replica:
    """One operator process in the peering, under a fixed identity (what kopf reads from ``$POD_ID``)."""

    pod_id: str
    process: OperatorProcess

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records (SERVICEKEY_LOG_FORMAT=json, as the chart sets it)."""
        parsed = []
        for line in self.process.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                parsed.append(record)
        return parsed

    def active(self) -> bool:
        """Whether kopf's last word on peering for this replica was to resume (it starts paused)."""
        verdicts = [r["message"] for r in self.records() if str(r.get("message", "")).startswith((RESUMED, PAUSED))]
        return bool(verdicts) and verdicts[-1].startswith(RESUMED)

    def acted_in(self, namespace: str) -> list[str]:
        """Log messages of handlers and daemons about ServiceKeys and ConfigMaps in ``namespace``."""
        return [record["message"] for record in self.records()
                if (record.get("object") or {}).get("namespace") == namespace]

    def wrote(self, kid: str) -> int:
        """How many times this replica wrote the key ``kid`` to Vault (the reconciler logs each write)."""
        return sum(str(r.get("message", "")).startswith(f"wrote key {kid} ") for r in self.records())


@pytest.fixture(scope="module")
def peering_crds(dev_env: DevEnvironment) -> None:
    """kopf's peering CRDs, from the chart's crds/ (left installed: they are the same for every test)."""
    dev_env.kube.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
    dev_env.kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")


@pytest.fixture
def peering(dev_env: DevEnvironment, peering_crds: None) -> Iterator[str]:
    """A ClusterKopfPeering as templates/kopfpeering.yaml renders it for a cluster-wide operator.

    Each test gets its own name: a SIGKILLed replica's entry outlives its test by up to a lifetime, and
    must not pause the next test's replicas.
    """
    name = f"servicekey-operator-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "servicekey-operator"}}}
    dev_env.kube.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(body))
    yield name
    dev_env.kube.kubectl("delete", "clusterkopfpeering", name, "--ignore-not-found", "--wait=false", check=False)


def peers(dev_env: DevEnvironment, peering: str) -> dict[str, dict[str, Any]]:
    """The keep-alives in the peering object: identity -> {priority, lifetime, lastseen}."""
    reply = dev_env.kube.kubectl("get", "clusterkopfpeering", peering, "-o", "json")
    return json.loads(reply.stdout).get("status") or {}


def lease_end(entry: dict[str, Any]) -> float:
    """When other replicas give up on a peer: its last keep-alive plus its lifetime (epoch seconds)."""
    return datetime.datetime.fromisoformat(entry["lastseen"]).timestamp() + float(entry["lifetime"])


def the_active(replicas: list[Replica], dev_env: DevEnvironment, peering: str) -> Replica | None:
    """The single active replica, if the replicas agree on one and it holds the highest priority."""
    live = [replica for replica in replicas if replica.process.process.running()]
    entries = peers(dev_env, peering)
    if not all(replica.pod_id in entries for replica in live):
        return None
    active = [replica for replica in live if replica.active()]
    highest = max(live, key=lambda replica: entries[replica.pod_id]["priority"])
    return active[0] if active == [highest] else None


@pytest.fixture
def start_replicas(start_operator: StartOperator, peering: str) -> Callable[[int], list[Replica]]:
    """Start ``count`` replicas configured as the chart's Deployment configures its pods (a 15 s lease keeps
    the SIGKILL tests short; the chart defaults to 20 s)."""
    def start(count: int) -> list[Replica]:
        replicas = []
        for index in range(count):
            pod_id = f"{peering}-{index}"
            replicas.append(Replica(pod_id, start_operator(SERVICEKEY_PEERING=peering, SERVICEKEY_LOG_FORMAT="json",
                                                           SERVICEKEY_PEERING_LIFETIME="15", POD_ID=pod_id)))
        return replicas
    return start


def settle(replicas: list[Replica], dev_env: DevEnvironment, peering: str) -> Replica:
    """Wait until exactly one replica is active, and it is the highest-priority one; return it."""
    return wait_for(lambda: the_active(replicas, dev_env, peering), SETTLE_SECONDS,
                    "exactly one active replica, the highest-priority one", interval=0.2)


def assert_consistent(servicekeys: ServiceKeys, name: str, versions: int) -> list[str]:
    """Exactly ``versions`` keys in Vault, and the ConfigMap and status name the latest; return every kid."""
    mount, path = servicekeys.vault_path(name)
    assert servicekeys.vault_versions(mount, path) == versions, f"{name}: one Vault version per request"
    kids = [servicekeys.vault_secret(mount, path, version)["kid"] for version in range(1, versions + 1)]
    configmap = servicekeys.configmap(f"{name}-public")
    assert configmap.data["kid"] == kids[-1] == servicekeys.get(name)["status"]["keyId"]
    assert configmap.data["public.pem"] == servicekeys.vault_secret(mount, path)["public_key"]
    return kids


def rotate(servicekeys: ServiceKeys, name: str, value: str) -> None:
    """Request one rotation with the annotation."""
    servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": value}}})


@pytest.mark.parametrize("count", [2, 3])
def test_only_the_highest_priority_replica_acts(start_replicas, servicekeys: ServiceKeys, dev_env: DevEnvironment,
                                                peering: str, count: int):
    replicas = start_replicas(count)
    active = settle(replicas, dev_env, peering)
    names = [f"shared-{index}" for index in range(4)]

    for name in names:
        servicekeys.create(name, {"algorithm": "ES256"})
    first_kids = {name: servicekeys.wait_ready(name)["status"]["keyId"] for name in names}
    for name in names:
        rotate(servicekeys, name, "once")
    for name in names:
        servicekeys.wait_new_kid(name, first_kids[name])
    time.sleep(2)  # let a duplicate write, if any, show itself

    for name in names:
        for kid in assert_consistent(servicekeys, name, versions=2):
            assert active.wrote(kid) == 1, f"the active replica wrote {kid} once"
    assert the_active(replicas, dev_env, peering) is active, "the same replica stayed active throughout"
    for standby in (replica for replica in replicas if replica is not active):
        assert standby.process.process.running()
        assert not standby.active()
        assert standby.acted_in(servicekeys.namespace) == [], f"{standby.pod_id} is paused and must not act"
    assert active.acted_in(servicekeys.namespace), "the active replica logs its handlers"


@pytest.mark.parametrize("count", [2, 3])
def test_a_killed_active_replica_is_replaced_when_its_lease_ends(start_replicas, servicekeys: ServiceKeys,
                                                                 dev_env: DevEnvironment, peering: str, count: int,
                                                                 record_property):
    replicas = start_replicas(count)
    doomed = settle(replicas, dev_env, peering)
    servicekeys.create("steady", {"algorithm": "ES256"})
    servicekeys.create("in-flight", {"algorithm": "ES256"})
    steady_kid = servicekeys.wait_ready("steady")["status"]["keyId"]
    in_flight_kid = servicekeys.wait_ready("in-flight")["status"]["keyId"]

    rotate(servicekeys, "in-flight", "just-before-the-crash")  # the doomed replica may or may not get to it
    doomed.process.kill()
    killed_at = time.time()
    servicekeys.create("born-after", {"algorithm": "ES256"})
    rotate(servicekeys, "steady", "after-the-crash")
    doomed_entry = peers(dev_env, peering)[doomed.pod_id]  # read after the kill: no keep-alive can follow
    lease_left = max(0.0, lease_end(doomed_entry) - killed_at)

    servicekeys.wait_ready("born-after", timeout=lease_left + HANDOVER_SLACK)
    servicekeys.wait_new_kid("steady", steady_kid, timeout=HANDOVER_SLACK)
    handover = time.time() - killed_at
    servicekeys.wait_new_kid("in-flight", in_flight_kid, timeout=HANDOVER_SLACK)
    record_property("lease_left_seconds", round(lease_left, 1))
    record_property("handover_seconds", round(handover, 1))
    print(f"\n{count} replicas: SIGKILL of the active one; its lease had {lease_left:.1f}s left; "
          f"requests made after the kill were done {handover:.1f}s after it")

    # Nobody acted while the dead replica's lease was running, and somebody did soon after it ended.
    assert lease_left - 1.0 <= handover <= lease_left + HANDOVER_SLACK
    assert handover <= doomed_entry["lifetime"] + HANDOVER_SLACK, "the peering lifetime bounds the hand-over"
    survivors = [replica for replica in replicas if replica is not doomed]
    successor = the_active(survivors, dev_env, peering)
    assert successor is not None, "the highest-priority survivor took over, alone"
    wait_for(lambda: doomed.pod_id not in peers(dev_env, peering), 10, "the dead replica's entry to be cleaned up")

    time.sleep(2)  # let a duplicate write, if any, show itself
    expected = {"steady": 2, "in-flight": 2, "born-after": 1}
    for name, versions in expected.items():
        for kid in assert_consistent(servicekeys, name, versions):
            writes = {replica.pod_id: replica.wrote(kid) for replica in replicas if replica.wrote(kid)}
            assert sum(writes.values()) == 1, f"{name}: {kid} written exactly once across replicas, got {writes}"
    born_kid = servicekeys.get("born-after")["status"]["keyId"]
    assert successor.wrote(born_kid) == 1 and not doomed.wrote(born_kid)
    for bystander in (replica for replica in survivors if replica is not successor):
        assert bystander.acted_in(servicekeys.namespace) == [], f"{bystander.pod_id} stayed paused"


def test_a_stopped_active_replica_hands_over_at_once(start_replicas, servicekeys: ServiceKeys,
                                                     dev_env: DevEnvironment, peering: str, record_property):
    """A rolling update or a drain: SIGTERM makes kopf withdraw the replica's entry before it exits."""
    replicas = start_replicas(2)
    leaving = settle(replicas, dev_env, peering)
    servicekeys.create("steady", {"algorithm": "ES256"})
    steady_kid = servicekeys.wait_ready("steady")["status"]["keyId"]

    leaving.process.stop()
    stopped_at = time.monotonic()
    assert leaving.pod_id not in peers(dev_env, peering), "a graceful stop leaves the peering at once"
    servicekeys.create("born-after", {"algorithm": "ES256"})
    rotate(servicekeys, "steady", "after-the-stop")
    servicekeys.wait_ready("born-after", timeout=GRACEFUL_HANDOVER)
    servicekeys.wait_new_kid("steady", steady_kid, timeout=GRACEFUL_HANDOVER)
    handover = time.monotonic() - stopped_at
    record_property("handover_seconds", round(handover, 1))
    print(f"\nSIGTERM of the active replica: requests made after it were done {handover:.1f}s later")

    successor = next(replica for replica in replicas if replica is not leaving)
    assert successor.active()
    time.sleep(2)
    assert_consistent(servicekeys, "steady", versions=2)
    assert_consistent(servicekeys, "born-after", versions=1)


def test_a_replica_restarted_under_the_same_pod_name_replaces_its_own_stale_entry(
        start_operator: StartOperator, start_replicas, servicekeys: ServiceKeys, dev_env: DevEnvironment,
        peering: str):
    """A container restart (OOM kill, failed liveness probe) keeps the pod name; with ``POD_ID`` set to it the
    restarted process overwrites its predecessor's keep-alive instead of waiting out the dead one's lease."""
    replicas = start_replicas(2)
    crashed = settle(replicas, dev_env, peering)
    servicekeys.create("steady", {"algorithm": "ES256"})
    steady_kid = servicekeys.wait_ready("steady")["status"]["keyId"]

    crashed.process.kill()
    killed_at = time.time()
    lease_left = lease_end(peers(dev_env, peering)[crashed.pod_id]) - killed_at
    restarted = Replica(crashed.pod_id, start_operator(SERVICEKEY_PEERING=peering, SERVICEKEY_LOG_FORMAT="json",
                                                       POD_ID=crashed.pod_id))
    rotate(servicekeys, "steady", "after-the-restart")
    servicekeys.wait_new_kid("steady", steady_kid, timeout=GRACEFUL_HANDOVER)
    handover = time.time() - killed_at
    print(f"\nrestart under the same POD_ID: done {handover:.1f}s after the kill "
          f"(the dead entry's lease had {lease_left:.1f}s left)")

    entry = peers(dev_env, peering)[crashed.pod_id]
    assert datetime.datetime.fromisoformat(entry["lastseen"]).timestamp() > killed_at, \
        "the restarted process overwrote its predecessor's entry"
    if lease_left > GRACEFUL_HANDOVER:
        assert handover < lease_left, "nobody waited for the stale lease to run out"
    active = settle([restarted, *(replica for replica in replicas if replica is not crashed)], dev_env, peering)
    time.sleep(2)
    for kid in assert_consistent(servicekeys, "steady", versions=2)[1:]:
        assert active.wrote(kid) == 1


def test_a_paused_replica_runs_no_scheduled_pass_until_it_is_active_again(
        start_operator: StartOperator, servicekeys: ServiceKeys, dev_env: DevEnvironment, peering: str):
    # kopf tells no handler that it paused; the pass scheduler reads the same peering object (peering.py).
    replica = Replica(f"{peering}-solo", start_operator(
        SERVICEKEY_PEERING=peering, SERVICEKEY_LOG_FORMAT="json", POD_ID=f"{peering}-solo",
        SERVICEKEY_RESYNC_SECONDS="1"))
    settle([replica], dev_env, peering)
    servicekeys.create("resynced", {"algorithm": "ES256"})
    servicekeys.wait_ready("resynced")

    def passes() -> float:
        return metric_value(metric_samples(replica.process), "servicekey_reconcile_duration_seconds_count")

    started = passes()
    wait_for(lambda: passes() >= started + 3, 20, "resync passes every second while active")

    lastseen = datetime.datetime.now(datetime.UTC).isoformat()
    impostor = {"impostor": {"priority": 2**31, "lifetime": 60, "lastseen": lastseen}}
    dev_env.kube.kubectl("patch", "clusterkopfpeering", peering, "--type=merge", "-p",
                         json.dumps({"status": impostor}))
    wait_for(lambda: not replica.active(), 20, "kopf to pause the replica in favour of the impostor")
    time.sleep(7)  # the scheduler's reading of the peering object is at most 5 s old
    paused_at = passes()
    time.sleep(5)
    assert passes() == paused_at, "a paused replica must run no scheduled pass"

    dev_env.kube.kubectl("patch", "clusterkopfpeering", peering, "--type=merge", "-p",
                         json.dumps({"status": {"impostor": None}}))
    wait_for(lambda: replica.active(), 20, "kopf to resume the replica once the impostor is gone")
    wait_for(lambda: passes() >= paused_at + 3, 20, "scheduled passes to resume")


PER_KEY_METRICS = ("servicekey_ready_status", "servicekey_key_created_timestamp_seconds",
                   "servicekey_next_rotation_timestamp_seconds", "servicekey_rotation_period_seconds")


def per_key_series(replica: Replica, namespace: str) -> dict[str, dict[str, str]]:
    """The per-key samples a replica's /metrics shows for ``namespace``: name -> labels (the last one)."""
    return {name: dict(labels) for (name, labels), _ in metric_samples(replica.process).items()
            if name in PER_KEY_METRICS and ("namespace", namespace) in labels}


def standing(replica: Replica) -> float:
    return metric_value(metric_samples(replica.process), "servicekey_operator_active")


def test_only_the_active_replica_exports_per_key_metrics_and_a_paused_one_withdraws_them(
        start_replicas, servicekeys: ServiceKeys, dev_env: DevEnvironment, peering: str):
    replicas = start_replicas(2)
    active = settle(replicas, dev_env, peering)
    standby = next(replica for replica in replicas if replica is not active)
    servicekeys.create("watched", {"algorithm": "ES256", "rotation": {"period": "720h"}})
    servicekeys.wait_ready("watched")
    namespace = servicekeys.namespace
    ready = {"namespace": namespace, "name": "watched", "algorithm": "ES256", "engine": "kv"}

    wait_for(lambda: metric_value(metric_samples(active.process), "servicekey_ready_status", **ready,
                                  condition="True") == 1.0, 10, "the active replica to export the key")
    period = metric_value(metric_samples(active.process), "servicekey_rotation_period_seconds",
                          namespace=namespace, name="watched")
    assert period == 720 * 3600
    assert set(per_key_series(active, namespace)) == set(PER_KEY_METRICS)
    wait_for(lambda: standing(active) == 1.0 and standing(standby) == 0.0, 10,
             "servicekey_operator_active to name the active replica")
    assert per_key_series(standby, namespace) == {}, "a standby exports no per-key series"
    for replica in replicas:
        build = [labels for (name, labels), value in metric_samples(replica.process).items()
                 if name == "servicekey_build_info" and value == 1.0]
        assert len(build) == 1 and dict(build[0])["version"], "servicekey_build_info names the version"

    # A replica that was active and is now paused: kopf pauses it in favour of a higher priority.
    lastseen = datetime.datetime.now(datetime.UTC).isoformat()
    impostor = {"impostor": {"priority": 2**31, "lifetime": 60, "lastseen": lastseen}}
    dev_env.kube.kubectl("patch", "clusterkopfpeering", peering, "--type=merge", "-p", json.dumps({"status": impostor}))
    wait_for(lambda: not active.active(), 20, "kopf to pause the active replica in favour of the impostor")
    wait_for(lambda: standing(active) == 0.0 and per_key_series(active, namespace) == {}, 10,
             "the paused replica to withdraw its per-key series")
    assert all(standing(replica) == 0.0 for replica in replicas), "nobody is active while the impostor is"

    dev_env.kube.kubectl("patch", "clusterkopfpeering", peering, "--type=merge", "-p",
                         json.dumps({"status": {"impostor": None}}))
    resumed = settle(replicas, dev_env, peering)
    wait_for(lambda: metric_value(metric_samples(resumed.process), "servicekey_ready_status", **ready,
                                  condition="True") == 1.0 and standing(resumed) == 1.0, 15,
             "the resumed replica to export the key again, from kopf's fresh listing")
