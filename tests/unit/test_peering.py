"""kopf's pause rule as the scheduler reads it from the peering object's keep-alives."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable

from servicekey_operator import peering
from servicekey_operator.errors import KubernetesUnavailable
from servicekey_operator.peering import PeeringGate, outranked

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def keepalive(priority: int, seconds_ago: float, lifetime: int = 60, now: datetime.datetime = NOW) -> dict:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (now - datetime.timedelta(seconds=seconds_ago)).isoformat()}


def test_a_live_higher_or_equal_priority_outranks_us():
    assert outranked({"me": keepalive(5, 0), "other": keepalive(9, 10)}, "me", 5, NOW)
    assert outranked({"other": keepalive(5, 10)}, "me", 5, NOW)  # equal: kopf pauses everybody


def test_lower_dead_malformed_and_our_own_entries_do_not():
    keepalives = {
        "me": keepalive(99, 0),
        "lower": keepalive(3, 0),
        "dead": keepalive(9, 61),
        "cleaned": None,
        "garbled": {"priority": "high", "lifetime": 60, "lastseen": NOW.isoformat()},
    }
    assert not outranked(keepalives, "me", 5, NOW)
    assert not outranked({}, "me", 5, NOW)


def test_kopf_naive_timestamps_are_read_as_utc():
    naive = {"other": {"priority": 9, "lifetime": 60, "lastseen": NOW.replace(tzinfo=None).isoformat()}}
    assert outranked(naive, "me", 5, NOW)


def test_the_gate_is_open_standalone_and_shut_while_the_peering_cannot_be_read():
    def unreadable(name: str) -> list:
        raise KubernetesUnavailable("reading the kopf peering: API server unreachable")

    def only_us(name: str) -> list:
        return [{"me": keepalive(5, 0)}]

    async def verdicts() -> tuple[bool, bool, bool]:
        return (await PeeringGate(None, None, "me", 5).active(),
                await PeeringGate(unreadable, "servicekey-operator", "me", 5).active(),
                await PeeringGate(only_us, "servicekey-operator", "me", 5).active())

    assert asyncio.run(verdicts()) == (True, False, True)


def test_a_watch_event_opens_the_gate_before_the_next_reading():
    def outranked_by_someone(name: str) -> list:
        return [{"other": keepalive(9, 0, now=datetime.datetime.now(datetime.UTC))}]

    async def verdicts() -> tuple[bool, bool]:
        gate = PeeringGate(outranked_by_someone, "servicekey-operator", "me", 5)
        before = await gate.active()
        gate.vouch()
        return before, await gate.active()

    assert asyncio.run(verdicts()) == (False, True)


def test_the_gate_reports_each_change_of_standing_once_and_tells_a_pause_from_a_doubt(monkeypatch):
    monkeypatch.setattr(peering, "PEERING_READING_SECONDS", 0.0)
    readings: list[Callable[[], list]] = []

    def read(name: str) -> list:
        return readings.pop(0)()

    def unreadable() -> list:
        raise KubernetesUnavailable("reading the kopf peering: API server unreachable")

    now = datetime.datetime.now(datetime.UTC)
    alone, beaten = (lambda: [{"me": keepalive(5, 0, now=now)}]), (lambda: [{"other": keepalive(9, 0, now=now)}])
    changes: list[tuple[bool, bool]] = []

    async def run() -> None:
        gate = PeeringGate(read, "servicekey-operator", "me", 5, on_change=lambda *change: changes.append(change))
        for reading in (alone, alone, unreadable, beaten, beaten, alone):
            readings.append(reading)
            await gate.active()
        gate.vouch()

    asyncio.run(run())
    assert changes == [(True, False), (False, False), (False, True), (True, False)]


def test_a_standalone_gate_declares_itself_active_once():
    changes: list[tuple[bool, bool]] = []
    asyncio.run(PeeringGate(None, None, "me", 5, on_change=lambda *change: changes.append(change)).watch())
    assert changes == [(True, False)]
