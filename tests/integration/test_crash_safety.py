"""Invariant 4 across crashes, restarts and concurrent operators: one request, exactly one new key."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from devcluster.operator_process import OperatorProcess
from servicekey_operator.faults import CRASH_ENV
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.integration
StartOperator = Callable[..., OperatorProcess]


def _assert_consistent(servicekeys: ServiceKeys, name: str, expected_versions: int) -> None:
    """Invariant 2 at rest, and the expected number of keys in Vault."""
    mount, path = servicekeys.vault_path(name)
    current = servicekeys.vault_secret(mount, path)
    configmap = servicekeys.configmap(f"{name}-public")
    assert servicekeys.vault_versions(mount, path) == expected_versions
    assert configmap.data["kid"] == current["kid"] == servicekeys.get(name)["status"]["keyId"]
    assert configmap.data["public.pem"] == current["public_key"]


@pytest.mark.parametrize("crash_after", ["vault-write", "configmap-write"])
def test_a_crash_mid_rotation_yields_exactly_one_new_key(start_operator: StartOperator, servicekeys: ServiceKeys,
                                                         crash_after: str):
    steady = start_operator()
    servicekeys.create("crashy", {"algorithm": "ES256"})
    first_kid = servicekeys.wait_ready("crashy")["status"]["keyId"]
    steady.stop()

    doomed = start_operator(**{CRASH_ENV: crash_after})
    servicekeys.patch("crashy", {"metadata": {"annotations": {"servicekey.io/rotate": "once"}}})
    wait_for(lambda: not doomed.process.running(), 30, f"the operator to crash after {crash_after}")

    start_operator()
    servicekeys.wait_new_kid("crashy", first_kid)
    time.sleep(2)  # let any duplicate rotation show itself

    _assert_consistent(servicekeys, "crashy", expected_versions=2)


def test_a_staged_key_lost_before_publication_still_gets_its_full_publish_ahead(
        start_operator: StartOperator, servicekeys: ServiceKeys):
    steady = start_operator()
    servicekeys.create("staged", {"algorithm": "ES256", "rotation": {"publishAhead": "5s"}})
    first_kid = servicekeys.wait_ready("staged")["status"]["keyId"]
    steady.stop()
    doomed = start_operator(**{CRASH_ENV: "pending-write"})
    servicekeys.patch("staged", {"metadata": {"annotations": {"servicekey.io/rotate": "once"}}})
    wait_for(lambda: not doomed.process.running(), 30, "the operator to crash after staging")
    time.sleep(6)  # longer than publishAhead: the staged key's original activation time has passed

    start_operator()
    pending_kid = servicekeys.wait_condition("staged", "True", "Rotating")["status"]["pendingKeyId"]
    published_at = time.monotonic()
    assert servicekeys.kids("staged-public") == [first_kid, pending_kid]
    servicekeys.wait_new_kid("staged", first_kid, timeout=20)

    assert time.monotonic() - published_at >= 4, "the key signed before verifiers had publishAhead to see it"
    assert servicekeys.get("staged")["status"]["keyId"] == pending_kid
    _assert_consistent(servicekeys, "staged", expected_versions=2)


def test_two_operators_at_once_make_one_key_per_request(start_operator: StartOperator, servicekeys: ServiceKeys):
    start_operator()
    start_operator()
    names = [f"contested-{index}" for index in range(5)]

    for name in names:
        servicekeys.create(name, {"algorithm": "ES256"})
    first_kids = {name: servicekeys.wait_ready(name)["status"]["keyId"] for name in names}
    for name in names:
        servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": "one"}}})
    for name in names:
        servicekeys.wait_new_kid(name, first_kids[name])
    time.sleep(2)

    for name in names:
        _assert_consistent(servicekeys, name, expected_versions=2)


def test_scheduled_rotation_survives_an_operator_restart_without_extra_or_missed_keys(
        start_operator: StartOperator, servicekeys: ServiceKeys):
    first_operator = start_operator()
    # rotation.period is at least a minute; a key that is 50 s old makes the tick come within seconds.
    seeded = servicekeys.seed_key("clock", "EdDSA", timedelta(seconds=50))
    servicekeys.create("clock", {"algorithm": "EdDSA", "rotation": {"period": "1m"}})
    assert servicekeys.wait_ready("clock")["status"]["keyId"] == seeded
    mount, path = servicekeys.vault_path("clock")
    first_operator.stop()
    time.sleep(2)

    start_operator()
    rotated = servicekeys.wait_new_kid("clock", seeded, timeout=20)["status"]

    secrets = [servicekeys.vault_secret(mount, path, version) for version in (1, 2)]
    gap = (datetime.fromisoformat(secrets[1]["created_at"]) - datetime.fromisoformat(secrets[0]["created_at"]))
    assert 60 <= gap.total_seconds() < 64, f"rotation came {gap.total_seconds():.1f}s after the first key"
    assert rotated["keyVersion"] == 2
    assert servicekeys.vault_versions(mount, path) == 2, "no extra rotation before the next period"
