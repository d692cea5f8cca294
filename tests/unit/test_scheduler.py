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

    assert scheduler.take_due(at(5)) is None
    assert [scheduler.take_due(at(25)), scheduler.take_due(at(25))] == ["early", "middle"]
    assert scheduler.take_due(at(25)) is None
    assert scheduler.seconds_to_next(at(25)) == 5.0
    assert [scheduler.take_due(at(30)), scheduler.take_due(at(30))] == ["late", None]


def test_scheduling_again_replaces_the_earlier_plan_and_forget_drops_it():
    scheduler: PassScheduler[str] = PassScheduler()
    scheduler.schedule("moved", at(10))
    scheduler.schedule("moved", at(40))
    scheduler.schedule("gone", at(15))
    scheduler.forget("gone")

    assert scheduler.take_due(at(20)) is None
    assert scheduler.seconds_to_next(at(20)) == 20.0
    assert scheduler.take_due(at(39.9)) is None
    assert scheduler.take_due(at(40)) == "moved"
    assert scheduler.seconds_to_next(at(40)) is None


def test_many_replans_keep_the_heap_small():
    scheduler: PassScheduler[int] = PassScheduler()
    for round_ in range(50):
        for key in range(100):
            scheduler.schedule(key, at(round_ * 100 + key))
    assert len(scheduler._heap) <= 2 * 100 + 64
    assert [scheduler.take_due(at(10_000)) for _ in range(101)] == [*range(100), None]


def test_the_task_starts_due_passes_and_none_while_paused():
    async def scenario() -> tuple[list[str], list[str]]:
        started: list[str] = []
        active = asyncio.Event()

        async def is_active() -> bool:
            return active.is_set()

        def start(key: str) -> asyncio.Future[None]:
            started.append(key)
            return asyncio.ensure_future(asyncio.sleep(0))

        def now() -> datetime.datetime:
            return datetime.datetime.now(datetime.UTC)

        scheduler: PassScheduler[str] = PassScheduler()
        scheduler.schedule("due", now())
        runner = asyncio.create_task(scheduler.run(start, is_active, now, started_limit=4))
        await asyncio.sleep(0.1)
        while_paused = list(started)
        active.set()
        scheduler.schedule("soon", now() + datetime.timedelta(seconds=0.05))  # wakes the paused task
        await asyncio.sleep(0.5)
        runner.cancel()
        return while_paused, started

    while_paused, started = asyncio.run(scenario())
    assert while_paused == []
    assert sorted(started) == ["due", "soon"]


def test_no_more_than_the_limit_of_started_passes_is_unfinished_at_once():
    async def scenario() -> tuple[int, list[int]]:
        running: set[int] = set()
        most = 0
        release = asyncio.Event()

        async def a_pass(key: int) -> None:
            nonlocal most
            running.add(key)
            most = max(most, len(running))
            await release.wait()
            running.discard(key)

        async def always() -> bool:
            return True

        def now() -> datetime.datetime:
            return datetime.datetime.now(datetime.UTC)

        finished: list[int] = []
        scheduler: PassScheduler[int] = PassScheduler()
        for key in range(10):
            scheduler.schedule(key, now())

        def start(key: int) -> asyncio.Future[None]:
            task = asyncio.ensure_future(a_pass(key))
            task.add_done_callback(lambda _: finished.append(key))
            return task

        runner = asyncio.create_task(scheduler.run(start, always, now, started_limit=3))
        await asyncio.sleep(0.1)
        waiting_at_the_limit = len(running)
        release.set()
        await asyncio.sleep(0.2)
        runner.cancel()
        return waiting_at_the_limit, sorted(finished) if most <= 3 else [-most]

    waiting_at_the_limit, finished = asyncio.run(scenario())
    assert waiting_at_the_limit == 3
    assert finished == list(range(10))


def test_due_keys_are_taken_round_robin_between_groups_in_due_order_within_each():
    scheduler: PassScheduler[tuple[str, str]] = PassScheduler(group=lambda key: key[0])
    for index in range(5):
        scheduler.schedule(("flood", f"rsa-{index}"), at(index))
    scheduler.schedule(("quiet", "es256"), at(4))
    scheduler.schedule(("other", "eddsa"), at(4.5))

    taken = [scheduler.take_due(at(10)) for _ in range(8)]

    assert taken[:4] == [("flood", "rsa-0"), ("quiet", "es256"), ("other", "eddsa"), ("flood", "rsa-1")]
    assert taken[4:] == [("flood", "rsa-2"), ("flood", "rsa-3"), ("flood", "rsa-4"), None]


def test_a_group_at_its_limit_waits_while_the_others_go_on():
    async def scenario() -> list[str]:
        started: list[str] = []
        release_flood = asyncio.Event()

        def start(key: tuple[str, str]) -> asyncio.Future[None]:
            started.append(f"{key[0]}/{key[1]}")
            return asyncio.ensure_future(release_flood.wait() if key[0] == "flood" else asyncio.sleep(0))

        async def is_active() -> bool:
            return True

        def now() -> datetime.datetime:
            return datetime.datetime.now(datetime.UTC)

        scheduler: PassScheduler[tuple[str, str]] = PassScheduler(group=lambda key: key[0], group_limit=2)
        for index in range(6):
            scheduler.schedule(("flood", str(index)), now())
        runner = asyncio.create_task(scheduler.run(start, is_active, now, started_limit=8))
        await asyncio.sleep(0.05)
        scheduler.schedule(("quiet", "late"), now())
        await asyncio.sleep(0.05)
        while_flood_runs = list(started)
        release_flood.set()
        await asyncio.sleep(0.2)
        runner.cancel()
        return [*while_flood_runs, "|", *started[len(while_flood_runs):]]

    timeline = asyncio.run(scenario())
    assert timeline[:4] == ["flood/0", "flood/1", "quiet/late", "|"]
    assert sorted(timeline[4:]) == ["flood/2", "flood/3", "flood/4", "flood/5"]
