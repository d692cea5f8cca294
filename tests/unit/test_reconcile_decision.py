"""decide_key: the pure rotation decision, as tables."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest

from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.reconcile import KeyAction, KeyDecision, decide_key, next_pass_time, next_rotation_time
from servicekey_operator.spec import desired_key, rotate_request_digest
from servicekey_operator.vault.records import KeyHistory, StoredKey

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
MINUTE = datetime.timedelta(minutes=1)
CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
NO_KEY = KeyHistory(None, 0, None)


def _desired(spec: dict, annotations: dict | None = None):
    """The ServiceKey, with rotation.publishAhead 0s unless the case sets it (the default stages; see below)."""
    rotation = {"publishAhead": "0s", **(spec.get("rotation") or {})}
    return desired_key("ns", "sk", "uid-1", {**spec, "rotation": rotation}, annotations or {}, CONFIG)


def _key(kid: str = "kid-3", algorithm: str = "ES256", key_size: int | None = None, annotation: str | None = None,
         created_at: datetime.datetime = T0, activate_at: datetime.datetime | None = None) -> StoredKey:
    return StoredKey(version=3, kid=kid, algorithm=algorithm, key_size=key_size, public_pem="", service_name="sk",
                     created_at=created_at, rotate_annotation=rotate_request_digest(annotation),
                     rotation_reason="Requested",
                     activate_at=activate_at)


def _history(pending: StoredKey | None = None, **current) -> KeyHistory:
    return KeyHistory(owner="ns/sk", current_version=3, current=_key(**current), pending=pending)


ROTATE_A = {"servicekey.io/rotate": "a"}
HOURLY = {"algorithm": "ES256", "rotation": {"period": "1h"}}
AHEAD = {"algorithm": "ES256", "rotation": {"publishAhead": "2m"}}
HOURLY_AHEAD = {"algorithm": "ES256", "rotation": {"period": "1h", "publishAhead": "2m"}}
STAGED = _key("kid-4", annotation="a", activate_at=T0 + 2 * MINUTE)


@pytest.mark.parametrize(("spec", "annotations", "history", "now", "expected"), [
    ({"algorithm": "ES256"}, {}, NO_KEY, T0, (KeyAction.WRITE, "Created")),
    # Someone deleted or destroyed the latest version: one new key, named for what happened.
    ({"algorithm": "ES256"}, {}, KeyHistory("ns/sk", 3, None), T0, (KeyAction.WRITE, "CurrentKeyDeleted")),
    # A staged key deleted in Vault reads as none (with the pending path's revision left): the request stands.
    (AHEAD, ROTATE_A, replace(_history(), pending_revision=1), T0, (KeyAction.STAGE, "Requested")),
    (AHEAD, ROTATE_A, NO_KEY, T0, (KeyAction.WRITE, "Created")),
    ({"algorithm": "ES256"}, {}, _history(), T0, (KeyAction.KEEP, "UpToDate")),
    ({"algorithm": "ES384"}, {}, _history(), T0, (KeyAction.WRITE, "SpecChanged")),
    ({"algorithm": "RS256", "keySize": 3072}, {}, _history(algorithm="RS256", key_size=2048), T0,
     (KeyAction.WRITE, "SpecChanged")),
    ({"algorithm": "RS256"}, {}, _history(algorithm="RS256", key_size=2048), T0, (KeyAction.KEEP, "UpToDate")),
    ({"algorithm": "ES256"}, ROTATE_A, _history(), T0, (KeyAction.WRITE, "Requested")),
    ({"algorithm": "ES256"}, ROTATE_A, _history(annotation="a"), T0, (KeyAction.KEEP, "UpToDate")),
    ({"algorithm": "ES256"}, {}, _history(annotation="a"), T0, (KeyAction.KEEP, "UpToDate")),
    (HOURLY, {}, _history(), T0 + 59 * MINUTE, (KeyAction.KEEP, "UpToDate")),
    (HOURLY, {}, _history(), T0 + 60 * MINUTE, (KeyAction.WRITE, "Scheduled")),
    ({"algorithm": "ES384", "rotation": {"period": "1h"}}, {"servicekey.io/rotate": "b"}, _history(),
     T0 + 120 * MINUTE, (KeyAction.WRITE, "SpecChanged")),
    (AHEAD, ROTATE_A, _history(), T0, (KeyAction.STAGE, "Requested")),
    (HOURLY_AHEAD, {}, _history(), T0 + 57 * MINUTE, (KeyAction.KEEP, "UpToDate")),
    (HOURLY_AHEAD, {}, _history(), T0 + 58 * MINUTE, (KeyAction.STAGE, "Scheduled")),
    (AHEAD, ROTATE_A, _history(pending=STAGED), T0 + MINUTE, (KeyAction.KEEP, "Rotating")),
    (AHEAD, ROTATE_A, _history(pending=STAGED), T0 + 2 * MINUTE, (KeyAction.PROMOTE, "Requested")),
    ({"algorithm": "ES256"}, ROTATE_A, _history(pending=STAGED), T0 + 2 * MINUTE, (KeyAction.PROMOTE, "Requested")),
    (AHEAD, ROTATE_A, _history(pending=replace(STAGED, kid="kid-3")), T0, (KeyAction.CLEAR_PENDING, "Rotating")),
    ({"algorithm": "ES384", "rotation": {"publishAhead": "2m"}}, ROTATE_A, _history(pending=STAGED), T0 + MINUTE,
     (KeyAction.STAGE, "SpecChanged")),
    # ES256 -> ES384 staged -> back to ES256 before promotion: the staged key is withdrawn, nothing new made.
    (AHEAD, {}, _history(pending=replace(STAGED, algorithm="ES384")), T0 + MINUTE,
     (KeyAction.CLEAR_PENDING, "SpecChanged")),
], ids=["no-key", "current-deleted", "pending-deleted", "no-key-ignores-publish-ahead", "up-to-date",
        "algorithm-changed", "rsa-size-changed",
        "rsa-default-size", "annotation-new", "annotation-answered", "annotation-removed", "period-not-due",
        "period-due", "spec-change-wins", "publish-ahead-stages", "schedule-not-yet-staged",
        "schedule-staged-ahead-of-tick", "pending-waits", "pending-promoted-on-time",
        "pending-promoted-after-publish-ahead-removed", "pending-already-promoted", "spec-change-restages",
        "spec-changed-back-withdraws-the-staged-key"])
def test_decide_key(spec, annotations, history, now, expected):
    decision = decide_key(_desired(spec, annotations), history, frozenset({"kid-3", "kid-4"}), now)

    assert (decision.action, decision.reason) == expected


def test_a_pending_key_the_configmap_never_listed_is_rescheduled_not_promoted():
    late = decide_key(_desired(AHEAD, ROTATE_A), _history(pending=STAGED), frozenset({"kid-3"}), T0 + 10 * MINUTE)
    just_staged = decide_key(_desired(AHEAD, ROTATE_A), _history(pending=STAGED), frozenset({"kid-3"}), T0)

    assert (late.action, late.reason) == (KeyAction.RESCHEDULE, "Requested")
    assert (just_staged.action, just_staged.reason) == (KeyAction.KEEP, "Rotating")


def test_a_change_of_rotation_settings_alone_only_reschedules():
    history = _history()
    before = _desired({"algorithm": "ES256", "rotation": {"period": "2h"}})
    after = _desired({"algorithm": "ES256", "rotation": {"period": "1h", "retainPrevious": 3}})

    assert decide_key(after, history, frozenset(), T0).action is KeyAction.KEEP
    assert next_rotation_time(before, history) == T0 + 120 * MINUTE
    assert next_rotation_time(after, history) == T0 + 60 * MINUTE


def test_the_next_pass_comes_publish_ahead_before_the_tick_and_at_a_pending_activation():
    desired = _desired(HOURLY_AHEAD)

    assert next_pass_time(desired, _history()) == T0 + 58 * MINUTE
    assert next_pass_time(desired, _history(pending=STAGED)) == T0 + 2 * MINUTE


def test_a_request_made_while_a_key_was_staged_is_answered_right_after_its_promotion():
    # Found through the CLI: the promoted key answers the first request only, and no pass was scheduled for the
    # second one, which waited for an unrelated pass (a schedule tick, a restart).
    desired = _desired(AHEAD, {"servicekey.io/rotate": "second"})
    promoted = _history(annotation="a", created_at=T0 + 2 * MINUTE)

    assert next_pass_time(desired, promoted) == T0 + 2 * MINUTE
    assert decide_key(desired, promoted, frozenset({"kid-3"}), T0 + 2 * MINUTE) \
        == KeyDecision(KeyAction.STAGE, "Requested")


def test_by_default_a_requested_key_is_staged_for_three_minutes():
    desired = desired_key("ns", "sk", "uid-1", {"algorithm": "ES256"}, ROTATE_A, CONFIG)
    decision = decide_key(desired, _history(), frozenset({"kid-3"}), T0)

    assert desired.rotation.publish_ahead_seconds == 180
    assert (decision.action, decision.reason) == (KeyAction.STAGE, "Requested")


@pytest.mark.parametrize("history", [_history(), _history(pending=STAGED)], ids=["no-pending", "staged-key"])
def test_an_emergency_request_writes_a_key_at_once_whatever_publish_ahead_and_a_staged_key_say(history):
    emergency = {"servicekey.io/rotate": "emergency:leaked-2026-11-30"}
    desired = desired_key("ns", "sk", "uid-1", {"algorithm": "ES256", "rotation": {"publishAhead": "10m"}},
                          emergency, CONFIG)

    decision = decide_key(desired, history, frozenset({"kid-3", "kid-4"}), T0)
    answered = decide_key(desired, _history(annotation="emergency:leaked-2026-11-30"), frozenset({"kid-3"}), T0)

    assert desired.emergency
    assert (decision.action, decision.reason) == (KeyAction.WRITE, "Emergency")
    assert (answered.action, answered.reason) == (KeyAction.KEEP, "UpToDate")
