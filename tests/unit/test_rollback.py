"""Vault restored to an older state: what counts as a rollback, which published keys stay, what is written (pure)."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest

from servicekey_operator import publish, rollback
from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.keys import generate_keypair, public_jwk
from servicekey_operator.reconcile import KeyAction, decide_key
from servicekey_operator.spec import desired_key
from servicekey_operator.status import ready_status, rfc3339
from servicekey_operator.vault.records import KeyHistory, LostKey, StoredKey, format_lost_keys, parse_lost_keys

CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
T0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
LOCATION = "secret/servicekeys/ns/sk"


def _key(version: int, created_at: datetime.datetime, lost: tuple[LostKey, ...] = ()) -> StoredKey:
    pair = generate_keypair("ES256")
    return StoredKey(version=version, kid=pair.kid, algorithm="ES256", key_size=None, public_pem=pair.public_pem,
                     service_name="sk", created_at=created_at, rotate_annotation=None, private_pem=pair.private_pem,
                     lost_keys=lost)


def _lost(key: StoredKey) -> LostKey:
    return LostKey(key.kid, key.algorithm, key.public_pem)


def _history(current: StoredKey | None, *previous: StoredKey, current_version: int | None = None) -> KeyHistory:
    version = current.version if current else 0
    return KeyHistory("ns/sk", version if current_version is None else current_version, current, previous)


def _configmap(*published: StoredKey, extra_jwks: tuple[dict, ...] = ()) -> dict:
    """The ConfigMap as the operator published ``published`` (current first), plus JWKs someone added."""
    data = publish.configmap_data(_history(published[0], *published[1:]), len(published) - 1)
    if extra_jwks:
        jwks = json.loads(data["jwks.json"])
        data["jwks.json"] = json.dumps({"keys": [*jwks["keys"], *extra_jwks]})
    return {"data": data}


def _status(current: StoredKey, *also: StoredKey, location: str = LOCATION) -> dict:
    return {"keyId": current.kid, "keyVersion": current.version, "lastRotationTime": rfc3339(current.created_at),
            "vaultPath": location,
            "publishedKeyIds": [current.kid, *(key.kid for key in also)]}


# Before the snapshot: OLD signed, PREVIOUS before it. After it (lost by the restore): NEWER, then NEWEST.
PREVIOUS = _key(1, T0)
OLD = _key(2, T0 + HOUR)
NEWER = _key(3, T0 + 2 * HOUR)
NEWEST = _key(4, T0 + 3 * HOUR)
RESTORED = _history(OLD, PREVIOUS)
PUBLISHED = _configmap(NEWEST, NEWER)


def test_the_status_names_what_was_published_and_a_status_without_a_key_names_nothing():
    published = rollback.last_published({**_status(NEWEST, NEWER), "pendingKeyId": "staged"})

    assert published == rollback.Published(NEWEST.kid, 4, T0 + 3 * HOUR, LOCATION,
                                           frozenset({NEWEST.kid, NEWER.kid, "staged"}))
    assert rollback.last_published({}) is None
    assert rollback.last_published({"keyId": "k", "keyVersion": 1, "vaultPath": LOCATION,
                                    "lastRotationTime": "not a time"}) is None


def test_a_vault_whose_current_key_is_older_than_the_published_one_was_rolled_back_and_lost_the_newer_keys():
    found = rollback.detect(RESTORED, rollback.last_published(_status(NEWEST, NEWER)), LOCATION, PUBLISHED)

    assert found is not None
    assert found.restored == OLD
    assert [key.kid for key in found.lost] == [NEWEST.kid, NEWER.kid]
    assert [key.public_pem for key in found.lost] == [NEWEST.public_pem, NEWER.public_pem]


def test_a_rotation_within_the_second_of_the_restored_key_is_still_told_apart_by_version():
    # Status times have whole seconds: the restored key was made in the same second as the published one.
    restored = dataclasses.replace(OLD, created_at=NEWEST.created_at + datetime.timedelta(microseconds=600_000))

    found = rollback.detect(_history(restored, PREVIOUS), rollback.last_published(_status(NEWEST, NEWER)), LOCATION,
                            PUBLISHED)

    assert found is not None and [key.kid for key in found.lost] == [NEWEST.kid, NEWER.kid]


def test_a_vault_with_no_record_of_a_published_key_was_rolled_back_to_before_the_key():
    found = rollback.detect(KeyHistory(None, 0, None), rollback.last_published(_status(NEWEST)), LOCATION,
                            _configmap(NEWEST))

    assert found is not None and found.restored is None
    assert [key.kid for key in found.lost] == [NEWEST.kid]


@pytest.mark.parametrize(("history", "status"), [
    pytest.param(_history(NEWEST, NEWER), _status(NEWEST, NEWER), id="Vault holds what was published"),
    pytest.param(_history(NEWEST, NEWER), _status(NEWER), id="Vault is ahead: another replica rotated since"),
    pytest.param(_history(_key(9, T0 + 5 * HOUR)), _status(NEWEST), id="Vault is far ahead: a newer key"),
    pytest.param(_history(None, OLD, current_version=5), _status(NEWEST), id="latest version deleted by an admin"),
    pytest.param(RESTORED, _status(NEWEST, location="transit/keys/sk.ecdsa-p256"), id="the key moved engines"),
    pytest.param(RESTORED, {}, id="never published"),
])
def test_normal_history_is_no_rollback(history, status):
    assert rollback.detect(history, rollback.last_published(status), LOCATION, PUBLISHED) is None


def test_a_key_rotated_forward_after_a_rollback_is_no_second_rollback():
    forward = _key(3, T0 + 4 * HOUR, lost=(_lost(NEWEST), _lost(NEWER)))
    after = _history(forward, OLD)

    assert rollback.detect(after, rollback.last_published(_status(forward, NEWEST, NEWER, OLD)), LOCATION,
                           _configmap(forward)) is None
    # A status written before the rotate-forward (a stale body) names a lost key, which the record still holds.
    assert rollback.detect(after, rollback.last_published(_status(NEWEST, NEWER)), LOCATION, PUBLISHED) is None


def test_only_keys_the_status_attested_and_whose_pem_has_their_kid_are_taken_back_from_the_configmap():
    injected = generate_keypair("ES256")
    forged = _configmap(NEWEST, NEWER, extra_jwks=({**public_jwk(injected.public_pem, "ES256"), "kid": "made-up"},
                                                   public_jwk(injected.public_pem, "ES256")))
    forged["data"][f"{injected.kid}.pem"] = injected.public_pem
    forged["data"][f"{NEWER.kid}.pem"] = injected.public_pem  # NEWER's PEM swapped for another key

    lost = rollback.lost_keys(forged, frozenset({NEWEST.kid, NEWER.kid, "made-up"}), {OLD.kid})

    assert [key.kid for key in lost] == [NEWEST.kid]


def test_a_lost_imported_key_keeps_its_legacy_kid():
    imported = dataclasses.replace(NEWEST, legacy_kids=("svc-0001",))
    configmap = {"data": publish.configmap_data(_history(imported), 0)}

    lost = rollback.lost_keys(configmap, frozenset({NEWEST.kid}), set())

    assert lost == [LostKey(NEWEST.kid, "ES256", NEWEST.public_pem, ("svc-0001",))]


def test_a_rollback_writes_a_new_key_at_once_even_with_publish_ahead_and_whatever_else_was_asked():
    desired = desired_key("ns", "sk", "uid", {"algorithm": "ES256", "rotation": {"publishAhead": "5m"}},
                          {"servicekey.io/rotate": "again"}, CONFIG)

    decision = decide_key(desired, RESTORED, frozenset({NEWEST.kid}), T0 + 4 * HOUR, rolled_back=True)

    assert (decision.action, decision.reason) == (KeyAction.WRITE, "VaultRolledBack")
    assert decide_key(desired, KeyHistory(None, 0, None), frozenset(), T0, rolled_back=True).action is KeyAction.WRITE


def test_lost_keys_stay_in_the_jwks_as_long_as_the_key_vault_was_rolled_back_to():
    forward = _key(3, T0 + 4 * HOUR, lost=(_lost(NEWEST), _lost(NEWER)))
    later = _key(4, T0 + 5 * HOUR)

    def kids(history: KeyHistory, retain: int) -> list[str]:
        return [key.kid for key in publish.published_keys(history, retain)]

    assert kids(_history(forward, OLD, PREVIOUS), 1) == [forward.kid, NEWEST.kid, NEWER.kid, OLD.kid]
    assert kids(_history(forward, OLD, PREVIOUS), 2) == [forward.kid, NEWEST.kid, NEWER.kid, OLD.kid, PREVIOUS.kid]
    assert kids(_history(later, forward, OLD), 1) == [later.kid, forward.kid]
    assert kids(_history(later, forward, OLD), 2) == [later.kid, forward.kid, NEWEST.kid, NEWER.kid, OLD.kid]
    assert kids(_history(forward), 1) == [forward.kid, NEWEST.kid, NEWER.kid], "no record before: lost keys alone"
    assert kids(_history(forward, OLD), 0) == [forward.kid], "retainPrevious 0 keeps nothing, as it asks"


def test_the_status_says_vault_was_rolled_back_while_lost_keys_are_published():
    desired = desired_key("ns", "sk", "uid", {"algorithm": "ES256", "rotation": {"retainPrevious": 1}}, {}, CONFIG)
    forward = _key(3, T0 + 4 * HOUR, lost=(_lost(NEWEST),))

    rolled_back = ready_status(desired, _history(forward, OLD), None, 1, {}, T0 + 4 * HOUR, "1")
    later = ready_status(desired, _history(_key(4, T0 + 5 * HOUR), forward, OLD), None, 1, {}, T0 + 5 * HOUR, "2")

    ready = rolled_back["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "VaultRolledBack")
    assert NEWEST.kid in ready["message"]
    assert rolled_back["publishedKeyIds"] == [forward.kid, NEWEST.kid, OLD.kid]
    assert later["conditions"][0]["reason"] == "KeyReady"


def test_lost_keys_are_recorded_in_vault_as_public_keys_only_and_read_back():
    lost = (_lost(NEWEST), LostKey(NEWER.kid, "ES256", NEWER.public_pem, ("legacy",)))

    text = format_lost_keys(lost)

    assert parse_lost_keys(text) == lost
    assert "PRIVATE" not in text
    assert parse_lost_keys('[{"kid": 1}, "x", {"kid": "k", "alg": "ES256", "public_key": "p"}]') == (
        LostKey("k", "ES256", "p"),), "an edited record: what is not an entry is skipped"
    assert parse_lost_keys("not json") == ()


def test_the_event_names_what_was_lost_and_what_signs_now_and_no_key_material():
    found = rollback.detect(RESTORED, rollback.last_published(_status(NEWEST, NEWER)), LOCATION, PUBLISHED)
    assert found is not None
    forward = _key(3, T0 + 4 * HOUR)

    text = found.describe(LOCATION, forward)

    for kid in (OLD.kid, NEWEST.kid, NEWER.kid, forward.kid):
        assert kid in text
    assert "PRIVATE" not in text and "BEGIN" not in text
