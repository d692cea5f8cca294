"""Rotation triggers against the real servers: one new key per request, overlap in the JWKS, publishAhead."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration


def _rotate_by_annotation(servicekeys: ServiceKeys, name: str, value: str) -> None:
    servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": value}}})


def _rotate_by_spec_change(servicekeys: ServiceKeys, name: str, value: str) -> None:
    algorithm = {"1": "ES384", "2": "ES256"}[value]
    servicekeys.patch(name, {"spec": {"algorithm": algorithm}})


TRIGGERS: dict[str, Callable[[ServiceKeys, str, str], None]] = {
    "annotation": _rotate_by_annotation, "spec-change": _rotate_by_spec_change}


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_each_request_yields_exactly_one_key_and_old_tokens_verify_while_retained(
        operator: OperatorProcess, servicekeys: ServiceKeys, trigger: str):
    servicekeys.create("rotating", {"algorithm": "ES256", "rotation": {"retainPrevious": 1}})
    first_kid = servicekeys.wait_ready("rotating")["status"]["keyId"]
    mount, path = servicekeys.vault_path("rotating")
    token_of_first_key = servicekeys.sign("rotating")

    TRIGGERS[trigger](servicekeys, "rotating", "1")
    second = servicekeys.wait_new_kid("rotating", first_kid)["status"]

    assert servicekeys.vault_versions(mount, path) == 2
    assert second["keyVersion"] == 2
    wait_for(lambda: servicekeys.kids("rotating-public") == [second["keyId"], first_kid], 10,
             "JWKS = [new, retained]")
    assert servicekeys.configmap("rotating-public").data["kid"] == second["keyId"]
    assert servicekeys.verifies("rotating-public", token_of_first_key), "a retained key must still verify"

    TRIGGERS[trigger](servicekeys, "rotating", "2")
    third = servicekeys.wait_new_kid("rotating", second["keyId"])["status"]

    wait_for(lambda: servicekeys.kids("rotating-public") == [third["keyId"], second["keyId"]], 10,
             "JWKS = [newest, one retained]")
    assert not servicekeys.verifies("rotating-public", token_of_first_key), "a dropped key must stop verifying"
    assert servicekeys.vault_versions(mount, path) == 3


def test_a_change_of_rotation_settings_alone_does_not_rotate(operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.create("steady", {"algorithm": "EdDSA"})
    obj = servicekeys.wait_ready("steady")
    mount, path = servicekeys.vault_path("steady")

    servicekeys.patch("steady", {"spec": {"rotation": {"period": "720h", "retainPrevious": 3}}})
    updated = servicekeys.wait_ready("steady")

    assert updated["status"]["keyId"] == obj["status"]["keyId"]
    assert updated["status"]["nextRotationTime"] is not None
    assert servicekeys.vault_versions(mount, path) == 1


def test_scheduled_rotation_rotates_once_per_period(operator: OperatorProcess, servicekeys: ServiceKeys):
    # rotation.period is at least a minute; a key that is 57 s old makes the tick come within seconds.
    seeded = servicekeys.seed_key("ticking", "ES256", datetime.timedelta(seconds=57))
    servicekeys.create("ticking", {"algorithm": "ES256", "rotation": {"period": "1m", "retainPrevious": 2}})
    mount, path = "secret", f"servicekeys/{servicekeys.namespace}/ticking"

    second = servicekeys.wait_new_kid("ticking", seeded, timeout=20)["status"]
    time.sleep(2)  # room for an extra rotation to show itself

    assert servicekeys.vault_versions(mount, path) == second["keyVersion"] == 2
    assert servicekeys.kids("ticking-public") == [second["keyId"], seeded]
    secrets = [servicekeys.vault_secret(mount, path, version) for version in (1, 2)]
    assert [secret["rotation_reason"] for secret in secrets] == ["Created", "Scheduled"]
    created = datetime.datetime.fromisoformat(secrets[1]["created_at"].replace("Z", "+00:00"))
    next_tick = datetime.datetime.fromisoformat(second["nextRotationTime"].replace("Z", "+00:00"))
    assert abs((next_tick - created).total_seconds() - 60) < 1, "the next tick is one period after this key"


def test_publish_ahead_publishes_the_next_key_before_vault_signs_with_it(operator: OperatorProcess,
                                                                        servicekeys: ServiceKeys):
    servicekeys.create("ahead", {"algorithm": "ES256", "rotation": {"publishAhead": "6s"}})
    first_kid = servicekeys.wait_ready("ahead")["status"]["keyId"]
    mount, path = servicekeys.vault_path("ahead")

    _rotate_by_annotation(servicekeys, "ahead", "now")
    rotating = servicekeys.wait_condition("ahead", "True", "Rotating")
    pending_kid = rotating["status"]["pendingKeyId"]

    assert pending_kid and pending_kid != first_kid
    assert servicekeys.kids("ahead-public") == [first_kid, pending_kid], "both keys published during the window"
    assert servicekeys.vault_secret(mount, path)["kid"] == first_kid, "Vault still signs with the old key"
    assert servicekeys.configmap("ahead-public").data["kid"] == first_kid
    assert "signs from" in ready_condition(rotating)["message"]

    promoted = servicekeys.wait_new_kid("ahead", first_kid, timeout=20)["status"]

    assert promoted["keyId"] == pending_kid, "the published key is the one that starts signing"
    assert servicekeys.vault_secret(mount, path)["kid"] == pending_kid
    assert servicekeys.vault_versions(mount, path) == 2
    wait_for(lambda: servicekeys.kids("ahead-public") == [pending_kid, first_kid], 10, "JWKS after promotion")
    assert servicekeys.get("ahead")["status"].get("pendingKeyId") is None


def test_the_rotate_command_prints_the_new_kid(operator: OperatorProcess, servicekeys: ServiceKeys,
                                               dev_env: DevEnvironment):
    servicekeys.create("manual", {"algorithm": "EdDSA"})
    old_kid = servicekeys.wait_ready("manual")["status"]["keyId"]

    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "servicekey_operator", "rotate", "manual", "-n",
                             servicekeys.namespace, "--timeout", "30"], capture_output=True, text=True,
                            env=dict(os.environ, KUBECONFIG=str(dev_env.kube.kubeconfig)), timeout=60)

    assert result.returncode == 0, result.stderr
    # publishAhead 0s (ServiceKeys.create): the new key signs at once
    said_old, arrow, new_kid = result.stdout.strip().removeprefix("rotated: ").split(" ")
    assert (said_old, arrow) == (old_kid, "->")
    assert new_kid != old_kid
    assert servicekeys.get("manual")["status"]["keyId"] == new_kid
    assert time.monotonic() - started < 30


def test_a_request_made_while_a_key_is_staged_is_answered_once_that_key_signs(operator: OperatorProcess,
                                                                              servicekeys: ServiceKeys):
    servicekeys.create("busy", {"algorithm": "ES256", "rotation": {"publishAhead": "4s"}})
    first = servicekeys.wait_ready("busy")["status"]["keyId"]
    _rotate_by_annotation(servicekeys, "busy", "first")
    staged = servicekeys.wait_condition("busy", "True", "Rotating")["status"]["pendingKeyId"]

    _rotate_by_annotation(servicekeys, "busy", "second")  # while "first" waits out its publishAhead

    assert servicekeys.wait_new_kid("busy", first, timeout=20)["status"]["keyId"] == staged
    restaged = wait_for(lambda: (pending := servicekeys.get("busy")["status"].get("pendingKeyId"))
                        not in (None, staged) and pending, 15, "the second request to be staged right away")
    assert servicekeys.wait_new_kid("busy", staged, timeout=20)["status"]["keyId"] == restaged
