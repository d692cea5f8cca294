"""Whether this replica is the active one, judged from kopf's peering object the way kopf judges it.

kopf pauses a replica (closes its watches, stops its daemons) while a live peer has a higher or the same
priority, but it tells no handler. The pass scheduler is one task of ours, not a kopf daemon per key, so
before it runs the passes that were scheduled while this replica was active it asks here.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from servicekey_operator.errors import ServiceKeyError
from servicekey_operator.vault.records import parse_time

# How long one reading of the peering object is trusted. kopf reacts to the peering watch at once; the
# scheduler may lag by this much, and a pass run meanwhile is safe anyway (every Vault write is
# check-and-set, see docs/ha.md).
PEERING_READING_SECONDS = 5.0


def own_identity() -> str:
    """This replica's name in the peering object: ``$POD_ID`` (the chart sets the pod name) or, like kopf's
    own default, user@host with the start time and a random part."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{started}/{random.getrandbits(32):08x}"


def outranked(keepalives: Mapping[str, Any], identity: str, priority: int, now: datetime.datetime) -> bool:
    """kopf's rule: paused while another live peer has a priority at least ours (equal ones pause all).

    ``keepalives`` is the peering object's status: identity -> {priority, lifetime, lastseen}.
    """
    if not isinstance(keepalives, Mapping):
        return False  # a status anybody with access could have written; kopf would not parse it either
    for peer, keepalive in keepalives.items():
        if peer == identity or not isinstance(keepalive, Mapping):
            continue
        try:
            deadline = parse_time(str(keepalive["lastseen"])) + datetime.timedelta(
                seconds=float(keepalive["lifetime"]))
            live_priority = int(keepalive["priority"])
        except (KeyError, TypeError, ValueError):
            continue  # kopf would not parse it either, and skips it
        if deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=datetime.UTC)
        if deadline > now and live_priority >= priority:
            return True
    return False


# Called with (active, outranked) whenever the gate's view changes; ``outranked`` means a live peer of
# higher priority was seen, rather than the peering object being unreadable.
OnChange = Callable[[bool, bool], None]


class PeeringGate:
    """Answers "is this replica active?" from the peering objects, read at most every few seconds.

    Without a peering name the operator runs standalone and is always active.
    """

    def __init__(self, read_keepalives: Callable[[str], Iterable[Mapping[str, Any]]] | None, name: str | None,
                 identity: str, priority: int, on_change: OnChange | None = None) -> None:
        self._read = read_keepalives
        self.name = name
        self.identity = identity
        self.priority = priority
        self._on_change = on_change
        self._verdict = False
        self._outranked = False
        self._read_at: float | None = None
        self._reading = asyncio.Lock()

    def vouch(self) -> None:
        """kopf has just delivered a watch event, which it does only while this replica is active: open the
        gate now rather than at the next reading (a standby taking over acts at once)."""
        self._judge(True, False)
        self._read_at = time.monotonic()

    def _judge(self, verdict: bool, outranked: bool) -> None:
        changed = (verdict, outranked) != (self._verdict, self._outranked)
        self._verdict, self._outranked = verdict, outranked
        if changed and self._on_change is not None:
            self._on_change(verdict, outranked)

    async def watch(self) -> None:
        """Forever: keep the verdict current, so that ``on_change`` hears of a pause even while nothing asks
        (one read of the peering objects every PEERING_READING_SECONDS; standalone, one verdict and done)."""
        if self.name is None or self._read is None:
            self._judge(True, False)
            return
        while True:
            await self.active()
            await asyncio.sleep(PEERING_READING_SECONDS)

    async def active(self) -> bool:
        """True while no live peer outranks this replica; False while in doubt (the object unreadable)."""
        if self.name is None or self._read is None:
            return True
        async with self._reading:
            if self._read_at is None or time.monotonic() - self._read_at > PEERING_READING_SECONDS:
                try:
                    objects = await asyncio.to_thread(self._read, self.name)
                    now = datetime.datetime.now(datetime.UTC)
                    beaten = any(outranked(keepalives, self.identity, self.priority, now) for keepalives in objects)
                    self._judge(not beaten, beaten)
                except ServiceKeyError:
                    self._judge(False, False)
                self._read_at = time.monotonic()
        return self._verdict
