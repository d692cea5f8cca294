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
    published = rollback.last_published({**_status(NEWEST, NEWER), "pendingKeyId": "staged", "algorithm": "ES256"})

    assert published == rollback.Published(NEWEST.kid, 4, T0 + 3 * HOUR, LOCATION,
                                           frozenset({NEWEST.kid, NEWER.kid, "staged"}), "ES256")
    assert rollback.last_published({}) is None
    assert rollback.last_published({"keyId": "k", "keyVersion": 1, "vaultPath": LOCATION,
                                    "lastRotationTime": "not a time"}) is None


# What the store holds under the published key's version (rollback.detect's ``found``).
NO_SUCH_VERSION = (False, None)
UNREADABLE = (True, None)


def _detect(history: KeyHistory, status: dict, found: tuple[bool, str | None],
            configmap: dict = PUBLISHED) -> rollback.Rollback | None:
    published = rollback.last_published(status)
    assert published is not None and rollback.suspect(history, published, LOCATION)
    return rollback.detect(history, published, found, configmap)


def test_a_vault_that_never_reached_the_published_version_was_rolled_back_and_lost_the_newer_keys():
    found = _detect(RESTORED, _status(NEWEST, NEWER), NO_SUCH_VERSION)

    assert found is not None
    assert found.restored == OLD
    assert [key.kid for key in found.lost] == [NEWEST.kid, NEWER.kid]
    assert [key.public_pem for key in found.lost] == [NEWEST.public_pem, NEWER.public_pem]


def test_another_key_under_the_published_version_is_another_history_and_so_a_rollback():
    # A restore into an empty Vault (the operator wrote version 1 there), then of the real snapshot, at version 5.
    interim = _key(1, T0 + 4 * HOUR)
    real = _key(5, T0)

    found = _detect(_history(real), _status(interim), (True, "another-kid"), _configmap(interim))

    assert found is not None and [key.kid for key in found.lost] == [interim.kid]


def test_a_vault_with_no_record_of_a_published_key_was_rolled_back_to_before_the_key():
    found = _detect(KeyHistory(None, 0, None), _status(NEWEST), NO_SUCH_VERSION, _configmap(NEWEST))

    assert found is not None and found.restored is None
    assert [key.kid for key in found.lost] == [NEWEST.kid]


def test_vault_still_holding_the_published_key_under_its_version_is_history_moving_on():
    far_ahead = _history(_key(9, T0 + 5 * HOUR))

    assert _detect(far_ahead, _status(NEWEST), (True, NEWEST.kid)) is None, "another replica rotated further"
    assert _detect(far_ahead, _status(NEWEST), UNREADABLE) is None, "a deleted or trimmed version proves nothing"


@pytest.mark.parametrize(("history", "status"), [
    pytest.param(_history(NEWEST, NEWER), _status(NEWEST, NEWER), id="Vault holds what was published"),
    pytest.param(_history(NEWEST, NEWER), _status(NEWER), id="Vault is ahead: another replica rotated since"),
    pytest.param(_history(None, OLD, current_version=5), _status(NEWEST), id="latest version deleted by an admin"),
    pytest.param(RESTORED, _status(NEWEST, location="transit/keys/sk.ecdsa-p256"), id="the key moved engines"),
    pytest.param(RESTORED, {}, id="never published"),
    pytest.param(KeyHistory("ns/sk", 2, OLD, (PREVIOUS,), pending=NEWEST), _status(NEWEST),
                 id="the published key is staged again: it is promoted again"),
])
def test_normal_history_is_not_even_suspect(history, status):
    assert not rollback.suspect(history, rollback.last_published(status), LOCATION)


def test_a_key_rotated_forward_after_a_rollback_is_no_second_rollback():
    forward = _key(3, T0 + 4 * HOUR, lost=(_lost(NEWEST), _lost(NEWER)))
    after = _history(forward, OLD)

    assert not rollback.suspect(after, rollback.last_published(_status(forward, NEWEST, NEWER, OLD)), LOCATION)
    # A status written before the rotate-forward (a stale body) names a lost key, which the record still holds.
    assert not rollback.suspect(after, rollback.last_published(_status(NEWEST, NEWER)), LOCATION)


