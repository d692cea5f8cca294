"""The invariant checker against the real cluster and OpenBao: silent on healthy keys, loud on each thing broken
behind the (stopped) operator's back, through the API, through etcd, and as the ``check`` command."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import hvac
import kubernetes.client
import pytest
from jwcrypto import jwk as jwcrypto_jwk

from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from servicekey_operator import invariants
from servicekey_operator.keys import generate_keypair
from servicekey_operator.vault.records import OWNER_METADATA_KEY
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.integration
StartOperator = Callable[..., OperatorProcess]
Finding = tuple[int | None, str, str, str]

# A few algorithms, one key rotated (so the JWKS retains a previous key), one with a key published ahead.
HEALTHY_KEYS = {
    "es256": {"algorithm": "ES256"},
    "rs256": {"algorithm": "RS256", "rotation": {"retainPrevious": 2}},
    "eddsa": {"algorithm": "EdDSA"},
    "es384": {"algorithm": "ES384", "rotation": {"publishAhead": "1h"}},
}


@dataclass
class Cluster:
    """Healthy keys in one namespace, the operator that made them, and a way to check them."""

    servicekeys: ServiceKeys
    operator: OperatorProcess
    start_operator: StartOperator
    kube_client: kubernetes.client.ApiClient
    vault: hvac.Client
    env: DevEnvironment

    @property
    def namespace(self) -> str:
        return self.servicekeys.namespace

    def check(self, *, etcd: bool = False) -> list[invariants.Violation]:
        return invariants.check(self.kube_client, self.vault, namespaces=[self.namespace],
                                etcd_endpoint=self.env.kube.etcd_endpoint if etcd else None)

    def findings(self, *, etcd: bool = False) -> set[Finding]:
        return {(v.invariant, v.check, v.kind, v.object) for v in self.check(etcd=etcd)}

    def ref(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def configmap_data(self, name: str) -> dict[str, str]:
        return dict(self.servicekeys.configmap(f"{name}-public").data)

    def replace_configmap_data(self, name: str, data: dict[str, str]) -> None:
        self.servicekeys.core.patch_namespaced_config_map(f"{name}-public", self.namespace, {"data": data})

    def private_pem(self, name: str) -> str:
        return self.servicekeys.vault_secret(*self.servicekeys.vault_path(name))["private_key"]


@pytest.fixture
def cluster(start_operator: StartOperator, servicekeys: ServiceKeys, kube_client: kubernetes.client.ApiClient,
            vault_client: hvac.Client, dev_env: DevEnvironment) -> Iterator[Cluster]:
    """HEALTHY_KEYS made by a running operator, at rest: eddsa and rs256 rotated once, es384's next key pending."""
    operator = start_operator()
    for name, spec in HEALTHY_KEYS.items():
        servicekeys.create(name, spec)
    kids = {name: servicekeys.wait_ready(name)["status"]["keyId"] for name in HEALTHY_KEYS}
    for name in ("eddsa", "rs256", "es384"):
        servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": "once"}}})
    servicekeys.wait_new_kid("eddsa", kids["eddsa"])
    servicekeys.wait_new_kid("rs256", kids["rs256"])
    pending = servicekeys.wait_condition("es384", "True", "Rotating")["status"]["pendingKeyId"]
    wait_for(lambda: servicekeys.kids("es384-public") == [kids["es384"], pending], 10, "es384's pending key published")
    wait_for(lambda: len(servicekeys.kids("eddsa-public")) == 2, 10, "eddsa's JWKS to retain the first key")
    yield Cluster(servicekeys, operator, start_operator, kube_client, vault_client, dev_env)


def _assert_no_key_material(violations: list[invariants.Violation], *private_pems: str) -> None:
    for violation in violations:
        text = str(violation)
        assert "PRIVATE KEY-----" not in text
        for pem in private_pems:
            body = "".join(line for line in pem.splitlines() if "-----" not in line)
            assert not any(body[i:i + 16] in text for i in range(0, len(body) - 16, 8)), f"key material in {text}"


def test_healthy_keys_have_no_violations_through_the_api_and_through_etcd(cluster: Cluster):
    assert cluster.servicekeys.get("es384")["status"]["pendingKeyId"], "the healthy set includes a pending key"

    assert cluster.check() == []
    assert cluster.check(etcd=True) == []


