"""Vault going away is normal weather: VaultUnavailable, backoff, then convergence with no lost or extra key."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from devcluster.openbao import OpenBaoServer
from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def outage_operator(start_operator: Callable[..., OperatorProcess], persistent_vault: OpenBaoServer) -> OperatorProcess:
    """An operator pointed at the persistent OpenBao."""
    return start_operator(VAULT_ADDR=persistent_vault.addr, VAULT_TOKEN=persistent_vault.root_token)


def _versions(servicekeys: ServiceKeys, vault: OpenBaoServer, name: str) -> int:
    metadata = vault.client().secrets.kv.v2.read_secret_metadata(
        path=f"servicekeys/{servicekeys.namespace}/{name}", mount_point="secret")
    return int(metadata["data"]["current_version"])


def test_keys_created_and_rotated_during_an_outage_converge_once_vault_returns(
        outage_operator: OperatorProcess, persistent_vault: OpenBaoServer, servicekeys: ServiceKeys):
    for name in ("before-a", "before-b"):
        servicekeys.create(name, {"algorithm": "ES256"})
    kids = {name: servicekeys.wait_ready(name)["status"]["keyId"] for name in ("before-a", "before-b")}

    persistent_vault.stop()
    servicekeys.create("during", {"algorithm": "EdDSA"})
    servicekeys.patch("before-a", {"metadata": {"annotations": {"servicekey.io/rotate": "in-outage"}}})
    during = servicekeys.wait_condition("during", "False", "VaultUnavailable")
    servicekeys.wait_condition("before-a", "False", "VaultUnavailable")
    # This namespace's failures only: the operator watches every namespace, and keys other tests left behind fail too.
    failures = f"servicekeys/{servicekeys.namespace}/"
    log_before = outage_operator.log_text().count(failures)
    time.sleep(6)
    attempts_in_six_seconds = outage_operator.log_text().count(failures) - log_before

    assert "Vault unreachable" in ready_condition(during)["message"]
    assert outage_operator.process.running(), "the operator must ride out the outage"
    assert attempts_in_six_seconds <= 12, f"{attempts_in_six_seconds} failed passes in 6 s: not backing off"

    persistent_vault.restart()
    servicekeys.wait_ready("during", timeout=90)
    rotated = servicekeys.wait_new_kid("before-a", kids["before-a"], timeout=90)
    untouched = servicekeys.wait_ready("before-b")

    assert rotated["status"]["keyVersion"] == _versions(servicekeys, persistent_vault, "before-a") == 2
    assert untouched["status"]["keyId"] == kids["before-b"]
    assert _versions(servicekeys, persistent_vault, "before-b") == 1
    assert _versions(servicekeys, persistent_vault, "during") == 1
    assert "Traceback" not in outage_operator.log_text()


def test_a_sealed_vault_is_reported_and_recovered_from(outage_operator: OperatorProcess,
                                                      persistent_vault: OpenBaoServer, servicekeys: ServiceKeys):
    persistent_vault.client().sys.seal()

    servicekeys.create("sealed", {"algorithm": "ES256"})
    servicekeys.wait_condition("sealed", "False", "VaultUnavailable")
    persistent_vault.unseal()

    servicekeys.wait_ready("sealed", timeout=90)
    assert _versions(servicekeys, persistent_vault, "sealed") == 1
    wait_for(lambda: outage_operator.process.running(), 1, "the operator to still run")
