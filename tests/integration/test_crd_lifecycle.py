"""The API changes under the running operator (issue #15, item 11): the ServiceKey CRD is deleted, which deletes
every ServiceKey, and created again, or it is replaced by a newer version. The operator acts on no object that no
longer exists (no Vault write, no ConfigMap re-created for a deleted owner, no status from a stale copy) and serves
the re-created resource without a restart.

The CRD is shared by the whole session: every test here leaves it installed and Established, whatever happens.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from devcluster.environment import CRD_PATH, DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.support import GROUP, PLURAL, MakeNamespace, ServiceKeys, wait_for

pytestmark = pytest.mark.integration

CRD = f"{PLURAL}.{GROUP}"
# kopf rescans the API group on every event of a CRD: a re-created CRD was served 2.1-2.2s after it was
# Established, in every one of 20 tries. Generous, for a loaded machine.
SERVED_AGAIN_SECONDS = 60
# The finalizer of each key runs in well under a second; the API server's CRD cleanup polls its instances.
CRD_GONE_SECONDS = 60
# The garbage collector rediscovers the API's resources every 30s; the owner of a ConfigMap must resolve for it to go.
GARBAGE_COLLECTED_SECONDS = 90
# How long a deleted key is watched for anything the operator might still do for it: longer than a pass and
# than the echo of a garbage-collected ConfigMap (the drift watch schedules a pass at once).
QUIET_SECONDS = 5


def _crd(dev_env: DevEnvironment) -> dict[str, Any] | None:
    reply = dev_env.kube.kubectl("get", "crd", CRD, "-o", "yaml", "--ignore-not-found")
    return yaml.safe_load(reply.stdout) if reply.stdout.strip() else None


def _remaining_keys(dev_env: DevEnvironment) -> list[dict[str, Any]]:
    """Every ServiceKey in the cluster (none when the resource is not served)."""
    reply = dev_env.kube.kubectl("get", PLURAL, "-A", "-o", "yaml", check=False)
    if reply.returncode != 0:
        return []
    return (yaml.safe_load(reply.stdout) or {}).get("items") or []


def _describe(keys: list[dict[str, Any]]) -> list[str]:
    return [f"{key['metadata']['namespace']}/{key['metadata']['name']} (deletionTimestamp "
            f"{key['metadata'].get('deletionTimestamp')}, finalizers {key['metadata'].get('finalizers')})"
            for key in keys]


def _kopf_observer_lines(operator: OperatorProcess, mark: int) -> list[str]:
    """What kopf's resource observer said (which resources it stopped or started serving, and why)."""
    return [line for line in operator.log_text()[mark:].splitlines() if "kopf._core.reactor.o" in line]


def _delete_crd(dev_env: DevEnvironment, operator: OperatorProcess, log_mark: int) -> float:
    """Delete the CRD and wait until it is gone; return how long that took. The API server first deletes every
    ServiceKey, and each waits for the operator to run its finalizer."""
    started = time.monotonic()
    dev_env.kube.kubectl("delete", "crd", CRD, "--wait=false")
    deadline = started + CRD_GONE_SECONDS
    while _crd(dev_env) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the CRD was still terminating {CRD_GONE_SECONDS}s after its deletion; its instances: "
                f"{_describe(_remaining_keys(dev_env))}; kopf's resource observer said: "
                f"{_kopf_observer_lines(operator, log_mark)}")
        time.sleep(0.2)
    return time.monotonic() - started


def _install_crd(dev_env: DevEnvironment) -> None:
    dev_env.install_crds()
    wait_for(lambda: dev_env.kube.kubectl("get", PLURAL, "-A", check=False).returncode == 0, 30,
             "the API to serve ServiceKeys")


