"""The ConfigMap projection and the cross-namespace plan (pure)."""

from __future__ import annotations

import datetime
import json

import pytest

from servicekey_operator import publish
from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.keys import generate_keypair
from servicekey_operator.spec import desired_key
from servicekey_operator.vault.records import KeyHistory, StoredKey

CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _stored(version: int) -> StoredKey:
    pair = generate_keypair("EdDSA")
    return StoredKey(version=version, kid=pair.kid, algorithm="EdDSA", key_size=None, public_pem=pair.public_pem,
                     service_name="sk", created_at=T0, rotate_annotation=None, private_pem=pair.private_pem)


def _namespace(name: str, labels: dict | None = None, accept: str | None = None, phase: str = "Active") -> dict:
    annotations = {publish.ACCEPT_FROM_ANNOTATION: accept} if accept is not None else {}
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": annotations},
            "status": {"phase": phase}}


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ({}, {}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stage"]}]}, {"env": "stage"}, True),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, {"env": "prod"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, {}, True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"team": "a"},
     False),
])
def test_label_selector_semantics(selector, labels, matches):
    assert publish.selector_matches(selector, labels) is matches


def test_the_plan_publishes_only_to_existing_active_namespaces_that_accept_the_source_and_names_no_other():
    desired = desired_key("src", "sk", "uid", {"publicKey": {
        "namespaces": ["listed", "silent", "missing", "src"], "namespaceSelector": {"matchLabels": {"team": "x"}}}},
        {}, CONFIG)
    namespaces = [_namespace("listed", accept="src"), _namespace("silent"),
                  _namespace("selected", {"team": "x"}, accept="other, src"),
                  _namespace("selected-all", {"team": "x"}, accept="*"),
                  _namespace("leaving", {"team": "x"}, accept="*", phase="Terminating"),
                  _namespace("selected-silent", {"team": "x"}),
                  _namespace("selected-silent-leaving", {"team": "x"}, phase="Terminating"),
                  _namespace("unrelated", accept="*"), _namespace("src", {"team": "x"})]

    plan = publish.plan_copies(desired, namespaces)

    assert plan.targets == ("listed", "selected", "selected-all")
    # Whether a listed namespace exists or not, and selected ones that did not opt in, stay unsaid.
    assert plan.refused == (publish.Refusal("leaving", "NamespaceTerminating"),
                            publish.Refusal("missing", "NotAccepted"), publish.Refusal("silent", "NotAccepted"))


def test_jwks_lists_current_then_pending_then_retained_and_copies_carry_no_owner_reference():
    current, older, oldest, pending = _stored(3), _stored(2), _stored(1), _stored(0)
    history = KeyHistory("src/sk", 3, current, (older, oldest), pending)
    desired = desired_key("src", "sk", "uid", {"rotation": {"retainPrevious": 1}}, {}, CONFIG)

    source = publish.desired_configmap(desired, history)
    copy = publish.desired_configmap(desired, history, "elsewhere")

    kids = [key["kid"] for key in json.loads(source["data"]["jwks.json"])["keys"]]
    assert kids == [current.kid, pending.kid, older.kid]
    assert source["data"]["kid"] == current.kid
    assert source["metadata"]["ownerReferences"][0]["uid"] == "uid"
    assert "ownerReferences" not in copy["metadata"]
    assert copy["metadata"]["labels"][publish.SOURCE_NAMESPACE_LABEL] == "src"
    assert copy["data"] == source["data"]
    assert publish.is_ours(copy, desired) and publish.is_ours(source, desired)
    assert not publish.is_ours(copy, desired_key("other", "sk", "uid", {}, {}, CONFIG))


@pytest.mark.parametrize(("selector", "query"), [
    ({}, ""),
    ({"matchLabels": {"team": "a", "env": "prod"}}, "env=prod,team=a"),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stage"]},
                           {"key": "tier", "operator": "NotIn", "values": ["db"]},
                           {"key": "pci", "operator": "Exists"},
                           {"key": "legacy", "operator": "DoesNotExist"}]},
     "env in (prod,stage),tier notin (db),pci,!legacy"),
])
def test_a_namespace_selector_becomes_the_apis_label_selector_query(selector, query):
    assert publish.selector_string(selector) == query


