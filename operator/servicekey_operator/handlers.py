"""kopf wiring only: parse the object, call the reconciler, write status, post events, map errors.

Every path that works on a ServiceKey (its watch events, the pass scheduler, ConfigMap drift events)
funnels into ``run_pass``, serialised per key by a lock. The scheduler is one task for all keys, not a kopf
daemon per key (see ``scheduler``); it keeps a slim copy of each key's object to run its passes with.

The passes are level-based: each compares the spec with what Vault holds, and the rotate annotation with
the value recorded in the current key version. So kopf keeps no diff-base on the object (no
``last-handled-configuration`` PATCH per change); the watch handler runs a pass when a key's generation or
rotate request is new to this process. In a restarted operator's first listing, a key whose status proves
that nothing changed since its last pass gets that pass later, spread over the resync period (``resume``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import random
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from servicekey_operator import metrics, publish, rollback, status_view
from servicekey_operator.config import OperatorConfig
from servicekey_operator.errors import ConfigMapConflict, InternalError, InvalidSpec, ServiceKeyError
from servicekey_operator.keygen import KeyGenerator
from servicekey_operator.keys import KeyPair, is_rsa
from servicekey_operator.kubeapi import LIST_PAGE_SIZE, KubeGateway, api_client
from servicekey_operator.peering import PeeringGate
from servicekey_operator.reconcile import Event, Keygen, Outcome, Reconciler, next_pass_time, next_rotation_time
from servicekey_operator.resume import first_pass_time
from servicekey_operator.scheduler import PassScheduler
from servicekey_operator.spec import (
    FINALIZER,
    RECHECK_ANNOTATION,
    ROTATE_ANNOTATION,
    DesiredKey,
    deletion_does_work,
    desired_key,
    rotate_request_digest,
)
from servicekey_operator.status import differs, failed_status, ready_condition, ready_status
from servicekey_operator.vault.connection import VaultConnection
from servicekey_operator.vault.kv import KvKeyStore
from servicekey_operator.vault.ownership import ADOPT_NAMESPACE_UID_ANNOTATION, Owner
from servicekey_operator.vault.transit import TransitKeys
from servicekey_operator.version import package_version

GROUP, VERSION, PLURAL = publish.API_GROUP, publish.API_VERSION, "servicekeys"
CRD_NAME = f"{PLURAL}.{GROUP}"
# How often the ServiceKeys of a terminating CRD are listed, to finalize those that are being deleted.
CRD_CLEANUP_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0
CONFLICT_RECHECK_SECONDS = 60.0
KOPF_STORAGE_PREFIX = "kopf.servicekey.io"
IO_THREADS = 32
CONCURRENT_PASSES = 16
# Passes the scheduler has started and not finished: more than run at once, so RSA passes waiting for
# keygen (which lend their slot, see ``_rsa_outside_the_pass_limit``) leave room for the others.
STARTED_PASSES = 4 * CONCURRENT_PASSES
# Started passes of one namespace at once: a quarter of them, so three other tenants always find room.
PASSES_PER_NAMESPACE = STARTED_PASSES // 4
# How long a finalized key's uid is remembered, so a pass that was already queued for it stands down.
FINALIZED_MEMORY_SECONDS = 300.0
# A ConfigMap changed after the listing is caught by the drift watch (``repair_configmap``), but only for
# keys already known; so the listing is renewed rather than kept across a standby's long wait.
CONFIGMAP_LISTING_MAX_AGE_SECONDS = 120.0
ObjectKey = tuple[str, str]
# What makes a watch event worth a pass: the object (uid), its spec (generation), the rotate request (its
# digest), the namespace whose records it may adopt, and a recheck request.
Trigger = tuple[str, int | None, str | None, str | None, str | None]
# What a namespace event must change to matter: uid, labels, the copy opt-in, phase.
NamespaceFacts = tuple[str, tuple[tuple[str, str], ...], str | None, str | None]


def _namespace_of(key: ObjectKey) -> str:
    return key[0]


def backoff_seconds(retry: int) -> float:
    """Capped exponential backoff with jitter: 1s, 2s, 4s ... up to five minutes."""
    return min(MAX_BACKOFF_SECONDS, 2.0 ** retry) * random.uniform(0.8, 1.2)


class NoDiffBase(kopf.DiffBaseStorage):
    """Keep no last-handled state on the object: the passes are level-based (see the module docstring)."""

    def fetch(self, *, body: kopf.Body) -> None:
        """Nothing stored, so kopf sees every event as new and leaves the triggering to our watch handler."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        """Store nothing (one PATCH and one watch event fewer per change)."""


def slim_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a pass and its Events need of a ServiceKey, without managedFields and other annotations, and with
    the rotate and recheck requests as their digests (an annotation may hold 256 KiB, kept once per key otherwise)."""
    meta = body["metadata"]
    kept_meta = {name: meta[name] for name in ("name", "namespace", "uid", "generation", "deletionTimestamp",
                                               "finalizers") if name in meta}
    annotations = meta.get("annotations") or {}
    kept_meta["annotations"] = {name: value for name, value in (
        (ROTATE_ANNOTATION, rotate_request_digest(annotations.get(ROTATE_ANNOTATION))),
        (RECHECK_ANNOTATION, rotate_request_digest(annotations.get(RECHECK_ANNOTATION))),
        (ADOPT_NAMESPACE_UID_ANNOTATION, annotations.get(ADOPT_NAMESPACE_UID_ANNOTATION))) if value is not None}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept_meta,
            "spec": body.get("spec") or {}, "status": body.get("status") or {}}


