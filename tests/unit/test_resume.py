"""resume.first_pass_time: which keys a restarted operator may check later, tested on statuses that the
real status builder wrote."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.reconcile import next_rotation_time
from servicekey_operator.resume import first_pass_time
from servicekey_operator.spec import desired_key, rotate_request_digest
from servicekey_operator.status import failed_status, ready_status
from servicekey_operator.vault.records import KeyHistory, StoredKey

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
MINUTE = datetime.timedelta(minutes=1)
LATEST = T0 + 10 * MINUTE
CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
GENERATION = 3


def _desired(spec: dict[str, Any], annotations: dict[str, str] | None = None, config: OperatorConfig = CONFIG):
    return desired_key("ns", "sk", "uid-1", spec, annotations or {}, config)


def _history(annotation: str | None = None, pending: StoredKey | None = None) -> KeyHistory:
    current = StoredKey(version=2, kid="kid-2", algorithm="ES256", key_size=None, public_pem="", service_name="sk",
                        created_at=T0, rotate_annotation=rotate_request_digest(annotation), rotation_reason="Requested")
    return KeyHistory(owner="ns/sk", current_version=2, current=current, pending=pending)


def _status_after_pass(spec: dict[str, Any], annotations: dict[str, str] | None = None,
                       history: KeyHistory | None = None, **extra: Any) -> dict[str, Any]:
    desired = _desired(spec, annotations)
    history = history or _history((annotations or {}).get("servicekey.io/rotate"))
    status = ready_status(desired, history, next_rotation_time(desired, history), GENERATION, {}, T0, "rv-7")
    return {**status, **extra}


ES256 = {"algorithm": "ES256"}
HOURLY = {"algorithm": "ES256", "rotation": {"period": "1h", "publishAhead": "5m"}}


def test_a_key_unchanged_since_its_last_pass_is_checked_at_the_latest_time():
    status = _status_after_pass(ES256, {"servicekey.io/rotate": "r1"})

    assert first_pass_time(_desired(ES256, {"servicekey.io/rotate": "r1"}), status, GENERATION, "rv-7", T0,
                           LATEST) == LATEST


def test_a_scheduled_key_is_checked_when_its_staging_falls_due_if_that_comes_first():
    status = _status_after_pass(HOURLY)
    stage_at = T0 + 55 * MINUTE

    assert first_pass_time(_desired(HOURLY), status, GENERATION, "rv-7", T0, T0 + 2 * 60 * MINUTE) == stage_at
    assert first_pass_time(_desired(HOURLY), status, GENERATION, "rv-7", T0, LATEST) == LATEST
    assert first_pass_time(_desired(HOURLY), status, GENERATION, "rv-7", stage_at, LATEST + 60 * MINUTE) is None


PENDING = StoredKey(version=0, kid="kid-3", algorithm="ES256", key_size=None, public_pem="", service_name="sk",
                    created_at=T0, rotate_annotation=None, rotation_reason="Scheduled", activate_at=T0 + MINUTE)


@pytest.mark.parametrize(("what", "desired", "status", "generation", "listed_version"), [
    ("the spec changed", _desired(ES256), _status_after_pass(ES256), GENERATION + 1, "rv-7"),
    ("a new rotate request", _desired(ES256, {"servicekey.io/rotate": "r2"}),
     _status_after_pass(ES256, {"servicekey.io/rotate": "r1"}), GENERATION, "rv-7"),
    ("a first rotate request", _desired(ES256, {"servicekey.io/rotate": "r1"}), _status_after_pass(ES256),
     GENERATION, "rv-7"),
    ("the ConfigMap is gone", _desired(ES256), _status_after_pass(ES256), GENERATION, None),
    ("the ConfigMap was edited", _desired(ES256), _status_after_pass(ES256), GENERATION, "rv-9"),
    ("a key is staged", _desired(ES256), _status_after_pass(ES256, history=_history(pending=PENDING)),
     GENERATION, "rv-7"),
    ("the last pass failed", _desired(ES256),
     {**_status_after_pass(ES256), **failed_status("VaultUnavailable", "down", GENERATION, {}, T0)}, GENERATION,
     "rv-7"),
    ("copies in other namespaces", _desired(ES256), _status_after_pass(ES256, publishedNamespaces=["orders"]),
     GENERATION, "rv-7"),
    ("copies wanted", _desired({**ES256, "publicKey": {"namespaces": ["orders"]}}), _status_after_pass(ES256),
     GENERATION, "rv-7"),
    ("the operator's path prefix moved",
     _desired(ES256, config=OperatorConfig(vault=CONFIG.vault, path_prefix="elsewhere")), _status_after_pass(ES256),
     GENERATION, "rv-7"),
    ("a status from before these fields", _desired(ES256),
     {k: v for k, v in _status_after_pass(ES256).items() if k != "configMapResourceVersion"}, GENERATION, "rv-7"),
    ("no status", _desired(ES256), {}, GENERATION, "rv-7"),
    ("a recheck asked for while it was stopped", _desired(ES256, {"servicekey.io/recheck": "after-restore"}),
     _status_after_pass(ES256), GENERATION, "rv-7"),
])
def test_a_key_whose_status_does_not_prove_it_settled_gets_its_pass_now(what, desired, status, generation,
                                                                        listed_version):
    assert first_pass_time(desired, status, generation, listed_version, T0, LATEST) is None, what


def test_a_key_that_answered_its_recheck_or_dealt_with_a_rollback_may_wait():
    rechecked = {"servicekey.io/recheck": "after-restore"}
    status = _status_after_pass(ES256, rechecked)
    rolled_back = {**status, "conditions": [{**status["conditions"][0], "reason": "VaultRolledBack"}]}

    assert first_pass_time(_desired(ES256, rechecked), status, GENERATION, "rv-7", T0, LATEST) == LATEST
    assert first_pass_time(_desired(ES256, rechecked), rolled_back, GENERATION, "rv-7", T0, LATEST) == LATEST
