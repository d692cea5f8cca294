"""A coordinator's rows checked before anything is written: every row imported as it is, or refused with a reason
the operator of the import can act on; names mapped, and collisions refused rather than merged."""

from __future__ import annotations

import pytest

from servicekey_operator.import_rows import CoordinatorRow, ImportedKey, RowError, check_row, plan, servicekey_name
from servicekey_operator.keys import generate_keypair


@pytest.fixture(scope="module")
def rs2048():
    return generate_keypair("RS256", 2048)


@pytest.fixture(scope="module")
def es256():
    return generate_keypair("ES256")


def row(service_id: str, keypair, algorithm: str | None = None, key_size: int | None = 2048,
        **changes) -> CoordinatorRow:
    fields = dict(service_id=service_id, service_name=f"{service_id} service", public_key=keypair.public_pem,
                  private_key=keypair.private_pem, algorithm=algorithm or keypair.algorithm, key_size=key_size)
    return CoordinatorRow(**{**fields, **changes})


def test_a_valid_row_is_imported_as_it_is_with_its_service_id_as_legacy_kid(rs2048, es256):
    imported = check_row(row("billing", rs2048), "payments", "billing")
    assert isinstance(imported, ImportedKey)
    assert (imported.kid, imported.public_pem, imported.private_pem) == (rs2048.kid, rs2048.public_pem,
                                                                          rs2048.private_pem)
    assert (imported.algorithm, imported.key_size, imported.legacy_kid) == ("RS256", 2048, "billing")
    # An ES256 row carries the table's default key_size (2048): the curve fixes the size, the column is ignored.
    ec = check_row(row("orders", es256, key_size=2048), "payments", "orders")
    assert isinstance(ec, ImportedKey) and ec.key_size is None


@pytest.mark.parametrize(("changes", "reason"), [
    ({"private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"}, "InvalidPrivateKey"),
    ({"private_key": ""}, "InvalidPrivateKey"),
    ({"public_key": "garbage"}, "InvalidPublicKey"),
    ({"algorithm": "HS256"}, "UnsupportedAlgorithm"),
    ({"key_size": 4096}, "KeyAlgorithmMismatch"),
    ({"algorithm": "ES256"}, "KeyAlgorithmMismatch"),
])
def test_a_broken_row_is_refused_with_its_reason_and_no_key_material(rs2048, changes, reason):
    refused = check_row(row("billing", rs2048, **changes), "payments", "billing")
    assert isinstance(refused, RowError) and refused.reason == reason
    assert "PRIVATE KEY" not in refused.message and "not a key" not in refused.message


def test_a_public_key_that_is_not_the_private_halfs_is_refused(rs2048):
    other = generate_keypair("RS256", 2048)
    refused = check_row(row("billing", rs2048, public_key=other.public_pem), "payments", "billing")
    assert isinstance(refused, RowError) and refused.reason == "KeyMismatch"
    assert other.kid in refused.message and rs2048.kid in refused.message


@pytest.mark.parametrize(("service_id", "name"), [
    ("billing", "billing"), ("Billing_Service", "billing-service"), ("svc.orders", "svc-orders"),
    ("svc-0001", "svc-0001"), ("has space", None), ("-leading", None), ("x" * 64, None), ("ünïcode", None),
])
def test_service_ids_map_to_servicekey_names_or_to_none(service_id, name):
    assert servicekey_name(service_id) == name


def test_collisions_invalid_names_and_repeated_ids_are_refused_and_the_rest_imported(rs2048, es256):
    rows = [row("Billing_Service", rs2048), row("billing-service", es256, key_size=None), row("ok", es256),
            row("dup", es256), row("dup", rs2048), row("has space", rs2048), row("renamed_", es256)]

    result = plan(rows, "payments", names={"renamed_": "renamed"})

    assert [(key.service_id, key.name) for key in result.keys] == [("ok", "ok"), ("renamed_", "renamed")]
    assert sorted((error.service_id, error.reason) for error in result.errors) == [
        ("Billing_Service", "NameCollision"), ("billing-service", "NameCollision"), ("dup", "DuplicateServiceId"),
        ("dup", "DuplicateServiceId"), ("has space", "InvalidName")]


def test_a_namespace_per_row_places_equal_names_apart(es256):
    result = plan([row("a", es256), row("A", es256)], {"a": "team-a", "A": "team-b"})
    assert [(key.namespace, key.name) for key in result.keys] == [("team-a", "a"), ("team-b", "a")]
    assert plan([row("a", es256)], {}).errors[0].reason == "NoNamespace"


def test_a_dump_entry_reads_like_a_table_row(es256):
    entry = {"serviceId": "orders", "serviceName": "Orders", "publicKey": es256.public_pem,
             "privateKey": es256.private_pem, "algorithm": "ES256", "keySize": None}
    assert CoordinatorRow.from_mapping(entry) == row("orders", es256, key_size=None, service_name="Orders")
    assert "PRIVATE" not in repr(CoordinatorRow.from_mapping(entry))


@pytest.mark.parametrize("key_size", [None, "2048", 2048.0, " 2048 "])
def test_an_rsa_row_without_a_clean_key_size_is_imported_with_its_keys_size(rs2048, key_size):
    imported = check_row(CoordinatorRow.from_mapping({
        "service_id": "billing", "public_key": rs2048.public_pem, "private_key": rs2048.private_pem,
        "algorithm": "RS256", "key_size": key_size}), "payments", "billing")
    # The spec and the record then say 2048, as the operator would: no rotation on adoption.
    assert isinstance(imported, ImportedKey) and imported.key_size == 2048


def test_a_service_id_with_a_comma_is_no_legacy_kid(es256):
    imported = check_row(row("a,b", es256, key_size=None), "payments", "a-b")
    assert isinstance(imported, ImportedKey) and imported.legacy_kid is None
