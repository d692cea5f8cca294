"""spec.vault.engine: transit — keys generated inside Vault, never exported, signing through transit/sign."""

from __future__ import annotations

import hvac
import pytest

from devcluster.operator_process import OperatorProcess
from servicekey_operator.keys import ALGORITHMS
from tests.support import ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration


def _transit_key(vault_client: hvac.Client, servicekeys: ServiceKeys, name: str) -> dict:
    mount, key_name = servicekeys.get(name)["status"]["vaultPath"].split("/keys/")
    return vault_client.secrets.transit.read_key(name=key_name, mount_point=mount)["data"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tokens_signed_by_transit_verify_against_the_published_jwks(operator: OperatorProcess,
                                                                     servicekeys: ServiceKeys,
                                                                     vault_client: hvac.Client, algorithm: str):
    servicekeys.create("in-vault", {"algorithm": algorithm, "vault": {"engine": "transit"}})
    status = servicekeys.wait_ready("in-vault")["status"]

    token = servicekeys.sign_with_transit("in-vault")

    assert servicekeys.verifies("in-vault-public", token)
    key = _transit_key(vault_client, servicekeys, "in-vault")
    assert key["exportable"] is False
    record = servicekeys.vault_secret("secret", f"servicekeys/{servicekeys.namespace}/in-vault")
    assert "private_key" not in record, "a transit key's record never holds the private key"
    assert record["engine"] == "transit" and record["kid"] == status["keyId"]


def test_rotation_rotates_the_transit_key_and_keeps_the_previous_version_verifiable(
        operator: OperatorProcess, servicekeys: ServiceKeys, vault_client: hvac.Client):
    servicekeys.create("in-vault", {"algorithm": "ES256", "vault": {"engine": "transit"},
                                    "rotation": {"retainPrevious": 1}})
    first_kid = servicekeys.wait_ready("in-vault")["status"]["keyId"]
    old_token = servicekeys.sign_with_transit("in-vault")

    servicekeys.patch("in-vault", {"metadata": {"annotations": {"servicekey.io/rotate": "1"}}})
    second_kid = servicekeys.wait_new_kid("in-vault", first_kid)["status"]["keyId"]

    key = _transit_key(vault_client, servicekeys, "in-vault")
    assert key["latest_version"] == 2 and key["min_decryption_version"] == 1
    assert servicekeys.kids("in-vault-public") == [second_kid, first_kid]
    assert servicekeys.verifies("in-vault-public", old_token)
    assert servicekeys.verifies("in-vault-public", servicekeys.sign_with_transit("in-vault"))

    servicekeys.patch("in-vault", {"metadata": {"annotations": {"servicekey.io/rotate": "2"}}})
    servicekeys.wait_new_kid("in-vault", second_kid)
    assert _transit_key(vault_client, servicekeys, "in-vault")["min_decryption_version"] == 2
    wait_for(lambda: not servicekeys.verifies("in-vault-public", old_token), 10, "the oldest key to drop out")


def test_switching_from_kv_to_transit_is_a_new_key_and_keeps_the_old_one_retained(
        operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.create("moving", {"algorithm": "ES256"})
    kv_kid = servicekeys.wait_ready("moving")["status"]["keyId"]
    kv_token = servicekeys.sign("moving")

    servicekeys.patch("moving", {"spec": {"vault": {"engine": "transit"}}})
    transit_kid = servicekeys.wait_new_kid("moving", kv_kid)["status"]["keyId"]

    assert servicekeys.kids("moving-public") == [transit_kid, kv_kid]
    assert servicekeys.verifies("moving-public", kv_token)
    assert servicekeys.verifies("moving-public", servicekeys.sign_with_transit("moving"))


def test_delete_policy_deletes_the_transit_key(operator: OperatorProcess, servicekeys: ServiceKeys,
                                               vault_client: hvac.Client):
    servicekeys.create("doomed", {"algorithm": "EdDSA", "vault": {"engine": "transit"}, "deletionPolicy": "Delete"})
    mount, key_name = servicekeys.wait_ready("doomed")["status"]["vaultPath"].split("/keys/")

    servicekeys.delete("doomed")
    servicekeys.wait_gone("doomed")

    with pytest.raises(hvac.exceptions.InvalidPath):
        vault_client.secrets.transit.read_key(name=key_name, mount_point=mount)
    assert servicekeys.vault_versions("secret", f"servicekeys/{servicekeys.namespace}/doomed") == 0


def test_a_foreign_transit_key_is_left_untouched(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                 vault_client: hvac.Client):
    key_name = f"servicekeys.{servicekeys.namespace}.taken.ecdsa-p256"
    vault_client.secrets.transit.create_key(name=key_name, key_type="ecdsa-p256", mount_point="transit")

    servicekeys.create("taken", {"algorithm": "ES256", "vault": {"engine": "transit"}})
    obj = servicekeys.wait_condition("taken", "False", "VaultPathConflict")

    assert "left untouched" in ready_condition(obj)["message"]
    assert vault_client.secrets.transit.read_key(name=key_name, mount_point="transit")["data"]["latest_version"] == 1


def test_publish_ahead_with_transit_is_an_invalid_spec(operator: OperatorProcess, servicekeys: ServiceKeys):
    servicekeys.create("ahead", {"algorithm": "ES256", "vault": {"engine": "transit"},
                                 "rotation": {"publishAhead": "1m"}})
    obj = servicekeys.wait_condition("ahead", "False", "InvalidSpec")

    assert "publishAhead is not supported with vault.engine transit" in ready_condition(obj)["message"]
