"""The operator's finalizer is only on the ServiceKeys whose deletion needs the operator (deletionPolicy Delete,
copies in other namespaces): every other deletion is the garbage collector's, and cannot wait on an operator
that is gone (as after ``helm uninstall``)."""

from __future__ import annotations

import pytest

from devcluster.operator_process import OperatorProcess
from servicekey_operator.handlers import FINALIZER
from tests.support import GROUP, PLURAL, VERSION, MakeNamespace, ServiceKeys, wait_for

pytestmark = pytest.mark.integration


def finalizers(servicekeys: ServiceKeys, name: str) -> list[str]:
    return (servicekeys.get(name) or {}).get("metadata", {}).get("finalizers") or []


def test_a_retained_key_without_copies_has_no_finalizer_and_the_garbage_collector_ends_it(
        operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.create("plain", {"algorithm": "ES256"})
    servicekeys.wait_ready("plain")
    assert finalizers(servicekeys, "plain") == []
    mount, path = servicekeys.vault_path("plain")

    servicekeys.delete("plain")
    servicekeys.wait_gone("plain", timeout=5)
    # The garbage collector rediscovers the API's resources every 30 s, so early in a session it may not watch
    # ServiceKeys yet.
    wait_for(lambda: servicekeys.configmap("plain-public") is None, 90, "the ConfigMap to follow its owner")
    assert servicekeys.vault_versions(mount, path) == 1, "Retain keeps the key"


@pytest.mark.parametrize("work", ["deletionPolicy-Delete", "copies"])
def test_a_key_whose_deletion_does_work_gets_the_finalizer_and_its_deletion_does_that_work(
        operator: OperatorProcess, servicekeys: ServiceKeys, make_namespace: MakeNamespace, work: str):
    target = make_namespace(accept_from=servicekeys.namespace)
    copies = work == "copies"
    servicekeys.create("guarded", {"algorithm": "ES256", **(
        {"publicKey": {"namespaces": [target]}} if copies else {"deletionPolicy": "Delete"})})
    servicekeys.wait_ready("guarded")
    assert finalizers(servicekeys, "guarded") == [FINALIZER]
    mount, path = servicekeys.vault_path("guarded")
    if copies:
        wait_for(lambda: servicekeys.configmap("guarded-public", target), 30, "the copy")

    servicekeys.delete("guarded")
    servicekeys.wait_gone("guarded")
    if copies:
        assert servicekeys.configmap("guarded-public", target) is None, "the finalizer withdrew the copy"
        assert servicekeys.vault_versions(mount, path) == 1
    else:
        assert servicekeys.vault_versions(mount, path) == 0, "the finalizer deleted the key from Vault"


def test_the_finalizer_follows_the_spec_and_a_finalizer_of_an_older_version_is_taken_off(
        operator: OperatorProcess, servicekeys: ServiceKeys):
    # Versions before 0.2 put the finalizer on every key: an upgrade takes it off those that do not need it.
    servicekeys.custom.create_namespaced_custom_object(GROUP, VERSION, servicekeys.namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceKey",
        "metadata": {"name": "upgraded", "finalizers": [FINALIZER]}, "spec": {"algorithm": "ES256"}})
    servicekeys.wait_ready("upgraded")
    wait_for(lambda: finalizers(servicekeys, "upgraded") == [], 10, "kopf to take the unneeded finalizer off")

    servicekeys.patch("upgraded", {"spec": {"deletionPolicy": "Delete"}})
    wait_for(lambda: finalizers(servicekeys, "upgraded") == [FINALIZER], 10, "the finalizer for Delete")
    servicekeys.patch("upgraded", {"spec": {"deletionPolicy": "Retain"}})
    wait_for(lambda: finalizers(servicekeys, "upgraded") == [], 10, "the finalizer to go with Delete")
    servicekeys.wait_ready("upgraded")
