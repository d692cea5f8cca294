"""Vault states the operator did not write itself (issue #15): what an administrator's ordinary settings and
edits leave in a KV v2 mount must neither churn keys nor hide a foreign secret."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import hvac
import hvac.exceptions
import kubernetes.client
import pytest

from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def expiring_mount(vault_client: hvac.Client) -> Iterator[str]:
    """A KV v2 mount whose versions all carry a future deletion_time (delete_version_after, 32 days)."""
    mount = f"kv-expiring-{uuid.uuid4().hex[:8]}"
    vault_client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    vault_client.secrets.kv.v2.configure(mount_point=mount, delete_version_after="768h")
    yield mount
    vault_client.sys.disable_secrets_engine(mount)


def test_versions_that_expire_later_are_live_until_then_one_key_per_rotation(
        operator: OperatorProcess, servicekeys: ServiceKeys, expiring_mount: str,
        core_api: kubernetes.client.CoreV1Api):
    servicekeys.create("signing", {"algorithm": "ES256", "vault": {"mount": expiring_mount}})
    kid = servicekeys.wait_ready("signing")["status"]["keyId"]
    mount, path = servicekeys.vault_path("signing")
    metadata = servicekeys.vault.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)["data"]
    assert metadata["versions"]["1"]["deletion_time"], "the mount's delete_version_after is at work"

    for _ in range(2):  # each deletion of the ConfigMap runs a pass: it used to write a new key every time
        core_api.delete_namespaced_config_map("signing-public", servicekeys.namespace)
        wait_for(lambda: servicekeys.configmap("signing-public"), 30, "the ConfigMap to be published again")
    assert servicekeys.vault_versions(mount, path) == 1
    assert servicekeys.kids("signing-public") == [kid]
    assert servicekeys.get("signing")["status"]["keyId"] == kid

    servicekeys.patch("signing", {"metadata": {"annotations": {"servicekey.io/rotate": "once"}}})
    rotated = servicekeys.wait_new_kid("signing", kid)["status"]["keyId"]
    wait_for(lambda: set(servicekeys.kids("signing-public")) == {rotated, kid}, 30,
             "the JWKS to keep the previous key beside the new one")
    assert servicekeys.vault_versions(mount, path) == 2


def test_a_foreign_secret_whose_versions_expire_later_is_not_taken_for_unclaimed(
        operator: OperatorProcess, servicekeys: ServiceKeys, expiring_mount: str):
    path = f"servicekeys/{servicekeys.namespace}/signing"
    servicekeys.vault.secrets.kv.v2.create_or_update_secret(path=path, mount_point=expiring_mount,
                                                            secret={"theirs": "yes"})

    servicekeys.create("signing", {"algorithm": "ES256", "vault": {"mount": expiring_mount}})

    servicekeys.wait_condition("signing", "False", "VaultPathConflict")
    assert servicekeys.vault_versions(expiring_mount, path) == 1
    assert servicekeys.vault_secret(expiring_mount, path) == {"theirs": "yes"}


def test_a_kv_version_1_mount_is_refused_before_anything_is_written(
        operator: OperatorProcess, servicekeys: ServiceKeys, vault_client: hvac.Client):
    # Issue #15.2: the private key went through the v2 API into the v1 mount as a plain secret at
    # data/<path>, then the pass died with a TypeError and the ServiceKey had no status (#15.8).
    mount = f"kv-one-{uuid.uuid4().hex[:8]}"
    vault_client.sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
    try:
        servicekeys.create("signing", {"algorithm": "ES256", "vault": {"mount": mount}})

        failed = servicekeys.wait_condition("signing", "False", "InvalidSpec", timeout=30)
        assert f"'{mount}' is KV version 1" in ready_condition(failed)["message"]
        wait_for(lambda: [e for e in servicekeys.events("signing") if e[:2] == ("Warning", "InvalidSpec")], 30,
                 "a Warning event")
        with pytest.raises(hvac.exceptions.InvalidPath):
            vault_client.secrets.kv.v1.list_secrets(path="", mount_point=mount)  # nothing was written at all
    finally:
        vault_client.sys.disable_secrets_engine(mount)


# Issue #15.3: every version state an administrator can produce with the KV v2 API, on the current secret and on
# the pending one. The admin's action runs between two passes; a pass is run by deleting the ConfigMap (a drift
# event), twice, so that a state that churns keys (a new version on every pass) cannot pass for a settled one.


@pytest.fixture
def kv_mount(vault_client: hvac.Client) -> Iterator[str]:
    """A KV v2 mount of the test's own, so that mount settings (cas_required) touch no other test."""
    mount = f"kv-states-{uuid.uuid4().hex[:8]}"
    vault_client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    yield mount
    vault_client.sys.disable_secrets_engine(mount)


