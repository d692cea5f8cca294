"""The per-key gauges: built from each key's latest status, exported only while this replica is active."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from servicekey_operator.metrics import KeyGauges, KeySeries

ROTATING = KeySeries(ready="True", algorithm="ES256", engine="kv", created_at=1_700_000_000.0,
                     next_rotation=1_700_086_400.0, period_seconds=86_400.0)
UNSCHEDULED = KeySeries(ready="Unknown", algorithm="RS256", engine="transit", created_at=None, next_rotation=None,
                        period_seconds=None)


def scrape(gauges: KeyGauges) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    registry.register(gauges)
    text = generate_latest(registry).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_an_active_replica_exports_each_key_as_its_status_shows_it():
    gauges = KeyGauges()
    gauges.active = True
    gauges.observe(("team-a", "signer"), ROTATING)
    gauges.observe(("team-b", "fresh"), UNSCHEDULED)

    samples = scrape(gauges)

    signer = {("namespace", "team-a"), ("name", "signer")}
    labels = signer | {("algorithm", "ES256"), ("engine", "kv")}
    assert samples[("servicekey_ready_status", frozenset(labels | {("condition", "True")}))] == 1.0
    assert samples[("servicekey_ready_status", frozenset(labels | {("condition", "False")}))] == 0.0
    assert samples[("servicekey_ready_status", frozenset(labels | {("condition", "Unknown")}))] == 0.0
    assert samples[("servicekey_key_created_timestamp_seconds", frozenset(signer))] == 1_700_000_000.0
    assert samples[("servicekey_next_rotation_timestamp_seconds", frozenset(signer))] == 1_700_086_400.0
    assert samples[("servicekey_rotation_period_seconds", frozenset(signer))] == 86_400.0
    fresh = {("namespace", "team-b"), ("name", "fresh")}
    assert samples[("servicekey_ready_status", frozenset(
        fresh | {("algorithm", "RS256"), ("engine", "transit"), ("condition", "Unknown")}))] == 1.0
    assert not any(name != "servicekey_ready_status" and labels == frozenset(fresh) for name, labels in samples), \
        "a key without a key or a period has no timestamp or period series"


def test_a_changed_algorithm_replaces_the_series_and_a_forgotten_key_leaves_none():
    gauges = KeyGauges()
    gauges.active = True
    gauges.observe(("team-a", "signer"), ROTATING)
    gauges.observe(("team-a", "signer"), KeySeries(**{**ROTATING.__dict__, "algorithm": "EdDSA"}))
    assert {dict(labels)["algorithm"] for name, labels in scrape(gauges) if name == "servicekey_ready_status"} \
        == {"EdDSA"}

    gauges.forget(("team-a", "signer"))
    assert scrape(gauges) == {}


def test_a_standby_exports_no_key_and_a_paused_one_forgets_them():
    gauges = KeyGauges()
    gauges.observe(("team-a", "signer"), ROTATING)
    assert scrape(gauges) == {}, "not active yet"

    gauges.active = True
    assert scrape(gauges)
    gauges.active = False  # in doubt: hidden, kept for when the doubt clears
    assert scrape(gauges) == {}
    gauges.active = True
    assert scrape(gauges)

    gauges.clear()  # outranked: kopf lists every key again on resuming
    assert scrape(gauges) == {}