@pytest.fixture
def crd_restored(dev_env: DevEnvironment) -> Iterator[None]:
    """Whatever the test did to the CRD, the original is installed and Established afterwards. A CRD stuck in
    deletion (an instance whose finalizer nobody removes) is unblocked by dropping the finalizers."""
    yield
    crd = _crd(dev_env)
    if crd is not None and crd["metadata"].get("deletionTimestamp"):
        for key in _remaining_keys(dev_env):
            dev_env.kube.kubectl("patch", PLURAL, key["metadata"]["name"], "-n", key["metadata"]["namespace"],
                                 "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        wait_for(lambda: _crd(dev_env) is None, CRD_GONE_SECONDS, "the unblocked CRD to go")
    _install_crd(dev_env)
    assert [version["name"] for version in _crd(dev_env)["spec"]["versions"]] == ["v1alpha1"], "the original CRD"


def _newer_crd() -> str:
    """The CRD as a newer release might ship it: one more printer column, and a version v1alpha2 served beside
    v1alpha1 (the same schema, so no conversion; v1alpha1 stays the storage version, so the original CRD can
    be applied again afterwards)."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    current = crd["spec"]["versions"][0]
    current["additionalPrinterColumns"].append(
        {"name": "Vault Path", "type": "string", "priority": 1, "jsonPath": ".status.vaultPath",
         "description": "Where the private key is kept."})
    newer = copy.deepcopy(current)
    newer.update(name="v1alpha2", served=True, storage=False)
    crd["spec"]["versions"].append(newer)
    return yaml.safe_dump(crd)


def _has_status(servicekeys: ServiceKeys, name: str) -> bool:
    """Whether the operator has taken the key on: its first pass ends with a status."""
    return bool(((servicekeys.get(name) or {}).get("status") or {}).get("conditions"))


def test_a_crd_deleted_and_created_again_is_served_without_a_restart(
        operator: OperatorProcess, servicekeys: ServiceKeys, dev_env: DevEnvironment, crd_restored: None):
    # The keys go first, the ordinary way, so that the CRD itself goes at once (see the last test for the CRD
    # deleted under live keys): this is about the watch on a resource that vanishes and comes back.
    servicekeys.create("kept", {"algorithm": "ES256"})  # deletionPolicy Retain by default
    kid = servicekeys.wait_ready("kept")["status"]["keyId"]
    mount, path = servicekeys.vault_path("kept")
    servicekeys.delete("kept")
    servicekeys.wait_gone("kept")
    log_mark = len(operator.log_text())

    _delete_crd(dev_env, operator, log_mark)
    time.sleep(QUIET_SECONDS)  # the operator notices that the resource is gone, and must just wait for it
    assert operator.process.running(), "the operator outlives its CRD"

    _install_crd(dev_env)
    reinstalled = time.monotonic()
    servicekeys.create("kept", {"algorithm": "ES256"})
    servicekeys.create("fresh", {"algorithm": "EdDSA"})
    wait_for(lambda: _has_status(servicekeys, "kept"), SERVED_AGAIN_SECONDS, "the operator to take the key on")
    taken_on = time.monotonic() - reinstalled

    adopted = servicekeys.wait_ready("kept")
    assert adopted["status"]["keyId"] == kid, "the new ServiceKey adopts the key that Retain kept"
    assert servicekeys.vault_versions(mount, path) == 1
    assert servicekeys.kids("kept-public") == [kid]
    fresh = servicekeys.wait_ready("fresh")
    assert servicekeys.kids("fresh-public") == [fresh["status"]["keyId"]]
    assert operator.process.running()
    assert "Traceback" not in operator.log_text()[log_mark:]
    print(f"a re-created CRD was served {taken_on:.1f}s after it was Established")


def test_a_newer_crd_applied_over_the_old_leaves_every_key_alone(
        operator: OperatorProcess, servicekeys: ServiceKeys, dev_env: DevEnvironment, crd_restored: None):
    servicekeys.create("steady", {"algorithm": "ES256"})
    before = servicekeys.wait_ready("steady")
    mount, path = servicekeys.vault_path("steady")
    log_mark = len(operator.log_text())

    dev_env.kube.kubectl("apply", "--server-side", "-f", "-", input_text=_newer_crd())
    dev_env.kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}")
    wait_for(lambda: f"{GROUP}/v1alpha2" in dev_env.kube.kubectl("api-versions").stdout.split(), 30,
             "v1alpha2 to be served")

    # A key created through the newer version is the same object to the operator, which watches v1alpha1.
    servicekeys.custom.create_namespaced_custom_object(GROUP, "v1alpha2", servicekeys.namespace, PLURAL, {
        "apiVersion": f"{GROUP}/v1alpha2", "kind": "ServiceKey", "metadata": {"name": "fresh"},
        "spec": {"algorithm": "EdDSA", "rotation": {"publishAhead": "0s"}}})
    fresh = servicekeys.wait_ready("fresh", timeout=SERVED_AGAIN_SECONDS)
    assert servicekeys.kids("fresh-public") == [fresh["status"]["keyId"]]

    time.sleep(QUIET_SECONDS)
    after = servicekeys.get("steady")
    assert after["status"]["keyId"] == before["status"]["keyId"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], \
        "the re-listing after the CRD's update is no reason for a pass that writes anything"
    assert servicekeys.vault_versions(mount, path) == 1
    assert servicekeys.kids("steady-public") == [before["status"]["keyId"]]
    assert operator.process.running()
    assert "Traceback" not in operator.log_text()[log_mark:]


def _untouched_or_gone(servicekeys: ServiceKeys, name: str, resource_version: str) -> bool:
    configmap = servicekeys.configmap(name)
    return configmap is None or configmap.metadata.resource_version == resource_version


def test_deleting_the_crd_finalizes_every_key_and_nothing_is_done_for_them_afterwards(
        operator: OperatorProcess, servicekeys: ServiceKeys, dev_env: DevEnvironment,
        make_namespace: MakeNamespace, crd_restored: None):
    target = make_namespace(accept_from=servicekeys.namespace)
    kept_spec = {"algorithm": "ES256", "publicKey": {"namespaces": [target]}}  # deletionPolicy Retain by default
    servicekeys.create("kept", kept_spec)
    servicekeys.create("doomed", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    kid = servicekeys.wait_ready("kept")["status"]["keyId"]
    servicekeys.wait_ready("doomed")
    kept_path, doomed_path = servicekeys.vault_path("kept"), servicekeys.vault_path("doomed")
    wait_for(lambda: servicekeys.configmap("kept-public", target), 30, "the copy in the target namespace")
    published = {name: servicekeys.configmap(name).metadata.resource_version
                 for name in ("kept-public", "doomed-public")}
    log_mark = len(operator.log_text())

    # Deleting the CRD deletes every ServiceKey, and the API server waits for their finalizers, although its
    # discovery then lists no patch verb for the terminating resource (PATCH still works).
    crd_gone = _delete_crd(dev_env, operator, log_mark)

    # Each deletion was honoured as any other, by the finalizer.
    assert servicekeys.vault_versions(*kept_path) == 1, "Retain keeps the key, and nothing new was written"
    assert servicekeys.vault_versions(*doomed_path) == 0, "deletionPolicy Delete removed the key from Vault"
    assert servicekeys.configmap("kept-public", target) is None, "the finalizer withdrew the copy"

    # The owners are gone: nothing may write their ConfigMaps or keys again. The garbage collector cannot resolve
    # an owner whose kind is no longer served, so the ConfigMaps may well outlive the CRD; but they stay as they were.
    time.sleep(QUIET_SECONDS)
    for name, resource_version in published.items():
        assert _untouched_or_gone(servicekeys, name, resource_version), f"{name} was written for a deleted owner"
    assert servicekeys.configmap("kept-public", target) is None
    assert servicekeys.vault_versions(*kept_path) == 1 and servicekeys.vault_versions(*doomed_path) == 0
    assert operator.process.running(), "the operator outlives its CRD"
    left = sorted(name for name in published if servicekeys.configmap(name) is not None)

    _install_crd(dev_env)
    reinstalled = time.monotonic()
    created = servicekeys.create("kept", kept_spec)
    adopted = servicekeys.wait_ready("kept", timeout=SERVED_AGAIN_SECONDS)
    assert adopted["status"]["keyId"] == kid, "the re-created ServiceKey adopts the key Retain kept"
    assert servicekeys.vault_versions(*kept_path) == 1
    assert servicekeys.kids("kept-public") == [kid]
    assert [ref.uid for ref in servicekeys.configmap("kept-public").metadata.owner_references] == [
        created["metadata"]["uid"]], "the ConfigMap belongs to the new ServiceKey"
    wait_for(lambda: servicekeys.configmap("kept-public", target), 30, "the copy to be published again")
    assert servicekeys.configmap("kept-public", target).data["kid"] == kid
    # Served again, the kind resolves, and the garbage collector (it rediscovers resources every 30s) removes the
    # ConfigMap of the owner that is gone for good.
    wait_for(lambda: servicekeys.configmap("doomed-public") is None, GARBAGE_COLLECTED_SECONDS,
             "the garbage collector to delete the ConfigMap of the deleted owner")
    assert servicekeys.vault_versions(*doomed_path) == 0
    assert "Traceback" not in operator.log_text()[log_mark:]
    print(f"the CRD went {crd_gone:.1f}s after its deletion; ConfigMaps left behind by the garbage collector while "
          f"it was gone: {left}; the last one went {time.monotonic() - reinstalled:.1f}s after the CRD came back")