def _run_passes(servicekeys: ServiceKeys, core_api: kubernetes.client.CoreV1Api, name: str, passes: int = 2) -> None:
    for _ in range(passes):
        core_api.delete_namespaced_config_map(f"{name}-public", servicekeys.namespace)
        wait_for(lambda: servicekeys.configmap(f"{name}-public"), 30, "the ConfigMap to be published again")


def _settled(servicekeys: ServiceKeys, name: str, kids: list[str], pending: str | None) -> dict | None:
    obj = servicekeys.get(name)
    status = (obj or {}).get("status") or {}
    if servicekeys.kids(f"{name}-public") != kids or status.get("pendingKeyId") != pending:
        return None
    return obj if status.get("keyId") == kids[0] else None


CURRENT_STATES = {
    # admin action on the current secret (versions 1 and 2, 2 current) -> is a new key written?
    "deleted": (lambda kv, mount, path: kv.delete_secret_versions(path=path, versions=[2], mount_point=mount), True),
    "destroyed": (lambda kv, mount, path: kv.destroy_secret_versions(path=path, versions=[2], mount_point=mount), True),
    "undeleted": (lambda kv, mount, path: (kv.delete_secret_versions(path=path, versions=[2], mount_point=mount),
                                           kv.undelete_secret_versions(path=path, versions=[2], mount_point=mount)),
                  False),
    "metadata-edited": (lambda kv, mount, path: kv.update_metadata(path=path, mount_point=mount,
                                                                   custom_metadata={"edited": "by an admin"}), False),
    "max-versions-lowered": (lambda kv, mount, path: kv.update_metadata(path=path, mount_point=mount, max_versions=1),
                             False),
    "cas-required-on-the-mount": (lambda kv, mount, path: kv.configure(mount_point=mount, cas_required=True), False),
}


@pytest.mark.parametrize("state", CURRENT_STATES)
def test_every_version_state_of_the_current_secret_settles_with_one_key(
        operator: OperatorProcess, servicekeys: ServiceKeys, kv_mount: str, core_api: kubernetes.client.CoreV1Api,
        state: str):
    admin_action, replaced = CURRENT_STATES[state]
    servicekeys.create("signing", {"algorithm": "ES256", "vault": {"mount": kv_mount}})
    first = servicekeys.wait_ready("signing")["status"]["keyId"]
    servicekeys.patch("signing", {"metadata": {"annotations": {"servicekey.io/rotate": "before"}}})
    second = servicekeys.wait_new_kid("signing", first)["status"]["keyId"]
    mount, path = servicekeys.vault_path("signing")
    kv = servicekeys.vault.secrets.kv.v2

    admin_action(kv, mount, path)
    _run_passes(servicekeys, core_api, "signing")

    if replaced:  # nothing signs with the gone version: exactly one new key, the live one before it retained
        settled = wait_for(lambda: (obj := servicekeys.get("signing")) and obj["status"]["keyId"] not in (first, second)
                           and obj, 30, "a new current key")
        third = settled["status"]["keyId"]
        wait_for(lambda: _settled(servicekeys, "signing", [third, first], None), 30, "the new key, then version 1")
        assert servicekeys.vault_versions(mount, path) == 3
        assert ("Warning", "CurrentKeyDeleted") in {event[:2] for event in servicekeys.events("signing")}
    else:
        wait_for(lambda: _settled(servicekeys, "signing", [second, first], None), 30, "the unchanged JWKS")
        assert servicekeys.vault_versions(mount, path) == 2
    servicekeys.wait_ready("signing")
    metadata = kv.read_secret_metadata(path=path, mount_point=mount)["data"]
    assert metadata["custom_metadata"]["servicekey.io/owner"] == f"{servicekeys.namespace}/signing"
    assert metadata["max_versions"] >= 32, "retention needs the versions that the JWKS still lists"

    # A rotation request afterwards is still exactly one new version.
    before = servicekeys.get("signing")["status"]["keyId"]
    servicekeys.patch("signing", {"metadata": {"annotations": {"servicekey.io/rotate": "after"}}})
    servicekeys.wait_new_kid("signing", before)
    _run_passes(servicekeys, core_api, "signing", passes=1)
    assert servicekeys.vault_versions(mount, path) == (4 if replaced else 3)


def _pending_path(path: str) -> str:
    return f"{path}/pending"


