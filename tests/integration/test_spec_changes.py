"""Issue #15.10: every spec field can change on a live key.

A change is either applied — a new key only where the field defines the key, the old public key kept in the
JWKS per ``rotation.retainPrevious``, and nothing that the old spec owned left behind, in Vault or in other
namespaces — or refused at admission with a message. A ServiceKey whose spec has become invalid since still
gets its whole cleanup when it is deleted.

The rows that other modules already cover (all in tests/integration/):

- ``algorithm`` ES256 → ES384: test_rotation.py::
  test_each_request_yields_exactly_one_key_and_old_tokens_verify_while_retained
- ``rotation.period`` and ``rotation.retainPrevious`` do not rotate: test_rotation.py::
  test_a_change_of_rotation_settings_alone_does_not_rotate
- ``vault.engine`` kv → transit: test_transit.py::
  test_switching_from_kv_to_transit_is_a_new_key_and_keeps_the_old_one_retained
- ``publicKey.configMapName``: test_servicekey_lifecycle.py::test_renaming_the_configmap_moves_the_publication
- ``deletionPolicy``: test_servicekey_lifecycle.py::
  test_the_vault_secret_records_the_deletion_policy_and_follows_the_spec
- namespaces (not the spec) that start or stop matching a selector: test_publish_namespaces.py

Left out on purpose: Transit algorithm changes and ``publishAhead`` with Transit (being reworked elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
import pytest

from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from servicekey_operator.vault.kv import pending_path
from tests.support import MakeNamespace, ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration

# A KV v2 mount of this module's own, to move keys to.
OTHER_KV_MOUNT = "spec-changes"


def _settled(servicekeys: ServiceKeys, name: str, timeout: float = 30) -> dict[str, Any]:
    """The ServiceKey once its current generation has a Ready condition, True or False."""
    def probe() -> dict[str, Any] | None:
        obj = servicekeys.get(name)
        condition = ready_condition(obj or {})
        return obj if obj and condition.get("observedGeneration") == obj["metadata"]["generation"] else None
    return wait_for(probe, timeout, f"a Ready condition for the current generation of {name}")


def _gone_within(servicekeys: ServiceKeys, name: str, seconds: float) -> bool:
    try:
        servicekeys.wait_gone(name, seconds)
    except AssertionError:
        return False
    return True


def _pending_versions(servicekeys: ServiceKeys, mount: str, path: str) -> int:
    return servicekeys.vault_versions(mount, pending_path(path))


def _copies(servicekeys: ServiceKeys, namespaces: list[str], name: str) -> set[tuple[str, str]]:
    """(namespace, ConfigMap name) of every copy of the ServiceKey ``name`` in ``namespaces``."""
    found = set()
    for namespace in namespaces:
        for configmap in servicekeys.core.list_namespaced_config_map(
                namespace, label_selector=f"servicekey.io/name={name}").items:
            found.add((namespace, configmap.metadata.name))
    return found


# --- Fields that define the key: a new key, the old one retained, nothing left behind ----------------------

@dataclass(frozen=True)
class KeyChange:
    """A change of what the key is."""

    id: str
    spec: dict[str, Any]
    change: dict[str, Any]
    algorithm_after: str

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


NEW_KEY_ROWS = [
    KeyChange("keySize", {"algorithm": "RS256"}, {"keySize": 3072}, "RS256"),
    KeyChange("algorithm-rsa-to-ec-dropping-keySize", {"algorithm": "RS256", "keySize": 3072},
              {"algorithm": "ES256", "keySize": None}, "ES256"),
    KeyChange("algorithm-within-rsa-keeping-keySize", {"algorithm": "RS256", "keySize": 3072},
              {"algorithm": "PS256"}, "PS256"),
]


@pytest.mark.parametrize("row", [row.param() for row in NEW_KEY_ROWS])
def test_a_change_of_what_the_key_is_makes_one_new_key_and_retains_the_old_one(
        operator: OperatorProcess, servicekeys: ServiceKeys, row: KeyChange):
    servicekeys.create("changing", {**row.spec, "rotation": {"retainPrevious": 1}})
    old_kid = servicekeys.wait_ready("changing", timeout=60)["status"]["keyId"]
    mount, path = servicekeys.vault_path("changing")
    old_token = servicekeys.sign("changing")

    servicekeys.patch("changing", {"spec": row.change})
    status = servicekeys.wait_new_kid("changing", old_kid, timeout=60)["status"]

    assert status["algorithm"] == row.algorithm_after
    assert servicekeys.vault_path("changing") == (mount, path), "the key must stay where it was"
    assert servicekeys.vault_versions(mount, path) == 2, "exactly one new key version"
    assert servicekeys.kids("changing-public") == [status["keyId"], old_kid]
    assert servicekeys.verifies("changing-public", old_token), "the retained key must still verify"
    assert servicekeys.verifies("changing-public", servicekeys.sign("changing"))


def test_a_change_of_algorithm_under_a_staged_key_replaces_the_staged_key(operator: OperatorProcess,
                                                                          servicekeys: ServiceKeys):
    servicekeys.create("staged", {"algorithm": "ES256", "rotation": {"publishAhead": "10m"}})
    current = servicekeys.wait_ready("staged")["status"]["keyId"]
    mount, path = servicekeys.vault_path("staged")
    servicekeys.patch("staged", {"metadata": {"annotations": {"servicekey.io/rotate": "soon"}}})
    first_pending = wait_for(lambda: servicekeys.get("staged")["status"].get("pendingKeyId"), 30, "a staged key")

    servicekeys.patch("staged", {"spec": {"algorithm": "ES384"}})
    status = servicekeys.wait_condition("staged", "True", "Rotating")["status"]

    assert status["keyId"] == current, "the current key signs on until the new one's publishAhead is over"
    assert status["pendingKeyId"] not in (None, first_pending), "the staged ES256 key must be replaced"
    assert servicekeys.kids("staged-public") == [current, status["pendingKeyId"]], \
        "the replaced staged key never signed and leaves the JWKS"
    assert servicekeys.vault_secret(mount, pending_path(path))["algorithm"] == "ES384"
    assert servicekeys.vault_versions(mount, path) == 1


# --- Fields that do not define the key: no new key -----------------------------------------------------------

@dataclass(frozen=True)
class SettingChange:
    """A change that must not make a new key; ``then`` checks what it did instead."""

    id: str
    spec: dict[str, Any]
    change: dict[str, Any]
    then: Callable[[ServiceKeys, dict[str, Any]], None] = lambda _servicekeys, _status: None

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


def _recorded_with_the_next_key(servicekeys: ServiceKeys, status: dict[str, Any]) -> None:
    mount, path = servicekeys.vault_path("steady")
    assert servicekeys.vault_secret(mount, path)["service_name"] == "steady", \
        "the current version is not rewritten: a new version would be a new key"
    servicekeys.patch("steady", {"metadata": {"annotations": {"servicekey.io/rotate": "next"}}})
    servicekeys.wait_new_kid("steady", status["keyId"])
    assert servicekeys.vault_secret(mount, path)["service_name"] == "billing"


def _no_more_schedule(_servicekeys: ServiceKeys, status: dict[str, Any]) -> None:
    assert status.get("nextRotationTime") is None


SAME_KEY_ROWS = [
    SettingChange("serviceName", {"algorithm": "ES256"}, {"serviceName": "billing"}, _recorded_with_the_next_key),
    SettingChange("keySize-made-explicit-at-its-default", {"algorithm": "RS256"}, {"keySize": 2048}),
    SettingChange("rotation.publishAhead", {"algorithm": "ES256", "rotation": {"period": "720h"}},
                  {"rotation": {"publishAhead": "2m"}}),
    SettingChange("rotation.period-removed", {"algorithm": "ES256", "rotation": {"period": "720h"}},
                  {"rotation": {"period": None}}, _no_more_schedule),
]


@pytest.mark.parametrize("row", [row.param() for row in SAME_KEY_ROWS])
def test_a_change_of_a_setting_keeps_the_key(operator: OperatorProcess, servicekeys: ServiceKeys, row: SettingChange):
    servicekeys.create("steady", row.spec)
    kid = servicekeys.wait_ready("steady")["status"]["keyId"]
    mount, path = servicekeys.vault_path("steady")

    servicekeys.patch("steady", {"spec": row.change})
    status = servicekeys.wait_ready("steady")["status"]

    assert status["keyId"] == kid
    assert servicekeys.vault_versions(mount, path) == 1, "no new key version"
    assert _pending_versions(servicekeys, mount, path) == 0, "no key staged"
    assert servicekeys.kids("steady-public") == [kid]
    row.then(servicekeys, status)


def test_the_jwks_follows_retain_previous_both_ways_without_a_new_key(operator: OperatorProcess,
                                                                      servicekeys: ServiceKeys):
    servicekeys.create("retaining", {"algorithm": "EdDSA", "rotation": {"retainPrevious": 2}})
    kids = [servicekeys.wait_ready("retaining")["status"]["keyId"]]
    for request in ("one", "two"):
        servicekeys.patch("retaining", {"metadata": {"annotations": {"servicekey.io/rotate": request}}})
        kids.insert(0, servicekeys.wait_new_kid("retaining", kids[0])["status"]["keyId"])
    assert servicekeys.kids("retaining-public") == kids

    servicekeys.patch("retaining", {"spec": {"rotation": {"retainPrevious": 0}}})
    servicekeys.wait_ready("retaining")
    assert servicekeys.kids("retaining-public") == kids[:1]

    servicekeys.patch("retaining", {"spec": {"rotation": {"retainPrevious": 2}}})
    status = servicekeys.wait_ready("retaining")["status"]
    assert servicekeys.kids("retaining-public") == kids, "the older versions are still in Vault and come back"
    assert status["keyId"] == kids[0] and status["keyVersion"] == 3


# --- Where the public key is published: copies follow the spec, none is left behind -------------------------

@dataclass(frozen=True)
class PublicationChange:
    """``publicKey`` before and after; ``{a}`` and ``{b}`` are two opted-in namespaces labelled team=a / team=b.
    ``copies_after``: (namespace placeholder, ConfigMap name) of every copy there must be afterwards."""

    id: str
    before: dict[str, Any]
    after: dict[str, Any]
    copies_after: set[tuple[str, str]] = field(default_factory=set)

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


PUBLICATION_ROWS = [
    PublicationChange("namespaces-one-dropped", {"namespaces": ["{a}", "{b}"]}, {"namespaces": ["{b}"]},
                      {("{b}", "shared-public")}),
    PublicationChange("namespaces-removed", {"namespaces": ["{a}", "{b}"]}, {"namespaces": None}),
    PublicationChange("namespaceSelector-changed", {"namespaceSelector": {"matchLabels": {"team": "{a}"}}},
                      {"namespaceSelector": {"matchLabels": {"team": "{b}"}}}, {("{b}", "shared-public")}),
    PublicationChange("namespaceSelector-removed", {"namespaceSelector": {"matchLabels": {"team": "{a}"}}},
                      {"namespaceSelector": None}),
    PublicationChange("namespaces-replaced-by-a-selector", {"namespaces": ["{a}"]},
                      {"namespaces": None, "namespaceSelector": {"matchLabels": {"team": "{b}"}}},
                      {("{b}", "shared-public")}),
    PublicationChange("configMapName-with-copies", {"namespaces": ["{a}"]}, {"configMapName": "shared-jwks"},
                      {("{a}", "shared-jwks")}),
]


def _filled(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, list):
        return [_filled(item, names) for item in value]
    if isinstance(value, dict):
        return {key: _filled(item, names) for key, item in value.items()}
    return value


@pytest.mark.parametrize("row", [row.param() for row in PUBLICATION_ROWS])
def test_copies_follow_a_change_of_where_the_key_is_published(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                              make_namespace: MakeNamespace, row: PublicationChange):
    names = {"a": "", "b": ""}
    for placeholder in names:
        names[placeholder] = make_namespace(accept_from=servicekeys.namespace)
    for namespace in names.values():  # the label value is the namespace's own name: unique to this test
        servicekeys.core.patch_namespace(namespace, {"metadata": {"labels": {"team": namespace}}})
    targets = list(names.values())
    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": _filled(row.before, names)})
    kid = servicekeys.wait_ready("shared")["status"]["keyId"]
    assert _copies(servicekeys, targets, "shared"), "the spec before the change publishes copies"

    servicekeys.patch("shared", {"spec": {"publicKey": _filled(row.after, names)}})
    status = servicekeys.wait_ready("shared")["status"]

    wanted = {(_filled(namespace, names), name) for namespace, name in row.copies_after}
    wait_for(lambda: _copies(servicekeys, targets, "shared") == wanted, 20,
             f"exactly the copies {sorted(wanted)}")
    assert sorted(status.get("publishedNamespaces") or []) == sorted(namespace for namespace, _ in wanted)
    assert status["keyId"] == kid
    for namespace, name in wanted:
        assert servicekeys.configmap(name, namespace).data["kid"] == kid


# --- Where the private key is kept ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_kv_mount(dev_env: DevEnvironment) -> str:
    dev_env.vault.enable_kv(OTHER_KV_MOUNT)
    return OTHER_KV_MOUNT


@dataclass(frozen=True)
class LocationChange:
    """A change of where the private key is kept in Vault; ``{ns}`` is the ServiceKey's namespace."""

    id: str
    field: str
    change: dict[str, Any]

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