@dataclass
class OperatorState:
    """What the handlers share: the reconciler, the pass scheduler, and per-key locks and bodies."""

    config: OperatorConfig
    reconciler: Reconciler
    kube: KubeGateway
    keygen: KeyGenerator
    # Passes in flight at once: a burst of new keys then finishes roughly in arrival order, instead of
    # every key's each step queuing behind the same step of all the others.
    passes_in_flight: asyncio.Semaphore
    gate: PeeringGate
    settings: kopf.OperatorSettings
    # Fair between namespaces: one tenant's burst of keys cannot hold every started pass (see ``scheduler``).
    scheduler: PassScheduler[ObjectKey] = field(
        default_factory=lambda: PassScheduler(group=_namespace_of, group_limit=PASSES_PER_NAMESPACE))
    # The latest of each key's watch events, slimmed: what a scheduled pass works on.
    bodies: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    locks: dict[ObjectKey, asyncio.Lock] = field(default_factory=dict)
    publishing_elsewhere: set[ObjectKey] = field(default_factory=set)
    consecutive_failures: dict[ObjectKey, int] = field(default_factory=dict)
    finalizing: dict[ObjectKey, str] = field(default_factory=dict)
    handled: dict[ObjectKey, Trigger] = field(default_factory=dict)
    # The last seen facts of every namespace, so that a namespace event re-plans only the keys it concerns.
    namespaces: dict[str, NamespaceFacts] = field(default_factory=dict)
    # resourceVersions of the source ConfigMaps by (namespace, ConfigMap name), listed when the first
    # listing of ServiceKeys arrives (at start, or when a standby takes over) and taken out key by key.
    listed_configmaps: dict[ObjectKey, str] = field(default_factory=dict)
    listed_at: float | None = None
    listing: asyncio.Lock = field(default_factory=asyncio.Lock)
    scheduler_task: asyncio.Task[None] | None = None
    scheduled_passes: set[asyncio.Task[None]] = field(default_factory=set)
    # Finalizes the ServiceKeys that a deletion of their CRD deletes (see ``servicekey_crd_changed``).
    crd_cleanup: asyncio.Task[None] | None = None
    # Keeps the peering verdict (and with it the per-key metrics) current while nothing else asks.
    peering_watch: asyncio.Task[None] | None = None

    async def listed_configmap_version(self, namespace: str, name: str, logger: logging.Logger) -> str | None:
        """The resourceVersion the ConfigMap had when listed, and forget it; list again when the listing is
        older than the first listing of ServiceKeys can take to process."""
        async with self.listing:
            if self.listed_at is None or time.monotonic() - self.listed_at > CONFIGMAP_LISTING_MAX_AGE_SECONDS:
                try:
                    self.listed_configmaps = await asyncio.to_thread(
                        self.kube.configmap_versions, publish.SOURCES_SELECTOR, self.config.watch_namespaces)
                except ServiceKeyError as failure:  # then these keys get their pass now, as on a first start
                    logger.warning(f"could not list the published ConfigMaps: {failure}")
                    self.listed_configmaps = {}
                self.listed_at = time.monotonic()
        return self.listed_configmaps.pop((namespace, name), None)

    def start_scheduler(self) -> None:
        """Start the scheduler task, once, from a watch handler: the task inherits that handler's context,
        where kopf keeps the queue it posts Events through (a startup handler's context has none)."""
        if self.scheduler_task is None:
            self.scheduler_task = asyncio.create_task(
                self.scheduler.run(functools.partial(_start_scheduled_pass, self), self.gate.active, _now,
                                   STARTED_PASSES),
                name="scheduler")

    def lock(self, key: ObjectKey) -> asyncio.Lock:
        """The lock that serialises every pass and the finalizer of one key."""
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: ObjectKey) -> None:
        """Drop all per-key state once the ServiceKey is gone."""
        for table in (self.locks, self.bodies, self.consecutive_failures, self.handled):
            table.pop(key, None)
        self.scheduler.forget(key)
        metrics.KEY_GAUGES.forget(key)
        self.publishing_elsewhere.discard(key)
        uid = self.finalizing.get(key)
        asyncio.get_running_loop().call_later(FINALIZED_MEMORY_SECONDS, self._unmark_finalizing, key, uid)

    def _unmark_finalizing(self, key: ObjectKey, uid: str | None) -> None:
        if self.finalizing.get(key) == uid:
            del self.finalizing[key]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _post(body: Mapping[str, Any], events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


async def _write_status(state: OperatorState, body: Mapping[str, Any], wanted: dict[str, Any], *,
                        turned: bool) -> None:
    """Patch the status if it differs from what the body shows, and always when the key ``turned`` from
    failing to passing or back: the body may not show our own last write yet, and skipping then would
    leave that write (say, a failure another operator's success had just made stale) in place."""
    observed = body.get("status") or {}
    if turned or differs(observed, wanted):
        meta = body["metadata"]
        await asyncio.to_thread(state.kube.patch_status, meta["namespace"], meta["name"], wanted)


def _desired(state: OperatorState, body: Mapping[str, Any]) -> DesiredKey:
    meta = body["metadata"]
    return desired_key(meta["namespace"], meta["name"], meta["uid"], body.get("spec") or {},
                       meta.get("annotations") or {}, state.config)


async def _owner(state: OperatorState, body: Mapping[str, Any]) -> Owner:
    """Who the pass works for, with the uid of the namespace incarnation the ServiceKey lives in."""
    meta = body["metadata"]
    namespace_uid = await asyncio.to_thread(state.kube.namespace_uid, meta["namespace"], meta["uid"])
    return Owner(meta["namespace"], meta["name"], namespace_uid, meta["uid"])


async def run_pass(state: OperatorState, body: Mapping[str, Any], logger: logging.Logger) -> None:
    """One reconcile pass for one ServiceKey, with status, events and error mapping.

    Failures back off exponentially per key, whichever path (handler or scheduler) hit them; a success
    resets the count.
    """
    meta = body["metadata"]
    key: ObjectKey = (meta["namespace"], meta["name"])
    observed = body.get("status") or {}
    async with state.lock(key), state.passes_in_flight:
        if state.finalizing.get(key) == meta["uid"]:
            # Queued before the deletion (a scheduled pass, a ConfigMap event): publishing now would
            # recreate copies the finalizer has just removed.
            return
        now = _now()
        try:
            desired = _desired(state, body)
            owner = await _owner(state, body)
            with metrics.reconcile_timer():
                outcome = await state.reconciler.reconcile(desired, owner, now,
                                                           published=rollback.last_published(observed),
                                                           expect_copies=bool(observed.get("publishedNamespaces")),
                                                           previous_configmap=observed.get("configMapName"))
            await _record_success(state, key, body, desired, outcome, now)
        except ServiceKeyError as failure:
            await _record_failure(state, key, body, failure, now, logger)
        except Exception as unexpected:  # a bug, not weather: still a status, an Event and this key's backoff
            logger.exception(f"pass failed unexpectedly: {type(unexpected).__name__}")
            # The type only: an exception's text may quote data, and nothing of a key goes into status or Events.
            await _record_failure(state, key, body, InternalError(
                f"the pass failed unexpectedly ({type(unexpected).__name__}); the operator's log has the details"),
                now, logger)


async def _record_failure(state: OperatorState, key: ObjectKey, body: Mapping[str, Any], failure: ServiceKeyError,
                          now: datetime.datetime, logger: logging.Logger) -> None:
    """Status (Ready=False with the failure's reason), one Warning per new problem, and the key's backoff."""
    observed = body.get("status") or {}
    if isinstance(failure, ConfigMapConflict) and failure.holder in state.bodies:
        # A copy from another namespace stands where this key publishes: its source withdraws it.
        state.scheduler.schedule(failure.holder, now)
    failures = state.consecutive_failures[key] = state.consecutive_failures.get(key, 0) + 1
    delay = backoff_seconds(failures - 1) if failure.retryable else CONFLICT_RECHECK_SECONDS
    metrics.record_failure(failure.reason)
    logger.warning(f"{failure.reason}: {failure}")
    # Best effort: with the API server down the failure cannot be reported, only retried.
    with contextlib.suppress(ServiceKeyError):
        await _write_status(state, body, failed_status(failure.reason, str(failure), body["metadata"].get("generation"),
                                                       observed, now), turned=failures == 1)
        # One Warning per new problem, not per retry.
        if ready_condition(observed).get("reason") != failure.reason:
            _post(body, [Event("Warning", failure.reason, str(failure))])
    state.scheduler.schedule(key, now + datetime.timedelta(seconds=delay))


async def _record_success(state: OperatorState, key: ObjectKey, body: Mapping[str, Any], desired: DesiredKey,
                          outcome: Outcome, now: datetime.datetime) -> None:
    """Status, schedule, metrics and events after a pass that did everything it had to."""
    observed = body.get("status") or {}
    due = next_rotation_time(desired, outcome.history)
    wake_at = next_pass_time(desired, outcome.history)
    if outcome.published_namespaces or outcome.refused or desired.namespace_selector or desired.target_namespaces:
        state.publishing_elsewhere.add(key)
    else:
        state.publishing_elsewhere.discard(key)
    refused_before = {(r.get("namespace"), r.get("reason")) for r in observed.get("refusedNamespaces") or []}
    outcome.events += [Event("Warning", "PublishRefused", f"not published to namespace {r.namespace}: "
                                                           f"{r.message or r.reason}")
                       for r in outcome.refused if (r.namespace, r.reason) not in refused_before]
    await _write_status(state, body, ready_status(desired, outcome.history, due, body["metadata"].get("generation"),
                                                  observed, now, outcome.configmap_version,
                                                  outcome.published_namespaces, outcome.refused),
                        turned=key in state.consecutive_failures)
    state.consecutive_failures.pop(key, None)
    resync = now + datetime.timedelta(seconds=state.config.resync_seconds * random.uniform(0.9, 1.1))
    state.scheduler.schedule(key, min(wake_at, resync) if wake_at else resync)
    if outcome.decision.generate:
        metrics.record_rotation(outcome.decision.reason, desired.algorithm, desired.engine)
    _post(body, outcome.events)


def _rsa_outside_the_pass_limit(keygen: KeyGenerator, passes_in_flight: asyncio.Semaphore) -> Keygen:
    """Keygen for passes that hold a slot of ``passes_in_flight``.

    While a pass waits for RSA in the process pool (seconds for 4096 bits, behind other RSA keys) it
    lends its slot, so a burst of RSA keys cannot hold up the EC and Ed25519 keys queued behind it.
    """
    async def generate(algorithm: str, key_size: int | None) -> KeyPair:
        if not is_rsa(algorithm):
            return await keygen(algorithm, key_size)
        passes_in_flight.release()
        try:
            return await keygen(algorithm, key_size)
        finally:
            await passes_in_flight.acquire()
    return generate


def _apply_log_level(level: str) -> None:
    """SERVICEKEY_LOG_LEVEL on the root logger, which kopf's handler writes from (kopf.configure set INFO). The
    HTTP clients stay at INFO even with debug: at DEBUG they log every request, and the Kubernetes client whole
    response bodies (every tenant's ConfigMaps). Events on ServiceKeys (settings.posting) do not depend on it."""
    logging.getLogger().setLevel(level.upper())
    for chatty in ("urllib3", "kubernetes", "hvac"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger,
                    **_: Any) -> None:
    """Build the shared state once, and tune kopf for a key manager."""
    config: OperatorConfig = memo.config
    _apply_log_level(config.log_level)
    # kopf's retry bookkeeping for the deletion handler in annotations (not status, where a user-written
    # status could disturb it) under a prefix of its own; no diff-base at all (see the module docstring).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_STORAGE_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    # A watch that silently dies would stop rotations; have the server close it regularly.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # kopf lists each watched resource in one response by default: 10,000 ServiceKeys and their 10,000
    # ConfigMaps decoded at once at start, a peak the allocator keeps as RSS (509 MiB after a restart over
    # 10,000 keys; 298 MiB in pages of 500).
    settings.watching.chunk_size = LIST_PAGE_SIZE
    # Only our ConfigMaps, filtered by the API server: anybody may create ConfigMaps anywhere, and a client-side
    # filter would have the operator list and watch (and hold at start) every one of them.
    settings.watching.label_selectors["", "v1", "configmaps"] = f"{publish.MANAGED_BY_LABEL}={publish.MANAGED_BY}"
    settings.posting.level = logging.INFO
    # How long standbys wait after the active replica's last keep-alive before taking over; kopf's
    # default of 60 s would stall key management for up to a minute after a crash.
    settings.peering.lifetime = config.peering_lifetime_seconds
    # Every Vault and Kubernetes call runs in a thread; the default pool (cores + 4) would queue a burst
    # of new keys behind a handful of requests in flight.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=IO_THREADS))
    keygen = KeyGenerator()
    passes_in_flight = asyncio.Semaphore(CONCURRENT_PASSES)
    kube = KubeGateway(api_client())
    connection = VaultConnection(config.vault)
    bodies: dict[ObjectKey, dict[str, Any]] = {}
    reconciler = Reconciler(KvKeyStore(connection), TransitKeys(connection), kube,
                            _rsa_outside_the_pass_limit(keygen, passes_in_flight), logger,
                            names_taken_in=functools.partial(_configmap_names_in, bodies),
                            copy_namespaces=tuple(dict.fromkeys(config.watch_namespaces + config.publish_namespaces))
                            if config.watch_namespaces else ())
    gate = PeeringGate(functools.partial(kube.peering_keepalives, namespaces=config.watch_namespaces),
                       config.peering, memo.peering_identity, memo.peering_priority,
                       on_change=lambda active, outranked: metrics.set_active(active, outranked=outranked))
    memo.state = OperatorState(config=config, reconciler=reconciler, kube=kube, keygen=keygen,
                               passes_in_flight=passes_in_flight, gate=gate, settings=settings, bodies=bodies)
    memo.state.peering_watch = asyncio.create_task(gate.watch(), name="peering watch")
    metrics.serve(config.metrics_port, package_version())
    logger.info(f"servicekey-operator configured: Vault {config.vault.addr} ({config.vault.auth_method} auth), "
                f"KV mount {config.kv_mount}, prefix {config.path_prefix}")


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Stop the scheduler and the keygen workers."""
    state: OperatorState = memo.state
    for task in (state.scheduler_task, state.crd_cleanup, state.peering_watch):
        if task is not None:
            task.cancel()
    state.keygen.shutdown()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def servicekey_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                             **_: Any) -> None:
    """Schedule a pass at once for a ServiceKey that is new to this process, or whose spec or rotate request
    changed.

    Status-only and bookkeeping events run nothing but refresh the key's slim body. A failed pass is retried
    by the scheduler.
    """
    state: OperatorState = memo.state
    state.start_scheduler()
    state.gate.vouch()
    meta = body["metadata"]
    key: ObjectKey = (meta["namespace"], meta["name"])
    if event["type"] == "DELETED":
        # Most keys end here without a finalizer (``needs_finalizer``), so this is their end of life: passes
        # already queued for this uid stand down (``run_pass``), as after a finalizer.
        state.finalizing[key] = meta["uid"]
        state.forget(key)
        state.kube.forget_servicekey(meta["uid"])
        return
    state.bodies[key] = slim_body(body)
    metrics.KEY_GAUGES.observe(key, _key_series(state, body))
    if meta.get("deletionTimestamp"):
        return  # the deletion handler owns the end of life
    if _awaits_finalizer(body):
        return  # kopf adds it first, so no copy or Delete-policy key is made unguarded; that event brings us back
    annotations = meta.get("annotations") or {}
    trigger: Trigger = (meta["uid"], meta.get("generation"), rotate_request_digest(annotations.get(ROTATE_ANNOTATION)),
                        annotations.get(ADOPT_NAMESPACE_UID_ANNOTATION),
                        rotate_request_digest(annotations.get(RECHECK_ANNOTATION)))
    if state.handled.get(key) == trigger:
        return
    first_sight = key not in state.handled
    state.handled[key] = trigger
    if event["type"] is None and first_sight and await _resumed_from_status(state, key, body, logger):
        return
    # Through the scheduler rather than here: a kopf handler in flight holds the whole object and kopf's
    # per-object worker, and a burst of new keys would hold thousands of them while waiting for a slot.
    state.scheduler.schedule(key, _now())


async def _resumed_from_status(state: OperatorState, key: ObjectKey, body: Mapping[str, Any],
                               logger: logging.Logger) -> bool:
    """Schedule the first pass of a key from the first listing later, if its status allows (see ``resume``)."""
    try:
        desired = _desired(state, body)
    except ServiceKeyError:
        return False
    status = body.get("status") or {}
    if not status.get("configMapResourceVersion"):
        return False  # never trusted, so spare the listing (a first start over new keys)
    listed_version = await state.listed_configmap_version(desired.namespace, desired.configmap_name, logger)
    now = _now()
    latest = now + datetime.timedelta(seconds=state.config.resync_seconds * random.uniform(0.05, 1.0))
    first_pass = first_pass_time(desired, status, body["metadata"].get("generation"), listed_version, now, latest)
    if first_pass is None:
        return False
    state.scheduler.schedule(key, first_pass)
    return True


def _key_series(state: OperatorState, body: Mapping[str, Any]) -> metrics.KeySeries:
    """The per-key gauges of a ServiceKey as its status and spec show them."""
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    try:
        period = _desired(state, body).rotation.period_seconds
    except ServiceKeyError:
        period = None  # the pass says why, in the status

    def timestamp(field: str) -> float | None:
        # Leniently: anybody with status access may write it, and it is not ours to crash on.
        moment = status_view.parse_time(status.get(field))
        return moment.timestamp() if moment else None

    return metrics.KeySeries(ready=str(ready_condition(status).get("status") or "Unknown"),
                             algorithm=str(spec.get("algorithm", "")), engine=str((spec.get("vault") or {}).get(
                                 "engine", "")), created_at=timestamp("lastRotationTime"),
                             next_rotation=timestamp("nextRotationTime"), period_seconds=period)


def _start_scheduled_pass(state: OperatorState, key: ObjectKey) -> asyncio.Task[None] | None:
    """The scheduler's due key: run its pass on the latest body seen, unless it is gone or going."""
    body = state.bodies.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # the deletion handler owns the end of life
    if _awaits_finalizer(body):
        return None  # the spec has just come to need it: kopf's adding it brings a pass (``servicekey_changed``)
    logger = kopf.ObjectLogger(body=kopf.Body(body), settings=state.settings)
    task = asyncio.create_task(_scheduled_pass(state, key, body, logger), name=f"pass {key[0]}/{key[1]}")
    state.scheduled_passes.add(task)
    task.add_done_callback(state.scheduled_passes.discard)
    return task


async def _scheduled_pass(state: OperatorState, key: ObjectKey, body: Mapping[str, Any],
                          logger: logging.Logger) -> None:
    try:
        await run_pass(state, body, logger)
    except Exception as unexpected:  # a bug, not weather: say so and try again later rather than never
        logger.exception(f"pass failed unexpectedly: {type(unexpected).__name__}")
        state.scheduler.schedule(key, _now() + datetime.timedelta(seconds=MAX_BACKOFF_SECONDS))


def needs_finalizer(body: Mapping[str, Any], **_: Any) -> bool:
    """kopf's filter for the deletion handler: kopf puts the finalizer only on the keys whose deletion does work
    (``deletion_does_work``), and takes it off a key that no longer needs it. A finalizer on every key would
    cost one API write per new key, and wedge the deletion of every key (and of its namespace) while no
    operator runs, as after ``helm uninstall``."""
    return deletion_does_work(body.get("spec") or {}, body.get("status") or {})


def _awaits_finalizer(body: Mapping[str, Any]) -> bool:
    """The key needs the finalizer and kopf has not put it on yet: nothing may be written for it before."""
    return needs_finalizer(body) and FINALIZER not in (body["metadata"].get("finalizers") or ())


@kopf.on.delete(GROUP, VERSION, PLURAL, when=needs_finalizer)
async def finalize_servicekey(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, retry: int,
                              **_: Any) -> None:
    """Honour deletionPolicy in Vault; the ConfigMap goes with the owner reference."""
    try:
        await _finalize(memo.state, body, logger)
    except ServiceKeyError as failure:
        raise kopf.TemporaryError(str(failure), delay=backoff_seconds(retry)) from failure


async def _finalize(state: OperatorState, body: Mapping[str, Any], logger: logging.Logger) -> None:
    """The end of one ServiceKey (see ``finalize_servicekey``); raises the failures worth retrying."""
    key: ObjectKey = (body["metadata"]["namespace"], body["metadata"]["name"])
    async with state.lock(key):
        state.finalizing[key] = body["metadata"]["uid"]
        try:
            desired = _desired_for_cleanup(state, body)
            events = await state.reconciler.finalize(desired, await _owner(state, body))
        except ServiceKeyError as failure:
            if failure.retryable:
                raise
            logger.warning(f"deletion: {failure}")
        else:
            _post(body, events)
        state.forget(key)


def _desired_for_cleanup(state: OperatorState, body: Mapping[str, Any]) -> DesiredKey:
    """What the finalizer cleans up after: the spec's key or, when the spec has become invalid since the key was
    made, the key where it lives: a KV record where the last good pass reported it (status.vaultPath), a Transit
    key's record at the spec's path (or the default one). Copies in other namespaces are found by their labels
    either way, and deletionPolicy is the spec's."""
    try:
        return _desired(state, body)
    except InvalidSpec:
        spec = body.get("spec") or {}
        vault = spec.get("vault") or {}
        reported = (body.get("status") or {}).get("vaultPath")
        if vault.get("engine", "kv") == "kv" and reported:
            mount, _, path = reported.partition("/")
            vault = {"mount": mount, "path": path}
        else:
            vault = {"engine": vault.get("engine", "kv"), **({"path": vault["path"]} if vault.get("path") else {})}
        cleanup = {"deletionPolicy": spec.get("deletionPolicy", "Retain")}
        try:
            return _desired(state, {**body, "spec": {**cleanup, "vault": vault}})
        except InvalidSpec:  # the path itself is what is invalid: the key can only be at the default one
            return _desired(state, {**body, "spec": {**cleanup, "vault": {"engine": vault.get("engine", "kv")}}})


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", field="metadata.name", value=CRD_NAME)
async def servicekey_crd_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                                 **_: Any) -> None:
    """The ServiceKey CRD is being deleted, which deletes every ServiceKey and waits for their finalizers.

    kopf stops serving a resource as soon as its CRD is terminating (the API server's discovery then lists no
    ``patch`` verb, although it still takes PATCH): it would run none of those finalizers, the CRD would stay
    terminating for good, and the keys' last bodies would go on getting passes. So the operator forgets every
    key and finalizes them itself, until the CRD is gone; a CRD created again is served by kopf as usual.
    """
    state: OperatorState = memo.state
    terminating = event["type"] == "DELETED" or bool(body["metadata"].get("deletionTimestamp"))
    if not terminating or (state.crd_cleanup is not None and not state.crd_cleanup.done()):
        return
    for key in list(state.bodies):  # their watch events end here: no pass may run on these last bodies
        state.bodies.pop(key, None)
        state.handled.pop(key, None)
        state.scheduler.forget(key)
    metrics.KEY_GAUGES.clear()  # every key goes, and no DELETED event will say so
    state.crd_cleanup = asyncio.create_task(_finalize_with_the_crd(state, body["metadata"]["uid"], logger),
                                            name="crd cleanup")


