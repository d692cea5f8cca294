"""When each ServiceKey's next pass is due, and the one task that starts the passes when they are.

One heap and one task for all keys instead of a kopf daemon per key: a daemon costs about 35 KiB (its task,
stopper, logger and kopf's copy of the whole object), which is most of the operator's memory at 10,000 keys.
"""

from __future__ import annotations

import asyncio
import datetime
import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

# How often a paused replica looks again whether it has become the active one.
PAUSED_RECHECK_SECONDS = 2.0
Key = TypeVar("Key", bound=Hashable)


class PassScheduler(Generic[Key]):
    """Due times by key; ``run`` starts each key's pass once its time has come.

    A key has at most one due time: scheduling it again replaces the earlier one (the heap keeps the stale
    entry, which is skipped when it comes up).
    """

    def __init__(self) -> None:
        self._due: dict[Key, datetime.datetime] = {}
        self._heap: list[tuple[datetime.datetime, int, Key]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def schedule(self, key: Key, at: datetime.datetime) -> None:
        """Run the key's next pass at ``at`` (replacing any earlier plan)."""
        self._due[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))
        self._changed.set()  # maybe earlier than what the task sleeps for, or a paused replica resuming
        if len(self._heap) > 2 * len(self._due) + 64:
            self._compact()

    def forget(self, key: Key) -> None:
        """Plan nothing more for the key (it is gone)."""
        self._due.pop(key, None)

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._due.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)

    def take_due(self, now: datetime.datetime) -> Key | None:
        """The key whose time came first, unplanned (its pass plans the next one); None if none is due."""
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == at:
                del self._due[key]
                return key
        return None

    def seconds_to_next(self, now: datetime.datetime) -> float | None:
        """How long until the earliest planned pass (None when nothing is planned)."""
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(0.0, (self._heap[0][0] - now).total_seconds())

    async def _wait_for_change(self, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass

    async def run(self, start_pass: Callable[[Key], asyncio.Future[None] | None],
                  active: Callable[[], Awaitable[bool]], now: Callable[[], datetime.datetime],
                  started_limit: int) -> None:
        """Forever: sleep until the earliest due time (or a new earlier one), then start the due passes
        in time order, at most ``started_limit`` unfinished at once, while ``active`` says this replica
        is the one that acts.

        The limit keeps a burst of 10,000 new keys waiting here, as heap entries, rather than as 10,000
        started passes queued for the same few slots.
        """
        slots = asyncio.Semaphore(started_limit)
        while True:
            self._changed.clear()
            wait = self.seconds_to_next(now())
            if wait is None or wait > 0:
                await self._wait_for_change(wait)
                continue
            if not await active():
                await self._wait_for_change(PAUSED_RECHECK_SECONDS)
                continue
            await slots.acquire()
            key = self.take_due(now())
            started = start_pass(key) if key is not None else None
            if started is None:
                slots.release()
            else:
                started.add_done_callback(lambda _: slots.release())