LOCATION_ROWS = [
    LocationChange("vault.path", "vault.path", {"path": "servicekeys/{ns}/moved/key"}),
    LocationChange("vault.mount", "vault.mount", {"mount": OTHER_KV_MOUNT}),
]


@pytest.mark.parametrize("row", [row.param() for row in LOCATION_ROWS])
def test_moving_the_key_in_vault_is_refused_at_admission(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                         other_kv_mount: str, row: LocationChange):
    """The key history (what the JWKS retains) lives at the path: a move used to start a new history there,
    drop the old key from the JWKS at once, and leave the old secret behind for good, even with Delete."""
    servicekeys.create("moving", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    old_kid = servicekeys.wait_ready("moving")["status"]["keyId"]
    old_mount, old_path = servicekeys.vault_path("moving")

    with pytest.raises(kubernetes.client.ApiException) as refused:
        servicekeys.patch("moving", {"spec": {"vault": _filled(row.change, {"ns": servicekeys.namespace})}})

    assert refused.value.status == 422 and f"{row.field} cannot change on a live" in refused.value.body
    assert servicekeys.vault_path("moving") == (old_mount, old_path)
    assert servicekeys.get("moving")["status"]["keyId"] == old_kid


def test_an_engine_change_is_refused_for_a_key_on_its_own_kv_mount(operator: OperatorProcess,
                                                                   servicekeys: ServiceKeys, other_kv_mount: str):
    """A Transit key's record lives on the operator's default KV mount: switching a key on another KV mount to
    Transit (and back) would move its record, start a new history there and, back on KV, sign again with the
    retired key still at the old mount."""
    servicekeys.create("own-mount", {"algorithm": "ES256", "vault": {"mount": other_kv_mount}})
    servicekeys.wait_ready("own-mount")

    with pytest.raises(kubernetes.client.ApiException) as refused:
        servicekeys.patch("own-mount", {"spec": {"vault": {"engine": "transit", "mount": "transit"}}})

    assert refused.value.status == 422 and "an engine change needs the default KV mount" in refused.value.body


def test_where_a_key_lives_may_be_corrected_until_its_first_key_is_made(operator: OperatorProcess,
                                                                        servicekeys: ServiceKeys):
    servicekeys.create("typo", {"algorithm": "ES256", "vault": {"path": "servicekeys/elsewhere/typo"}})
    servicekeys.wait_condition("typo", "False", "InvalidSpec")

    servicekeys.patch("typo", {"spec": {"vault": {"path": f"servicekeys/{servicekeys.namespace}/typo"}}})

    assert servicekeys.wait_ready("typo")["status"]["vaultPath"] == f"secret/servicekeys/{servicekeys.namespace}/typo"


def test_a_transit_mount_change_makes_a_new_key_on_the_new_mount(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                                 dev_env: DevEnvironment):
    mount = "transit-spec-changes"
    if mount not in servicekeys.vault.sys.list_mounted_secrets_engines()["data"]:
        servicekeys.vault.sys.enable_secrets_engine("transit", path=mount)
    servicekeys.create("moved", {"algorithm": "ES256", "vault": {"engine": "transit"}})
    first = servicekeys.wait_ready("moved")["status"]["keyId"]

    servicekeys.patch("moved", {"spec": {"vault": {"mount": mount}}})
    moved = servicekeys.wait_new_kid("moved", first)["status"]

    assert moved["vaultPath"].startswith(f"{mount}/keys/")
    assert servicekeys.kids("moved-public") == [moved["keyId"], first], "the old key is retained"
    assert servicekeys.verifies("moved-public", servicekeys.sign_with_transit("moved"))


# --- Deleting a ServiceKey whose spec has become invalid ------------------------------------------------------

@dataclass(frozen=True)
class Spoiler:
    """A change that admission accepts and the operator cannot carry out."""

    id: str
    change: dict[str, Any]
    reasons: tuple[str, ...]

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


SPOILERS = [
    # The Transit mount is named with the engine change (a KV mount cannot change alone); it does not exist.
    Spoiler("vault.engine-transit-on-a-mount-that-does-not-exist", {"vault": {"engine": "transit",
                                                                             "mount": "no-such-mount"}},
            ("InvalidSpec",)),  # "Vault has no engine of the expected kind"
]


@pytest.mark.parametrize("spoiler", [spoiler.param() for spoiler in SPOILERS])
def test_deleting_a_servicekey_whose_spec_became_invalid_still_cleans_up_everything(
        operator: OperatorProcess, servicekeys: ServiceKeys, make_namespace: MakeNamespace, spoiler: Spoiler):
    target = make_namespace(accept_from=servicekeys.namespace)
    servicekeys.create("spoiled", {"algorithm": "ES256", "deletionPolicy": "Delete",
                                   "publicKey": {"namespaces": [target]}})
    servicekeys.wait_ready("spoiled")
    mount, path = servicekeys.vault_path("spoiled")
    assert servicekeys.configmap("spoiled-public", target) is not None
    try:
        servicekeys.patch("spoiled", {"spec": spoiler.change})
    except kubernetes.client.ApiException as refused:
        pytest.fail(f"admission refuses this spoiler now, so it no longer makes a live key's spec invalid; the row "
                    f"needs one that admission accepts and the operator rejects: {refused.body}")
    assert ready_condition(_settled(servicekeys, "spoiled"))["reason"] in spoiler.reasons

    servicekeys.delete("spoiled")

    observed = {"deleted": _gone_within(servicekeys, "spoiled", 30),
                "copy left in the other namespace": servicekeys.configmap("spoiled-public", target) is not None,
                "Vault versions left": servicekeys.vault_versions(mount, path)}
    assert observed == {"deleted": True, "copy left in the other namespace": False, "Vault versions left": 0}

