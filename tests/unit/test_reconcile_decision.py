"""decide_key: the pure rotation decision, as a table."""

from __future__ import annotations

import datetime

import pytest

from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.reconcile import decide_key, next_rotation_time
from servicekey_operator.spec import desired_key
from servicekey_operator.vault.records import KeyHistory, StoredKey

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))


def _desired(spec: dict, annotations: dict | None = None):
    return desired_key("ns", "sk", "uid-1", spec, annotations or {}, CONFIG)


def _history(algorithm: str = "ES256", key_size: int | None = None, annotation: str | None = None,
             created_at: datetime.datetime = T0) -> KeyHistory:
    current = StoredKey(version=3, kid="kid-3", algorithm=algorithm, key_size=key_size, public_pem="",
                        service_name="sk", created_at=created_at, rotate_annotation=annotation)
    return KeyHistory(owner="ns/sk", current_version=3, current=current)


@pytest.mark.parametrize(("spec", "annotations", "history", "now", "expected"), [
    ({"algorithm": "ES256"}, {}, KeyHistory(None, 0, None), T0, (True, "Created")),
    ({"algorithm": "ES256"}, {}, _history(), T0, (False, "UpToDate")),
    ({"algorithm": "ES384"}, {}, _history(), T0, (True, "SpecChanged")),
    ({"algorithm": "RS256", "keySize": 3072}, {}, _history("RS256", 2048), T0, (True, "SpecChanged")),
    ({"algorithm": "RS256"}, {}, _history("RS256", 2048), T0, (False, "UpToDate")),
    ({"algorithm": "ES256"}, {"servicekey.io/rotate": "a"}, _history(), T0, (True, "Requested")),
    ({"algorithm": "ES256"}, {"servicekey.io/rotate": "a"}, _history(annotation="a"), T0, (False, "UpToDate")),
    ({"algorithm": "ES256"}, {}, _history(annotation="a"), T0, (False, "UpToDate")),
    ({"algorithm": "ES256", "rotation": {"period": "1h"}}, {}, _history(),
     T0 + datetime.timedelta(minutes=59), (False, "UpToDate")),
    ({"algorithm": "ES256", "rotation": {"period": "1h"}}, {}, _history(),
     T0 + datetime.timedelta(hours=1), (True, "Scheduled")),
    ({"algorithm": "ES384", "rotation": {"period": "1h"}}, {"servicekey.io/rotate": "b"}, _history(),
     T0 + datetime.timedelta(hours=2), (True, "SpecChanged")),
], ids=["no-key", "up-to-date", "algorithm-changed", "rsa-size-changed", "rsa-default-size", "annotation-new",
        "annotation-answered", "annotation-removed", "period-not-due", "period-due", "spec-change-wins"])
def test_decide_key(spec, annotations, history, now, expected):
    decision = decide_key(_desired(spec, annotations), history, now)

    assert (decision.generate, decision.reason) == expected


def test_a_change_of_rotation_settings_alone_only_reschedules():
    history = _history()
    before = _desired({"algorithm": "ES256", "rotation": {"period": "2h"}})
    after = _desired({"algorithm": "ES256", "rotation": {"period": "1h", "retainPrevious": 3}})

    assert decide_key(after, history, T0).generate is False
    assert next_rotation_time(before, history.current) == T0 + datetime.timedelta(hours=2)
    assert next_rotation_time(after, history.current) == T0 + datetime.timedelta(hours=1)
