"""Vault went back in time: tell it from normal history, and find the published keys it lost (pure).

A restore of Vault's storage (a raft snapshot, a disk backup) brings back key records older than what the
operator has since published: the ConfigMap lists keys (and signers may have signed with them) whose records,
private halves included, are gone. Republishing from the restored records would drop those public keys while
tokens they signed are still in flight, and signers would go back to a key that was rotated away (maybe because
it was compromised). So a pass that finds Vault behind what it published:

- keeps every public key that was published and is no longer in Vault (``LostKey``) in the JWKS, carried by the
  new version, until ``retainPrevious`` would have dropped the key Vault was rolled back to;
- never lets the restored (older) key sign again: it writes a new key at once (reason ``VaultRolledBack``),
  without ``publishAhead``, like an emergency rotation, since signers already sign with the restored key;
- says what was lost: a Warning Event, and ``Ready`` reason ``VaultRolledBack`` while lost keys are published.

"Behind" is decided from what the status recorded (``Published``) against what Vault holds now. A pass suspects a
rollback when the published current key is nowhere in the record it read (not a version read, not the staged key,
not a lost key carried earlier) and the latest version was not merely deleted (``CurrentKeyDeleted``). It then
looks the published key up by its version (``status.keyVersion``: the KV version, or the Transit key version) in
the store that numbers it: Vault still holding it there means history just moved on (another replica rotated
further); no such version, or another key under that number (a different history: a restore into an empty Vault,
then of the real snapshot) means Vault went back; a version that exists but can no longer be read (deleted,
destroyed, trimmed) proves nothing, and is handled as before.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from servicekey_operator import keys
from servicekey_operator.status import rfc3339
from servicekey_operator.vault.records import KeyHistory, LostKey, StoredKey, parse_time

REASON = "VaultRolledBack"


@dataclass(frozen=True)
class Published:
    """What a ServiceKey's status says the operator last published: the current key's ``kid``, its ``version``
    (``keyVersion``), its creation (``lastRotationTime``, seconds precision), where it lives (``vaultPath``), every
    kid the operator published (``publishedKeyIds``, aliases included, with ``keyId`` and ``pendingKeyId``), and the
    published key's ``algorithm``: only those are taken back from the ConfigMap, which its namespace's tenant can
    write to."""

    kid: str
    version: int
    created_at: datetime.datetime
    location: str
    kids: frozenset[str]
    algorithm: str = ""


def last_published(status: Mapping[str, Any]) -> Published | None:
    """``Published`` from a ServiceKey's status; None before its first successful pass (or from a status that
    lacks what it takes)."""
    kid, created, location = status.get("keyId"), status.get("lastRotationTime"), status.get("vaultPath")
    version = status.get("keyVersion")
    if not (isinstance(kid, str) and kid and isinstance(created, str) and isinstance(location, str)
            and isinstance(version, int)):
        return None
    try:
        created_at = parse_time(created)
    except ValueError:
        return None
    listed = status.get("publishedKeyIds")
    kids = {kid, *(str(k) for k in listed if k)} if isinstance(listed, list) else {kid}
    if status.get("pendingKeyId"):
        kids.add(str(status["pendingKeyId"]))
    algorithm = status.get("algorithm")
    return Published(kid, version, created_at, location, frozenset(kids),
                     algorithm if isinstance(algorithm, str) else "")


@dataclass(frozen=True)
class Rollback:
    """Vault holds an older state of a key than was published: ``restored`` is its current key now (None: no
    record at all), ``lost`` the published public keys it no longer holds, newest first."""

    published: Published
    restored: StoredKey | None
    lost: tuple[LostKey, ...]

    def describe(self, location: str, written: StoredKey, retain_previous: int) -> str:
        """The Event's text: what Vault lost, what stays published, what signs now (kids only, no key)."""
        if self.restored is None:
            found = f"Vault has no record at {location} (or the secret was deleted)"
        else:
            found = (f"Vault's current key at {location} is {self.restored.kid} (version {self.restored.version}, "
                     f"created {rfc3339(self.restored.created_at)})")
        lost = ", ".join(key.kid for key in self.lost) or "none that the ConfigMap still listed"
        kept = ("their public keys stay in the JWKS until retainPrevious drops them" if retain_previous else
                "retainPrevious is 0, so their public keys are no longer published")
        return (f"Vault was rolled back (restored from an older snapshot?): {found}, but {self.published.kid} "
                f"(created {rfc3339(self.published.created_at)}) was published. Private keys lost: {lost}; {kept}. "
                f"Rotated forward to {written.kid} "
                f"(version {written.key_version}), which signs from now on"
                + (f"; {self.restored.kid} signs no more" if self.restored else ""))


