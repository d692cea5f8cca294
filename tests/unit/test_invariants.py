"""The invariant checker's pure parts: JWKS expectations, ConfigMap and record checks, material scanners."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import json

import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk as jwcrypto_jwk

from servicekey_operator import invariants, keys, publish
from servicekey_operator.invariants import KeyRecord, MaterialScanner, VaultKey, Violation
from servicekey_operator.vault.records import LostKey

ALGORITHMS_UNDER_TEST = ("RS256", "ES256", "ES512", "EdDSA")
OWNER = "payments/signing"


@functools.cache
def _pair(algorithm: str, index: int = 0) -> keys.KeyPair:
    return keys.generate_keypair(algorithm)


def _key(version: int, algorithm: str = "ES256", index: int | None = None, **fields: str) -> VaultKey:
    """Version ``version`` as a rotation request made it (each version answers its own request)."""
    pair = _pair(algorithm, version if index is None else index)
    answered = {"rotate_annotation": f"sha256:request-{version}", "rotation_reason": "Requested", **fields}
    return VaultKey(version=version, kid=pair.kid, algorithm=algorithm, public_pem=pair.public_pem,
                    private_pem=pair.private_pem, **answered)


def _record(*versions: VaultKey, pending: VaultKey | None = None, current_version: int | None = None,
            owner: str | None = OWNER, custom_metadata: dict | None = None) -> KeyRecord:
    ordered = tuple(sorted(versions, key=lambda key: key.version, reverse=True))
    return KeyRecord(mount="secret", path=f"servicekeys/{owner or 'unowned'}", owner=owner,
                     custom_metadata=custom_metadata if custom_metadata is not None else {"servicekey.io/owner": owner},
                     current_version=current_version if current_version is not None else ordered[0].version,
                     versions=ordered, pending=pending)


def _configmap_data(published: list[VaultKey]) -> dict[str, str]:
    """What the operator publishes for these keys (current first)."""
    jwks = keys.jwk_set([(key.public_pem, key.algorithm) for key in published])
    return {"public.pem": published[0].public_pem, "jwks.json": json.dumps(jwks, indent=2) + "\n",
            "kid": published[0].kid}


def _pem_body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if "-----" not in line)


def _assert_no_material(violations: list[Violation], *pairs: keys.KeyPair) -> None:
    """The contract of every finding: where and whose, never the key itself."""
    for violation in violations:
        text = str(violation)
        for pair in pairs:
            body = _pem_body(pair.private_pem)
            snippets = [body[start:start + 16] for start in range(0, len(body) - 16, 8)]
            assert not any(snippet in text for snippet in snippets), f"key material in {text!r}"
            assert "PRIVATE KEY-----" not in text


# --- JWKS expectations ------------------------------------------------------------------------------------

V1, V2, V3, V4 = (_key(version) for version in (1, 2, 3, 4))
PENDING = _key(0, index=99)


@pytest.mark.parametrize(("record", "retain", "expected"), [
    (_record(V1), 1, [V1.kid]),
    (_record(V1, V2, V3), 1, [V3.kid, V2.kid]),
    (_record(V1, V2, V3), 0, [V3.kid]),
    (_record(V1, V2, V3), 10, [V3.kid, V2.kid, V1.kid]),
    (_record(V1, V2, pending=PENDING), 1, [V2.kid, PENDING.kid, V1.kid]),
    (_record(V1, V3), 1, [V3.kid, V1.kid]),              # version 2 deleted: the next live one is retained
    (_record(V1, V2, current_version=3), 1, []),         # the latest version is deleted: no current key
], ids=["one-key", "retain-1", "retain-0", "retain-more-than-exist", "pending-after-current", "skips-deleted",
        "latest-deleted"])
def test_the_jwks_must_hold_current_then_pending_then_retained_keys(record, retain, expected):
    assert invariants.expected_jwks_kids(record, retain) == expected


# --- ConfigMap against Vault ------------------------------------------------------------------------------


def _checks(violations: list[Violation]) -> list[tuple[int | None, str]]:
    return [(violation.invariant, violation.check) for violation in violations]


def test_a_configmap_that_publishes_what_vault_holds_has_no_violations():
    record = _record(V1, V2, V3, pending=PENDING)

    found = invariants.configmap_violations("ns/cm", _configmap_data([V3, PENDING, V2]), record, 1)

    assert found == []
    assert invariants.record_violations(record, OWNER) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS_UNDER_TEST)
def test_every_algorithm_passes_when_published_by_the_operator_s_own_projection(algorithm):
    first, second = _key(1, algorithm), _key(2, algorithm)
    record = _record(first, second)

    assert invariants.configmap_violations("ns/cm", _configmap_data([second, first]), record, 1) == []
    assert invariants.record_violations(record, OWNER) == []


def test_a_kid_edited_behind_the_operator_is_a_current_key_mismatch():
    data = dict(_configmap_data([V2, V1]), kid=V1.kid)

    found = invariants.configmap_violations("ns/cm", data, _record(V1, V2), 1)

    assert _checks(found) == [(2, invariants.CURRENT_KEY_MISMATCH)]
    assert V1.kid in found[0].detail and V2.kid in found[0].detail


def test_a_new_vault_version_written_behind_the_operator_is_seen_in_kid_pem_and_jwks():
    found = invariants.configmap_violations("ns/cm", _configmap_data([V2, V1]), _record(V1, V2, V3), 1)

    assert _checks(found) == [(2, invariants.CURRENT_KEY_MISMATCH), (2, invariants.CURRENT_KEY_MISMATCH),
                              (3, invariants.JWKS_MISMATCH), (3, invariants.JWKS_MISMATCH)]
    assert "current key" in found[2].detail and "missing" in found[2].detail
    assert "beyond retainPrevious" in found[3].detail   # V1 fell out of the window


def test_a_dropped_retained_key_is_reported_as_missing():
    data = _configmap_data([V2])

    found = invariants.configmap_violations("ns/cm", data, _record(V1, V2), 1)

    assert _checks(found) == [(3, invariants.JWKS_MISMATCH)]
    assert f"retained key {V1.kid} (version 1" in found[0].detail


def test_a_pending_key_missing_from_the_jwks_is_reported():
    found = invariants.configmap_violations("ns/cm", _configmap_data([V2, V1]), _record(V1, V2, pending=PENDING), 1)

    assert _checks(found) == [(3, invariants.JWKS_MISMATCH)]
    assert "pending key" in found[0].detail


def test_a_stranger_key_and_a_wrong_order_in_the_jwks_are_reported():
    stranger = _key(7, index=7)
    extra = invariants.configmap_violations("ns/cm", _configmap_data([V2, V1, stranger]), _record(V1, V2), 1)
    reordered = _configmap_data([V2, V1])
    reordered["jwks.json"] = json.dumps({"keys": json.loads(reordered["jwks.json"])["keys"][::-1]})
    order = invariants.configmap_violations("ns/cm", reordered, _record(V1, V2), 1)

    assert _checks(extra) == [(3, invariants.JWKS_MISMATCH)] and "not a key of this Vault record" in extra[0].detail
    assert _checks(order) == [(3, invariants.JWKS_MISMATCH)] and "order" in order[0].detail


def test_a_jwk_whose_parameters_do_not_match_its_kid_is_reported():
    data = _configmap_data([V2, V1])
    jwks = json.loads(data["jwks.json"])
    jwks["keys"][0]["x"] = jwks["keys"][1]["x"]
    data["jwks.json"] = json.dumps(jwks)

    found = invariants.configmap_violations("ns/cm", data, _record(V1, V2), 1)

    assert _checks(found) == [(3, invariants.JWKS_MISMATCH)] and "thumbprint" in found[0].detail


@pytest.mark.parametrize(("data", "expected"), [
    (None, [(2, invariants.CURRENT_KEY_MISMATCH)]),
    ({"kid": V1.kid, "public.pem": "junk"}, [(2, invariants.CURRENT_KEY_MISMATCH), (3, invariants.JWKS_MISMATCH)]),
    ({"kid": V1.kid, "public.pem": V1.public_pem, "jwks.json": "{not json"}, [(3, invariants.JWKS_MISMATCH)]),
], ids=["missing", "junk", "jwks-not-json"])
def test_a_missing_or_broken_configmap_is_reported(data, expected):
    assert _checks(invariants.configmap_violations("ns/cm", data, _record(V1), 1)) == expected


def test_a_vault_version_whose_private_key_is_not_the_private_half_of_its_public_key_is_reported():
    forged = VaultKey(version=2, kid=V2.kid, algorithm="ES256", public_pem=V2.public_pem,
                      private_pem=_pair("ES256", 42).private_pem)

    found = invariants.record_violations(_record(V1, forged), OWNER)

    assert _checks(found) == [(2, invariants.CURRENT_KEY_MISMATCH)]
    assert "not the private half" in found[0].detail
    _assert_no_material(found, _pair("ES256", 42), _pair("ES256", 2))


def test_a_vault_record_without_a_live_current_version_is_reported():
    found = invariants.record_violations(_record(V1, V2, current_version=3), OWNER)

    assert _checks(found) == [(2, invariants.CURRENT_KEY_MISMATCH)] and "latest version 3" in found[0].detail


def test_a_record_that_names_the_wrong_kid_is_reported():
    wrong = VaultKey(version=1, kid="not-the-thumbprint", algorithm="ES256", public_pem=V1.public_pem,
                     private_pem=V1.private_pem)

    found = invariants.record_violations(_record(wrong), OWNER)

    assert _checks(found) == [(2, invariants.CURRENT_KEY_MISMATCH)] and "names kid" in found[0].detail


# --- Private key material ---------------------------------------------------------------------------------


def _encodings_of_the_private_key(pair: keys.KeyPair) -> dict[str, str]:
    private_key = serialization.load_pem_private_key(pair.private_pem.encode(), password=None)
    der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    private_jwk = json.loads(jwcrypto_jwk.JWK.from_pem(pair.private_pem.encode()).export_private())
    return {
        "pem": pair.private_pem,
        "pem-in-json": json.dumps({"annotations": {"x": pair.private_pem}}),
        "pem-in-json-in-json": json.dumps({"last-applied": json.dumps({"x": pair.private_pem})}),
        "body-without-armour": _pem_body(pair.private_pem),
        "one-line-base64-der": base64.b64encode(der).decode(),
        "base64-of-the-pem": base64.b64encode(pair.private_pem.encode()).decode(),
        "private-jwk-d-only": f'the secret is {private_jwk["d"]}',
    }


@pytest.mark.parametrize("algorithm", ALGORITHMS_UNDER_TEST)
def test_vault_s_private_key_is_found_in_every_encoding(algorithm):
    pair = _pair(algorithm)
    scanner = MaterialScanner({pair.private_pem: "the key at secret/servicekeys/a/b (version 1)"})

    for encoding, text in _encodings_of_the_private_key(pair).items():
        findings = scanner.scan_text(text)
        assert any("the key at secret/servicekeys/a/b (version 1)" in finding for finding in findings), \
            f"{algorithm} {encoding}: {findings}"


@pytest.mark.parametrize("algorithm", ALGORITHMS_UNDER_TEST)
def test_raw_secret_bytes_are_found_in_binary_values(algorithm):
    pair = _pair(algorithm)
    der = serialization.load_pem_private_key(pair.private_pem.encode(), password=None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    scanner = MaterialScanner({pair.private_pem: "vault key"})

    assert "private key material of vault key (raw bytes)" in scanner.scan_bytes(b"k8s\x00\x0a" + der + b"\x12")


@pytest.mark.parametrize("algorithm", ALGORITHMS_UNDER_TEST)
def test_public_halves_are_never_mistaken_for_private_material(algorithm):
    pair = _pair(algorithm)
    scanner = MaterialScanner({pair.private_pem: "vault key"})
    published = _configmap_data([_key(1, algorithm, index=0)])
    public_der = keys.load_public_key(pair.public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    assert scanner.scan_object({"data": published}) == []
    assert scanner.scan_bytes(public_der + pair.public_pem.encode()) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----", ["PEM private key armour"]),
    ("-----BEGIN RSA PRIVATE KEY-----", ["PEM private key armour"]),
    ("-----BEGIN EC PRIVATE KEY-----", ["PEM private key armour"]),
    ("-----BEGIN ENCRYPTED PRIVATE KEY-----", ["PEM private key armour"]),
    ("-----BEGIN PUBLIC KEY-----\nMFkw...", []),
    ('{"keys": [{"kty": "EC", "crv": "P-256", "x": "abc", "y": "def", "d": "c2VjcmV0LXNjYWxhcg"}]}',
     ["a JWK with private member(s) d"]),
    ('{\\"kty\\": \\"RSA\\", \\"n\\": \\"AQAB\\", \\"p\\": \\"c2VjcmV0cHJpbWU\\"}', ["a JWK with private member(s) p"]),
    ('{"kty": "EC", "crv": "P-256", "x": "abc", "y": "def"}', []),
    ('{"d": "2026-01-01", "p": "not a key"}', []),
], ids=["pkcs8", "pkcs1", "sec1", "encrypted", "public", "jwk-d", "escaped-jwk-p", "public-jwk", "no-kty"])
def test_private_key_shapes_are_found_without_knowing_the_key(text, expected):
    assert MaterialScanner().scan_text(text) == expected


def test_a_jwk_dict_with_private_members_is_found_where_it_sits():
    findings = MaterialScanner().scan_object({"spec": {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "d": "y",
                                                                  "qi": "z"}]}})

    assert findings == [(".spec.keys[0]", "a JWK with private member(s) d, qi")]


def test_a_tls_secret_may_hold_a_private_key_but_not_one_of_vault_s():
    foreign, ours = _pair("ES256", 50), _pair("ES256", 51)
    scanner = MaterialScanner({ours.private_pem: "vault key"})

    def secret(pem: str, type_: str) -> dict:
        return {"metadata": {"namespace": "ns", "name": "s"}, "type": type_,
                "data": {"tls.key": base64.b64encode(pem.encode()).decode()}}

    assert invariants.scan_kubernetes_object(scanner, "Secret", secret(foreign.private_pem, "kubernetes.io/tls")) == []
    opaque = invariants.scan_kubernetes_object(scanner, "Secret", secret(foreign.private_pem, "Opaque"))
    leaked = invariants.scan_kubernetes_object(scanner, "Secret", secret(ours.private_pem, "kubernetes.io/tls"))

    assert [(v.check, v.object, v.detail) for v in opaque] == [
        (invariants.PRIVATE_KEY_MATERIAL, "ns/s", "data['tls.key'] (decoded): PEM private key armour")]
    assert [v.detail for v in leaked] == ["data['tls.key'] (decoded): private key material of vault key"]
    _assert_no_material(opaque + leaked, foreign, ours)


def test_findings_in_a_servicekey_name_the_annotation_and_never_the_key():
    pair = _pair("EdDSA")
    scanner = MaterialScanner({pair.private_pem: "the key at secret/servicekeys/a/b (version 1)"})
    servicekey = {"metadata": {"namespace": "a", "name": "b", "annotations": {"note": pair.private_pem}}}

    found = invariants.scan_kubernetes_object(scanner, "ServiceKey", servicekey)

    assert [(v.invariant, v.check, v.kind, v.object) for v in found] == [
        (1, invariants.PRIVATE_KEY_MATERIAL, "ServiceKey", "a/b")] * 2
    assert {v.detail for v in found} == {"metadata.annotations.note: PEM private key armour",
                                         "metadata.annotations.note: private key material of the key at "
                                         "secret/servicekeys/a/b (version 1)"}
    _assert_no_material(found, pair)


@pytest.mark.parametrize(("key", "expected"), [
    ("/registry/configmaps/ns/cm", ("configmaps", "ns/cm", "ns")),
    ("/registry/servicekey.io/servicekeys/ns/sk", ("servicekey.io/servicekeys", "ns/sk", "ns")),
    ("/registry/namespaces/ns", ("namespaces", "ns", None)),
    ("/registry/apiextensions.k8s.io/customresourcedefinitions/servicekeys.servicekey.io",
     ("apiextensions.k8s.io/customresourcedefinitions", "servicekeys.servicekey.io", None)),
])
def test_etcd_keys_name_the_resource_and_object(key, expected):
    assert invariants._etcd_object(key) == expected


def test_etcd_values_outside_the_namespaces_are_searched_for_vault_s_keys_only():
    ours = _pair("ES256", 60)
    scanner = MaterialScanner({ours.private_pem: "vault key"})
    armour_only = b"k8s\x00...-----BEGIN PRIVATE KEY-----..."

    assert invariants.scan_etcd_value(scanner, "/registry/configmaps/other/cm", armour_only, ["mine"]) == []
    assert len(invariants.scan_etcd_value(scanner, "/registry/configmaps/mine/cm", armour_only, ["mine"])) == 1
    leaked = invariants.scan_etcd_value(scanner, "/registry/secrets/other/s", ours.private_pem.encode(), ["mine"])
    assert [(v.kind, v.object) for v in leaked] == [("etcd secrets", "other/s")]


# --- Ownership, orphans, shared keys ----------------------------------------------------------------------

LABELS = {publish.MANAGED_BY_LABEL: publish.MANAGED_BY, publish.NAME_LABEL: "signing"}
SERVICEKEY = {"metadata": {"namespace": "payments", "name": "signing", "uid": "uid-live"},
              "status": {"configMapName": "signing-public", "publishedNamespaces": ["orders"]}}
DATA = {"kid": "k"}


def _configmap(namespace: str = "payments", name: str = "signing-public", labels: dict | None = None,
               owner_uid: str | None = "uid-live", data: dict | None = None) -> dict:
    refs = [{"kind": "ServiceKey", "name": "signing", "uid": owner_uid}] if owner_uid else []
    return {"metadata": {"namespace": namespace, "name": name, "labels": LABELS if labels is None else labels,
                         "ownerReferences": refs}, "data": DATA if data is None else data}


COPY_LABELS = dict(LABELS, **{publish.SOURCE_NAMESPACE_LABEL: "payments", publish.OWNER_UID_LABEL: "uid-live"})


@pytest.mark.parametrize(("configmap", "servicekey", "expected"), [
    (_configmap(), SERVICEKEY, []),
    (_configmap(labels={}), None, []),
    (_configmap(owner_uid="uid-of-a-deleted-one"), SERVICEKEY, ["is not the live ServiceKey"]),
    (_configmap(owner_uid=None), SERVICEKEY, ["is not the live ServiceKey"]),
    (_configmap(), None, ["which does not exist"]),
    (_configmap(name="old-name"), SERVICEKEY, ["a leftover that no longer follows rotations"]),
    (_configmap(labels={publish.MANAGED_BY_LABEL: publish.MANAGED_BY}), SERVICEKEY, ["has no servicekey.io/name"]),
    (_configmap("orders", labels=COPY_LABELS, owner_uid=None), SERVICEKEY, []),
    (_configmap("orders", labels=COPY_LABELS, owner_uid=None, data={"kid": "stale"}), SERVICEKEY,
     ["data differs from the source"]),
    (_configmap("billing", labels=COPY_LABELS, owner_uid=None), SERVICEKEY, ["no longer publishes"]),
    (_configmap("orders", labels=COPY_LABELS, owner_uid=None), None, ["copy of ServiceKey payments/signing, which"]),
    (_configmap("orders", labels={k: v for k, v in COPY_LABELS.items() if k != publish.OWNER_UID_LABEL},
                owner_uid=None), SERVICEKEY, ["names ServiceKey uid (none)"]),
    (_configmap("orders", labels=dict(COPY_LABELS, **{publish.OWNER_UID_LABEL: "uid-of-a-deleted-one"}),
                owner_uid=None), SERVICEKEY, ["names ServiceKey uid uid-of-a-deleted-one"]),
], ids=["ours", "not-labelled", "stale-uid", "no-owner-reference", "servicekey-gone", "former-configmap-name",
        "no-name-label", "copy", "copy-differs", "copy-not-published", "copy-of-a-deleted-key", "copy-without-uid",
        "copy-of-a-predecessor"])
def test_configmaps_with_our_labels_must_belong_to_their_live_servicekey(configmap, servicekey, expected):
    source_namespace = (configmap["metadata"]["labels"] or {}).get(publish.SOURCE_NAMESPACE_LABEL, "payments")
    found = invariants.ownership_violations([configmap], {(source_namespace, "signing"): servicekey},
                                            {("payments", "signing-public"): DATA})

    assert [next((text for text in expected if text in v.detail), v.detail) for v in found] == expected


def test_a_copy_that_stands_where_the_target_namespace_publishes_its_own_key_is_a_violation():
    copy = _configmap("orders", labels=COPY_LABELS, owner_uid=None)
    found = invariants.ownership_violations([copy], {("payments", "signing"): SERVICEKEY},
                                            {("payments", "signing-public"): DATA},
                                            {("orders", "signing-public"): ["ServiceKey orders/signing"]})

    assert [(v.invariant, v.detail) for v in found] == [
        (7, "copy of ServiceKey payments/signing stands where ServiceKey orders/signing publishes its own key: "
            "verifiers there trust another namespace's key")]


def test_an_orphaned_secret_is_informational_unless_its_deletion_policy_was_recorded_as_delete():
    unrecorded = _record(V1, owner="gone/one")
    deleted = _record(V2, owner="gone/two", custom_metadata={"servicekey.io/owner": "gone/two",
                                                             invariants.DELETION_POLICY_METADATA_KEY: "Delete"})
    alive = _record(V3, owner="here/three")
    retained = _record(V4, owner="gone/four", custom_metadata={"servicekey.io/owner": "gone/four",
                                                               invariants.DELETION_POLICY_METADATA_KEY: "Retain"})

    found = invariants.orphan_violations([unrecorded, deleted, alive, retained], [("here", "three")])

    assert [(v.check, v.informational, v.possibly_retained) for v in found] == [
        (invariants.ORPHANED_SECRET, True, True), (invariants.ORPHANED_SECRET, False, False),
        (invariants.ORPHANED_SECRET, True, True)]
    assert "gone/one" in found[0].detail and "no deletion policy recorded" in found[0].detail
    assert "gone/four" in found[2].detail and "kept by its deletionPolicy Retain" in found[2].detail
    assert invariants.summary(found) == "1 violation, 2 informational"


def test_a_key_held_by_two_servicekeys_is_reported_for_both():
    first, second = _record(V1, V2, owner="a/one"), _record(V2, owner="b/two")

    found = invariants.shared_key_violations([first, second])

    assert [(v.check, v.object) for v in found] == [(invariants.SHARED_KEY, first.location),
                                                    (invariants.SHARED_KEY, second.location)]
    assert "b/two" in found[0].detail and V2.kid in found[0].detail
    assert invariants.shared_key_violations([first]) == []


def test_a_violation_prints_as_one_line_with_its_invariant():
    violation = Violation(2, invariants.CURRENT_KEY_MISMATCH, "ConfigMap", "ns/cm", "kid is 'a', Vault's is 'b'")

    assert str(violation) == "[invariant 2] CurrentKeyMismatch ConfigMap ns/cm: kid is 'a', Vault's is 'b'"
    assert violation.invariant_name == "the ConfigMap publishes Vault's current key"
    assert invariants.summary([]) == "0 violations" and invariants.summary([violation]) == "1 violation"


# --- Invariant 7: tenants are isolated ---------------------------------------------------------------------


def _owned(key: VaultKey, owner: str | None = OWNER, namespace_uid: str | None = "ns-uid-now") -> VaultKey:
    return dataclasses.replace(key, owner=owner, owner_namespace_uid=namespace_uid)


@pytest.mark.parametrize(("record", "expected"), [
    (_record(_owned(V1)), []),
    (_record(_owned(V1), pending=_owned(PENDING)), []),
    (_record(_owned(V1, owner="orders/signing")), ["version 1 names orders/signing"]),
    (_record(_owned(V1, owner=None)), ["version 1 names no owner"]),
    (_record(_owned(V1, namespace_uid="ns-uid-before")), ["inherited another tenant's key"]),
    (_record(_owned(V1, namespace_uid=None)), ["inherited another tenant's key"]),
    (_record(_owned(V1, namespace_uid="ns-uid-before"), custom_metadata={
        "servicekey.io/owner": OWNER, "servicekey.io/adopted-namespace-uid": "ns-uid-before"}), []),
    (_record(_owned(V1), pending=_owned(PENDING, owner="payments/other")), ["the pending key names payments/other"]),
], ids=["proven", "proven-with-pending", "another-owner", "no-owner", "inherited", "no-namespace-uid", "adopted",
        "foreign-pending"])
def test_a_ready_key_must_be_proven_its_own_in_this_namespace_incarnation(record, expected):
    found = invariants.ownership_proof_violations(record, OWNER, "ns-uid-now")

    assert [next((text for text in expected if text in v.detail), v.detail) for v in found] == expected
    assert all(v.invariant == 7 and v.check == invariants.OWNERSHIP_UNPROVEN for v in found)


def test_a_transit_key_in_the_records_of_two_servicekeys_is_shared():
    first = dataclasses.replace(V1, transit_key="servicekeys.ns.x_dy.ecdsa-p256", transit_version=1,
                                transit_mount="transit")
    second = dataclasses.replace(_key(1, index=7), transit_key="servicekeys.ns.x_dy.ecdsa-p256", transit_version=2,
                                 transit_mount="transit")

    found = invariants.shared_key_violations([_record(first, owner="ns/x.y"), _record(second, owner="ns/other")])

    assert sorted(v.object for v in found) == ["secret/servicekeys/ns/other", "secret/servicekeys/ns/x.y"]
    assert all("Transit key transit/servicekeys.ns.x_dy.ecdsa-p256" in v.detail for v in found)


@pytest.mark.parametrize(("reason", "same_request", "reported"), [
    ("Created", True, True),            # the delete_version_after bug: every pass wrote a "new" first key
    ("Requested", True, True),          # one request answered twice
    ("SpecChanged", True, True),        # a spec change that changed nothing the key is made of
    ("Requested", False, False),        # a new request
    ("Scheduled", True, False),         # time asks for it
    ("TransitRotated", True, False),    # Transit rotated outside the operator, adopted
    ("CurrentKeyDeleted", True, False),  # the version before it was deleted (and undeleted since)
])
def test_a_version_nothing_asked_for_is_key_churn(reason, same_request, reported):
    older = _key(1)
    newer = _key(2, rotation_reason=reason,
                 rotate_annotation=older.rotate_annotation if same_request else "sha256:another")

    found = invariants.churn_violations(_record(newer, older))

    assert [violation.check for violation in found] == (["KeyChurn"] if reported else [])


def test_a_transit_version_no_record_names_is_reported_until_it_is_staged_or_recorded():
    current = dataclasses.replace(_key(1), private_pem="", transit_key="servicekeys.p.s.ecdsa-p256", transit_version=1)
    versions = {("servicekeys.p.s.ecdsa-p256", 1): current.public_pem, ("servicekeys.p.s.ecdsa-p256", 2): "pem"}
    rotated_outside = dataclasses.replace(_record(current), transit_public=versions)
    staged = dataclasses.replace(rotated_outside, pending=dataclasses.replace(current, version=0, transit_version=2))

    assert [v.check for v in invariants.foreign_transit_violations(rotated_outside)] == ["ForeignTransitVersion"]
    assert invariants.foreign_transit_violations(staged) == []


def test_a_servicekey_without_a_ready_condition_is_reported_after_the_grace_period():
    created = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    servicekey = {"metadata": {"namespace": "p", "name": "s", "creationTimestamp": "2026-12-01T00:00:00Z"}}
    ready = {**servicekey, "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}]}}

    assert invariants.status_violations(servicekey, created + datetime.timedelta(seconds=119)) == []
    assert [v.check for v in invariants.status_violations(servicekey, created + datetime.timedelta(seconds=121))] \
        == ["MissingStatus"]
    assert invariants.status_violations(ready, created + datetime.timedelta(days=1)) == []


def test_an_imported_keys_legacy_kid_follows_it_in_the_jwks_and_leaves_with_it():
    imported = dataclasses.replace(V1, legacy_kids=("svc-0001",))
    record = _record(imported, V2)
    jwks = keys.jwk_set([(V2.public_pem, V2.algorithm), (imported.public_pem, imported.algorithm)],
                        {imported.kid: imported.legacy_kids})
    data = {"public.pem": V2.public_pem, "jwks.json": json.dumps(jwks), "kid": V2.kid}

    assert invariants.expected_jwks_kids(record, 1) == [V2.kid, imported.kid, "svc-0001"]
    assert invariants.configmap_violations("ns/cm", data, record, 1) == []
    assert invariants.expected_jwks_kids(record, 0) == [V2.kid], "the alias goes when its key does"

    jwks["keys"][2] = {**jwks["keys"][0], "kid": "svc-0001"}  # the legacy kid on another key's parameters
    found = invariants.configmap_violations("ns/cm", {**data, "jwks.json": json.dumps(jwks)}, record, 1)
    assert _checks(found) == [(3, invariants.JWKS_MISMATCH)] and "thumbprint" in found[0].detail


def _lost_entry(key: VaultKey) -> LostKey:
    return LostKey(key.kid, key.algorithm, key.public_pem, key.legacy_kids)


def test_keys_lost_in_a_vault_rollback_are_expected_in_the_jwks_until_their_rank_ages_out():
    lost = _key(7, index=70)  # published, then lost when Vault was restored to version 1
    forward = dataclasses.replace(V2, rotation_reason="VaultRolledBack", lost=(_lost_entry(lost),))
    record = _record(V1, forward)
    jwks = keys.jwk_set([(key.public_pem, key.algorithm) for key in (forward, lost, V1)])
    data = {"public.pem": forward.public_pem, "jwks.json": json.dumps(jwks), "kid": forward.kid}

    assert invariants.expected_jwks_kids(record, 1) == [forward.kid, lost.kid, V1.kid]
    assert invariants.configmap_violations("ns/cm", data, record, 1) == []
    assert invariants.expected_jwks_kids(_record(V1, forward, V3), 1) \
        == [V3.kid, forward.kid], "one more rotation: the lost key leaves with the key Vault was rolled back to"
    found = invariants.rollback_violations(OWNER, {"keyId": forward.kid}, record, record.location, 1)
    assert [(v.check, v.informational) for v in found] == [("VaultRolledBack", True)] and lost.kid in found[0].detail


def test_a_status_that_publishes_a_key_vault_no_longer_holds_is_reported_as_a_rollback():
    published = _key(7, index=70)

    behind = invariants.rollback_violations(OWNER, {"keyId": published.kid}, _record(V1), "secret/x", 1)
    gone = invariants.rollback_violations(OWNER, {"keyId": published.kid}, None, "secret/x", 1)

    assert [(v.invariant, v.check, v.informational) for v in behind + gone] == [(9, "VaultRolledBack", False)] * 2
    assert V1.kid in behind[0].detail and "no secret" in gone[0].detail
    assert invariants.rollback_violations(OWNER, {"keyId": V1.kid}, _record(V1, V2), "secret/x", 1) == []


def test_the_rotate_forward_after_a_rollback_is_no_key_churn():
    forward = dataclasses.replace(V2, rotation_reason="VaultRolledBack", rotate_annotation=V1.rotate_annotation)

    assert invariants.churn_violations(_record(V1, forward)) == []


def test_the_checker_expects_what_the_operator_publishes_when_a_lost_key_is_held_again_or_malformed():
    held_again = _key(7, index=70)
    forward = dataclasses.replace(V2, lost=(_lost_entry(held_again), _lost_entry(V1)))
    record = _record(V1, forward, dataclasses.replace(held_again, version=3))

    assert invariants.expected_jwks_kids(record, 2) == [held_again.kid, V2.kid, V1.kid]
    assert invariants.lost_keys_published(record, 2) == {}, "keys a version holds are not lost"
    assert invariants.VaultKey.from_data(2, {"kid": "k", "algorithm": "ES256", "public_key": "p",
                                             "lost_public_keys": '[1, {"kid": "x"}]'}).lost == ()


def test_a_deleted_latest_version_is_no_rollback():
    deleted_latest = _record(V1, current_version=2)

    assert invariants.rollback_violations(OWNER, {"keyId": V2.kid}, deleted_latest, "secret/x", 1) == []
