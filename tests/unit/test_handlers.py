"""The handlers' per-key serialisation, with a stand-in reconciler (the real one is exercised in integration)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from servicekey_operator import handlers
from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.reconcile import Outcome

CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
LOGGER = logging.getLogger("test")


class PassStarted(Exception):
    """Raised by the stand-in reconciler: this test is about whether a pass starts at all."""


class RecordingReconciler:
    """Records what ran, in order; finalize holds until released so a pass can queue behind it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release_finalize = asyncio.Event()

    async def reconcile(self, desired: Any, *_: Any, **__: Any) -> Outcome:
        self.calls.append(f"reconcile {desired.uid}")
        raise PassStarted

    async def finalize(self, desired: Any) -> list:
        self.calls.append(f"finalize {desired.uid}")
        await self.release_finalize.wait()
        return []


def servicekey(uid: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "team", "name": "signer", "uid": uid}, "spec": {"algorithm": "ES256"}}


def state_with(reconciler: RecordingReconciler) -> handlers.OperatorState:
    return handlers.OperatorState(config=CONFIG, reconciler=reconciler, kube=None, keygen=None,  # type: ignore[arg-type]
                                  passes_in_flight=asyncio.Semaphore(handlers.CONCURRENT_PASSES))


def test_a_pass_queued_behind_the_finalizer_does_not_publish_again():
    async def scenario() -> list[str]:
        reconciler = RecordingReconciler()
        state = state_with(reconciler)
        memo = type("Memo", (), {"state": state})()
        finalizer = asyncio.create_task(handlers.finalize_servicekey(body=servicekey("old"), memo=memo,
                                                                     logger=LOGGER, retry=0))
        await asyncio.sleep(0.01)
        stale_pass = asyncio.create_task(handlers.run_pass(state, servicekey("old"), LOGGER))
        await asyncio.sleep(0.01)
        reconciler.release_finalize.set()
        await asyncio.gather(finalizer, stale_pass)
        return reconciler.calls

    assert asyncio.run(scenario()) == ["finalize old"]


def test_a_servicekey_recreated_under_the_same_name_is_reconciled():
    async def scenario() -> list[str]:
        reconciler = RecordingReconciler()
        reconciler.release_finalize.set()
        state = state_with(reconciler)
        memo = type("Memo", (), {"state": state})()
        await handlers.finalize_servicekey(body=servicekey("old"), memo=memo, logger=LOGGER, retry=0)
        with pytest.raises(PassStarted):
            await handlers.run_pass(state, servicekey("new"), LOGGER)
        return reconciler.calls

    assert asyncio.run(scenario()) == ["finalize old", "reconcile new"]


def test_a_pass_waiting_for_rsa_lends_its_slot_and_takes_it_back():
    async def scenario() -> list[str]:
        seen: list[str] = []
        rsa_started, rsa_release = asyncio.Event(), asyncio.Event()

        async def slow_keygen(algorithm: str, key_size: int | None) -> Any:
            if algorithm.startswith("RS"):
                rsa_started.set()
                await rsa_release.wait()
            return algorithm

        slots = asyncio.Semaphore(1)
        generate = handlers._rsa_outside_the_pass_limit(slow_keygen, slots)  # type: ignore[arg-type]

        async def rsa_pass() -> None:
            async with slots:
                await generate("RS256", 4096)
                seen.append(f"rsa done, slot held again: {slots.locked()}")

        async def ec_pass() -> None:
            await rsa_started.wait()
            async with slots:
                seen.append(await generate("ES256", None))
            rsa_release.set()

        await asyncio.wait_for(asyncio.gather(rsa_pass(), ec_pass()), timeout=5)  # a held slot deadlocks
        return seen

    assert asyncio.run(scenario()) == ["ES256", "rsa done, slot held again: True"]
