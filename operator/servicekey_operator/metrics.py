"""Prometheus metrics, named after cert-manager's (``certmanager_certificate_ready_status`` ...)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from servicekey_operator.reconcile import Outcome

READY_STATUS = Gauge("servicekey_ready_status", "Ready condition of each ServiceKey (1 for the current status).",
                     ["namespace", "name", "condition"])
KEY_CREATED = Gauge("servicekey_key_created_timestamp_seconds",
                    "When the current key of each ServiceKey was generated (Unix time).", ["namespace", "name"])
NEXT_ROTATION = Gauge("servicekey_next_rotation_timestamp_seconds",
                      "When each ServiceKey is next rotated by schedule (Unix time).", ["namespace", "name"])
ROTATIONS = Counter("servicekey_rotations_total", "Keys written to Vault, by trigger.", ["reason"])
RECONCILE_ERRORS = Counter("servicekey_reconcile_errors_total", "Failed reconcile passes, by condition reason.",
                           ["reason"])
RECONCILE_DURATION = Histogram("servicekey_reconcile_duration_seconds", "Duration of one reconcile pass.")
KUBERNETES_REQUEST_DURATION = Histogram("servicekey_kubernetes_request_duration_seconds",
                                        "Duration of the reconciler's Kubernetes API requests, by operation.",
                                        ["operation"])
VAULT_REQUEST_DURATION = Histogram("servicekey_vault_request_duration_seconds",
                                   "Duration of Vault requests, by operation.", ["operation"])

_CONDITIONS = ("True", "False")


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 turns the endpoint off, as in unit tests)."""
    if port:
        start_http_server(port)


@contextlib.contextmanager
def reconcile_timer() -> Iterator[None]:
    """Time one reconcile pass."""
    with RECONCILE_DURATION.time():
        yield


def _set_ready(key: tuple[str, str], status: str) -> None:
    for condition in _CONDITIONS:
        READY_STATUS.labels(*key, condition).set(1.0 if condition == status else 0.0)


def record_ready(key: tuple[str, str], outcome: Outcome, next_rotation: datetime.datetime | None) -> None:
    """A pass succeeded: the key is Ready, maybe freshly written."""
    record_settled(key, outcome.current.created_at, next_rotation)
    if outcome.decision.generate:
        ROTATIONS.labels(outcome.decision.reason).inc()


def record_settled(key: tuple[str, str], created_at: datetime.datetime,
                   next_rotation: datetime.datetime | None) -> None:
    """The key is Ready with a key from ``created_at`` (after a pass, or taken from the status on resume)."""
    _set_ready(key, "True")
    KEY_CREATED.labels(*key).set(created_at.timestamp())
    if next_rotation:
        NEXT_ROTATION.labels(*key).set(next_rotation.timestamp())


def record_failure(key: tuple[str, str], reason: str) -> None:
    """A pass failed with ``reason``."""
    _set_ready(key, "False")
    RECONCILE_ERRORS.labels(reason).inc()


def forget(key: tuple[str, str]) -> None:
    """Drop the per-key series of a deleted ServiceKey."""
    for condition in _CONDITIONS:
        with contextlib.suppress(KeyError):
            READY_STATUS.remove(*key, condition)
    for gauge in (KEY_CREATED, NEXT_ROTATION):
        with contextlib.suppress(KeyError):
            gauge.remove(*key)