def _held_kids(history: KeyHistory, *, pending: bool = True) -> set[str]:
    """The kids Vault's record holds: its versions read, the lost keys they carry, and (``pending``) the staged key."""
    keys = (history.current, *history.previous)
    held = {key.kid for key in keys if key is not None} | {lost.kid for key in keys if key for lost in key.lost_keys}
    if pending and history.pending is not None:
        held.add(history.pending.kid)
    return held


def suspect(history: KeyHistory, published: Published | None, location: str) -> bool:
    """Whether the record read (at ``location``, as ``status.vaultPath`` shows it) may be behind what the status says
    was ``published``, so that the published key must be looked up by its version (``detect``). Not for a key whose
    status names another location (a new Transit key or mount is a new key, not a rollback), nor when the latest
    version was deleted or destroyed (``CurrentKeyDeleted``)."""
    if published is None or published.location != location or published.kid in _held_kids(history):
        return False
    return history.current is not None or not history.current_version


def detect(history: KeyHistory, published: Published, found: tuple[bool, str | None],
           configmap: Mapping[str, Any] | None) -> Rollback | None:
    """A ``Rollback`` for a ``suspect`` record, given what the store holds under the published key's version:
    ``found`` is (whether its history has that version at all, the kid there if it can still be read). None when it
    holds the published key (history moved on) or the version cannot be read (that proves nothing). ``configmap``
    (the source ConfigMap as read) supplies the lost public keys."""
    exists, kid = found
    if kid == published.kid or (exists and kid is None):
        return None
    lost = lost_keys(configmap, published, _held_kids(history, pending=False))
    return Rollback(published, history.current, tuple(lost))


def lost_keys(configmap: Mapping[str, Any] | None, published: Published, held: Iterable[str]) -> list[LostKey]:
    """The keys a published ConfigMap lists (``jwks.json`` order; public key from ``<kid>.pem``) that Vault no
    longer ``held``; a staged key counts as lost too (it may have signed since), as the rollback's write replaces it.

    The ConfigMap is its namespace's to edit, so only what the status attests is taken, and nothing as written: a
    kid in ``published.kids`` whose PEM has that kid (RFC 7638 thumbprint), re-encoded as one SPKI block, under the
    ``alg`` the status names for the published key, else the JWK's if that key signs with it; an attested kid of a
    JWK with a lost key's thumbprint is that key's alias (an imported key's legacy kid).
    """
    data = (configmap or {}).get("data") or {}
    try:
        entries = [entry for entry in json.loads(data.get("jwks.json") or "{}").get("keys") or []
                   if isinstance(entry, dict)]
    except (ValueError, AttributeError):
        return []
    held = set(held)
    found: dict[str, LostKey] = {}
    for jwk in entries:
        kid = jwk.get("kid")
        algorithm = published.algorithm if kid == published.kid and published.algorithm else jwk.get("alg")
        pem = data.get(f"{kid}.pem")
        if kid in held or kid in found or kid not in published.kids or not isinstance(pem, str) \
                or not isinstance(algorithm, str):
            continue
        try:
            canonical = keys.canonical_public_pem(pem, algorithm)
            if keys.kid_for(canonical) == kid:
                found[kid] = LostKey(kid, algorithm, canonical)
        except (ValueError, keys.KeySpecError):
            continue
    for jwk in entries:
        alias = jwk.get("kid")
        if alias in held or alias in found or alias not in published.kids:
            continue
        try:
            target = found.get(keys.jwk_thumbprint({name: str(value) for name, value in jwk.items()}))
        except keys.KeySpecError:
            continue
        if target is not None and alias not in target.legacy_kids:
            found[target.kid] = dataclasses.replace(target, legacy_kids=(*target.legacy_kids, alias))
    return list(found.values())