def test_a_staged_key_that_signed_since_the_snapshot_is_carried_although_vault_holds_it_as_staged():
    # P was staged at the snapshot, promoted, then NEWEST rotated in; the restore brings P back as staged, and the
    # rollback's write replaces the staged key.
    staged = dataclasses.replace(NEWER, version=0)
    restored = KeyHistory("ns/sk", 2, OLD, (PREVIOUS,), pending=staged)

    found = _detect(restored, _status(NEWEST, NEWER), NO_SUCH_VERSION)

    assert found is not None and [key.kid for key in found.lost] == [NEWEST.kid, NEWER.kid]


def _attested(*kids: str) -> rollback.Published:
    return rollback.Published(NEWEST.kid, 4, T0, LOCATION, frozenset(kids), "ES256")


def test_only_keys_the_status_attested_and_whose_pem_has_their_kid_are_taken_back_from_the_configmap():
    injected = generate_keypair("ES256")
    forged = _configmap(NEWEST, NEWER, extra_jwks=({**public_jwk(injected.public_pem, "ES256"), "kid": "made-up"},
                                                   public_jwk(injected.public_pem, "ES256")))
    forged["data"][f"{injected.kid}.pem"] = injected.public_pem
    forged["data"][f"{NEWER.kid}.pem"] = injected.public_pem  # NEWER's PEM swapped for another key

    lost = rollback.lost_keys(forged, _attested(NEWEST.kid, NEWER.kid, "made-up"), {OLD.kid})

    assert [key.kid for key in lost] == [NEWEST.kid]


def test_nothing_of_the_configmap_is_taken_as_written_but_the_attested_key_itself():
    configmap = _configmap(NEWEST, NEWER)
    jwks = json.loads(configmap["data"]["jwks.json"])
    jwks["keys"][0]["alg"] = "RS256"  # an EC key under an RSA algorithm
    jwks["keys"].append({**jwks["keys"][1], "kid": OLD.kid})  # NEWER's parameters under the restored key's kid
    configmap["data"]["jwks.json"] = json.dumps(jwks)
    # Text around the block, and a second block after it.
    configmap["data"][f"{NEWER.kid}.pem"] = "note\n" + NEWER.public_pem + generate_keypair("ES256").public_pem

    lost = rollback.lost_keys(configmap, _attested(NEWEST.kid, NEWER.kid, OLD.kid), {OLD.kid})

    assert lost == [LostKey(NEWEST.kid, "ES256", NEWEST.public_pem), LostKey(NEWER.kid, "ES256", NEWER.public_pem)]


def test_a_lost_imported_key_keeps_its_attested_legacy_kid_and_no_other_alias():
    imported = dataclasses.replace(NEWEST, legacy_kids=("svc-0001",))
    configmap = {"data": publish.configmap_data(_history(imported), 0)}
    jwks = json.loads(configmap["data"]["jwks.json"])
    jwks["keys"].append({**jwks["keys"][0], "kid": "chosen-by-the-tenant"})
    configmap["data"]["jwks.json"] = json.dumps(jwks)

    lost = rollback.lost_keys(configmap, _attested(NEWEST.kid, "svc-0001"), set())

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
    found = _detect(RESTORED, _status(NEWEST, NEWER), NO_SUCH_VERSION)
    assert found is not None
    forward = _key(3, T0 + 4 * HOUR)

    text = found.describe(LOCATION, forward, 1)

    for kid in (OLD.kid, NEWEST.kid, NEWER.kid, forward.kid):
        assert kid in text
    assert "PRIVATE" not in text and "BEGIN" not in text
    assert "stay in the JWKS" in text and "no longer published" in found.describe(LOCATION, forward, 0)
