"""Decide what one ServiceKey needs (pure), then do it in the fixed order: Vault → ConfigMap.

Every step is idempotent and reads back stored state, so a crash anywhere is repaired by running
the same pass again: the Vault write is check-and-set, and the ConfigMap is derived from Vault.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from servicekey_operator import publish
from servicekey_operator.errors import ConfigMapConflict, InvalidSpec, VaultPathConflict, VaultWriteConflict
from servicekey_operator.keys import KeyPair
from servicekey_operator.kubeapi import KubeGateway
from servicekey_operator.spec import DesiredKey
from servicekey_operator.vault.kv import KvKeyStore
from servicekey_operator.vault.records import KeyHistory, StoredKey

Keygen = Callable[[str, int | None], Awaitable[KeyPair]]
_CAS_ATTEMPTS = 3


@dataclass(frozen=True)
class KeyDecision:
    """Whether a new key is needed, and the trigger that asks for it."""

    generate: bool
    reason: str


KEEP = KeyDecision(False, "UpToDate")


def next_rotation_time(desired: DesiredKey, current: StoredKey | None) -> datetime.datetime | None:
    """When the schedule next asks for a key: the current key's creation plus the period."""
    if current is None or desired.rotation.period_seconds is None:
        return None
    return current.created_at + datetime.timedelta(seconds=desired.rotation.period_seconds)


def decide_key(desired: DesiredKey, history: KeyHistory, now: datetime.datetime) -> KeyDecision:
    """The pure rotation decision: compare what is asked with what Vault holds.

    Rotation requests are recorded inside the key versions themselves (algorithm, size and the
    rotate annotation value each version answered), so this needs no memory of earlier passes.
    """
    current = history.current
    if current is None:
        return KeyDecision(True, "Created")
    if (current.algorithm, current.key_size) != (desired.algorithm, desired.key_size):
        return KeyDecision(True, "SpecChanged")
    if desired.rotate_request is not None and desired.rotate_request != current.rotate_annotation:
        return KeyDecision(True, "Requested")
    due = next_rotation_time(desired, current)
    if due is not None and now >= due:
        return KeyDecision(True, "Scheduled")
    return KEEP


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
    events: list[Event] = field(default_factory=list)

    @property
    def current(self) -> StoredKey:
        """The current key after the pass."""
        assert self.history.current is not None
        return self.history.current


def _after_write(history: KeyHistory, written: StoredKey) -> KeyHistory:
    previous = (history.current, *history.previous) if history.current else history.previous
    return KeyHistory(owner=history.owner, current_version=written.version, current=written,
                      previous=previous)


class Reconciler:
    """Carries out decisions for ServiceKeys against one key store and one Kubernetes API."""

    def __init__(self, store: KvKeyStore, kube: KubeGateway, keygen: Keygen,
                 logger: logging.Logger | None = None) -> None:
        self.store = store
        self.kube = kube
        self.keygen = keygen
        self.logger = logger or logging.getLogger(__name__)

    async def reconcile(self, desired: DesiredKey, now: datetime.datetime,
                        published_kid: str | None = None) -> Outcome:
        """Bring Vault and the ConfigMap in line with ``desired``; return what was done.

        ``published_kid`` is the key id the status last reported, used only to word the events.
        """
        if desired.engine != "kv":
            raise InvalidSpec(f"vault.engine {desired.engine!r} is not supported by this operator version")
        outcome = await self._ensure_key(desired, now, published_kid)
        outcome.configmap_written = await asyncio.to_thread(self._publish, desired, outcome.history)
        if outcome.configmap_written:
            outcome.events.append(Event("Normal", "Published",
                                        f"ConfigMap {desired.configmap_name} publishes kid "
                                        f"{outcome.current.kid}"))
        return outcome

    async def _ensure_key(self, desired: DesiredKey, now: datetime.datetime,
                          published_kid: str | None) -> Outcome:
        for _attempt in range(_CAS_ATTEMPTS):
            history = await asyncio.to_thread(self.store.read, desired.vault_mount, desired.vault_path,
                                              desired.owner_id, desired.rotation.retain_previous)
            decision = decide_key(desired, history, now)
            if not decision.generate:
                events = []
                if published_kid is None:
                    events.append(Event("Normal", "Adopted", f"adopted the existing key {history.current.kid} "
                                        f"at {desired.vault_mount}/{desired.vault_path}"))
                return Outcome(history, decision, events=events)
            keypair = await self.keygen(desired.algorithm, desired.key_size)
            try:
                written = await asyncio.to_thread(self._write, desired, history, keypair, now)
            except VaultWriteConflict:
                # Someone else (another replica, or our own earlier pass) moved the secret on:
                # their write answers the same request, so look again instead of writing twice.
                self.logger.info("check-and-set lost a race; re-reading", extra={"kid": keypair.kid})
                continue
            old_kid = history.current.kid if history.current else None
            self.logger.info(f"wrote key {written.kid} as version {written.version} ({decision.reason})")
            if old_kid:
                event = Event("Normal", "Rotated", f"rotated ({decision.reason}): {old_kid} -> {written.kid}")
            else:
                event = Event("Normal", "Generated", f"generated {desired.algorithm} key {written.kid}")
            return Outcome(_after_write(history, written), decision, events=[event])
        raise VaultWriteConflict(f"{desired.vault_path}: check-and-set kept failing; will retry")

    def _write(self, desired: DesiredKey, history: KeyHistory, keypair: KeyPair,
               now: datetime.datetime) -> StoredKey:
        if history.owner != desired.owner_id:
            self.store.claim(desired.vault_mount, desired.vault_path, desired.owner_id)
        return self.store.write(desired.vault_mount, desired.vault_path, keypair, service_name=desired.service_name,
                                rotate_annotation=desired.rotate_request, created_at=now,
                                expected_version=history.current_version)

    def _publish(self, desired: DesiredKey, history: KeyHistory) -> bool:
        wanted = publish.desired_configmap(desired, history)
        existing = self.kube.read_configmap(desired.namespace, desired.configmap_name)
        if existing is None:
            self.kube.create_configmap(wanted)
            return True
        if not publish.is_ours(existing, desired):
            raise ConfigMapConflict(f"ConfigMap {desired.namespace}/{desired.configmap_name} exists and is "
                                    "not managed by this ServiceKey; it is left untouched")
        if not publish.needs_update(existing, wanted):
            return False
        self.kube.replace_configmap(wanted, existing["metadata"]["resourceVersion"])
        return True

    async def finalize(self, desired: DesiredKey) -> list[Event]:
        """Clean up on deletion: the Vault secret per deletionPolicy (ConfigMaps go by owner reference)."""
        if desired.deletion_policy != "Delete":
            return []
        location = f"{desired.vault_mount}/{desired.vault_path}"
        try:
            await asyncio.to_thread(self.store.read, desired.vault_mount, desired.vault_path, desired.owner_id, 0)
        except VaultPathConflict:
            return [Event("Warning", "DeleteSkipped", f"{location} is not ours; left in Vault")]
        await asyncio.to_thread(self.store.delete, desired.vault_mount, desired.vault_path)
        return [Event("Normal", "Deleted", f"deleted {location} from Vault")]
