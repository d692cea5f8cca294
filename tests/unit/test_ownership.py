"""Whose is a Vault record (vault/ownership.py): the one rule behind every write and delete, as a table, and the
Transit names that follow from a record's path, which may never collide."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servicekey_operator.errors import VaultPathConflict
from servicekey_operator.vault.ownership import Owner, RecordedOwner, verify_owner
from servicekey_operator.vault.transit import transit_key_name, transit_name

ME = Owner(namespace="payments", name="signing", namespace_uid="ns-now", uid="sk-now")


@pytest.mark.parametrize(("recorded", "adopted", "verdict"), [
    (RecordedOwner("payments/signing", "ns-now", "sk-now"), (), None),
    # Deleted with Retain and created again in the same namespace: a new ServiceKey uid adopts its key.
    (RecordedOwner("payments/signing", "ns-now", "sk-before"), (), None),
    (RecordedOwner("payments/signing", "ns-before", "sk-before"), ("ns-before",), None),
    (RecordedOwner("payments/signing", "ns-before", "sk-before"), (), "servicekey.io/adopt-namespace-uid=ns-before"),
    (RecordedOwner("payments/signing", "ns-before", "sk-before"), ("ns-other",), "in an earlier namespace"),
    (RecordedOwner("payments/signing", None, None), ("ns-before",), "cannot prove"),
    (RecordedOwner("orders/signing", "ns-now", "sk-now"), ("ns-now",), "written by ServiceKey orders/signing"),
    (RecordedOwner("payments/other", "ns-now", "sk-now"), (), "written by ServiceKey payments/other"),
    (RecordedOwner(None, None, None), (), "something other than this operator"),
    (RecordedOwner(None, "ns-now", "sk-now"), ("ns-now",), "something other than this operator"),
], ids=["this-servicekey", "retained-and-recreated", "adopted-namespace", "recreated-namespace",
        "adoption-of-another-namespace", "no-namespace-uid", "another-namespace", "another-name", "foreign",
        "foreign-with-our-uid"])
def test_a_record_is_ours_only_when_it_proves_it(recorded, adopted, verdict):
    if verdict is None:
        verify_owner(recorded, ME, adopted, "secret/servicekeys/payments/signing")
        return
    with pytest.raises(VaultPathConflict, match=verdict.replace(".", r"\.")):
        verify_owner(recorded, ME, adopted, "secret/servicekeys/payments/signing")


SEGMENT = st.text(alphabet="ab._-", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
PATH = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)
KEY_TYPE = st.sampled_from(["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-4096"])


@given(PATH, KEY_TYPE, PATH, KEY_TYPE)
def test_different_paths_or_key_types_never_share_a_transit_name(path_a, type_a, path_b, type_b):
    if (path_a, type_a) != (path_b, type_b):
        assert transit_name(path_a, type_a) != transit_name(path_b, type_b)


def test_the_dotted_name_and_the_nested_path_of_issue_13_get_different_transit_keys():
    assert transit_key_name("servicekeys/ns/x.y", "ES256", None) == "servicekeys.ns.x_dy.ecdsa-p256"
    assert transit_key_name("servicekeys/ns/x/y", "ES256", None) == "servicekeys.ns.x.y.ecdsa-p256"
    assert transit_key_name("servicekeys/payments/signing", "RS256", 2048) == "servicekeys.payments.signing.rsa-2048"