def test_a_configmap_edited_behind_the_stopped_operator_is_reported_and_the_restarted_operator_repairs_it(
        cluster: Cluster):
    cluster.operator.stop()
    cluster.replace_configmap_data("es256", {"kid": cluster.configmap_data("eddsa")["kid"]})
    eddsa = cluster.configmap_data("eddsa")
    jwks = json.loads(eddsa["jwks.json"])
    cluster.replace_configmap_data("eddsa", {"jwks.json": json.dumps({"keys": jwks["keys"][:1]})})

    violations = cluster.check()

    assert {(v.invariant, v.check, v.kind, v.object) for v in violations} == {
        (2, invariants.CURRENT_KEY_MISMATCH, "ConfigMap", cluster.ref("es256-public")),
        (3, invariants.JWKS_MISMATCH, "ConfigMap", cluster.ref("eddsa-public")),
    }
    dropped = next(v for v in violations if v.check == invariants.JWKS_MISMATCH)
    assert f"retained key {jwks['keys'][1]['kid']} (version 1" in dropped.detail

    cluster.start_operator()
    wait_for(lambda: cluster.check() == [], 30, "the restarted operator to restore both ConfigMaps")


def test_private_keys_put_into_kubernetes_objects_are_reported_through_the_api_and_etcd(cluster: Cluster):
    cluster.operator.stop()
    vault_pem = cluster.private_pem("es256")
    foreign_jwk = json.loads(jwcrypto_jwk.JWK.generate(kty="EC", crv="P-256").export_private())
    core, namespace = cluster.servicekeys.core, cluster.namespace
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "pasted-pem"}, "data": {"key.pem": vault_pem}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "pasted-jwk"},
                                                  "data": {"jwks.json": json.dumps({"keys": [foreign_jwk]})}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "pasted-secret"},
                                              "data": {"key": base64.b64encode(vault_pem.encode()).decode()}})
    cluster.servicekeys.patch("rs256", {"metadata": {"annotations": {"note": cluster.private_pem("rs256")}}})

    violations = cluster.check()
    through_etcd = cluster.check(etcd=True)

    api_findings = {
        (1, invariants.PRIVATE_KEY_MATERIAL, "ConfigMap", cluster.ref("pasted-pem")),
        (1, invariants.PRIVATE_JWK, "ConfigMap", cluster.ref("pasted-jwk")),
        (1, invariants.PRIVATE_KEY_MATERIAL, "Secret", cluster.ref("pasted-secret")),
        (1, invariants.PRIVATE_KEY_MATERIAL, "ServiceKey", cluster.ref("rs256")),
    }
    assert {(v.invariant, v.check, v.kind, v.object) for v in violations} == api_findings
    assert {(v.invariant, v.check, v.kind, v.object) for v in through_etcd} == api_findings | {
        (1, invariants.PRIVATE_KEY_MATERIAL, "etcd configmaps", cluster.ref("pasted-pem")),
        (1, invariants.PRIVATE_JWK, "etcd configmaps", cluster.ref("pasted-jwk")),
        (1, invariants.PRIVATE_KEY_MATERIAL, "etcd secrets", cluster.ref("pasted-secret")),
        (1, invariants.PRIVATE_KEY_MATERIAL, "etcd servicekey.io/servicekeys", cluster.ref("rs256")),
    }
    mount, path = cluster.servicekeys.vault_path("es256")
    assert any(f"private key material of the key at {mount}/{path} (version 1)" in v.detail for v in violations), \
        "the leak names whose key it is"
    _assert_no_key_material(violations + through_etcd, vault_pem, cluster.private_pem("rs256"))


def test_key_versions_written_behind_the_stopped_operator_are_reported(cluster: Cluster):
    cluster.operator.stop()
    kv = cluster.vault.secrets.kv.v2
    mount, path = cluster.servicekeys.vault_path("es256")
    latest = cluster.servicekeys.vault_secret(mount, path)
    intruder = generate_keypair("ES256")
    kv.create_or_update_secret(path=path, mount_point=mount, cas=1, secret=dict(
        latest, private_key=intruder.private_pem, public_key=intruder.public_pem, kid=intruder.kid))
    es256_location = f"{mount}/{path}"
    mount, path = cluster.servicekeys.vault_path("eddsa")
    latest = cluster.servicekeys.vault_secret(mount, path)
    forged = generate_keypair("EdDSA")
    kv.create_or_update_secret(path=path, mount_point=mount, cas=2, secret=dict(latest, private_key=forged.private_pem))

    violations = cluster.check()

    assert {(v.invariant, v.check, v.kind, v.object) for v in violations} == {
        (2, invariants.CURRENT_KEY_MISMATCH, "ConfigMap", cluster.ref("es256-public")),   # kid and public.pem
        (3, invariants.JWKS_MISMATCH, "ConfigMap", cluster.ref("es256-public")),          # new key missing, old extra
        (2, invariants.CURRENT_KEY_MISMATCH, "VaultSecret", f"{mount}/{path}"),           # eddsa: a foreign private key
        # The forged version 3 repeats version 2's kid, so version 1 falls out of the retainPrevious=1 window.
        (3, invariants.JWKS_MISMATCH, "ConfigMap", cluster.ref("eddsa-public")),
        # es256's intruder copied the version before it, rotation request and all: a key that nothing asked for.
        (4, invariants.KEY_CHURN, "VaultSecret", es256_location),
    }
    assert es256_location in next(v.detail for v in violations if v.kind == "ConfigMap" and "kid is" in v.detail)
    assert any(intruder.kid in v.detail and "Vault's current key" in v.detail for v in violations)
    assert any("not the private half" in v.detail for v in violations)
    _assert_no_key_material(violations, intruder.private_pem, forged.private_pem)


