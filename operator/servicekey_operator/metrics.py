"""Prometheus metrics, named after cert-manager's (``certmanager_certificate_ready_status`` ...).

The per-key gauges mirror each ServiceKey's status as the watch delivers it, and only the active replica
exports them: kopf delivers events only to the active replica, so a standby's copy would be a frozen picture
of the time it was last active (and alerts on it would keep firing after a fail-over).
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

ROTATIONS = Counter("servicekey_rotations_total", "Keys written to Vault, by trigger.",
                    ["reason", "algorithm", "engine"])
RECONCILE_ERRORS = Counter("servicekey_reconcile_errors_total", "Failed reconcile passes, by condition reason.",
                           ["reason"])
RECONCILE_DURATION = Histogram("servicekey_reconcile_duration_seconds", "Duration of one reconcile pass.")
KUBERNETES_REQUEST_DURATION = Histogram("servicekey_kubernetes_request_duration_seconds",
                                        "Duration of the reconciler's Kubernetes API requests, by operation.",
                                        ["operation"])
VAULT_REQUEST_DURATION = Histogram("servicekey_vault_request_duration_seconds",
                                   "Duration of Vault requests, by operation.", ["operation"])
OPERATOR_ACTIVE = Gauge("servicekey_operator_active",
                        "1 while this replica is the active one (kopf peering), 0 on standby or while in doubt.")
BUILD_INFO = Gauge("servicekey_build_info", "Always 1; the labels say what runs.", ["version", "python_version"])

_CONDITIONS = ("True", "False", "Unknown")

ObjectKey = tuple[str, str]


@dataclass(frozen=True)
class KeySeries:
    """What the per-key gauges show of one ServiceKey, read from its status and spec.

    ``ready`` is the Ready condition's status ("True", "False", or "Unknown" before the first pass); times
    are Unix seconds, None when the status has none; ``period_seconds`` is None without a rotation period.
    """

    ready: str
    algorithm: str
    engine: str
    created_at: float | None
    next_rotation: float | None
    period_seconds: float | None


class KeyGauges(Collector):
    """The per-key gauges, built at each scrape from the latest :class:`KeySeries` of every key.

    Rebuilt rather than kept as labelled gauges: a ServiceKey whose algorithm or engine changes simply shows
    its new labels, and nothing is left behind to remove.
    """

    def __init__(self) -> None:
        self._keys: dict[ObjectKey, KeySeries] = {}
        self.active = False

    def observe(self, key: ObjectKey, series: KeySeries) -> None:
        self._keys[key] = series

    def forget(self, key: ObjectKey) -> None:
        self._keys.pop(key, None)

    def clear(self) -> None:
        self._keys = {}

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return self._families({})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # The scrape runs in the HTTP server's thread: iterate a copy (dict.copy holds the GIL throughout).
        return self._families(self._keys.copy() if self.active else {})

    @staticmethod
    def _families(keys: dict[ObjectKey, KeySeries]) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily("servicekey_ready_status", "Ready condition of each ServiceKey (1 for the "
                                  "current status).", labels=["namespace", "name", "condition", "algorithm", "engine"])
        created = GaugeMetricFamily("servicekey_key_created_timestamp_seconds",
                                    "When the current key of each ServiceKey was generated (Unix time).",
                                    labels=["namespace", "name"])
        due = GaugeMetricFamily("servicekey_next_rotation_timestamp_seconds",
                                "When each ServiceKey is next rotated by schedule (Unix time).",
                                labels=["namespace", "name"])
        period = GaugeMetricFamily("servicekey_rotation_period_seconds",
                                   "The rotation period of each ServiceKey that has one (spec.rotation.period).",
                                   labels=["namespace", "name"])
        for (namespace, name), series in keys.items():
            for condition in _CONDITIONS:
                ready.add_metric([namespace, name, condition, series.algorithm, series.engine],
                                 1.0 if condition == series.ready else 0.0)
            for family, value in ((created, series.created_at), (due, series.next_rotation),
                                  (period, series.period_seconds)):
                if value is not None:
                    family.add_metric([namespace, name], value)
        yield from (ready, created, due, period)


KEY_GAUGES = KeyGauges()
REGISTRY.register(KEY_GAUGES)


def serve(port: int, version: str) -> None:
    """Expose /metrics on ``port`` (0 turns the endpoint off, as in unit tests), with the build info."""
    BUILD_INFO.labels(version, platform.python_version()).set(1)
    if port:
        start_http_server(port)


def set_active(active: bool, *, outranked: bool = False) -> None:
    """This replica's standing in the peering: per-key gauges are exported only while active.

    ``outranked`` (a live peer of higher priority was seen, so kopf paused this replica) also drops them: kopf
    lists every ServiceKey again when it resumes, which brings them back current. A mere doubt (the peering
    object unreadable) keeps them, hidden: kopf may never have paused, and would list nothing again.
    """
    OPERATOR_ACTIVE.set(1.0 if active else 0.0)
    KEY_GAUGES.active = active
    if outranked:
        KEY_GAUGES.clear()


@contextlib.contextmanager
def reconcile_timer() -> Iterator[None]:
    """Time one reconcile pass."""
    with RECONCILE_DURATION.time():
        yield


def record_rotation(reason: str, algorithm: str, engine: str) -> None:
    """A pass wrote a new key (or Transit version) for ``reason``."""
    ROTATIONS.labels(reason, algorithm, engine).inc()


def record_failure(reason: str) -> None:
    """A pass failed with ``reason``."""
    RECONCILE_ERRORS.labels(reason).inc()