PENDING_STATES = {
    # admin action on the pending key's path -> is the staged key withdrawn?
    "deleted": (lambda kv, mount, path: kv.delete_secret_versions(path=_pending_path(path), versions=[1],
                                                                  mount_point=mount), True),
    "destroyed": (lambda kv, mount, path: kv.destroy_secret_versions(path=_pending_path(path), versions=[1],
                                                                     mount_point=mount), True),
    "undeleted": (lambda kv, mount, path: (
        kv.delete_secret_versions(path=_pending_path(path), versions=[1], mount_point=mount),
        kv.undelete_secret_versions(path=_pending_path(path), versions=[1], mount_point=mount)), False),
    "metadata-edited": (lambda kv, mount, path: kv.update_metadata(path=_pending_path(path), mount_point=mount,
                                                                   custom_metadata={"edited": "by an admin"}), False),
    "max-versions-lowered": (lambda kv, mount, path: kv.update_metadata(path=_pending_path(path), mount_point=mount,
                                                                        max_versions=1), False),
    "cas-required-on-the-mount": (lambda kv, mount, path: kv.configure(mount_point=mount, cas_required=True), False),
}


def _stage(servicekeys: ServiceKeys, name: str, kv_mount: str) -> tuple[str, str]:
    """A key with a rotation staged for an hour: (current kid, staged kid)."""
    servicekeys.create(name, {"algorithm": "ES256", "vault": {"mount": kv_mount}, "rotation": {"publishAhead": "1h"}})
    current = servicekeys.wait_ready(name)["status"]["keyId"]
    servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": "first"}}})
    return current, servicekeys.wait_condition(name, "True", "Rotating")["status"]["pendingKeyId"]


@pytest.mark.parametrize("state", PENDING_STATES)
def test_every_version_state_of_the_pending_key_settles_and_a_withdrawn_key_is_replaced_once(
        operator: OperatorProcess, servicekeys: ServiceKeys, kv_mount: str, core_api: kubernetes.client.CoreV1Api,
        state: str):
    """A staged key deleted or destroyed in Vault is withdrawn (it may have been exposed): the JWKS drops it, and
    the rotation that still stands (the request, or the schedule) stages one new key with a full publishAhead,
    by a check-and-set against the pending path's real version (it used to fail forever against version 0)."""
    admin_action, withdrawn = PENDING_STATES[state]
    current, staged = _stage(servicekeys, "staged", kv_mount)
    mount, path = servicekeys.vault_path("staged")
    kv = servicekeys.vault.secrets.kv.v2

    admin_action(kv, mount, path)
    _run_passes(servicekeys, core_api, "staged")

    if withdrawn:
        replacement = wait_for(lambda: (pending := servicekeys.get("staged")["status"].get("pendingKeyId"))
                               not in (None, staged) and pending, 30, "a replacement for the withdrawn key")
        wait_for(lambda: _settled(servicekeys, "staged", [current, replacement], replacement), 30,
                 "the JWKS: current key, then the replacement, and not the withdrawn key")
        assert servicekeys.vault_secret(mount, _pending_path(path))["kid"] == replacement
        assert ("Warning", "PendingKeyDeleted") in {event[:2] for event in servicekeys.events("staged")}
    else:
        wait_for(lambda: _settled(servicekeys, "staged", [current, staged], staged), 30, "the staged key kept")
        assert servicekeys.vault_secret(mount, _pending_path(path))["kid"] == staged
    assert servicekeys.vault_versions(mount, path) == 1, "no key signs before its publishAhead"
    assert servicekeys.vault_secret(mount, path)["kid"] == current


def test_a_withdrawn_pending_key_undeleted_later_does_not_displace_its_replacement(
        operator: OperatorProcess, servicekeys: ServiceKeys, kv_mount: str, core_api: kubernetes.client.CoreV1Api):
    current, staged = _stage(servicekeys, "staged", kv_mount)
    mount, path = servicekeys.vault_path("staged")
    kv = servicekeys.vault.secrets.kv.v2
    kv.delete_secret_versions(path=_pending_path(path), versions=[1], mount_point=mount)
    _run_passes(servicekeys, core_api, "staged", passes=1)
    replacement = wait_for(lambda: (pending := servicekeys.get("staged")["status"].get("pendingKeyId"))
                           not in (None, staged) and pending, 30, "a replacement for the withdrawn key")

    kv.undelete_secret_versions(path=_pending_path(path), versions=[1], mount_point=mount)
    _run_passes(servicekeys, core_api, "staged")

    wait_for(lambda: _settled(servicekeys, "staged", [current, replacement], replacement), 30, "the replacement kept")
    assert servicekeys.vault_secret(mount, _pending_path(path))["kid"] == replacement