def test_a_configmap_not_owned_by_its_live_servicekey_is_reported(cluster: Cluster):
    cluster.operator.stop()
    core, namespace = cluster.servicekeys.core, cluster.namespace
    # No owner reference at all: a reference to a uid that does not exist would be collected by the garbage
    # collector before the checker could see it.
    core.patch_namespaced_config_map("es256-public", namespace, {"metadata": {"ownerReferences": None}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "ghost-public", "labels": {
        "app.kubernetes.io/managed-by": "servicekey-operator", "servicekey.io/name": "ghost"}}, "data": {}})

    found = cluster.findings()

    assert found == {(None, invariants.CONFIGMAP_OWNERSHIP, "ConfigMap", cluster.ref("es256-public")),
                     (None, invariants.CONFIGMAP_OWNERSHIP, "ConfigMap", cluster.ref("ghost-public"))}

    cluster.start_operator()
    wait_for(lambda: cluster.findings() == {(None, invariants.CONFIGMAP_OWNERSHIP, "ConfigMap",
                                             cluster.ref("ghost-public"))},
             30, "the restarted operator to restore the owner reference (the ghost's ConfigMap is not its to touch)")


def test_a_secret_retained_after_its_servicekey_was_deleted_is_an_informational_orphan(cluster: Cluster):
    mount, path = cluster.servicekeys.vault_path("es256")
    cluster.servicekeys.delete("es256")
    cluster.servicekeys.wait_gone("es256")
    wait_for(lambda: cluster.servicekeys.configmap("es256-public") is None, 30, "the ConfigMap to be collected")

    violations = cluster.check()

    assert [(v.check, v.object, v.informational, v.possibly_retained) for v in violations] == [
        (invariants.ORPHANED_SECRET, f"{mount}/{path}", True, True)]
    assert cluster.ref("es256") in violations[0].detail
    assert "kept by its deletionPolicy Retain" in violations[0].detail, "the operator records the policy"
    assert invariants.summary(violations) == "0 violations, 1 informational"


def test_an_orphan_whose_record_says_delete_is_a_violation(cluster: Cluster):
    path = f"servicekeys/{cluster.namespace}/deleted-one"
    cluster.vault.secrets.kv.v2.update_metadata(path=path, mount_point="secret", custom_metadata={
        OWNER_METADATA_KEY: cluster.ref("deleted-one"), invariants.DELETION_POLICY_METADATA_KEY: "Delete"})
    cluster.vault.secrets.kv.v2.create_or_update_secret(path=path, mount_point="secret", secret=dict(
        cluster.servicekeys.vault_secret(*cluster.servicekeys.vault_path("es256")), kid="copy"))

    violations = [v for v in cluster.check() if v.check == invariants.ORPHANED_SECRET]

    assert [(v.object, v.informational, v.possibly_retained) for v in violations] == [
        (f"secret/{path}", False, False)]


