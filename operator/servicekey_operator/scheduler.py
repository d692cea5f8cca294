"""When each ServiceKey's next pass is due, and the one task that starts the passes when they are.

One heap and one task for all keys instead of a kopf daemon per key: a daemon costs about 35 KiB (its task,
stopper, logger and kopf's copy of the whole object), which is most of the operator's memory at 10,000 keys.

Due passes are started fairly between groups (namespaces: tenants), round-robin, with at most
``group_limit`` of one group unfinished at once: a namespace that creates 2,000 RSA-4096 keys queues
behind itself, and another namespace's key is started at its next turn, within one pass of the flood's.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

# How often a paused replica looks again whether it has become the active one.
PAUSED_RECHECK_SECONDS = 2.0
Key = TypeVar("Key", bound=Hashable)


def _no_group(_: Hashable) -> None:
    return None


class PassScheduler(Generic[Key]):
    """Due times by key; ``run`` starts each key's pass once its time has come, fairly between groups.

    A key has at most one due time: scheduling it again replaces the earlier one (the heap and the ready
    queues keep the stale entry, which is skipped when it comes up). ``group`` names a key's group (default:
    one group for all); ``group_limit`` caps the unfinished passes of one group (default: none).
    """

    def __init__(self, group: Callable[[Key], Hashable] = _no_group, group_limit: int | None = None) -> None:
        self._due: dict[Key, datetime.datetime] = {}
        self._heap: list[tuple[datetime.datetime, int, Key]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self._group = group
        self._group_limit = group_limit
        # Due keys by group, each queue in due-time order, and the groups with due keys in round-robin order.
        self._ready: dict[Hashable, collections.deque[tuple[datetime.datetime, Key]]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()
        self._running: collections.Counter[Hashable] = collections.Counter()

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

    def _move_due(self, now: datetime.datetime) -> None:
        """Move the heap's due entries to their group's ready queue."""
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._due.get(key) != at:
                continue
            group = self._group(key)
            if group not in self._ready:
                self._ready[group] = collections.deque()
                self._turns.append(group)
            self._ready[group].append((at, key))

    def take_due(self, now: datetime.datetime) -> Key | None:
        """The next due key, unplanned (its pass plans the next one): the earliest of the group whose turn it
        is, skipping groups at their limit; None if no key is due or every due key's group is at its limit."""
        self._move_due(now)
        for _ in range(len(self._turns)):
            group = self._turns[0]
            self._turns.rotate(-1)
            if self._group_limit is not None and self._running[group] >= self._group_limit:
                continue
            queue = self._ready[group]
            while queue:
                at, key = queue.popleft()
                if self._due.get(key) == at:
                    del self._due[key]
                    if not queue:
                        self._drop_group(group)
                    return key
            self._drop_group(group)
        return None

    def _drop_group(self, group: Hashable) -> None:
        del self._ready[group]
        self._turns.remove(group)

    def seconds_to_next(self, now: datetime.datetime) -> float | None:
        """How long until the earliest planned pass (0 while due keys wait; None when nothing is planned)."""
        if self._ready:
            return 0.0
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

    def _finished(self, group: Hashable, slots: asyncio.Semaphore) -> None:
        self._running[group] -= 1
        if not self._running[group]:
            del self._running[group]
        slots.release()
        self._changed.set()  # a group at its limit may go on

    async def run(self, start_pass: Callable[[Key], asyncio.Future[None] | None],
                  active: Callable[[], Awaitable[bool]], now: Callable[[], datetime.datetime],
                  started_limit: int) -> None:
        """Forever: sleep until the earliest due time (or a new earlier one), then start the due passes
        fairly (see ``take_due``), at most ``started_limit`` unfinished at once, while ``active`` says this
        replica is the one that acts.

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
                if key is None:  # every due key's group is at its limit: wait for a pass to finish
                    self._changed.clear()
                    await self._wait_for_change(self._heap_wait(now()))
                continue
            group = self._group(key)
            self._running[group] += 1
            started.add_done_callback(lambda _, group=group: self._finished(group, slots))

    def _heap_wait(self, now: datetime.datetime) -> float | None:
        """How long until the heap's next entry is due (ignoring the ready queues)."""
        if not self._heap:
            return None
        return max(0.0, (self._heap[0][0] - now).total_seconds())
