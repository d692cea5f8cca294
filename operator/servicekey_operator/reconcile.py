"""Decide what one ServiceKey needs (pure), then do it in the fixed order: Vault → ConfigMap.

Every step is idempotent and reads back stored state, so a crash anywhere is repaired by running
the same pass again: Vault writes are check-and-set, and the ConfigMap is derived from Vault.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from servicekey_operator import publish, rollback
from servicekey_operator.errors import ConfigMapConflict, KubernetesRefused, VaultPathConflict, VaultWriteConflict
from servicekey_operator.faults import crash_point
from servicekey_operator.keys import KeyPair
from servicekey_operator.kubeapi import KubeGateway, NamespaceUnavailable
from servicekey_operator.spec import DesiredKey, rotate_request_digest
from servicekey_operator.status import vault_location
from servicekey_operator.vault.kv import KV_MAX_VERSIONS, KvKeyStore
from servicekey_operator.vault.ownership import Owner
from servicekey_operator.vault.records import (
    ADOPTED_NAMESPACE_UID_METADATA_KEY,
    KeyHistory,
    LostKey,
    StoredKey,
    TransitClaim,
    TransitRef,
    adoption,
    metadata_owner,
    record_metadata,
)
from servicekey_operator.vault.transit import TransitKeys, transit_key_name, transit_key_type, transit_name

Keygen = Callable[[str, int | None], Awaitable[KeyPair]]
_CAS_ATTEMPTS = 3


class KeyAction(enum.Enum):
    """What the Vault step of a pass does."""

    KEEP = "keep"              # nothing to write
    WRITE = "write"            # write a new key as the next version now
    STAGE = "stage"            # write a new key as pending, published ahead of use
    PROMOTE = "promote"        # the pending key's time has come: write it as the next version
    RESCHEDULE = "reschedule"  # the pending key was never published (a crash): publish it, sign later
    CLEAR_PENDING = "clear"    # the pending key was promoted already (a crash in between): forget it


@dataclass(frozen=True)
class KeyDecision:
    """The Vault step and the trigger that asks for it (``Created``, ``SpecChanged``, ``Requested``,
    ``Scheduled``; ``UpToDate`` or ``Rotating`` when there is nothing to do yet)."""

    action: KeyAction
    reason: str

    @property
    def generate(self) -> bool:
        """True when the step needs a freshly generated key pair."""
        return self.action in (KeyAction.WRITE, KeyAction.STAGE)


def scheduled_time(desired: DesiredKey, current: StoredKey | None) -> datetime.datetime | None:
    """The schedule's next tick: the current key's creation plus the period."""
    if current is None or desired.rotation.period_seconds is None:
        return None
    return current.created_at + datetime.timedelta(seconds=desired.rotation.period_seconds)


def next_rotation_time(desired: DesiredKey, history: KeyHistory) -> datetime.datetime | None:
    """When the next key starts signing: the pending key's activation, or the schedule's next tick."""
    if history.pending is not None and history.pending.activate_at is not None:
        return history.pending.activate_at
    return scheduled_time(desired, history.current)


def next_pass_time(desired: DesiredKey, history: KeyHistory) -> datetime.datetime | None:
    """When a pass must run next: staging starts ``publishAhead`` before the key is due; a rotate request that came
    while a key was staged, and that the promoted key does not answer, is due at once."""
    due = next_rotation_time(desired, history)
    current = history.current
    if history.pending is None and current is not None and desired.rotate_request is not None \
            and desired.rotate_request != rotate_request_digest(current.rotate_annotation):
        return current.created_at
    if due is None or history.pending is not None:
        return due
    return due - datetime.timedelta(seconds=desired.rotation.publish_ahead_seconds)


def _made_as_asked(key: StoredKey, desired: DesiredKey) -> bool:
    """Whether ``key`` is what the spec asks for: engine, algorithm, size and, for Transit, the mount (a record
    written before mounts were recorded names none, and matches any)."""
    moved = key.transit is not None and bool(key.transit.mount) and key.transit.mount != desired.vault_mount
    return (key.engine, key.algorithm, key.key_size) == (desired.engine, desired.algorithm, desired.key_size) \
        and not moved


def _trigger(desired: DesiredKey, history: KeyHistory, now: datetime.datetime) -> str | None:
    current = history.current
    assert current is not None
    if not _made_as_asked(current, desired):
        return "SpecChanged"
    if current.transit and history.transit_latest > history.newest_transit_version(current.transit.key_name):
        # Rotated outside the operator (transit/keys/<k>/rotate, auto_rotate_period): signers that name no
        # key_version sign with a key no JWKS lists. Adopt it like any rotation: published, then it signs.
        return "TransitRotated"
    # Digested again: a value recorded before records held digests compares as what it asked for.
    answered = rotate_request_digest(current.rotate_annotation)
    if desired.rotate_request is not None and desired.rotate_request != answered:
        return "Requested"
    stage_at = next_pass_time(desired, history)
    if stage_at is not None and now >= stage_at:
        return "Scheduled"
    return None


def decide_key(desired: DesiredKey, history: KeyHistory, published_kids: frozenset[str],
               now: datetime.datetime, *, rolled_back: bool = False) -> KeyDecision:
    """The pure rotation decision: compare what is asked with what Vault holds.

    Rotation requests are recorded inside the key versions themselves (algorithm, size and the
    rotate annotation value each version answered), so this needs no memory of earlier passes.
    ``published_kids`` are the key ids the ConfigMap lists now: a pending key is promoted only once
    verifiers can see it. ``rolled_back``: Vault holds an older state than was published (``rollback``): a new
    key signs at once, whatever else is asked, since signers already sign with the restored one.
    """
    current, pending = history.current, history.pending
    if rolled_back:
        return KeyDecision(KeyAction.WRITE, rollback.REASON)
    if current is None:
        # A latest version deleted or destroyed by someone else: nothing signs; write one new key, once.
        return KeyDecision(KeyAction.WRITE, "CurrentKeyDeleted" if history.current_version else "Created")
    answered = {rotate_request_digest(key.rotate_annotation) for key in (current, pending) if key is not None}
    if desired.emergency and desired.rotate_request not in answered:
        # A compromised key signs nothing more, now: no publishAhead, and a staged key is replaced too.
        return KeyDecision(KeyAction.WRITE, "Emergency")
    if pending is not None:
        if pending.kid == current.kid:
            return KeyDecision(KeyAction.CLEAR_PENDING, "Rotating")
        if _made_as_asked(pending, desired):
            activate_at = pending.activate_at or now
            if pending.kid not in published_kids:
                # A crash lost the publication: verifiers get their full publishAhead from now on.
                if activate_at < now + datetime.timedelta(seconds=desired.rotation.publish_ahead_seconds):
                    return KeyDecision(KeyAction.RESCHEDULE, pending.rotation_reason or "Scheduled")
                return KeyDecision(KeyAction.KEEP, "Rotating")
            if now >= activate_at:
                return KeyDecision(KeyAction.PROMOTE, pending.rotation_reason or "Scheduled")
            return KeyDecision(KeyAction.KEEP, "Rotating")
        # The spec changed under a staged key: it was never used, stage the right one instead, or, when the
        # spec went back to what the current key is, just withdraw it.
        history = dataclasses.replace(history, pending=None)
        if _trigger(desired, history, now) is None:
            return KeyDecision(KeyAction.CLEAR_PENDING, "SpecChanged")
    reason = _trigger(desired, history, now)
    if reason is None:
        return KeyDecision(KeyAction.KEEP, "UpToDate")
    if desired.rotation.publish_ahead_seconds > 0:
        return KeyDecision(KeyAction.STAGE, reason)
    return KeyDecision(KeyAction.WRITE, reason)


def published_kids(configmap: Mapping[str, Any] | None) -> frozenset[str]:
    """The key ids in an existing ConfigMap's jwks.json (empty when absent or unreadable)."""
    try:
        keys = json.loads(((configmap or {}).get("data") or {}).get("jwks.json", "{}")).get("keys", [])
        return frozenset(str(key.get("kid")) for key in keys)
    except (ValueError, AttributeError):
        return frozenset()


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the ServiceKey (never carrying key material)."""

    type: str
    reason: str
    message: str


@dataclass
class Outcome:
    """What one pass found and did."""

    history: KeyHistory
    decision: KeyDecision
    configmap_written: bool = False
    # The source ConfigMap's resourceVersion after the pass: a restarted operator trusts a key's status
    # only while its ConfigMap is still at the version recorded there.
    configmap_version: str | None = None
    events: list[Event] = field(default_factory=list)
    published_namespaces: tuple[str, ...] = ()
    refused: tuple[publish.Refusal, ...] = ()

    @property
    def current(self) -> StoredKey:
        """The current key after the pass."""
        assert self.history.current is not None
        return self.history.current


def _with_new_current(history: KeyHistory, owner: Owner, written: StoredKey) -> KeyHistory:
    previous = (history.current, *history.previous) if history.current else history.previous
    return dataclasses.replace(history, owner=owner.ref, current_version=written.version, current=written,
                               previous=previous, pending=None)


def _keypair_of(key: StoredKey) -> KeyPair:
    return KeyPair(algorithm=key.algorithm, key_size=key.key_size, private_pem=key.private_pem,
                   public_pem=key.public_pem, kid=key.kid)


class Reconciler:
    """Carries out decisions for ServiceKeys against one key store and one Kubernetes API."""

    def __init__(self, store: KvKeyStore, transit: TransitKeys, kube: KubeGateway, keygen: Keygen,
                 logger: logging.Logger | None = None,
                 names_taken_in: Callable[[str], set[str]] = lambda _namespace: set(),
                 copy_namespaces: tuple[str, ...] = ()) -> None:
        """``names_taken_in(namespace)``: the ConfigMap names that namespace's own ServiceKeys publish under,
        which no copy from elsewhere may take (from the operator's watch, not a listing per pass);
        ``copy_namespaces``: where copies can be, when the operator may only list ConfigMaps there (namespaced
        RBAC; empty: everywhere)."""
        self.store = store
        self.transit = transit
        self.kube = kube
        self.keygen = keygen
        self.logger = logger or logging.getLogger(__name__)
        self.names_taken_in = names_taken_in
        self.copy_namespaces = copy_namespaces

    async def reconcile(self, desired: DesiredKey, owner: Owner, now: datetime.datetime, *,
                        published: rollback.Published | None = None, expect_copies: bool = False,
                        previous_configmap: str | None = None) -> Outcome:
        """Bring Vault and the ConfigMaps in line with ``desired``, on behalf of ``owner``; return what was done.

        ``published`` is what the status last reported (it words the events, and tells a Vault rolled back to an
        older state from normal history, ``rollback``);
        ``expect_copies`` says the status lists copies in other namespaces, which must be cleaned up even
        if the spec no longer asks for any; ``previous_configmap`` is the ConfigMap the status last named,
        removed (if ours) when ``publicKey.configMapName`` has changed since.
        """
        existing = await asyncio.to_thread(self.kube.read_configmap, desired.namespace, desired.configmap_name)
        if existing is not None and not publish.is_ours(existing, desired):
            raise ConfigMapConflict(f"ConfigMap {desired.namespace}/{desired.configmap_name} exists and is "
                                    "not managed by this ServiceKey; it is left untouched",
                                    publish.copy_source(existing))
        outcome = await self._ensure_key(desired, owner, now, published, existing, previous_configmap)
        outcome.configmap_written, outcome.configmap_version = await asyncio.to_thread(
            self._publish, desired, outcome.history, existing)
        if outcome.configmap_written and outcome.decision.reason != "Created":  # "Generated" says it already
            outcome.events.append(Event("Normal", "Published",
                                        f"ConfigMap {desired.configmap_name} publishes kid {outcome.current.kid}"
                                        + (f" and pending {outcome.history.pending.kid}"
                                           if outcome.history.pending else "")))
        if previous_configmap and previous_configmap != desired.configmap_name:
            await asyncio.to_thread(self._remove_former_configmap, desired, previous_configmap)
        if expect_copies or desired.target_namespaces or desired.namespace_selector is not None:
            outcome.published_namespaces, outcome.refused = await asyncio.to_thread(
                self._publish_copies, desired, outcome.history)
        return outcome

    def _publish_copies(self, desired: DesiredKey, history: KeyHistory) -> tuple[tuple[str, ...],
                                                                                  tuple[publish.Refusal, ...]]:
        """Keep the copies in opted-in namespaces equal to the source; remove those no longer wanted."""
        plan = publish.plan_copies(desired, self._candidate_namespaces(desired))
        published, refused = [], list(plan.refused)
        # Where the API refused the write, a copy we made earlier stays: older, but better than none for the
        # pods there (and that namespace's policy may refuse its deletion as well).
        refused_by_api: set[str] = set()
        for namespace in plan.targets:
            wanted = publish.desired_configmap(desired, history, namespace)
            try:
                existing = self.kube.read_configmap(namespace, desired.configmap_name)
                # Not even while a target's own ServiceKey has no ConfigMap yet (or lost it): a copy never takes
                # the name under which that namespace's verifiers expect its own key.
                if (existing is not None and not publish.is_ours(existing, desired)) \
                        or desired.configmap_name in self.names_taken_in(namespace):
                    refused.append(publish.Refusal(namespace, "ConfigMapConflict"))
                    continue
                if existing is None:
                    self.kube.create_configmap(wanted)
                elif publish.needs_update(existing, wanted):
                    self.kube.replace_configmap(wanted, existing["metadata"]["resourceVersion"])
            except NamespaceUnavailable:  # deleted or terminating since we looked
                refused.append(publish.Refusal(namespace, "NamespaceTerminating"))
                continue
            except KubernetesRefused as refusal:  # that namespace's policy, quota or webhook: the others go on
                refused.append(publish.Refusal(namespace, refusal.api_reason, str(refusal)))
                refused_by_api.add(namespace)
                continue
            published.append(namespace)
        self._remove_copies(desired, keep=set(published) | refused_by_api)
        return tuple(published), tuple(sorted(refused, key=lambda refusal: refusal.namespace))

    def _candidate_namespaces(self, desired: DesiredKey) -> list[dict[str, Any]]:
        """The namespaces the spec names or selects, read from the API server (selected ones by a
        server-side label selector, so a key's pass never costs a listing of every namespace)."""
        found: dict[str, dict[str, Any]] = {}
        if desired.namespace_selector is not None:
            for namespace in self.kube.list_namespaces(publish.selector_string(desired.namespace_selector)):
                found[namespace["metadata"]["name"]] = namespace
        for name in desired.target_namespaces:
            if name not in found and name != desired.namespace:
                namespace = self.kube.read_namespace(name)
                if namespace is not None:
                    found[name] = namespace
        return list(found.values())

    def _remove_former_configmap(self, desired: DesiredKey, name: str) -> None:
        former = self.kube.read_configmap(desired.namespace, name)
        if former is not None and publish.is_ours(former, desired):
            self.kube.delete_configmap(desired.namespace, name, former["metadata"]["resourceVersion"])

    def _remove_copies(self, desired: DesiredKey, keep: set[str]) -> None:
        """Delete our copies outside ``keep``. A deletion that namespace's policy refuses is left for a later
        pass (or, at the end of the ServiceKey, behind: a public key only), so one tenant cannot stop another's
        passes or deletion."""
        for copy in self.kube.list_configmaps(publish.copies_selector(desired), self.copy_namespaces):
            metadata = copy["metadata"]
            # A copy under a former configMapName goes too, even in a namespace that is kept.
            if (metadata["namespace"] not in keep or metadata["name"] != desired.configmap_name) \
                    and publish.is_ours(copy, desired):
                with contextlib.suppress(KubernetesRefused):
                    self.kube.delete_configmap(metadata["namespace"], metadata["name"],
                                               metadata["resourceVersion"])

    async def _ensure_key(self, desired: DesiredKey, owner: Owner, now: datetime.datetime,
                          published: rollback.Published | None, configmap: Mapping[str, Any] | None,
                          previous_configmap: str | None) -> Outcome:
        for _attempt in range(_CAS_ATTEMPTS):
            history = await asyncio.to_thread(self.store.read, desired.record_mount, desired.vault_path, owner,
                                              desired.rotation.retain_previous,
                                              # Always: a key staged before a crash must be found even
                                              # if publishAhead was switched off since.
                                              with_pending=True, adopt_namespace_uid=desired.adopt_namespace_uid)
            current = history.current
            if current and current.transit and _made_as_asked(current, desired):
                history = dataclasses.replace(history, transit_latest=await asyncio.to_thread(
                    self.transit.latest_version, current.transit.mount or desired.vault_mount,
                    current.transit.key_name))
            rolled_back = None
            if published is not None and rollback.suspect(history, published, vault_location(desired)):
                found = await asyncio.to_thread(self._published_version, desired, published)
                rolled_back = rollback.detect(history, published, found, await asyncio.to_thread(
                    self._published_configmap, desired, configmap, previous_configmap))
            decision = decide_key(desired, history, published_kids(configmap), now, rolled_back=bool(rolled_back))
            try:
                outcome = await self._carry_out(desired, owner, history, decision, now,
                                                published.kid if published else None,
                                                rolled_back.lost if rolled_back else ())
            except VaultWriteConflict:
                # Someone else (another replica, our own earlier pass, or another ServiceKey racing for the
                # path) moved the secret on: look again, instead of writing twice, and let the owner it
                # names decide.
                self.logger.info(f"check-and-set lost a race at {desired.vault_path}; re-reading")
                continue
            # A new Transit key's claim went into the metadata before any version existed, where a ServiceKey
            # racing for the same path (and losing the check-and-set) may have overwritten it since: read it back.
            reread = history.owner is None and desired.engine == "transit"
            await asyncio.to_thread(self._mirror_metadata, desired, owner, outcome.history, reread)
            if rolled_back:
                description = rolled_back.describe(f"{desired.record_mount}/{desired.vault_path}", outcome.current,
                                                   desired.rotation.retain_previous)
                self.logger.warning(description)
                outcome.events = [Event("Warning", rollback.REASON, description)]
            return outcome
        raise VaultWriteConflict(f"{desired.vault_path}: check-and-set kept failing; will retry")

    def _published_version(self, desired: DesiredKey, published: rollback.Published) -> tuple[bool, str | None]:
        """What the store that numbers the published key holds under its version (``rollback.detect``): the Transit
        key's versions for a Transit key, the secret's KV versions otherwise."""
        if desired.engine == "transit":
            return self.transit.version_kid(desired.vault_mount, transit_key_name(
                desired.vault_path, desired.algorithm, desired.key_size), published.version)
        return self.store.version_kid(desired.record_mount, desired.vault_path, published.version)

    def _published_configmap(self, desired: DesiredKey, configmap: Mapping[str, Any] | None,
                             previous_configmap: str | None) -> Mapping[str, Any] | None:
        """The source ConfigMap the status last published under: a renamed one (``publicKey.configMapName``
        changed) is read where it was, if it is still this ServiceKey's."""
        if not previous_configmap or previous_configmap == desired.configmap_name:
            return configmap
        former = self.kube.read_configmap(desired.namespace, previous_configmap)
        return former if former is not None and publish.is_ours(former, desired) else None

    def _mirror_metadata(self, desired: DesiredKey, owner: Owner, history: KeyHistory, reread: bool) -> None:
        """Write the secret's custom_metadata if it does not say what the record proves (a new key, a
        re-created or adopting ServiceKey, a changed deletionPolicy, an administrator's edit), or if the
        secret keeps fewer versions than retention needs; a healthy key writes nothing.
        ``reread``: compare with the metadata as Vault holds it now, not as this pass read or wrote it."""
        if history.owner != owner.ref:
            return
        wanted = record_metadata(owner, desired.deletion_policy, history.transit_claims,
                                 adoption(history, owner.namespace_uid))
        current = self.store.custom_metadata(desired.record_mount, desired.vault_path) if reread \
            else dict(history.metadata)
        if wanted != current or history.max_versions < KV_MAX_VERSIONS:
            self.store.write_metadata(desired.record_mount, desired.vault_path, wanted)

    async def _carry_out(self, desired: DesiredKey, owner: Owner, history: KeyHistory, decision: KeyDecision,
                         now: datetime.datetime, published_kid: str | None,
                         lost_keys: tuple[LostKey, ...] = ()) -> Outcome:
        mount, path = desired.record_mount, desired.vault_path
        if decision.action is KeyAction.KEEP:
            events = []
            if published_kid is None and history.current is not None:
                events.append(Event("Normal", "Adopted", f"adopted the existing key {history.current.kid} "
                                    f"at {mount}/{path}"))
            return Outcome(history, decision, events=events)
        if decision.action is KeyAction.CLEAR_PENDING:
            await asyncio.to_thread(self.store.delete_pending, mount, path)
            return Outcome(dataclasses.replace(history, pending=None), decision)
        if decision.action is KeyAction.RESCHEDULE:
            assert history.pending is not None
            pending = history.pending
            activate_at = now + datetime.timedelta(seconds=desired.rotation.publish_ahead_seconds)
            rescheduled = await asyncio.to_thread(
                self.store.write_pending, mount, path, _keypair_of(pending), owner=owner,
                service_name=pending.service_name, rotate_annotation=pending.rotate_annotation,
                rotation_reason=pending.rotation_reason, created_at=pending.created_at, activate_at=activate_at,
                expected_revision=pending.pending_revision, transit=pending.transit)
            self.logger.info(f"pending key {pending.kid} was not yet published; signing from {activate_at.isoformat()}")
            return Outcome(dataclasses.replace(history, pending=rescheduled), decision)
        if decision.action is KeyAction.PROMOTE:
            assert history.pending is not None
            # The key signs from now on: the schedule's next tick is a period from its activation, or from
            # now if it is promoted late (the operator was down), never from a time it did not sign yet.
            written = await asyncio.to_thread(self._write, desired, owner, history, _keypair_of(history.pending),
                                              history.pending.rotate_annotation, decision.reason,
                                              max(history.pending.activate_at or now, now), history.pending.transit)
            await asyncio.to_thread(self.store.delete_pending, mount, path)
            return self._rotated(history, owner, written, decision)
        transit: TransitRef | None = None
        if desired.engine == "transit":
            history, keypair, transit = await asyncio.to_thread(self._transit_version, desired, owner, history)
        else:
            keypair = await self.keygen(desired.algorithm, desired.key_size)
        if history.pending is not None:
            await asyncio.to_thread(self.store.delete_pending, mount, path)
        if decision.action is KeyAction.STAGE:
            # A scheduled key staged on time signs from the tick itself; one staged late (the operator
            # was down at tick - publishAhead) still gets its full publishAhead before it signs.
            activate_at = now + datetime.timedelta(seconds=desired.rotation.publish_ahead_seconds)
            if decision.reason == "Scheduled":
                activate_at = max(activate_at, scheduled_time(desired, history.current) or activate_at)
            pending = await asyncio.to_thread(
                self.store.write_pending, mount, path, keypair, owner=owner, service_name=desired.service_name,
                rotate_annotation=desired.rotate_request, rotation_reason=decision.reason, created_at=now,
                activate_at=activate_at, transit=transit,
                # After a spec change the old pending key was deleted just now, path and all.
                expected_revision=0 if history.pending is not None else history.pending_revision)
            crash_point("pending-write")
            self.logger.info(f"staged key {pending.kid}, signing from {activate_at.isoformat()} ({decision.reason})")
            events = [Event("Normal", "Staged",
                            f"staged {pending.kid}: published now, signing from {activate_at.isoformat()}")]
            if history.pending is None and history.pending_revision:
                events.insert(0, Event("Warning", "PendingKeyDeleted", "the staged key was deleted or destroyed in "
                                       f"Vault by someone else and is withdrawn; {pending.kid} replaces it"))
            return Outcome(dataclasses.replace(history, pending=pending), decision, events=events)
        written = await asyncio.to_thread(self._write, desired, owner, history, keypair, desired.rotate_request,
                                          decision.reason, now, transit, lost_keys)
        return self._rotated(history, owner, written, decision)

    def _rotated(self, history: KeyHistory, owner: Owner, written: StoredKey, decision: KeyDecision) -> Outcome:
        self.logger.info(f"wrote key {written.kid} as version {written.version} ({decision.reason})")
        old_kid = history.current.kid if history.current else None
        if old_kid:
            event = Event("Normal", "Rotated", f"rotated ({decision.reason}): {old_kid} -> {written.kid}")
        elif decision.reason == "CurrentKeyDeleted":
            event = Event("Warning", decision.reason, f"version {history.current_version} was deleted or destroyed in "
                          f"Vault by someone else; generated {written.kid} as version {written.version}")
        else:
            event = Event("Normal", "Generated", f"generated {written.algorithm} key {written.kid}")
        return Outcome(_with_new_current(history, owner, written), decision, events=[event])

    def _transit_version(self, desired: DesiredKey, owner: Owner,
                         history: KeyHistory) -> tuple[KeyHistory, KeyPair, TransitRef]:
        """A version of the ServiceKey's Transit key that the record never named; returns the history with the
        claim, the version's public half and where it lives."""
        name = transit_key_name(desired.vault_path, desired.algorithm, desired.key_size)
        claim = TransitClaim(desired.vault_mount, transit_key_type(desired.algorithm, desired.key_size))
        # Records written before Transit mounts were recorded name the key without one: their own key, claimed.
        unmounted = {key.transit.key_name for key in (history.current, *history.previous)
                     if key and key.transit and not key.transit.mount}
        if name in unmounted and claim not in history.transit_claims:
            history = dataclasses.replace(history, transit_claims=history.transit_claims | {claim})
        if claim not in history.transit_claims:
            # A Transit key this record never claimed was made by someone else, however its name came about.
            if self.transit.exists(desired.vault_mount, name):
                raise VaultPathConflict(f"transit key {desired.vault_mount}/{name} exists but was not created for "
                                        "this ServiceKey; it is left untouched")
            # The claim comes before the key, so a crash in between still leaves our own key recognisable.
            claims = history.transit_claims | {claim}
            metadata = record_metadata(owner, desired.deletion_policy, claims, adoption(history, owner.namespace_uid))
            self.store.write_metadata(desired.record_mount, desired.vault_path, metadata)
            history = dataclasses.replace(history, metadata=metadata, transit_claims=claims)
        # After the current version was deleted or destroyed its Transit version is unknown: always a new one.
        known = history.newest_transit_version(name) if history.current or not history.current_version \
            else sys.maxsize
        keypair, transit = self.transit.new_version(
            desired.vault_mount, desired.algorithm, desired.key_size, desired.vault_path, known_version=known,
            retain_previous=desired.rotation.retain_previous,
            reusable_after=history.current.created_at if history.current else None)
        return history, keypair, transit

    def _write(self, desired: DesiredKey, owner: Owner, history: KeyHistory, keypair: KeyPair,
               rotate_annotation: str | None, reason: str, created_at: datetime.datetime,
               transit: TransitRef | None = None, lost_keys: tuple[LostKey, ...] = ()) -> StoredKey:
        written = self.store.write(desired.record_mount, desired.vault_path, keypair, owner=owner,
                                   service_name=desired.service_name, rotate_annotation=rotate_annotation,
                                   rotation_reason=reason, created_at=created_at,
                                   expected_version=history.current_version, transit=transit, lost_keys=lost_keys)
        crash_point("vault-write")
        return written

    def _publish(self, desired: DesiredKey, history: KeyHistory,
                 existing: Mapping[str, Any] | None) -> tuple[bool, str]:
        """Create or update the source ConfigMap if needed; return (written, its resourceVersion)."""
        wanted = publish.desired_configmap(desired, history)
        if existing is None:
            version = self.kube.create_configmap(wanted)
        elif publish.needs_update(existing, wanted):
            version = self.kube.replace_configmap(wanted, existing["metadata"]["resourceVersion"])
        else:
            return False, existing["metadata"]["resourceVersion"]
        crash_point("configmap-write")
        return True, version

    async def finalize(self, desired: DesiredKey, owner: Owner) -> list[Event]:
        """Clean up on deletion: copies in other namespaces (no cross-namespace owner references exist),
        then, with deletionPolicy Delete, what the Vault records prove to be this ServiceKey's own: its
        Transit keys, its pending key and its secret (the source ConfigMap goes by owner reference)."""
        await asyncio.to_thread(self._remove_copies, desired, set())
        if desired.deletion_policy != "Delete":
            return []
        return await asyncio.to_thread(self._delete_from_vault, desired, owner)

    def _delete_from_vault(self, desired: DesiredKey, owner: Owner) -> list[Event]:
        mount, path = desired.record_mount, desired.vault_path
        try:
            history = self.store.read(mount, path, owner, desired.rotation.retain_previous, with_pending=False,
                                      adopt_namespace_uid=desired.adopt_namespace_uid)
        except VaultPathConflict as foreign:
            return [Event("Warning", "DeleteSkipped", f"{foreign}; nothing deleted from Vault")]
        events = []
        for claim in sorted(history.transit_claims):
            self.transit.delete(claim.mount, transit_name(path, claim.key_type))
        adopted = {desired.adopt_namespace_uid}
        if metadata_owner(history.metadata).ref == owner.ref:  # an adoption the operator recorded for this owner
            adopted.add(history.metadata.get(ADOPTED_NAMESPACE_UID_METADATA_KEY))
        try:
            if self.store.read_pending(mount, path, owner, adopted) != (None, 0):
                self.store.delete_pending(mount, path)
        except VaultPathConflict as foreign:
            events.append(Event("Warning", "DeleteSkipped", f"{foreign}; not deleted"))
        if history.owner == owner.ref:
            self.store.delete(mount, path)
            events.append(Event("Normal", "Deleted", f"deleted {mount}/{path} from Vault"))
        return events