def _run_check(env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servicekey_operator", "check", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **env.operator_env()))


def test_the_check_command_prints_one_line_per_violation_and_exits_1(cluster: Cluster):
    healthy = _run_check(cluster.env, "-n", cluster.namespace, "--etcd", cluster.env.kube.etcd_endpoint)

    assert (healthy.returncode, healthy.stdout) == (0, "0 violations\n"), healthy.stderr

    cluster.operator.stop()
    cluster.replace_configmap_data("es256", {"kid": "edited"})
    broken = _run_check(cluster.env, "-n", cluster.namespace)

    assert broken.returncode == 1, broken.stderr
    lines = broken.stdout.splitlines()
    assert lines == [f"[invariant 2] CurrentKeyMismatch ConfigMap {cluster.ref('es256-public')}: kid is 'edited', "
                     f"Vault's current key is {cluster.servicekeys.get('es256')['status']['keyId']} (version 1 at "
                     f"secret/servicekeys/{cluster.namespace}/es256)", "1 violation"]


def test_the_check_command_exits_2_when_it_cannot_read_vault(cluster: Cluster):
    env = dict(os.environ, **cluster.env.operator_env())
    env["VAULT_ADDR"] = "http://127.0.0.1:9"  # nothing listens there
    result = subprocess.run([sys.executable, "-m", "servicekey_operator", "check", "-n", cluster.namespace],
                            capture_output=True, text=True, timeout=120, env=env)

    assert result.returncode == 2
    assert "could not read" in result.stderr and result.stdout == ""



# --- Invariant 7: the states of issue #13's failing inputs, made behind the stopped operator ---------------


def test_a_copy_that_replaced_the_target_namespaces_own_configmap_is_reported(
        cluster: Cluster, make_namespace: Callable[..., str]):
    cluster.operator.stop()
    source = make_namespace()
    copy_labels = {"app.kubernetes.io/managed-by": "servicekey-operator", "servicekey.io/name": "es256",
                   "servicekey.io/source-namespace": source, "servicekey.io/owner-uid": "uid-of-the-source"}
    # What the bug did: the target's own es256-public overwritten by a copy from another namespace.
    cluster.servicekeys.core.replace_namespaced_config_map("es256-public", cluster.namespace, {
        "metadata": {"name": "es256-public", "labels": copy_labels}, "data": cluster.configmap_data("eddsa")})

    found = {(v.invariant, v.check, v.object, v.detail.split(":")[0]) for v in cluster.check()}

    assert (7, invariants.CONFIGMAP_OWNERSHIP, cluster.ref("es256-public"),
            f"copy of ServiceKey {source}/es256 stands where ServiceKey {cluster.ref('es256')} publishes its own "
            "key") in found
    assert (2, invariants.CURRENT_KEY_MISMATCH, cluster.ref("es256-public")) in {f[:3] for f in found}


def test_a_ready_key_on_a_record_of_another_namespace_incarnation_is_reported(cluster: Cluster):
    cluster.operator.stop()
    mount, path = cluster.servicekeys.vault_path("es256")
    # What the bug allowed: the key of a deleted namespace of the same name, adopted without an opt-in.
    latest = cluster.servicekeys.vault_secret(mount, path)
    cluster.vault.secrets.kv.v2.create_or_update_secret(path=path, mount_point=mount, cas=1, secret=dict(
        latest, owner_namespace_uid="uid-of-a-deleted-namespace"))

    found = {(v.invariant, v.check, v.object) for v in cluster.check()}

    assert found == {(7, invariants.OWNERSHIP_UNPROVEN, f"{mount}/{path}")}


def test_a_ready_key_whose_secret_another_keys_deletion_removed_is_reported(cluster: Cluster):
    cluster.operator.stop()
    mount, path = cluster.servicekeys.vault_path("eddsa")
    cluster.vault.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=mount)

    found = {(v.invariant, v.check, v.kind, v.object) for v in cluster.check()}

    # Published, and no record at all: Vault went back to before the key, whoever removed it (the operator's next
    # pass writes a new key and keeps the published one, rollback.py).
    assert (9, invariants.ROLLED_BACK, "ServiceKey", cluster.ref("eddsa")) in found


def test_one_transit_key_in_the_records_of_two_servicekeys_is_reported(cluster: Cluster):
    servicekeys = cluster.servicekeys
    servicekeys.create("transit-a", {"algorithm": "ES256", "vault": {"engine": "transit"}})
    servicekeys.create("transit-b", {"algorithm": "ES256", "vault": {"engine": "transit"}})
    servicekeys.wait_ready("transit-a")
    servicekeys.wait_ready("transit-b")
    cluster.operator.stop()
    kv = cluster.vault.secrets.kv.v2
    a_path, b_path = (f"servicekeys/{cluster.namespace}/{name}" for name in ("transit-a", "transit-b"))
    # What the bug did: the second record names the first one's Transit key.
    a_record = servicekeys.vault_secret("secret", a_path)
    b_record = servicekeys.vault_secret("secret", b_path)
    kv.create_or_update_secret(path=b_path, mount_point="secret", cas=1, secret=dict(
        b_record, transit_key=a_record["transit_key"], transit_version=a_record["transit_version"]))

    found = {(v.check, v.object) for v in cluster.check() if v.check == invariants.SHARED_KEY}

    assert found == {(invariants.SHARED_KEY, f"secret/{a_path}"), (invariants.SHARED_KEY, f"secret/{b_path}")}


def test_a_servicekey_no_pass_gave_a_status_is_reported_after_the_grace_period(cluster: Cluster):
    cluster.operator.stop()
    cluster.servicekeys.create("unserved", {"algorithm": "ES256"})

    assert cluster.check() == [], "a new key gets its grace period"
    late = invariants.check(cluster.kube_client, cluster.vault, namespaces=[cluster.namespace],
                            status_grace_seconds=0)

    assert {(v.invariant, v.check, v.object) for v in late} == {(6, invariants.MISSING_STATUS, cluster.ref("unserved"))}
    cluster.start_operator()
    cluster.servicekeys.wait_ready("unserved")
    assert invariants.check(cluster.kube_client, cluster.vault, namespaces=[cluster.namespace],
                            status_grace_seconds=0) == []
