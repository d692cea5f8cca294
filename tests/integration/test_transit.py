"""spec.vault.engine: transit — keys generated inside Vault, never exported, signing through transit/sign."""

from __future__ import annotations

import hvac
import jwt
import pytest

from devcluster.operator_process import OperatorProcess
from servicekey_operator import invariants
from servicekey_operator.keys import ALGORITHMS, kid_for
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


def test_publish_ahead_publishes_the_next_transit_version_before_signers_pinned_to_the_record_use_it(
        operator: OperatorProcess, servicekeys: ServiceKeys, vault_client: hvac.Client):
    # Issue #15.6: publishAhead was refused for Transit, whose latest version signs as soon as it exists; a
    # signer that names the record's key_version signs with the published key until the staged one is promoted.
    servicekeys.create("ahead", {"algorithm": "ES256", "vault": {"engine": "transit"},
                                 "rotation": {"publishAhead": "6s"}})
    first = servicekeys.wait_ready("ahead")["status"]
    servicekeys.patch("ahead", {"metadata": {"annotations": {"servicekey.io/rotate": "now"}}})
    rotating = servicekeys.wait_condition("ahead", "True", "Rotating")["status"]

    assert _transit_key(vault_client, servicekeys, "ahead")["latest_version"] == 2, "the next version exists"
    assert servicekeys.kids("ahead-public") == [first["keyId"], rotating["pendingKeyId"]]
    assert rotating["keyVersion"] == 1
    during = servicekeys.sign_with_transit("ahead")
    assert jwt.get_unverified_header(during)["kid"] == first["keyId"], "signers keep the published version"
    assert servicekeys.verifies("ahead-public", during)

    promoted = servicekeys.wait_new_kid("ahead", first["keyId"], timeout=20)["status"]

    assert (promoted["keyId"], promoted["keyVersion"]) == (rotating["pendingKeyId"], 2)
    assert servicekeys.verifies("ahead-public", servicekeys.sign_with_transit("ahead"))
    assert servicekeys.verifies("ahead-public", during)


@pytest.mark.parametrize("specs", [
    [{"algorithm": "ES256"}, {"algorithm": "ES384"}, {"algorithm": "ES256"}],
    [{"algorithm": "RS256", "keySize": 2048}, {"algorithm": "RS256", "keySize": 3072},
     {"algorithm": "RS256", "keySize": 2048}],
    [{"algorithm": "ES256"}, {"algorithm": "ES256", "vault": {"engine": "kv"}}, {"algorithm": "ES256"}],
], ids=["es256-es384-es256", "rs2048-rs3072-rs2048", "transit-kv-transit"])
def test_a_spec_switched_away_and_back_makes_a_new_transit_version_never_a_retired_one(
        operator: OperatorProcess, servicekeys: ServiceKeys, vault_client: hvac.Client, specs: list[dict]):
    # Issue #15.5: the retired Transit key came back as the signing key with its old kid.
    transit = {"engine": "transit"}
    servicekeys.create("switching", {**specs[0], "vault": transit, "rotation": {"retainPrevious": 3}})
    kids = [servicekeys.wait_ready("switching")["status"]["keyId"]]
    for spec in specs[1:]:
        replaced = {"keySize": None, **spec, "vault": spec.get("vault", transit)}
        servicekeys.patch("switching", {"spec": replaced})
        kids.append(servicekeys.wait_new_kid("switching", kids[-1])["status"]["keyId"])

    status = servicekeys.get("switching")["status"]
    assert len(set(kids)) == len(kids), f"every spec change is a new key: {kids}"
    assert status["keyVersion"] == _transit_key(vault_client, servicekeys, "switching")["latest_version"] == 2, \
        "keyVersion is the Transit key's version, the one a signer names"
    assert servicekeys.configmap("switching-public").metadata.annotations["servicekey.io/key-version"] == "2"
    assert servicekeys.verifies("switching-public", servicekeys.sign_with_transit("switching"))
    assert servicekeys.kids("switching-public") == list(reversed(kids))


def test_a_transit_key_rotated_outside_the_operator_is_adopted_published_first_and_the_checker_says_so(
        operator: OperatorProcess, servicekeys: ServiceKeys, vault_client: hvac.Client, kube_client):
    # Issue #15.4: after transit/keys/<k>/rotate (or auto_rotate_period) a signer using the latest version signed
    # with a key no JWKS listed, while the status said KeyReady and the checker was silent.
    servicekeys.create("outside", {"algorithm": "ES256", "vault": {"engine": "transit"},
                                   "rotation": {"publishAhead": "4s"}})
    first = servicekeys.wait_ready("outside")["status"]["keyId"]
    mount, key_name = servicekeys.get("outside")["status"]["vaultPath"].split("/keys/")
    vault_client.secrets.transit.rotate_key(name=key_name, mount_point=mount)

    findings = invariants.check(kube_client, vault_client, namespaces=[servicekeys.namespace])
    assert [(v.check, v.object) for v in findings] == [
        ("ForeignTransitVersion", f"secret/servicekeys/{servicekeys.namespace}/outside")]

    servicekeys.core.delete_namespaced_config_map("outside-public", servicekeys.namespace)  # any pass finds it
    staged = servicekeys.wait_condition("outside", "True", "Rotating")["status"]["pendingKeyId"]
    outside_public = _transit_key(vault_client, servicekeys, "outside")["keys"]["2"]["public_key"]
    assert staged == kid_for(outside_public), "the outside version is the one published"
    assert invariants.check(kube_client, vault_client, namespaces=[servicekeys.namespace]) == []

    adopted = servicekeys.wait_new_kid("outside", first, timeout=20)["status"]
    assert (adopted["keyId"], adopted["keyVersion"]) == (staged, 2)
    assert _transit_key(vault_client, servicekeys, "outside")["latest_version"] == 2, "no rotation of its own"
    assert any(reason == "Rotated" and "TransitRotated" in message
               for _, reason, message in servicekeys.events("outside"))
    assert invariants.check(kube_client, vault_client, namespaces=[servicekeys.namespace]) == []