async def _finalize_with_the_crd(state: OperatorState, crd_uid: str, logger: logging.Logger) -> None:
    """Finalize the ServiceKeys being deleted with the CRD of ``crd_uid``, until that CRD is gone (or has been
    replaced by a new one, which kopf serves)."""
    while True:
        try:
            if await asyncio.to_thread(state.kube.crd_uid, CRD_NAME) != crd_uid:
                return
            if await state.gate.active():
                await _finalize_round(state, logger)
        except Exception as failure:  # weather, or a bug: never leave the CRD terminating for good
            logger.warning(f"the ServiceKey CRD is being deleted; finalizing its ServiceKeys: "
                           f"{type(failure).__name__}: {failure}")
        await asyncio.sleep(CRD_CLEANUP_SECONDS)


async def _finalize_round(state: OperatorState, logger: logging.Logger) -> None:
    bodies = await asyncio.to_thread(state.kube.servicekeys_being_deleted, FINALIZER, state.config.watch_namespaces)
    for body in bodies or []:
        ref = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        try:
            await _finalize(state, body, logger)
            await asyncio.to_thread(state.kube.remove_finalizer, body, FINALIZER)
            logger.info(f"finalized {ref}, deleted with the ServiceKey CRD")
        except ServiceKeyError as failure:  # tried again on the next round
            logger.warning(f"deleting {ref} with the CRD: {failure}")


