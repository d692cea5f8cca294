"""The handlers' per-key serialisation, with a stand-in reconciler (the real one is exercised in integration)."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf
import pytest

from servicekey_operator import handlers
from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.kubeapi import ConfigMapRaced
from servicekey_operator.peering import PeeringGate
from servicekey_operator.reconcile import KeyAction, KeyDecision, Outcome
from servicekey_operator.spec import rotate_request_digest
from servicekey_operator.status import ready_condition, ready_status
from servicekey_operator.vault.records import KeyHistory, StoredKey

CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
LOGGER = logging.getLogger("test")


@pytest.fixture(autouse=True)
def no_event_posting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events are posted through kopf's context, which a bare run_pass lacks; tests that count them patch again."""
    monkeypatch.setattr(handlers, "_post", lambda *_: None)


class PassStarted(Exception):
    """Raised by the stand-in reconciler: these tests are about whether a pass starts at all (to the handlers,
    an unexpected exception, which they report as InternalError)."""


class RecordingReconciler:
    """Records what ran, in order; finalize holds until released so a pass can queue behind it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release_finalize = asyncio.Event()

    async def reconcile(self, desired: Any, *_: Any, **__: Any) -> Outcome:
        self.calls.append(f"reconcile {desired.uid}")
        raise PassStarted

    async def finalize(self, desired: Any, owner: Any) -> list:
        self.calls.append(f"finalize {desired.uid}")
        await self.release_finalize.wait()
        return []


class NamespaceUids:
    """The one Kubernetes call a pass makes before the reconciler: the namespace's uid."""

    def namespace_uid(self, namespace: str, servicekey_uid: str) -> str:
        return f"uid-of-{namespace}"

    def forget_servicekey(self, uid: str) -> None:
        pass


