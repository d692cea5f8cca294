"""The pass scheduler: one due time per key, the earliest first, nothing while the replica is paused."""

from __future__ import annotations

import asyncio
import datetime

from servicekey_operator.scheduler import PassScheduler

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def test_due_keys_come_out_in_time_order_and_only_once():
    scheduler: PassScheduler[str] = PassScheduler()
    scheduler.schedule("late", at(30))
    scheduler.schedule("early", at(10))
    scheduler.schedule("middle", at(20))

    assert scheduler.take_due(at(5)) == []
    assert scheduler.take_due(at(25)) == ["early", "middle"]
    assert scheduler.take_due(at(25)) == []
    assert "late" in scheduler and "early" not in scheduler
    assert scheduler.seconds_to_next(at(25)) == 5.0


def test_scheduling_again_replaces_the_earlier_plan_and_forget_drops_it():
    scheduler: PassScheduler[str] = PassScheduler()
    scheduler.schedule("moved", at(10))
    scheduler.schedule("moved", at(40))
    scheduler.schedule("gone", at(15))
    scheduler.forget("gone")

    assert scheduler.take_due(at(20)) == []
    assert scheduler.due_at("moved") == at(40)
    assert scheduler.seconds_to_next(at(20)) == 20.0
    assert scheduler.take_due(at(40)) == ["moved"]
    assert scheduler.seconds_to_next(at(40)) is None


def test_many_replans_keep_the_heap_small():
    scheduler: PassScheduler[int] = PassScheduler()
    for round_ in range(50):
        for key in range(100):
            scheduler.schedule(key, at(round_ * 100 + key))
    assert len(scheduler._heap) <= 2 * 100 + 64
    assert scheduler.take_due(at(10_000)) == list(range(100))


def test_the_task_starts_due_passes_and_none_while_paused():
    async def scenario() -> tuple[list[str], list[str]]:
        started: list[str] = []
        active = asyncio.Event()

        async def is_active() -> bool:
            return active.is_set()

        def now() -> datetime.datetime:
            return datetime.datetime.now(datetime.UTC)

        scheduler: PassScheduler[str] = PassScheduler()
        scheduler.schedule("due", now())
        runner = asyncio.create_task(scheduler.run(started.append, is_active, now))
        await asyncio.sleep(0.1)
        while_paused = list(started)
        active.set()
        scheduler.schedule("soon", now() + datetime.timedelta(seconds=0.05))
        await asyncio.sleep(2.5)  # the paused task looks again every PAUSED_RECHECK_SECONDS
        runner.cancel()
        return while_paused, started

    while_paused, started = asyncio.run(scenario())
    assert while_paused == []
    assert sorted(started) == ["due", "soon"]
