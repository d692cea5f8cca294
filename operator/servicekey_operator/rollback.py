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

"Behind" is decided from what the status recorded (``Published``) against what Vault holds now: the published
current key is nowhere in the record's history, and either no record exists at all or its current key's version
(the KV version, or the Transit key version: what ``status.keyVersion`` counts) is not above the published one.
Versions, not creation times: a status time has whole seconds, and a rotation within the second of the key before
it is common. Anything else (another replica rotated further, a spec change, an administrator deleting the latest
version) is normal history and handled as such.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from servicekey_operator import keys
from servicekey_operator.vault.records import KeyHistory, LostKey, StoredKey, parse_time

REASON = "VaultRolledBack"


@dataclass(frozen=True)
class Published:
    """What a ServiceKey's status says the operator last published: the current key's ``kid``, its ``version``
    (``keyVersion``), its creation (``lastRotationTime``, seconds precision), where it lives (``vaultPath``), and
    every kid the operator
    published (``publishedKeyIds``, with ``keyId`` and ``pendingKeyId``): only those are taken back from the
    ConfigMap, which its namespace's tenant can write to."""

    kid: str
    version: int
    created_at: datetime.datetime
    location: str
    kids: frozenset[str]


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
    return Published(kid, version, created_at, location, frozenset(kids))


@dataclass(frozen=True)
class Rollback:
    """Vault holds an older state of a key than was published: ``restored`` is its current key now (None: no
    record at all), ``lost`` the published public keys it no longer holds, newest first."""

    published: Published
    restored: StoredKey | None
    lost: tuple[LostKey, ...]

    def describe(self, location: str, written: StoredKey) -> str:
        """The Event's text: what Vault lost, what stays published, what signs now (kids only, no key)."""
        if self.restored is None:
            found = f"Vault has no record at {location}"
        else:
            found = (f"Vault's current key at {location} is {self.restored.kid} (version {self.restored.version}, "
                     f"created {_format(self.restored.created_at)})")
        lost = ", ".join(key.kid for key in self.lost) or "none that the ConfigMap still listed"
        return (f"Vault was rolled back (restored from an older snapshot?): {found}, but {self.published.kid} "
                f"(created {_format(self.published.created_at)}) was published. Private keys lost: {lost}; their "
                f"public keys stay in the JWKS until retainPrevious drops them. Rotated forward to {written.kid} "
                f"(version {written.key_version}), which signs from now on"
                + (f"; {self.restored.kid} signs no more" if self.restored else ""))


def _format(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _held_kids(history: KeyHistory) -> set[str]:
    held = {key.kid for key in (history.current, history.pending, *history.previous) if key is not None}
    return held | {lost.kid for key in (history.current, *history.previous) if key for lost in key.lost_keys}


def detect(history: KeyHistory, published: Published | None, location: str,
           configmap: Mapping[str, Any] | None) -> Rollback | None:
    """A ``Rollback`` when Vault's ``history`` (read at ``location``, as ``status.vaultPath`` shows it) is behind
    what the status says was ``published``; ``configmap`` (the source ConfigMap as read) supplies the lost public
    keys. None for normal history, and for a key whose status names another location (a moved path is a new
    key, not a rollback)."""
    if published is None or published.location != location or published.kid in _held_kids(history):
        return None
    current = history.current
    if current is not None:
        if current.key_version > published.version:
            return None  # further on than what was published: a later rotation by another replica
    elif history.current_version:
        return None  # the latest version was deleted or destroyed: CurrentKeyDeleted, not a rollback
    return Rollback(published, current, tuple(lost_keys(configmap, published.kids, _held_kids(history))))


def lost_keys(configmap: Mapping[str, Any] | None, attested: frozenset[str],
              held: Iterable[str]) -> list[LostKey]:
    """The keys a published ConfigMap lists (``jwks.json`` order; public key from ``<kid>.pem``) that Vault no
    longer ``held``, taking only kids the status ``attested`` and whose PEM has that kid (RFC 7638 thumbprint);
    a JWK under another kid with the same thumbprint is an alias of it (an imported key's legacy kid)."""
    data = (configmap or {}).get("data") or {}
    try:
        entries = json.loads(data.get("jwks.json") or "{}").get("keys") or []
    except (ValueError, AttributeError):
        return []
    held = set(held)
    found: dict[str, LostKey] = {}
    for jwk in entries:
        kid, algorithm, pem = jwk.get("kid"), jwk.get("alg"), data.get(f"{jwk.get('kid')}.pem")
        if kid in held or kid not in attested or algorithm not in keys.ALGORITHMS or not isinstance(pem, str):
            continue
        try:
            if keys.kid_for(pem) == kid:
                found[kid] = LostKey(kid, algorithm, pem)
        except (ValueError, keys.KeySpecError):
            continue
    for jwk in entries:
        try:
            thumbprint = keys.jwk_thumbprint({name: str(value) for name, value in jwk.items()})
        except keys.KeySpecError:
            continue
        target = found.get(thumbprint)
        if target is not None and jwk.get("kid") != thumbprint:
            found[thumbprint] = LostKey(target.kid, target.algorithm, target.public_pem,
                                        (*target.legacy_kids, str(jwk.get("kid"))))
    return list(found.values())