@pytest.mark.parametrize(("public_key", "namespace", "before", "after", "concerns"), [
    ({"namespaces": ["orders"]}, "orders", {}, {"x": "y"}, True),
    ({"namespaces": ["orders"]}, "billing", {}, {"x": "y"}, False),
    ({"namespaceSelector": {"matchLabels": {"team": "a"}}}, "billing", {}, {"team": "a"}, True),
    ({"namespaceSelector": {"matchLabels": {"team": "a"}}}, "billing", {"team": "a"}, {}, True),
    ({"namespaceSelector": {"matchLabels": {"team": "a"}}}, "billing", {"team": "b"}, None, False),
    ({"namespaceSelector": {}}, "src", {}, {"team": "a"}, False),
    ({}, "orders", None, {}, False),
], ids=["listed", "not-listed", "starts-matching", "stops-matching", "never-matched", "own-namespace", "no-copies"])
def test_a_namespace_event_concerns_only_keys_that_list_or_select_it(public_key, namespace, before, after, concerns):
    assert publish.namespace_concerns(public_key, "src", namespace, before, after) is concerns


def test_only_a_copy_naming_this_servicekeys_namespace_name_and_uid_or_its_own_configmap_is_ours():
    desired = desired_key("src", "sk", "uid", {}, {}, CONFIG)
    labels = {publish.MANAGED_BY_LABEL: publish.MANAGED_BY, publish.NAME_LABEL: "sk"}
    owner = {"apiVersion": "servicekey.io/v1alpha1", "kind": "ServiceKey", "name": "sk", "uid": "old-uid",
             "controller": True}

    def configmap(namespace: str, extra: dict, owners: list | None = None) -> dict:
        return {"metadata": {"namespace": namespace, "name": "sk-public", "labels": dict(labels, **extra),
                             "ownerReferences": owners or []}}

    copy = {publish.SOURCE_NAMESPACE_LABEL: "src", publish.OWNER_UID_LABEL: "uid"}
    assert publish.is_ours(configmap("orders", copy), desired)
    assert not publish.is_ours(configmap("orders", dict(copy, **{publish.OWNER_UID_LABEL: "other"})), desired)
    assert not publish.is_ours(configmap("orders", {publish.SOURCE_NAMESPACE_LABEL: "src"}), desired)
    # The target namespace's own ConfigMap of the same name: no source label, owned by its own ServiceKey.
    assert not publish.is_ours(configmap("orders", {}, [owner]), desired)
    # In the source namespace: owned by this ServiceKey, by a deleted predecessor of the same name, or by nobody
    # (an owner reference removed by the namespace's own tenant), but never controlled by something else.
    assert publish.is_ours(configmap("src", {}, [owner]), desired)
    assert publish.is_ours(configmap("src", {}), desired)
    assert not publish.is_ours(configmap("src", {}, [dict(owner, name="other")]), desired)
    assert not publish.is_ours(configmap("src", {}, [dict(owner, kind="Deployment", apiVersion="apps/v1")]), desired)
    assert not publish.is_ours(configmap("src", copy, [owner]), desired)


def test_the_largest_configmap_rsa_4096_retaining_ten_keys_stays_far_below_the_object_limit():
    pairs = [generate_keypair("PS512", 4096) for _ in range(12)]  # current, pending and ten retained
    stored = [StoredKey(version=12 - index, kid=pair.kid, algorithm="PS512", key_size=4096,
                        public_pem=pair.public_pem, service_name="s",
                        created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), rotate_annotation=None)
              for index, pair in enumerate(pairs)]
    history = KeyHistory("ns/s", 12, stored[0], previous=tuple(stored[2:]), pending=stored[1])

    data = publish.configmap_data(history, retain_previous=10)

    assert len(data) == 4 + 12, "public.pem, jwks.json, jwks, kid and one PEM per key"
    size = sum(len(name) + len(value.encode()) for name, value in data.items())
    assert size < 128 * 1024, f"{size} bytes: Kubernetes refuses objects over 1 MiB"
