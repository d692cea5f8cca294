"""Disaster recovery: Vault (a 3-node raft cluster) restored from an older snapshot goes back in time.

What the operator does about it (``servicekey_operator.rollback``): every public key that was published stays in
the JWKS until ``retainPrevious`` drops the key Vault went back to, the restored (older) key never signs again (a
new key is written at once), ``Ready`` says ``VaultRolledBack`` and a Warning Event names what was lost, and
``servicekey-operator check`` reports the rollback before the operator has dealt with it.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import kubernetes.client
import pytest

from devcluster.environment import DevEnvironment
from devcluster.openbao_cluster import OpenBaoCluster
from devcluster.operator_process import OperatorProcess
from servicekey_operator import invariants
from servicekey_operator.config import VaultSettings
from servicekey_operator.keys import generate_keypair, kid_for
from servicekey_operator.vault.connection import VaultConnection
from servicekey_operator.vault.kv import KvKeyStore
from servicekey_operator.vault.ownership import Owner
from servicekey_operator.vault.transit import TransitKeys
from tests.support import ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration
ROTATE = "servicekey.io/rotate"
RETAIN_ONE = {"algorithm": "ES256", "rotation": {"retainPrevious": 1}}


@pytest.fixture
def keys(kube_client: kubernetes.client.ApiClient, namespace: str, dev_env: DevEnvironment,
         vault_cluster: OpenBaoCluster) -> ServiceKeys:
    """ServiceKeys whose Vault is the 3-node cluster."""
    return ServiceKeys(kube_client, namespace, dev_env, vault=vault_cluster.client)


def _operator(start_operator: Callable[..., OperatorProcess], cluster: OpenBaoCluster) -> OperatorProcess:
    return start_operator(**cluster.operator_env())


def _rotate(keys: ServiceKeys, name: str, value: str) -> str:
    old = keys.get(name)["status"]["keyId"]
    keys.patch(name, {"metadata": {"annotations": {ROTATE: value}}})
    return keys.wait_new_kid(name, old, timeout=60)["status"]["keyId"]


def _cli(dev_env: DevEnvironment, cluster: OpenBaoCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(dev_env.kube.kubeconfig), **cluster.operator_env())
    return subprocess.run([sys.executable, "-m", "servicekey_operator", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def _rolled_back(keys: ServiceKeys, name: str, timeout: float = 60) -> dict:
    return keys.wait_condition(name, "True", "VaultRolledBack", timeout=timeout)


def test_a_restore_to_an_older_snapshot_keeps_every_published_key_and_rotates_forward(
        start_operator: Callable[..., OperatorProcess], vault_cluster: OpenBaoCluster, keys: ServiceKeys,
        dev_env: DevEnvironment, kube_client: kubernetes.client.ApiClient, tmp_path: Path):
    operator = _operator(start_operator, vault_cluster)
    keys.create("rotated", RETAIN_ONE)
    keys.create("unchanged", {"algorithm": "EdDSA"})
    keys.create("transit", {**RETAIN_ONE, "vault": {"engine": "transit"}})
    before = {name: keys.wait_ready(name, timeout=60)["status"] for name in ("rotated", "unchanged", "transit")}
    snapshot = tmp_path / "before.snap"
    vault_cluster.save_snapshot(snapshot)

    # After the snapshot: two rotations, one of a Transit key, and a key that did not exist.
    first = _rotate(keys, "rotated", "after-snapshot-1")
    token_of_first = keys.sign("rotated")
    second = _rotate(keys, "rotated", "after-snapshot-2")
    token_of_second = keys.sign("rotated")
    transit_after = _rotate(keys, "transit", "after-snapshot")
    keys.create("created-after", {"algorithm": "ES256"})
    created_after = keys.wait_ready("created-after", timeout=60)["status"]["keyId"]
    token_of_created_after = keys.sign("created-after")
    published = {name: keys.kids(f"{name}-public") for name in ("rotated", "transit", "created-after")}
    assert published["rotated"] == [second, first]

    operator.stop()
    vault_cluster.restore_snapshot(snapshot)
    restored = keys.vault_secret("secret", f"servicekeys/{keys.namespace}/rotated")
    token_of_restored = keys.sign("rotated")  # a signer that read Vault right after the restore
    assert keys.vault_versions("secret", f"servicekeys/{keys.namespace}/created-after") == 0, \
        "a signer of the key created after the snapshot finds nothing in Vault until the operator's pass"

    # Before the operator runs again, check reports every key that Vault lost and nothing else.
    found = invariants.check(kube_client, vault_cluster.client(), namespaces=[keys.namespace])
    rolled_back = {v.object.rsplit("/", 1)[-1] for v in found if v.check == invariants.ROLLED_BACK}
    assert rolled_back == {"rotated", "transit", "created-after"}
    cli = _cli(dev_env, vault_cluster, "check", "-n", keys.namespace)
    assert cli.returncode == 1 and "VaultRolledBack" in cli.stdout, cli.stdout + cli.stderr
    assert restored["kid"] == before["rotated"]["keyId"]

    # The runbook: start the operator and have it check every key now, not within its resync period (10 min).
    restarted = _operator(start_operator, vault_cluster)
    asked = time.monotonic()
    recheck = _cli(dev_env, vault_cluster, "recheck", "-n", keys.namespace)
    assert recheck.returncode == 0 and "4 ServiceKey(s)" in recheck.stdout, recheck.stdout + recheck.stderr
    rotated = _rolled_back(keys, "rotated")["status"]
    for name in ("created-after", "transit"):
        _rolled_back(keys, name)
    print(f"\n[vault restore] recheck to every rolled-back key rotated forward and published: "
          f"{time.monotonic() - asked:.2f} s (3 of 4 keys; the command itself included)")
    forward = rotated["keyId"]
    assert (rotated.get("observedRecheckRequest") or "").startswith("sha256:"), \
        "the status records the recheck it answered, so a restart does not ask again"
    assert forward not in (before["rotated"]["keyId"], first, second)
    record = keys.vault_secret("secret", f"servicekeys/{keys.namespace}/rotated")
    assert (record["kid"], record["rotation_reason"]) == (forward, "VaultRolledBack"), "signers get the new key"
    assert keys.vault_versions("secret", f"servicekeys/{keys.namespace}/rotated") == 2, \
        "one new key on top of the restored version 1"
    # Every key that was published or signed stays: the lost ones and the restored one.
    assert keys.kids("rotated-public") == [forward, second, first, before["rotated"]["keyId"]]
    for token in (token_of_first, token_of_second, token_of_restored):
        assert keys.verifies("rotated-public", token)
    warnings = [message for kind, reason, message in keys.events("rotated") if reason == "VaultRolledBack"]
    assert len(warnings) == 1 and warnings[0].count(second) and warnings[0].count(first) and forward in warnings[0]
    assert before["rotated"]["keyId"] in warnings[0], "it names the restored key that signs no more"

    # A key created after the snapshot: Vault had no record of it. A new key, and the lost one stays published.
    created = _rolled_back(keys, "created-after")["status"]
    assert keys.kids("created-after-public") == [created["keyId"], created_after]
    assert keys.vault_versions("secret", f"servicekeys/{keys.namespace}/created-after") == 1
    assert keys.verifies("created-after-public", token_of_created_after)

    # The Transit key went back to its first version: a new Transit version signs, the lost one stays published.
    transit = _rolled_back(keys, "transit")["status"]
    assert transit["keyId"] not in (before["transit"]["keyId"], transit_after)
    assert keys.kids("transit-public") == [transit["keyId"], transit_after, before["transit"]["keyId"]]

    # What Vault still held as it was published is left alone.
    unchanged = keys.wait_ready("unchanged")["status"]
    assert unchanged["keyId"] == before["unchanged"]["keyId"]
    assert keys.vault_versions("secret", f"servicekeys/{keys.namespace}/unchanged") == 1
    assert not [event for event in keys.events("unchanged") if event[0] == "Warning"]

    after = invariants.check(kube_client, vault_cluster.client(), namespaces=[keys.namespace])
    assert [v for v in after if not v.informational] == []
    assert {v.object for v in after if v.check == invariants.ROLLED_BACK} == {
        f"secret/servicekeys/{keys.namespace}/{name}" for name in ("rotated", "transit", "created-after")}

    # The next rotation ages the lost keys out with the restored one (retainPrevious 1), and Ready is KeyReady again.
    newest = _rotate(keys, "rotated", "after-restore")
    wait_for(lambda: ready_condition(keys.get("rotated")).get("reason") == "KeyReady", 30, "KeyReady")
    assert keys.kids("rotated-public") == [newest, forward]
    assert "Traceback" not in operator.log_text() + restarted.log_text()


def test_a_published_key_is_looked_up_by_its_version_where_that_version_is_numbered(vault_cluster: OpenBaoCluster):
    """What tells a restore from history that moved on: the KV version (or Transit key version) the status names
    holds the published key, holds another (another history), was never reached, or can no longer be read."""
    connection = VaultConnection(VaultSettings(addr=vault_cluster.addr, token=vault_cluster.root_token,
                                               ca_cert=vault_cluster.ca_cert_path))
    store, transit, client = KvKeyStore(connection), TransitKeys(connection), vault_cluster.client()
    path, name = f"servicekeys/lookup-{uuid.uuid4().hex[:8]}/k", f"lookup-{uuid.uuid4().hex[:8]}"
    owner = Owner("lookup", "k", "namespace-uid", "uid")
    first, second = (store.write("secret", path, generate_keypair("ES256"), owner=owner, service_name="k",
                                 rotate_annotation=None, rotation_reason="Created",
                                 created_at=datetime.datetime.now(datetime.UTC), expected_version=version)
                     for version in (0, 1))
    client.secrets.kv.v2.destroy_secret_versions(path=path, versions=[1], mount_point="secret")

    assert store.version_kid("secret", path, 2) == (True, second.kid)
    assert store.version_kid("secret", path, 1) == (True, None), "destroyed: proves nothing"
    assert store.version_kid("secret", path, 3) == (False, None), "never reached"
    assert store.version_kid("secret", f"{path}-none", 1) == (False, None), "no record"
    assert first.kid != second.kid

    client.secrets.transit.create_key(name=name, key_type="ecdsa-p256", mount_point="transit")
    client.secrets.transit.rotate_key(name=name, mount_point="transit")
    public = client.secrets.transit.read_key(name=name, mount_point="transit")["data"]["keys"]["2"]["public_key"]
    assert transit.version_kid("transit", name, 2) == (True, kid_for(public))
    assert transit.version_kid("transit", name, 3) == (False, None)
    assert transit.version_kid("transit", f"{name}-none", 1) == (False, None)
