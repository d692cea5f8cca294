"""A ServiceKey end to end against the real apiserver and OpenBao: keys, publication, conflicts, deletion."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import hvac
import jwt
import pytest
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from devcluster.operator_process import OperatorProcess
from servicekey_operator.keys import ALGORITHMS
from servicekey_operator.vault.records import DELETION_POLICY_METADATA_KEY
from tests.support import ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration


def _sign_with_vault_key(servicekeys: ServiceKeys, name: str) -> tuple[str, dict[str, str]]:
    mount, path = servicekeys.vault_path(name)
    secret = servicekeys.vault_secret(mount, path)
    token = jwt.encode({"sub": name}, secret["private_key"], algorithm=secret["algorithm"],
                       headers={"kid": secret["kid"]})
    return token, secret


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_publishes_a_jwks_that_verifies_tokens_signed_with_the_vault_key(
        operator: OperatorProcess, servicekeys: ServiceKeys, algorithm: str, tmp_path: Path):
    servicekeys.create("signer", {"algorithm": algorithm})
    status = servicekeys.wait_ready("signer")["status"]

    token, secret = _sign_with_vault_key(servicekeys, "signer")
    configmap = servicekeys.configmap("signer-public")
    jwks = json.loads(configmap.data["jwks.json"])

    pyjwt_key = jwt.PyJWKSet.from_dict(jwks)[secret["kid"]]
    assert jwt.decode(token, pyjwt_key.key, algorithms=[algorithm])["sub"] == "signer"
    jwcrypto_set = jwcrypto_jwk.JWKSet.from_json(configmap.data["jwks.json"])
    verified = jwcrypto_jwt.JWT(jwt=token, key=jwcrypto_set, algs=[algorithm])
    assert json.loads(verified.claims)["sub"] == "signer"
    thumbprint = jwcrypto_jwk.JWK(**jwks["keys"][0]).thumbprint()
    assert status["keyId"] == configmap.data["kid"] == secret["kid"] == thumbprint
    pem_file = tmp_path / "public.pem"
    pem_file.write_text(configmap.data["public.pem"])
    subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pem_file), "-noout"], check=True)
    assert status["algorithm"] == algorithm and status["keyVersion"] == 1


def test_configmap_and_status_follow_the_contract(operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.create("contract", {"algorithm": "ES256", "serviceName": "payments",
                                    "publicKey": {"configMapName": "payments-jwks"}})
    obj = servicekeys.wait_ready("contract")

    configmap = servicekeys.configmap("payments-jwks")
    secret = servicekeys.vault_secret(*servicekeys.vault_path("contract"))

    assert configmap.metadata.labels["app.kubernetes.io/managed-by"] == "servicekey-operator"
    assert configmap.metadata.labels["servicekey.io/name"] == "contract"
    assert [(ref.kind, ref.uid) for ref in configmap.metadata.owner_references] == [
        ("ServiceKey", obj["metadata"]["uid"])]
    for jwk in json.loads(configmap.data["jwks.json"])["keys"]:
        assert {"kid", "kty", "alg", "use"} <= jwk.keys() and jwk["use"] == "sig"
    assert obj["status"]["vaultPath"] == f"secret/servicekeys/{servicekeys.namespace}/contract"
    assert obj["status"]["configMapName"] == "payments-jwks"
    assert secret["service_name"] == "payments" and secret["algorithm"] == "ES256"
    assert set(secret) >= {"private_key", "public_key", "algorithm", "kid", "service_name", "created_at"}
    assert configmap.data["public.pem"] == secret["public_key"]
    # kopf keeps no bookkeeping on the object (the passes are level-based): one PATCH fewer per change.
    assert [name for name in obj["metadata"].get("annotations") or {} if "kopf" in name] == []
    # Retain, no copies: the garbage collector ends everything, so no finalizer (and no write to add one).
    assert obj["metadata"].get("finalizers") is None


def test_a_foreign_vault_secret_is_left_untouched_and_reported(operator: OperatorProcess,
                                                              servicekeys: ServiceKeys, vault_client: hvac.Client):
    path = f"servicekeys/{servicekeys.namespace}/taken"
    vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret={"owner": "someone else"},
                                                       mount_point="secret")

    servicekeys.create("taken", {"algorithm": "ES256"})
    obj = servicekeys.wait_condition("taken", "False", "VaultPathConflict")

    assert "left untouched" in ready_condition(obj)["message"]
    assert servicekeys.vault_secret("secret", path) == {"owner": "someone else"}
    assert servicekeys.vault_versions("secret", path) == 1
    assert servicekeys.configmap("taken-public") is None


def test_a_foreign_configmap_is_left_untouched_and_reported(operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.core.create_namespaced_config_map(servicekeys.namespace, {
        "metadata": {"name": "occupied-public"}, "data": {"jwks.json": "theirs"}})

    servicekeys.create("occupied", {"algorithm": "ES256"})
    servicekeys.wait_condition("occupied", "False", "ConfigMapConflict")

    configmap = servicekeys.configmap("occupied-public")
    assert configmap.data == {"jwks.json": "theirs"}
    assert not configmap.metadata.owner_references


def test_retain_keeps_the_vault_key_and_a_new_servicekey_adopts_it(operator: OperatorProcess,
                                                                  servicekeys: ServiceKeys):
    servicekeys.create("kept", {"algorithm": "EdDSA"})
    first_kid = servicekeys.wait_ready("kept")["status"]["keyId"]
    mount, path = servicekeys.vault_path("kept")

    servicekeys.delete("kept")
    servicekeys.wait_gone("kept")
    assert servicekeys.vault_versions(mount, path) == 1, "Retain must keep the Vault secret"
    wait_for(lambda: servicekeys.configmap("kept-public") is None, 60, "the GC to delete the ConfigMap")

    servicekeys.create("kept", {"algorithm": "EdDSA"})
    adopted = servicekeys.wait_ready("kept")

    assert adopted["status"]["keyId"] == first_kid
    assert servicekeys.vault_versions(mount, path) == 1, "adoption must not write a new version"
    assert servicekeys.configmap("kept-public").data["kid"] == first_kid


def test_delete_policy_removes_the_vault_secret(operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.create("doomed", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    servicekeys.wait_ready("doomed")
    mount, path = servicekeys.vault_path("doomed")

    servicekeys.delete("doomed")
    servicekeys.wait_gone("doomed")

    assert servicekeys.vault_versions(mount, path) == 0
    wait_for(lambda: servicekeys.configmap("doomed-public") is None, 60, "the GC to delete the ConfigMap")


def _recorded_deletion_policy(servicekeys: ServiceKeys, mount: str, path: str) -> str | None:
    metadata = servicekeys.vault.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)["data"]
    return (metadata.get("custom_metadata") or {}).get(DELETION_POLICY_METADATA_KEY)


def test_the_vault_secret_records_the_deletion_policy_and_follows_the_spec(operator: OperatorProcess,
                                                                          servicekeys: ServiceKeys):
    servicekeys.create("recorded", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    servicekeys.wait_ready("recorded")
    mount, path = servicekeys.vault_path("recorded")
    assert _recorded_deletion_policy(servicekeys, mount, path) == "Delete"

    servicekeys.patch("recorded", {"spec": {"deletionPolicy": "Retain"}})

    wait_for(lambda: _recorded_deletion_policy(servicekeys, mount, path) == "Retain", 30,
             "the recorded deletion policy to follow the spec")
    assert servicekeys.vault_versions(mount, path) == 1, "recording the policy must not write a key version"


def test_renaming_the_configmap_moves_the_publication(operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.create("renamed", {"algorithm": "EdDSA"})
    kid = servicekeys.wait_ready("renamed")["status"]["keyId"]

    servicekeys.patch("renamed", {"spec": {"publicKey": {"configMapName": "renamed-jwks"}}})
    status = servicekeys.wait_ready("renamed")["status"]

    assert status["configMapName"] == "renamed-jwks" and status["keyId"] == kid
    assert servicekeys.configmap("renamed-jwks").data["kid"] == kid
    wait_for(lambda: servicekeys.configmap("renamed-public") is None, 10, "the former ConfigMap to be removed")


@pytest.mark.parametrize("tamper", ["delete", "edit"])
def test_a_tampered_configmap_is_restored_from_vault(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                    tamper: str):
    servicekeys.create("guarded", {"algorithm": "ES256"})
    kid = servicekeys.wait_ready("guarded")["status"]["keyId"]
    original = servicekeys.configmap("guarded-public").data

    if tamper == "delete":
        servicekeys.core.delete_namespaced_config_map("guarded-public", servicekeys.namespace)
    else:
        servicekeys.core.patch_namespaced_config_map("guarded-public", servicekeys.namespace,
                                                     {"data": {"kid": "forged", "jwks.json": "{}"}})

    def restored() -> bool:
        configmap = servicekeys.configmap("guarded-public")
        return configmap is not None and configmap.data == original
    wait_for(restored, 30, f"the ConfigMap to be restored after {tamper}")
    assert servicekeys.configmap("guarded-public").data["kid"] == kid