class StatusRecorder(NamespaceUids):
    """Stands in for the Kubernetes gateway: records status patches."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)


def servicekey(uid: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "team", "name": "signer", "uid": uid}, "spec": {"algorithm": "ES256"}}


def state_with(reconciler: RecordingReconciler) -> handlers.OperatorState:
    return handlers.OperatorState(config=CONFIG, reconciler=reconciler, kube=StatusRecorder(),  # type: ignore[arg-type]
                                  keygen=None,  # type: ignore[arg-type]
                                  passes_in_flight=asyncio.Semaphore(handlers.CONCURRENT_PASSES),
                                  gate=PeeringGate(None, None, "test", 1), settings=kopf.OperatorSettings())


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
        await handlers.run_pass(state, servicekey("new"), LOGGER)
        return reconciler.calls

    assert asyncio.run(scenario()) == ["finalize old", "reconcile new"]


def test_a_pass_queued_before_a_key_without_finalizer_was_deleted_does_not_run():
    async def scenario() -> list[str]:
        reconciler = RecordingReconciler()
        state = state_with(reconciler)
        memo = type("Memo", (), {"state": state})()
        await handlers.servicekey_changed(event={"type": "DELETED"}, body=kopf.Body(servicekey("old")), memo=memo,
                                          logger=LOGGER)
        await handlers.run_pass(state, servicekey("old"), LOGGER)  # queued before the deletion
        await handlers.run_pass(state, servicekey("new"), LOGGER)  # the same name, created again
        return reconciler.calls

    assert asyncio.run(scenario()) == ["reconcile new"]


def test_a_scheduled_pass_waits_for_the_finalizer_a_changed_spec_now_needs():
    async def started(finalizers: list[str]) -> bool:
        state = state_with(RecordingReconciler())
        body = servicekey("u1")
        body["spec"]["deletionPolicy"] = "Delete"
        body["metadata"]["finalizers"] = finalizers
        state.bodies[("team", "signer")] = handlers.slim_body(body)
        task = handlers._start_scheduled_pass(state, ("team", "signer"))
        if task is not None:
            await task
        return task is not None

    assert asyncio.run(started([])) is False, "a pass could write to Vault before kopf guards the deletion"
    assert asyncio.run(started([handlers.FINALIZER])) is True


def test_a_new_recheck_value_runs_a_pass_at_once_and_the_same_value_again_does_not():
    async def scheduled(annotations: list[dict[str, str]]) -> int:
        state = state_with(RecordingReconciler())
        state.start_scheduler = lambda: None  # type: ignore[method-assign]
        passes: list[Any] = []
        state.scheduler.schedule = lambda key, at: passes.append(key)  # type: ignore[method-assign]
        memo = type("Memo", (), {"state": state})()
        for event_type, values in zip(["ADDED", *["MODIFIED"] * (len(annotations) - 1)], annotations, strict=True):
            body = servicekey("u1") | {"metadata": {**servicekey("u1")["metadata"], "annotations": values}}
            await handlers.servicekey_changed(event={"type": event_type}, body=kopf.Body(body), memo=memo,
                                              logger=LOGGER)
        return len(passes)

    recheck = "servicekey.io/recheck"
    assert asyncio.run(scheduled([{}, {recheck: "1"}, {recheck: "1"}, {recheck: "2"}])) == 3
    assert asyncio.run(scheduled([{}, {"unrelated": "x"}])) == 1, "other annotations run nothing"


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


class FlakyReconciler:
    """Fails its first pass the way a lost ConfigMap race does, then succeeds with ``history``."""

    def __init__(self, history: KeyHistory) -> None:
        self.history = history
        self.passes = 0

    async def reconcile(self, *_: Any, **__: Any) -> Outcome:
        self.passes += 1
        if self.passes == 1:
            raise ConfigMapRaced("updating ConfigMap team/signer-public: changed concurrently, will retry")
        return Outcome(self.history, KeyDecision(KeyAction.KEEP, "UpToDate"), configmap_version="7")


def test_an_unexpected_exception_ends_the_pass_with_a_status_an_event_and_the_keys_backoff(monkeypatch):
    # Issue #15.8: such a pass used to leave only a log line, no status, and a silent retry 5 minutes later.
    events: list[Any] = []
    monkeypatch.setattr(handlers, "_post", lambda body, posted: events.extend(posted))

    async def scenario() -> tuple[handlers.OperatorState, StatusRecorder]:
        state = state_with(RecordingReconciler())
        await handlers.run_pass(state, servicekey("uid-1"), LOGGER)
        return state, state.kube  # type: ignore[return-value]

    state, recorder = asyncio.run(scenario())

    [patch] = recorder.patches
    assert (ready_condition(patch)["status"], ready_condition(patch)["reason"]) == ("False", "InternalError")
    assert "PassStarted" in ready_condition(patch)["message"]
    assert [(event.type, event.reason) for event in events] == [("Warning", "InternalError")]
    assert state.consecutive_failures[("team", "signer")] == 1  # the key's own backoff, not the 5-minute retry


def test_a_success_after_a_failure_writes_status_even_when_the_body_has_not_caught_up(monkeypatch):
    # Two operators raced: the other one's success is what our body shows, and our failure patch (written
    # after it) is not in the body yet when our retry succeeds. Comparing with the body alone skips the
    # retry's patch and leaves Ready=False until the next resync.
    current = StoredKey(version=2, kid="kid-2", algorithm="ES256", key_size=None, public_pem="", service_name="signer",
                        created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), rotate_annotation=None,
                        rotation_reason="Requested")
    history = KeyHistory(owner="team/signer", current_version=2, current=current)
    body = servicekey("uid-1")
    body["metadata"]["generation"] = 1
    desired = handlers._desired(state_with(RecordingReconciler()), body)
    body["status"] = ready_status(desired, history, None, 1, {}, datetime.datetime.now(datetime.UTC), "7")
    monkeypatch.setattr(handlers, "_post", lambda *_: None)

    async def scenario() -> list[str]:
        state = state_with(FlakyReconciler(history))  # type: ignore[arg-type]
        recorder = StatusRecorder()
        state.kube = recorder  # type: ignore[assignment]
        await handlers.run_pass(state, body, LOGGER)
        await handlers.run_pass(state, body, LOGGER)
        return [ready_condition(patch)["status"] for patch in recorder.patches]

    assert asyncio.run(scenario()) == ["False", "True"]


def test_the_slim_body_keeps_what_a_pass_needs_and_drops_the_rest():
    body = {"apiVersion": "servicekey.io/v1alpha1", "kind": "ServiceKey",
            "metadata": {"namespace": "team", "name": "signer", "uid": "u1", "generation": 3, "resourceVersion": "9",
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {"servicekey.io/rotate": "r" * 200_000,
                                         "servicekey.io/adopt-namespace-uid": "old-uid",
                                         "servicekey.io/recheck": "after-restore",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                         "managedFields": [{"manager": "kubectl"}], "finalizers": ["servicekey.io/finalizer"]},
            "spec": {"algorithm": "ES256"}, "status": {"keyId": "k1"}}

    slim = handlers.slim_body(body)

    digest = rotate_request_digest("r" * 200_000)
    assert slim == {"apiVersion": "servicekey.io/v1alpha1", "kind": "ServiceKey",
                    "metadata": {"namespace": "team", "name": "signer", "uid": "u1", "generation": 3,
                                 "finalizers": ["servicekey.io/finalizer"],
                                 "annotations": {"servicekey.io/rotate": digest,
                                                 "servicekey.io/recheck": rotate_request_digest("after-restore"),
                                                 "servicekey.io/adopt-namespace-uid": "old-uid"}},
                    "spec": {"algorithm": "ES256"}, "status": {"keyId": "k1"}}
    desired = handlers._desired(state_with(RecordingReconciler()), slim)
    full = handlers._desired(state_with(RecordingReconciler()), body)
    assert (desired.rotate_request, desired.algorithm, desired.uid, desired.adopt_namespace_uid) == \
        (digest, "ES256", "u1", "old-uid") == (full.rotate_request, full.algorithm, full.uid, full.adopt_namespace_uid)
    # What the pass records in status.observedRecheckRequest, and what a restarted operator compares it with.
    assert desired.recheck_request == full.recheck_request == rotate_request_digest("after-restore")


@pytest.mark.parametrize(("spec", "status", "cleaned_up"), [
    # Admitted before the CRD refused such a change: the key's record is where the last good pass reported it.
    ({"vault": {"path": "servicekeys/elsewhere/key"}, "deletionPolicy": "Delete"},
     {"vaultPath": "secret/servicekeys/team/signer"}, ("secret", "servicekeys/team/signer", "Delete")),
    ({"vault": {"mount": "sys"}}, {"vaultPath": "kv2/servicekeys/team/custom"}, ("kv2", "servicekeys/team/custom",
                                                                                "Retain")),
    # A Transit key's record is at its path; an invalid path leaves only the default one.
    ({"vault": {"engine": "transit", "path": "../escape"}}, {}, ("secret", "servicekeys/team/signer", "Retain")),
    # Never reported (no pass succeeded): the default location.
    ({"rotation": {"period": "1s"}, "deletionPolicy": "Delete"}, {}, ("secret", "servicekeys/team/signer", "Delete")),
], ids=["path-left-its-folder", "own-vault-mount", "transit-invalid-path", "never-ready"])
def test_the_finalizer_cleans_up_where_the_key_lives_when_the_spec_has_become_invalid(spec, status, cleaned_up):
    body = {**servicekey("uid-1"), "spec": spec, "status": status}

    desired = handlers._desired_for_cleanup(state_with(RecordingReconciler()), body)

    assert (desired.record_mount, desired.vault_path, desired.deletion_policy) == cleaned_up