def _configmap_name(key: ObjectKey, body: Mapping[str, Any]) -> str:
    return ((body.get("spec") or {}).get("publicKey") or {}).get("configMapName") or f"{key[1]}-public"


def _keys_publishing(bodies: Mapping[ObjectKey, Mapping[str, Any]], namespace: str, name: str) -> list[ObjectKey]:
    """The ServiceKeys of ``namespace`` that publish their own key under the ConfigMap name ``name``."""
    return [key for key, body in list(bodies.items()) if key[0] == namespace and _configmap_name(key, body) == name]


def _configmap_names_in(bodies: Mapping[ObjectKey, Mapping[str, Any]], namespace: str) -> set[str]:
    """The ConfigMap names the ServiceKeys of ``namespace`` publish their own keys under (see ``Reconciler``).
    Called from a worker thread: the snapshot of the items is taken under the GIL in one step."""
    return {_configmap_name(key, body) for key, body in list(bodies.items()) if key[0] == namespace}


def _namespace_facts(namespace: Mapping[str, Any]) -> NamespaceFacts:
    meta = namespace["metadata"]
    return (meta.get("uid", ""), tuple(sorted((meta.get("labels") or {}).items())),
            (meta.get("annotations") or {}).get(publish.ACCEPT_FROM_ANNOTATION),
            (namespace.get("status") or {}).get("phase"))


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A namespace appeared, changed its labels or opt-in, or went: re-plan the keys that publish into it.

    Only a change of what decides a copy (uid, labels, opt-in, phase) counts, and only keys that list the
    namespace or select it (before or after the change) get a pass: one tenant's namespace churn costs
    nobody else's keys a pass.
    """
    state: OperatorState = memo.state
    namespace = event["object"]
    name = namespace["metadata"]["name"]
    before = state.namespaces.get(name)
    if event["type"] == "DELETED":
        state.namespaces.pop(name, None)
        after = None
    else:
        after = state.namespaces[name] = _namespace_facts(namespace)
    if event["type"] is None or before == after:  # the initial listing: every key runs its own first pass anyway
        return
    labels_before = dict(before[1]) if before else None
    labels_after = dict(after[1]) if after else None
    for key in list(state.publishing_elsewhere):
        body = state.bodies.get(key)
        public_key = ((body or {}).get("spec") or {}).get("publicKey") or {}
        published = ((body or {}).get("status") or {}).get("publishedNamespaces") or ()
        if name in published or publish.namespace_concerns(public_key, key[0], name, labels_before, labels_after):
            state.scheduler.schedule(key, _now())


@kopf.on.event("", "v1", "configmaps", labels={publish.MANAGED_BY_LABEL: publish.MANAGED_BY})
async def repair_configmap(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A published ConfigMap was edited or deleted behind our back: run its ServiceKey's pass now."""
    state: OperatorState = memo.state
    metadata = event["object"]["metadata"]
    labels = metadata.get("labels") or {}
    namespace = labels.get(publish.SOURCE_NAMESPACE_LABEL, metadata["namespace"])
    key: ObjectKey = (namespace, labels.get(publish.NAME_LABEL, ""))
    if event["type"] == "MODIFIED":
        if key in state.locks:
            # The echo of a write can overtake the write's own reply: let a pass in flight note its write.
            async with state.lock(key):
                pass
        if state.kube.wrote(metadata["namespace"], metadata["name"], metadata["resourceVersion"]):
            return  # our own write coming back
    copy = key[0] != metadata["namespace"]
    body = state.bodies.get(key)
    # A copy's labels are the target tenant's to forge: only one naming the key's uid may cost that key a pass.
    if body is not None and copy and labels.get(publish.OWNER_UID_LABEL) != body["metadata"].get("uid"):
        body = None
    if event["type"] in ("DELETED", "MODIFIED"):
        # A key not seen yet must not be trusted on the strength of the listed version (see ``resume``).
        state.listed_configmaps.pop((metadata["namespace"], metadata["name"]), None)
        if body is not None:
            state.scheduler.schedule(key, _now())
    if event["type"] == "DELETED" and copy:
        # A withdrawn copy frees the name for the key of that namespace that publishes under it.
        for other in _keys_publishing(state.bodies, metadata["namespace"], metadata["name"]):
            state.scheduler.schedule(other, _now())
