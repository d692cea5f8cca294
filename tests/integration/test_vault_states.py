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
