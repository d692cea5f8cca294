"""Check DESIGN.md's invariants against a live cluster and Vault, as far as they can be observed at rest.

``check()`` reads ServiceKeys, ConfigMaps, Secrets and Events from Kubernetes, the key records from
Vault (and, if asked, the raw etcd keyspace) and returns every violation it can see:

- invariant 1: private key material in a Kubernetes object: PEM private-key armour, a JWK with a private
  member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``), or the secret numbers of one of the private keys
  held in Vault (base64 or base64url in any alignment, once more base64-encoded, or raw bytes in etcd);
- invariant 2: a Ready ServiceKey's ConfigMap whose ``kid``/``public.pem`` is not Vault's current key
  (the latest KV version), or a Vault record whose private key is not the private half of its public key;
- invariant 3: a JWKS that is not the current key, then the pending key (``<path>/pending``) if there
  is one, then the ``retainPrevious`` previous live KV versions, and nothing else;
- the ConfigMap contract: a ConfigMap with our labels whose owner reference is not its live
  ServiceKey's uid, a copy in another namespace whose ServiceKey is gone, or that differs from its source;
- Vault secrets under the prefix whose owner ServiceKey no longer exists (``OrphanedSecret``), and a
  key or a Transit key held in the records of two ServiceKeys (``SharedKey``);
- invariant 7 (tenants are isolated): a Ready ServiceKey whose record does not prove it is this
  ServiceKey's, in this incarnation of its namespace (``OwnershipUnproven``: another owner, or a namespace
  deleted and created again without an adoption), and a copy from another namespace that stands where a
  ServiceKey of the target namespace publishes its own key, or that does not name its source's uid.

Limits, by construction of an at-rest check:
- The operator records each owner's deletion policy in the secret's custom_metadata
  (``servicekey.io/deletion-policy``), so a ``Delete`` leftover is reported as a violation. A secret
  without it (claimed by an operator from before that record) is an informational orphan: the deleted
  ServiceKey's spec is gone, so a ``Retain`` kept on purpose cannot be told from a failed ``Delete``.
- Only at-rest state is seen: a key that signed before it was published, or a rotation that produced two
  keys, leaves no mark that can be told from legitimate history. Invariants 4-6 need the test suites.
- The etcd scan reads the latest revision only (not the MVCC history), and sees nothing if etcd
  encryption at rest is on. PEM armour and private JWKs in Secrets of type ``kubernetes.io/tls`` or
  ``kubernetes.io/ssh-auth`` are expected and not reported, unless they are one of Vault's keys.

No finding's text ever contains key material: findings name where something was found and whose key it is.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hvac
import hvac.exceptions
import kubernetes.client
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from kubernetes.client.rest import ApiException

from servicekey_operator import keys, publish
from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.errors import InvalidSpec
from servicekey_operator.spec import DesiredKey, desired_key
from servicekey_operator.status import vault_location
from servicekey_operator.vault.kv import PENDING_SUFFIX
from servicekey_operator.vault.records import (
    ADOPTED_NAMESPACE_UID_METADATA_KEY,
    DELETION_POLICY_METADATA_KEY,
    LOST_KEYS_FIELD,
    OWNER_METADATA_KEY,
    LostKey,
    live_versions,
    newest_version_of,
    parse_lost_keys,
)

__all__ = [
    "CONFIGMAP_OWNERSHIP",
    "CURRENT_KEY_MISMATCH",
    "DELETION_POLICY_METADATA_KEY",
    "FOREIGN_TRANSIT_VERSION",
    "INVARIANT_NAMES",
    "JWKS_MISMATCH",
    "KEY_CHURN",
    "MISSING_STATUS",
    "ORPHANED_SECRET",
    "OWNERSHIP_UNPROVEN",
    "PRIVATE_JWK",
    "PRIVATE_KEY_MATERIAL",
    "ROLLED_BACK",
    "SHARED_KEY",
    "KeyRecord",
    "MaterialScanner",
    "VaultKey",
    "Violation",
    "check",
    "configmap_violations",
    "expected_jwks_kids",
    "orphan_violations",
    "ownership_proof_violations",
    "ownership_violations",
    "record_violations",
    "rollback_violations",
    "shared_key_violations",
    "summary",
]

INVARIANT_NAMES = {
    1: "private key material only in Vault",
    2: "the ConfigMap publishes Vault's current key",
    3: "the JWKS holds the current, pending and retained keys",
    4: "one rotation request yields one key",
    6: "no pass ends without a status",
    7: "tenants are isolated",
    9: "every state Vault allows is handled",
}
PRIVATE_KEY_MATERIAL = "PrivateKeyMaterial"
PRIVATE_JWK = "PrivateJwkParameter"
CURRENT_KEY_MISMATCH = "CurrentKeyMismatch"
JWKS_MISMATCH = "JwksMismatch"
CONFIGMAP_OWNERSHIP = "ConfigMapOwnership"
ORPHANED_SECRET = "OrphanedSecret"
SHARED_KEY = "SharedKey"
OWNERSHIP_UNPROVEN = "OwnershipUnproven"
KEY_CHURN = "KeyChurn"
FOREIGN_TRANSIT_VERSION = "ForeignTransitVersion"
MISSING_STATUS = "MissingStatus"
ROLLED_BACK = "VaultRolledBack"
# Reasons a version may be written for without a new request or spec: time, and states made outside the operator.
_UNREQUESTED_REASONS = frozenset({"Scheduled", "TransitRotated", "CurrentKeyDeleted", "VaultRolledBack"})
# How long a new ServiceKey may go without a Ready condition before that is reported (a pass takes well under a
# second; an RSA-4096 flood queues keys for seconds).
STATUS_GRACE_SECONDS = 120.0
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
# Secret types whose job is to hold private keys that are not ours: armour there is expected.
KEY_HOLDING_SECRET_TYPES = ("kubernetes.io/tls", "kubernetes.io/ssh-auth")
_GROUP, _VERSION, _PLURAL = publish.API_GROUP, publish.API_VERSION, "servicekeys"


@dataclass(frozen=True)
class Violation:
    """One thing found wrong. ``detail`` never contains key material.

    ``invariant`` is DESIGN.md's invariant number, or None for the ConfigMap ownership contract and for
    orphaned secrets. ``informational`` findings (orphaned secrets that a ``Retain`` may have kept on
    purpose) are reported but are not violations; ``possibly_retained`` says so for ``OrphanedSecret``.
    """

    invariant: int | None
    check: str
    kind: str
    object: str
    detail: str
    informational: bool = False
    possibly_retained: bool | None = None

    @property
    def invariant_name(self) -> str:
        """What the broken rule is called."""
        if self.invariant is not None:
            return INVARIANT_NAMES.get(self.invariant, f"invariant {self.invariant}")
        return {ORPHANED_SECRET: "deletionPolicy", SHARED_KEY: "one key per ServiceKey"}.get(
            self.check, "ConfigMap ownership")

    def __str__(self) -> str:
        label = f"invariant {self.invariant}" if self.invariant is not None else "contract"
        if self.informational:
            label = "info"
        return f"[{label}] {self.check} {self.kind} {self.object}: {self.detail}"


# --- What Vault holds, read independently of the operator's own parsing --------------------------------


@dataclass(frozen=True)
class VaultKey:
    """One key version (or the pending key, ``version`` 0) as the raw record names it."""

    version: int
    kid: str
    algorithm: str
    public_pem: str
    private_pem: str = field(default="", repr=False)
    transit_key: str | None = None
    transit_version: int | None = None
    transit_mount: str | None = None
    owner: str | None = None
    owner_namespace_uid: str | None = None
    key_size: str = ""
    rotate_annotation: str = ""
    rotation_reason: str = ""
    legacy_kids: tuple[str, ...] = ()
    # Keys published before Vault was rolled back, whose private halves it lost, that this version replaced, parsed
    # as the operator parses them (the JWKS lists what the operator reads; a skipped entry must be skipped here too).
    lost: tuple[LostKey, ...] = ()

    @classmethod
    def from_data(cls, version: int, data: Mapping[str, Any]) -> VaultKey:
        """Parse a KV data dict; raise KeyError/ValueError when it is not a key record."""
        transit_version = data.get("transit_version")
        return cls(version=version, kid=str(data["kid"]), algorithm=str(data["algorithm"]),
                   public_pem=str(data["public_key"]), private_pem=str(data.get("private_key") or ""),
                   transit_key=data.get("transit_key") or None,
                   transit_version=int(transit_version) if transit_version else None,
                   transit_mount=data.get("transit_mount") or None, owner=data.get("owner") or None,
                   owner_namespace_uid=data.get("owner_namespace_uid") or None,
                   key_size=str(data.get("key_size") or ""), rotate_annotation=str(data.get("rotate_annotation") or ""),
                   rotation_reason=str(data.get("rotation_reason") or ""),
                   legacy_kids=tuple(kid for kid in str(data.get("legacy_kids") or "").split(",") if kid),
                   lost=parse_lost_keys(data.get(LOST_KEYS_FIELD)))

    @property
    def asked_for(self) -> tuple[str, str, bool, str]:
        """What a new version must differ in from the one before it, unless time or an outside state wrote it:
        algorithm, key size, engine, rotation request."""
        return self.algorithm, self.key_size, self.transit_key is not None, self.rotate_annotation


@dataclass(frozen=True)
class KeyRecord:
    """A KV v2 secret of the operator: its live versions (newest first), the pending key, its owner."""

    mount: str
    path: str
    owner: str | None
    custom_metadata: Mapping[str, str]
    current_version: int
    versions: tuple[VaultKey, ...]
    pending: VaultKey | None = None
    malformed: tuple[str, ...] = ()
    # Public halves of Transit key versions, by (key name, version), read for transit records only.
    transit_public: Mapping[tuple[str, int], str] = dataclasses.field(default_factory=dict)

    @property
    def location(self) -> str:
        """``<mount>/<path>``."""
        return f"{self.mount}/{self.path}"

    @property
    def current(self) -> VaultKey | None:
        """The latest KV version, if it is live (a deleted latest version means no current key)."""
        if self.versions and self.versions[0].version == self.current_version:
            return self.versions[0]
        return None


def expected_jwks_kids(record: KeyRecord, retain_previous: int) -> list[str]:
    """What the JWKS must list, in order: current, pending (if any), then the retained previous keys, each rank
    preceded by the lost keys (published before Vault was rolled back) of the version of the rank before it;
    each key followed by its legacy kids (an imported key's kids of before)."""
    current = record.current
    if current is None:
        return []
    chain = record.versions[:retain_previous + 1]
    # (kid, its legacy kids, a key Vault holds?) in the order the JWKS lists them; each kid once, where it first
    # comes, and a lost key that a version holds again is that version's key.
    listed: list[tuple[str, tuple[str, ...], bool]] = [
        (key.kid, key.legacy_kids, True) for key in (current, *([record.pending] if record.pending else []))]
    for rank in range(1, retain_previous + 1):
        if rank - 1 < len(chain):
            listed += [(lost.kid, lost.legacy_kids, False) for lost in chain[rank - 1].lost]
        if rank < len(chain):
            listed.append((chain[rank].kid, chain[rank].legacy_kids, True))
    chosen: dict[str, tuple[tuple[str, ...], bool]] = {}
    for kid, aliases, held in listed:
        if kid not in chosen or (held and not chosen[kid][1]):
            chosen[kid] = (aliases, held)
    kids: list[str] = []
    for kid, (aliases, _held) in chosen.items():
        for name in (kid, *aliases):
            if name not in kids:
                kids.append(name)
    return kids


def lost_keys_published(record: KeyRecord, retain_previous: int) -> dict[str, VaultKey]:
    """The lost keys (``VaultKey.lost``) the JWKS must still list, by kid, as keys of version 0 with no private
    half."""
    expected = set(expected_jwks_kids(record, retain_previous)) - {key.kid for key in record.versions}
    return {lost.kid: VaultKey(version=0, kid=lost.kid, algorithm=lost.algorithm, public_pem=lost.public_pem,
                               legacy_kids=lost.legacy_kids)
            for key in record.versions for lost in key.lost if lost.kid in expected}


def legacy_aliases(record: KeyRecord) -> dict[str, str]:
    """Legacy kid -> the kid of the key it names, for every key of the record (lost keys too)."""
    keys = [*record.versions, *([record.pending] if record.pending else [])]
    aliases = {alias: key.kid for key in keys for alias in key.legacy_kids}
    return aliases | {alias: lost.kid for key in record.versions for lost in key.lost for alias in lost.legacy_kids}


def _kid_of(public_pem: str) -> str | None:
    try:
        return keys.kid_for(public_pem)
    except (ValueError, keys.KeySpecError):
        return None


def _private_kid(private_pem: str) -> str | None:
    try:
        return keys.kid_for(keys.public_pem_from_private(private_pem))
    except (ValueError, keys.KeySpecError):
        return None


def record_violations(record: KeyRecord, owner: str) -> list[Violation]:
    """Invariant 2 inside Vault: every live version's (and the pending key's) private key is the private
    half of its public key, and its kid is the public key's thumbprint."""
    found = [Violation(2, CURRENT_KEY_MISMATCH, "VaultSecret", record.location, problem)
             for problem in record.malformed]
    if record.current is None:
        found.append(Violation(2, CURRENT_KEY_MISMATCH, "VaultSecret", record.location,
                               f"no live current key (latest version {record.current_version} is missing, deleted "
                               f"or destroyed), although ServiceKey {owner} is Ready"))
    named = [*record.versions, *([record.pending] if record.pending else [])]
    found += churn_violations(record) + foreign_transit_violations(record)
    for key in record.versions:
        for lost in key.lost:
            if _kid_of(lost.public_pem) != lost.kid:
                found.append(Violation(2, CURRENT_KEY_MISMATCH, "VaultSecret", record.location,
                                       f"version {key.version} carries lost key {lost.kid}, whose public_key does not "
                                       "have that kid"))
    for key in named:
        which = f"version {key.version}" if key.version else "the pending key"
        public_kid = _kid_of(key.public_pem)
        if public_kid != key.kid:
            found.append(Violation(2, CURRENT_KEY_MISMATCH, "VaultSecret", record.location,
                                   f"{which} names kid {key.kid} but its public_key "
                                   + (f"has kid {public_kid}" if public_kid else "is not a public key PEM")))
        if key.transit_key:
            transit_public = record.transit_public.get((key.transit_key, key.transit_version or 0))
            if transit_public is not None and _kid_of(transit_public) != public_kid:
                found.append(Violation(2, CURRENT_KEY_MISMATCH, "VaultSecret", record.location,
                                       f"{which}: Transit key {key.transit_key} version {key.transit_version} is "
                                       "not the private half of the recorded public_key"))
            continue
        if not key.private_pem:
            found.append(Violation(2, CURRENT_KEY_MISMATCH, "VaultSecret", record.location,
                                   f"{which} has no private_key"))
        elif _private_kid(key.private_pem) != public_kid:
            found.append(Violation(2, CURRENT_KEY_MISMATCH, "VaultSecret", record.location,
                                   f"{which}: private_key is not the private half of its public_key (kid {key.kid})"))
    return found


def churn_violations(record: KeyRecord) -> list[Violation]:
    """Invariant 4: a new key that nothing asked for (another kid, but the same algorithm, size, engine and
    rotation request as the version right before it, written for no scheduled or outside reason): a pass that
    wrote a key it should have found. Only consecutive live versions are compared."""
    found = []
    for newer, older in zip(record.versions, record.versions[1:], strict=False):
        if newer.version == older.version + 1 and newer.rotation_reason not in _UNREQUESTED_REASONS \
                and newer.asked_for == older.asked_for and newer.kid != older.kid:
            found.append(Violation(4, KEY_CHURN, "VaultSecret", record.location,
                                   f"version {newer.version} (reason {newer.rotation_reason or 'none'}) replaced "
                                   f"version {older.version} although nothing asked for a new key: same algorithm, "
                                   "size, engine and rotation request"))
    return found


def foreign_transit_violations(record: KeyRecord) -> list[Violation]:
    """Invariant 9: the current key's Transit key has a version newer than any the record names (rotated outside
    the operator, and not adopted yet): a signer that names no ``key_version`` signs with a key no JWKS lists.
    Needs ``record.transit_public``."""
    current = record.current
    if current is None or not current.transit_key:
        return []
    keys = (*record.versions, *([record.pending] if record.pending else []))
    named = newest_version_of(current.transit_key, ((key.transit_key, key.transit_version) for key in keys))
    newest = newest_version_of(current.transit_key, record.transit_public)
    if newest <= named:
        return []
    return [Violation(9, FOREIGN_TRANSIT_VERSION, "VaultSecret", record.location,
                      f"Transit key {current.transit_key} has version {newest}, which no record names (newest named: "
                      f"{named}): a signer that names no key_version signs with a key that no JWKS lists")]


def rollback_violations(owner: str, status: Mapping[str, Any], record: KeyRecord | None, location: str,
                        retain_previous: int) -> list[Violation]:
    """Invariant 9 after a restore of Vault: the status publishes a key that Vault's record (at ``location``) no
    longer holds, as a version, the pending key or a lost key (``rollback``): until the operator's next pass
    rotates forward, signers sign with the restored, older key. Once it has, the lost keys still published are
    reported for information. The caller passes only statuses that name the key's location as its spec does (a new
    Transit key or mount is a new key); a deleted latest version is ``record_violations``'."""
    published = status.get("keyId")
    if record is not None and record.current is None and record.current_version:
        return []
    if record is None:
        if not published:
            return []
        return [Violation(9, ROLLED_BACK, "ServiceKey", owner,
                          f"publishes {published}, but Vault holds no secret at {location}: Vault was restored to a "
                          "state older than the key (or the secret was deleted); the operator's next pass writes a "
                          "new key and keeps the published public keys")]
    held = {key.kid for key in (*record.versions, *([record.pending] if record.pending else []))}
    held |= {lost.kid for key in record.versions for lost in key.lost}
    if published and published not in held:
        current = record.current
        now_current = f"{current.kid} (version {current.version})" if current else "none"
        return [Violation(9, ROLLED_BACK, "ServiceKey", owner,
                          f"publishes {published}, which Vault's record at {location} no longer holds (its current "
                          f"key: {now_current}): Vault was restored to an older state; signers sign with the "
                          "restored key until the operator's next pass rotates forward")]
    lost = sorted(lost_keys_published(record, retain_previous))
    if not lost:
        return []
    return [Violation(9, ROLLED_BACK, "VaultSecret", location,
                      f"Vault was rolled back and lost the private keys of {', '.join(lost)}; their public keys stay "
                      "published until retainPrevious drops them", informational=True)]


def status_violations(servicekey: Mapping[str, Any], now: datetime.datetime,
                      grace_seconds: float = STATUS_GRACE_SECONDS) -> list[Violation]:
    """Invariant 6: a ServiceKey older than ``grace_seconds`` without a Ready condition (a pass that ended without
    a status, or no operator serving its namespace)."""
    metadata = servicekey["metadata"]
    conditions = (servicekey.get("status") or {}).get("conditions") or []
    created = metadata.get("creationTimestamp")
    if any(c.get("type") == "Ready" for c in conditions) or not created:
        return []
    age = (now - datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00"))).total_seconds()
    if age < grace_seconds:
        return []
    return [Violation(6, MISSING_STATUS, "ServiceKey", f"{metadata['namespace']}/{metadata['name']}",
                      f"no Ready condition {age:.0f} s after its creation: a pass ended without a status, or no "
                      "operator serves this namespace")]


def _parse_jwks(text: str | None) -> list[Mapping[str, Any]] | None:
    try:
        document = json.loads(text or "")
    except ValueError:
        return None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        return None
    return entries


def _jwk_problems(jwk: Mapping[str, Any], expected: Mapping[str, VaultKey], aliases: Mapping[str, str]) -> list[str]:
    kid = jwk.get("kid")
    problems = [f"JWK {kid} lacks {member!r}" for member in ("kid", "kty", "alg") if not jwk.get(member)]
    if jwk.get("use") != "sig":
        problems.append(f"JWK {kid} has use {jwk.get('use')!r}, not 'sig'")
    try:
        thumbprint = keys.jwk_thumbprint({name: str(value) for name, value in jwk.items()})
    except keys.KeySpecError:
        thumbprint = None
    if kid and thumbprint != aliases.get(str(kid), kid):
        problems.append(f"JWK {kid}: its public parameters do not have that kid (thumbprint {thumbprint})")
    stored = expected.get(aliases.get(str(kid), str(kid)))
    if stored is not None and jwk.get("alg") != stored.algorithm:
        problems.append(f"JWK {kid} says alg {jwk.get('alg')!r}, Vault's key is {stored.algorithm}")
    return problems


def configmap_violations(configmap_ref: str, data: Mapping[str, str] | None, record: KeyRecord,
                         retain_previous: int) -> list[Violation]:
    """Invariants 2 and 3 for one published ConfigMap (``data`` None: it does not exist)."""
    current = record.current
    if current is None:
        return []  # reported by record_violations
    if data is None:
        return [Violation(2, CURRENT_KEY_MISMATCH, "ConfigMap", configmap_ref,
                          f"missing, although Vault's current key is {current.kid} (version {current.version})")]
    found: list[Violation] = []

    def mismatch(detail: str) -> None:
        found.append(Violation(2, CURRENT_KEY_MISMATCH, "ConfigMap", configmap_ref, detail))

    if data.get("kid") != current.kid:
        mismatch(f"kid is {data.get('kid')!r}, Vault's current key is {current.kid} (version {current.version} "
                 f"at {record.location})")
    pem_kid = _kid_of(data.get("public.pem") or "")
    if pem_kid is None:
        mismatch("public.pem is missing or not a public key PEM")
    elif pem_kid != current.kid:
        mismatch(f"public.pem is the key {pem_kid}, Vault's current key is {current.kid} (version "
                 f"{current.version})")

    jwks = _parse_jwks(data.get("jwks.json"))
    if jwks is None:
        found.append(Violation(3, JWKS_MISMATCH, "ConfigMap", configmap_ref, "jwks.json is missing or not a JWK Set"))
        return found
    kids = [str(jwk.get("kid")) for jwk in jwks]
    expected = expected_jwks_kids(record, retain_previous)
    roles: dict[str, str] = {current.kid: f"current key {current.kid} (version {current.version})"}
    if record.pending is not None:
        roles.setdefault(record.pending.kid, f"pending key {record.pending.kid}, which must be published before "
                                             "Vault signs with it,")
    by_kid = {key.kid: key for key in record.versions}
    if record.pending is not None:
        by_kid.setdefault(record.pending.kid, record.pending)
    lost = lost_keys_published(record, retain_previous)
    aliases = legacy_aliases(record)
    for kid in expected:
        if kid in aliases:
            roles.setdefault(kid, f"legacy kid {kid} of key {aliases[kid]}")
        elif kid in lost and kid not in by_kid:
            roles.setdefault(kid, f"lost key {kid} (published before Vault was rolled back, its private half gone)")
        else:
            roles.setdefault(kid, f"retained key {kid} (version {by_kid[kid].version}, within retainPrevious "
                                  f"{retain_previous})")

    def jwks_problem(detail: str) -> None:
        found.append(Violation(3, JWKS_MISMATCH, "ConfigMap", configmap_ref, detail))

    for kid in expected:
        if kid not in kids:
            jwks_problem(f"{roles[kid]} is missing from jwks.json")
    for kid in kids:
        if kid not in expected:
            known = f"version {by_kid[kid].version}, beyond retainPrevious {retain_previous}" if kid in by_kid \
                else "not a key of this Vault record"
            jwks_problem(f"jwks.json lists {kid} ({known})")
    if len(set(kids)) != len(kids):
        jwks_problem("jwks.json lists a kid more than once")
    if set(kids) == set(expected) and kids != expected:
        jwks_problem(f"jwks.json order is {kids}, expected {expected} (current first, then pending, then the "
                     "retained keys newest first)")
    for jwk in jwks:
        for problem in _jwk_problems(jwk, lost | by_kid, aliases):
            jwks_problem(problem)
    return found


# --- Private key material ---------------------------------------------------------------------------

_ARMOUR = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_ARMOUR_BYTES = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_JWK_KTY = re.compile(r'\\*"kty\\*"\s*:')
_JWK_PRIVATE_MEMBER = re.compile(r'\\*"(d|p|q|dp|dq|qi)\\*"\s*:\s*\\*"[A-Za-z0-9_=-]{8,}')
_ESCAPES = re.compile(r"\\+[nrt]|\s+")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_=-]{24,}")
WINDOW_CHARS = 24   # 18 bytes of secret: no chance collision, and any leak of 48+ characters contains one
WINDOW_BYTES = 18


def _secret_numbers(private_pem: str) -> list[bytes]:
    """The secret parts of a private key as big-endian bytes (never the public parts)."""
    try:
        private_key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm):
        return []  # not a private key we can read, or an unsupported type: nothing to look for
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.private_numbers()
        values = (numbers.d, numbers.p, numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp)
        return [value.to_bytes((value.bit_length() + 7) // 8, "big") for value in values]
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        length = (private_key.curve.key_size + 7) // 8
        return [private_key.private_numbers().private_value.to_bytes(length, "big")]
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return [private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())]
    return []


def _windows(text: str, width: int) -> list[str]:
    if len(text) < width:
        return []
    starts = {*range(0, len(text) - width + 1, width), len(text) - width}
    return [text[start:start + width] for start in sorted(starts)]


def text_windows(private_pem: str) -> set[str]:
    """Base64 and base64url snippets that any text encoding of the key's secret numbers must contain.

    A secret starts at one of three offsets modulo 3 inside whatever container holds it (PKCS#8,
    PKCS#1, a JWK's ``d``...), so each secret is encoded from byte 0, 1 and 2 on, whole 3-byte groups
    only: those characters are the same in every base64 text that holds the secret.
    """
    found: set[str] = set()
    for secret in _secret_numbers(private_pem):
        for shift in range(3):
            chunk = secret[shift:]
            chunk = chunk[:len(chunk) - len(chunk) % 3]
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                found.update(_windows(encode(chunk).decode("ascii"), WINDOW_CHARS))
    return found


def byte_windows(private_pem: str) -> set[bytes]:
    """Raw-byte snippets of the key's secret numbers (DER in a Secret or ConfigMap binaryData, in etcd)."""
    found: set[bytes] = set()
    for secret in _secret_numbers(private_pem):
        if len(secret) >= WINDOW_BYTES:
            starts = {*range(0, len(secret) - WINDOW_BYTES + 1, WINDOW_BYTES), len(secret) - WINDOW_BYTES}
            found.update(secret[start:start + WINDOW_BYTES] for start in starts)
    return found


def _decoded_runs(text: str) -> Iterator[bytes]:
    """Long base64 runs in ``text``, decoded (one level), for material hidden by one more encoding."""
    for run in _BASE64_RUN.findall(text):
        if len(run) < 40:
            continue
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            body = run.rstrip("=")
            try:
                yield decode(body + "=" * (-len(body) % 4))
                break
            except (binascii.Error, ValueError):
                continue


class MaterialScanner:
    """Finds private key material in text, bytes and JSON-like objects; reports where, never what.

    ``labels`` maps each known private key PEM (from Vault) to a description of whose key it is.
    """

    def __init__(self, labels: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = labels.items() if isinstance(labels, Mapping) else labels
        self._text: dict[str, str] = {}
        self._bytes: dict[bytes, str] = {}
        for private_pem, label in pairs:
            for window in text_windows(private_pem):
                self._text.setdefault(window, label)
            for window in byte_windows(private_pem):
                self._bytes.setdefault(window, label)

    @property
    def known_keys(self) -> int:
        """How many text snippets are looked for (0: no keys from Vault)."""
        return len(self._text)

    def _known_in_text(self, text: str) -> set[str]:
        owners: set[str] = set()
        if not self._text:
            return owners
        for run in _BASE64_RUN.findall(_ESCAPES.sub("", text).replace("\\/", "/")):
            for start in range(len(run) - WINDOW_CHARS + 1):
                label = self._text.get(run[start:start + WINDOW_CHARS])
                if label is not None:
                    owners.add(label)
                    break
        return owners

    def _known_in_bytes(self, blob: bytes) -> set[str]:
        return {label for window, label in self._bytes.items() if window in blob}

    def scan_text(self, text: str, *, suspicious_shapes: bool = True, decode: bool = True) -> list[str]:
        """What private material ``text`` holds, as descriptions. ``suspicious_shapes`` also reports PEM
        armour and private JWK members of keys that are not Vault's."""
        findings: list[str] = []
        if suspicious_shapes:
            if _ARMOUR.search(text):
                findings.append("PEM private key armour")
            if _JWK_KTY.search(text):
                members = sorted({match.group(1) for match in _JWK_PRIVATE_MEMBER.finditer(text)})
                if members:
                    findings.append(f"a JWK with private member(s) {', '.join(members)}")
        findings += [f"private key material of {owner}" for owner in sorted(self._known_in_text(text))]
        if decode:
            for blob in _decoded_runs(text):
                inner = self.scan_text(blob.decode("latin-1"), suspicious_shapes=suspicious_shapes, decode=False)
                findings += [f"{finding} (base64-encoded)" for finding in inner]
        return list(dict.fromkeys(findings))

    def scan_bytes(self, blob: bytes, *, suspicious_shapes: bool = True, decode: bool = True) -> list[str]:
        """Like ``scan_text`` for raw bytes (etcd values, decoded Secret data): also finds raw secret bytes."""
        findings = self.scan_text(blob.decode("latin-1"), suspicious_shapes=suspicious_shapes, decode=decode)
        findings += [f"private key material of {owner} (raw bytes)" for owner in sorted(self._known_in_bytes(blob))]
        return list(dict.fromkeys(findings))

    def scan_object(self, obj: Any, *, suspicious_shapes: bool = True) -> list[tuple[str, str]]:
        """(path, finding) for every string in a JSON-like object and every JWK-shaped dict in it."""
        found: list[tuple[str, str]] = []

        def walk(node: Any, path: str) -> None:
            if isinstance(node, Mapping):
                if suspicious_shapes and "kty" in node:
                    members = [member for member in PRIVATE_JWK_MEMBERS if node.get(member)]
                    if members:
                        found.append((path or ".", f"a JWK with private member(s) {', '.join(members)}"))
                for key, value in node.items():
                    walk(value, f"{path}.{key}" if _plain(key) else f"{path}[{key!r}]")
            elif isinstance(node, list | tuple):
                for index, value in enumerate(node):
                    walk(value, f"{path}[{index}]")
            elif isinstance(node, str):
                found.extend((path or ".", finding)
                             for finding in self.scan_text(node, suspicious_shapes=suspicious_shapes))
        walk(obj, "")
        return found


def _plain(key: Any) -> bool:
    return isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) is not None


def _material_violations(kind: str, ref: str, findings: Iterable[tuple[str, str]]) -> list[Violation]:
    violations = []
    for path, finding in dict.fromkeys(findings):
        check = PRIVATE_JWK if finding.startswith("a JWK") else PRIVATE_KEY_MATERIAL
        violations.append(Violation(1, check, kind, ref, f"{path.lstrip('.') or '(object)'}: {finding}"))
    return violations


def scan_kubernetes_object(scanner: MaterialScanner, kind: str, obj: Mapping[str, Any]) -> list[Violation]:
    """Invariant 1 for one object as the API returns it (Secret and binary data decoded first)."""
    metadata = obj.get("metadata") or {}
    ref = f"{metadata.get('namespace')}/{metadata.get('name')}" if metadata.get("namespace") else \
        str(metadata.get("name"))
    suspicious = not (kind == "Secret" and obj.get("type") in KEY_HOLDING_SECRET_TYPES)
    # Base64-encoded fields are scanned decoded (and only so, to report each finding once).
    encoded_fields = {"Secret": ("data",), "ConfigMap": ("binaryData",)}.get(kind, ())
    findings = scanner.scan_object({key: value for key, value in obj.items() if key not in encoded_fields},
                                   suspicious_shapes=suspicious)
    for field_name in encoded_fields:
        for key, value in (obj.get(field_name) or {}).items():
            try:
                blob = base64.b64decode(value or "")
            except (binascii.Error, ValueError):
                continue
            findings += [(f"{field_name}[{key!r}] (decoded)", finding)
                         for finding in scanner.scan_bytes(blob, suspicious_shapes=suspicious)]
    return _material_violations(kind, ref, findings)


def _etcd_object(key: str) -> tuple[str, str, str | None]:
    """``/registry/<resource>/<ns>/<name>`` → (resource, "ns/name", namespace); groups have a dot."""
    segments = key.removeprefix("/registry/").split("/")
    if len(segments) > 1 and "." in segments[0]:
        resource, rest = f"{segments[0]}/{segments[1]}", segments[2:]
    else:
        resource, rest = segments[0], segments[1:]
    namespace = rest[0] if len(rest) == 2 else None
    return resource, "/".join(rest), namespace


def scan_etcd_value(scanner: MaterialScanner, key: str, value: bytes,
                    namespaces: Sequence[str] | None) -> list[Violation]:
    """Invariant 1 for one raw etcd value. Vault's keys are looked for everywhere; PEM armour and private
    JWKs only in the namespaces checked (all when None) and not in key-holding Secret types."""
    resource, ref, namespace = _etcd_object(key)
    in_scope = namespaces is None or namespace in namespaces
    key_holding = resource == "secrets" and any(kind.encode() in value for kind in KEY_HOLDING_SECRET_TYPES)
    suspicious = in_scope and not key_holding
    if resource in ("secrets", "configmaps"):
        findings = scanner.scan_bytes(value, suspicious_shapes=suspicious)
    else:
        findings = scanner.scan_text(value.decode("latin-1"), suspicious_shapes=suspicious)
    return _material_violations(f"etcd {resource}", ref, [("(stored value)", finding) for finding in findings])


# --- Ownership and orphans ----------------------------------------------------------------------------


def ownership_proof_violations(record: KeyRecord, owner: str, namespace_uid: str | None) -> list[Violation]:
    """Invariant 7 for a Ready ServiceKey ``owner`` in the namespace incarnation ``namespace_uid``: its current
    and pending keys must name it, and the namespace uid they were written in must be this one, or one whose
    adoption the operator recorded in the secret's metadata (``servicekey.io/adopted-namespace-uid``)."""
    adopted = record.custom_metadata.get(ADOPTED_NAMESPACE_UID_METADATA_KEY)
    found = []
    for key in (record.current, record.pending):
        if key is None:
            continue
        which = f"version {key.version}" if key.version else "the pending key"
        if key.owner != owner:
            found.append(Violation(7, OWNERSHIP_UNPROVEN, "VaultSecret", record.location,
                                   f"{which} names {key.owner or 'no owner'}, yet ServiceKey {owner} is Ready on it"))
        elif namespace_uid is not None and key.owner_namespace_uid not in {namespace_uid, adopted} - {None}:
            found.append(Violation(7, OWNERSHIP_UNPROVEN, "VaultSecret", record.location,
                                   f"{which} was written in namespace uid {key.owner_namespace_uid or '(none)'}, "
                                   f"not in this namespace (uid {namespace_uid}), and no adoption is recorded: "
                                   f"ServiceKey {owner} inherited another tenant's key"))
    return found




def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _configmap_name_of(servicekey: Mapping[str, Any]) -> str:
    status = servicekey.get("status") or {}
    spec_name = ((servicekey.get("spec") or {}).get("publicKey") or {}).get("configMapName")
    return status.get("configMapName") or spec_name or f"{servicekey['metadata']['name']}-public"


def ownership_violations(configmaps: Iterable[Mapping[str, Any]],
                         servicekeys: Mapping[tuple[str, str], Mapping[str, Any] | None],
                         sources: Mapping[tuple[str, str], Mapping[str, str] | None],
                         own_configmaps: Mapping[tuple[str, str], Iterable[str]] | None = None) -> list[Violation]:
    """ConfigMaps that carry our labels: each must belong to a live ServiceKey.

    ``servicekeys`` maps (namespace, name) to the live ServiceKey (None: it does not exist) for every
    ServiceKey the ConfigMaps name; ``sources`` maps (namespace, name) to the data of the source ConfigMap
    of copies (None: missing); ``own_configmaps`` maps (namespace, ConfigMap name) to the ServiceKeys of that
    namespace that publish their own key under that name.
    """
    own_configmaps = own_configmaps or {}
    found: list[Violation] = []
    for configmap in configmaps:
        metadata = configmap.get("metadata") or {}
        labels = _labels(configmap)
        if labels.get(publish.MANAGED_BY_LABEL) != publish.MANAGED_BY:
            continue
        namespace, name = metadata.get("namespace", ""), metadata.get("name", "")
        ref = f"{namespace}/{name}"

        def problem(detail: str, invariant: int | None = None, check: str = CONFIGMAP_OWNERSHIP,
                    ref: str = ref) -> None:
            found.append(Violation(invariant, check, "ConfigMap", ref, detail))

        owner_name = labels.get(publish.NAME_LABEL)
        if not owner_name:
            problem(f"labelled {publish.MANAGED_BY_LABEL}={publish.MANAGED_BY} but has no {publish.NAME_LABEL} label")
            continue
        source_namespace = labels.get(publish.SOURCE_NAMESPACE_LABEL)
        if source_namespace and source_namespace != namespace:
            displaced = sorted(ref for ref in own_configmaps.get((namespace, name), ()))
            if displaced:
                problem(f"copy of ServiceKey {source_namespace}/{owner_name} stands where {', '.join(displaced)} "
                        "publishes its own key: verifiers there trust another namespace's key", 7)
            servicekey = servicekeys.get((source_namespace, owner_name))
            if servicekey is None:
                problem(f"copy of ServiceKey {source_namespace}/{owner_name}, which does not exist")
                continue
            if labels.get(publish.OWNER_UID_LABEL) != servicekey["metadata"].get("uid"):
                problem(f"copy names ServiceKey uid {labels.get(publish.OWNER_UID_LABEL) or '(none)'}, not the live "
                        f"{source_namespace}/{owner_name} (uid {servicekey['metadata'].get('uid')})", 7)
            published = (servicekey.get("status") or {}).get("publishedNamespaces") or []
            if name != _configmap_name_of(servicekey) or namespace not in published:
                problem(f"copy of ServiceKey {source_namespace}/{owner_name} that it no longer publishes "
                        f"(publishedNamespaces {published}, configMapName {_configmap_name_of(servicekey)})")
                continue
            source_data = sources.get((source_namespace, name))
            if source_data is not None and dict(configmap.get("data") or {}) != dict(source_data):
                problem(f"data differs from the source ConfigMap {source_namespace}/{name}", 2, CURRENT_KEY_MISMATCH)
            continue
        servicekey = servicekeys.get((namespace, owner_name))
        if servicekey is None:
            problem(f"belongs to ServiceKey {namespace}/{owner_name}, which does not exist")
            continue
        uid = servicekey["metadata"].get("uid")
        owner_uids = [ref_.get("uid") for ref_ in metadata.get("ownerReferences") or []
                      if ref_.get("kind") == publish.KIND and ref_.get("name") == owner_name]
        if uid not in owner_uids:
            problem(f"owner reference {owner_uids or 'none'} is not the live ServiceKey {namespace}/{owner_name} "
                    f"(uid {uid})")
        if name != _configmap_name_of(servicekey):
            problem(f"ServiceKey {namespace}/{owner_name} publishes {_configmap_name_of(servicekey)}, not this "
                    "ConfigMap: a leftover that no longer follows rotations")
    return found


def orphan_violations(records: Iterable[KeyRecord], live: Iterable[tuple[str, str]]) -> list[Violation]:
    """Secrets owned by a ServiceKey that no longer exists (see the module docstring for the limit)."""
    alive = {f"{namespace}/{name}" for namespace, name in live}
    found = []
    for record in records:
        if not record.owner or record.owner in alive:
            continue
        policy = record.custom_metadata.get(DELETION_POLICY_METADATA_KEY)
        if policy == "Delete":
            found.append(Violation(None, ORPHANED_SECRET, "VaultSecret", record.location,
                                   f"owned by ServiceKey {record.owner}, which no longer exists, and its "
                                   "deletionPolicy was Delete", possibly_retained=False))
        elif policy == "Retain":
            found.append(Violation(None, ORPHANED_SECRET, "VaultSecret", record.location,
                                   f"owned by ServiceKey {record.owner}, which no longer exists "
                                   f"({len(record.versions)} live version(s)): kept by its deletionPolicy Retain",
                                   informational=True, possibly_retained=True))
        else:
            found.append(Violation(None, ORPHANED_SECRET, "VaultSecret", record.location,
                                   f"owned by ServiceKey {record.owner}, which no longer exists "
                                   f"({len(record.versions)} live version(s)): kept by deletionPolicy Retain, or "
                                   "left behind by a Delete that did not finish (no deletion policy recorded)",
                                   informational=True, possibly_retained=True))
    return found


def shared_key_violations(records: Iterable[KeyRecord]) -> list[Violation]:
    """A key (kid) or a Transit key that is in the records of two ServiceKeys: each ServiceKey's keys are its
    own."""
    holders: dict[str, dict[str, KeyRecord]] = {}
    for record in records:
        for key in (*record.versions, *([record.pending] if record.pending else [])):
            holders.setdefault(f"key {key.kid}", {})[record.location] = record
            if key.transit_key:
                transit = f"{key.transit_mount}/{key.transit_key}" if key.transit_mount else key.transit_key
                holders.setdefault(f"Transit key {transit}", {})[record.location] = record
    found = []
    for what, by_location in holders.items():
        if len({record.owner for record in by_location.values()}) < 2:
            continue
        for location, record in sorted(by_location.items()):
            others = ", ".join(f"{other} (owner {by_location[other].owner})" for other in sorted(by_location)
                               if other != location)
            found.append(Violation(None, SHARED_KEY, "VaultSecret", location,
                                   f"{what} (owner {record.owner}) is also held by {others}"))
    return found


# --- Reading the live state ----------------------------------------------------------------------------


class _Vault:
    """The few KV v2 reads the checker needs, straight from hvac (independent of the operator's store)."""

    def __init__(self, client: hvac.Client) -> None:
        self.client = client
        self.kv = client.secrets.kv.v2

    def kv_mounts(self, default: str) -> list[str]:
        try:
            mounts = self.client.sys.list_mounted_secrets_engines()
            table = mounts.get("data", mounts)
            names = [name.rstrip("/") for name, info in table.items()
                     if isinstance(info, dict) and info.get("type") in ("kv", "generic")]
        except (hvac.exceptions.VaultError, AttributeError):
            names = []
        return sorted({default, *names}, key=len, reverse=True)

    def list_secrets(self, mount: str, folder: str) -> Iterator[str]:
        """Every secret path below ``folder`` (recursively)."""
        try:
            listed = self.kv.list_secrets(path=folder, mount_point=mount)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return
        for entry in listed:
            path = f"{folder.rstrip('/')}/{entry}" if folder else entry
            if entry.endswith("/"):
                yield from self.list_secrets(mount, path)
            else:
                yield path

    def _data(self, mount: str, path: str, version: int | None) -> Mapping[str, Any] | None:
        try:
            reply = self.kv.read_secret_version(path=path, version=version, mount_point=mount,
                                                raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return None
        return (reply.get("data") or {}).get("data") or {}

    def record(self, mount: str, path: str) -> KeyRecord | None:
        """The secret at ``mount/path`` with all its live versions and its pending key, or None."""
        try:
            metadata = self.kv.read_secret_metadata(path=path, mount_point=mount)["data"]
        except hvac.exceptions.InvalidPath:
            return None
        custom = metadata.get("custom_metadata") or {}
        live = live_versions(metadata.get("versions") or {}, datetime.datetime.now(datetime.UTC))
        versions, malformed = [], []
        for number in live:
            data = self._data(mount, path, number)
            if data is None:
                continue  # deleted since the metadata was read (its deletion_time passed meanwhile)
            try:
                versions.append(VaultKey.from_data(number, data))
            except (KeyError, ValueError):
                malformed.append(f"version {number} is not a key record (fields {sorted(data)})")
        pending = None
        pending_data = self._data(mount, f"{path}/{PENDING_SUFFIX}", None)
        if pending_data is not None:
            try:
                pending = VaultKey.from_data(0, pending_data)
            except (KeyError, ValueError):
                malformed.append(f"the pending key is not a key record (fields {sorted(pending_data)})")
        return KeyRecord(mount=mount, path=path, owner=custom.get(OWNER_METADATA_KEY), custom_metadata=custom,
                         current_version=int(metadata.get("current_version") or 0), versions=tuple(versions),
                         pending=pending, malformed=tuple(malformed))

    def transit_public(self, mount: str, record: KeyRecord) -> dict[tuple[str, int], str]:
        found: dict[tuple[str, int], str] = {}
        for key in (*record.versions, *([record.pending] if record.pending else [])):
            if not key.transit_key or (key.transit_key, key.transit_version or 0) in found:
                continue
            try:
                reply = self.client.secrets.transit.read_key(name=key.transit_key, mount_point=mount)["data"]
            except hvac.exceptions.VaultError:
                continue
            for number, info in (reply.get("keys") or {}).items():
                public = (info or {}).get("public_key") if isinstance(info, dict) else None
                if public:
                    found[(key.transit_key, int(number))] = _spki(public)
        return found


def _spki(public_key: str) -> str:
    if "BEGIN" in public_key:
        return public_key
    # Transit hands out Ed25519 public keys as base64 of the 32 raw bytes.
    raw = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    return raw.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def etcd_range(endpoint: str, prefix: str = "/registry/", page_size: int = 500,
               timeout_seconds: float = 30.0) -> Iterator[tuple[str, bytes]]:
    """Every (key, value) under ``prefix`` through etcd's JSON gRPC gateway, page by page."""
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    start, end = prefix.encode(), prefix.encode()[:-1] + bytes([prefix.encode()[-1] + 1])
    while True:
        body = json.dumps({"key": b64(start), "range_end": b64(end), "limit": page_size}).encode()
        request = urllib.request.Request(f"{endpoint.rstrip('/')}/v3/kv/range", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_seconds) as reply:
            page = json.loads(reply.read())
        entries = page.get("kvs") or []
        for entry in entries:
            yield base64.b64decode(entry["key"]).decode("utf-8", "replace"), base64.b64decode(entry.get("value", ""))
        if not page.get("more") or not entries:
            return
        start = base64.b64decode(entries[-1]["key"]) + b"\x00"


class _Kubernetes:
    """The reads the checker makes, as plain dicts."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.events = kubernetes.client.EventsV1Api(client)
        self._servicekeys: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._namespace_uids: dict[str, str | None] = {}

    def plain(self, items: Iterable[Any]) -> list[dict[str, Any]]:
        return [self.client.sanitize_for_serialization(item) for item in items]

    def namespaces(self) -> list[str]:
        return [ns.metadata.name for ns in self.core.list_namespace().items]

    def namespace_uid(self, name: str) -> str | None:
        if name not in self._namespace_uids:
            try:
                self._namespace_uids[name] = self.core.read_namespace(name).metadata.uid
            except ApiException as missing:
                if missing.status != 404:
                    raise
                self._namespace_uids[name] = None
        return self._namespace_uids[name]

    def servicekeys(self, namespace: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(_GROUP, _VERSION, namespace, _PLURAL)["items"]
        for item in items:
            self._servicekeys[(namespace, item["metadata"]["name"])] = item
        return items

    def servicekey(self, namespace: str, name: str) -> dict[str, Any] | None:
        if (namespace, name) not in self._servicekeys:
            try:
                found = self.custom.get_namespaced_custom_object(_GROUP, _VERSION, namespace, _PLURAL, name)
            except ApiException as missing:
                if missing.status != 404:
                    raise
                found = None
            self._servicekeys[(namespace, name)] = found
        return self._servicekeys[(namespace, name)]

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.client.sanitize_for_serialization(self.core.read_namespaced_config_map(name, namespace))
        except ApiException as missing:
            if missing.status == 404:
                return None
            raise


def _is_ready(servicekey: Mapping[str, Any]) -> bool:
    conditions = (servicekey.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _split_location(location: str, kv_mounts: Sequence[str]) -> tuple[str, str]:
    for mount in kv_mounts:
        if location.startswith(mount + "/"):
            return mount, location[len(mount) + 1:]
    mount, _, path = location.partition("/")
    return mount, path


def _record_location(servicekey: Mapping[str, Any], desired: DesiredKey | None,
                     kv_mounts: Sequence[str]) -> tuple[str, str] | None:
    """Where the key record is: ``status.vaultPath`` (the operator's word) for KV keys, the spec's record
    location for Transit keys (their status names the Transit key)."""
    reported = (servicekey.get("status") or {}).get("vaultPath")
    if desired is not None and (desired.engine == "transit" or not reported
                                or reported == f"{desired.record_mount}/{desired.vault_path}"):
        return desired.record_mount, desired.vault_path
    if reported:
        return _split_location(reported, kv_mounts)
    return None


def check(kube_client: kubernetes.client.ApiClient, vault_client: hvac.Client, *,
          namespaces: Sequence[str] | None = None, etcd_endpoint: str | None = None, kv_mount: str = "secret",
          path_prefix: str = "servicekeys", transit_mount: str = "transit",
          status_grace_seconds: float = STATUS_GRACE_SECONDS) -> list[Violation]:
    """Every violation of the invariants observable at rest, in the given namespaces (all when None).

    Vault is read with ``vault_client`` (read and list on the KV mounts); Kubernetes with ``kube_client``
    (list ServiceKeys, ConfigMaps, Secrets and Events); etcd, if ``etcd_endpoint`` is given, through its
    JSON gateway. With ``namespaces``, only keys owned by ServiceKeys there are read from Vault and looked
    for. A ServiceKey without a Ready condition is reported once it is ``status_grace_seconds`` old. API errors
    propagate: they are not violations.
    """
    kube, vault = _Kubernetes(kube_client), _Vault(vault_client)
    config = OperatorConfig(vault=VaultSettings(addr="unused"), kv_mount=kv_mount, transit_mount=transit_mount,
                            path_prefix=path_prefix.strip("/"))
    scope = list(namespaces) if namespaces else kube.namespaces()
    servicekeys = {namespace: kube.servicekeys(namespace) for namespace in scope}
    violations: list[Violation] = []
    private_keys: dict[str, str] = {}
    records: list[KeyRecord] = []

    def remember(record: KeyRecord) -> None:
        records.append(record)
        for key in (*record.versions, *([record.pending] if record.pending else [])):
            if key.private_pem:
                which = f"version {key.version}" if key.version else "pending key"
                private_keys.setdefault(key.private_pem, f"the key at {record.location} ({which})")

    # Invariants 2 and 3 for every ServiceKey's record and ConfigMap.
    read: set[tuple[str, str]] = set()
    kv_mounts = vault.kv_mounts(kv_mount)
    now = datetime.datetime.now(datetime.UTC)
    for servicekey in (item for items in servicekeys.values() for item in items):
        found, record = _servicekey_violations(servicekey, kube, vault, config, kv_mounts)
        violations += found + status_violations(servicekey, now, status_grace_seconds)
        if record is not None:
            read.add((record.mount, record.path))
            remember(record)

    # Vault secrets under the prefix: orphans, and more private keys to look for.
    owned: list[KeyRecord] = []
    live: set[tuple[str, str]] = set()
    for mount in sorted({kv_mount, *(mount for mount, _ in read)}):
        for path in vault.list_secrets(mount, config.path_prefix + "/"):
            parent = path.rsplit("/", 1)[0]
            if (mount, path) in read or (path.endswith(f"/{PENDING_SUFFIX}") and (mount, parent) in read):
                continue
            record = vault.record(mount, path)
            if record is None or not record.owner or "/" not in record.owner:
                continue
            if namespaces and record.owner.split("/", 1)[0] not in scope:
                continue
            remember(record)
            owned.append(record)
            owner_namespace, owner_name = record.owner.split("/", 1)
            if kube.servicekey(owner_namespace, owner_name) is not None:
                live.add((owner_namespace, owner_name))
    violations += orphan_violations(owned, live)
    violations += shared_key_violations(records)

    # Kubernetes objects: private material, and the ownership of our ConfigMaps.
    scanner = MaterialScanner(private_keys)
    configmaps: list[dict[str, Any]] = []
    for namespace in scope:
        for servicekey in servicekeys[namespace]:
            violations += scan_kubernetes_object(scanner, "ServiceKey", servicekey)
        namespace_configmaps = kube.plain(kube.core.list_namespaced_config_map(namespace).items)
        configmaps += namespace_configmaps
        for configmap in namespace_configmaps:
            violations += scan_kubernetes_object(scanner, "ConfigMap", configmap)
        for secret in kube.plain(kube.core.list_namespaced_secret(namespace).items):
            violations += scan_kubernetes_object(scanner, "Secret", secret)
        core_events = kube.plain(kube.core.list_namespaced_event(namespace).items)
        seen = {(event.get("metadata") or {}).get("uid") for event in core_events}
        for event in core_events:
            violations += scan_kubernetes_object(scanner, "Event", event)
        for event in kube.plain(kube.events.list_namespaced_event(namespace).items):
            if (event.get("metadata") or {}).get("uid") not in seen:  # the same Event, seen through events.k8s.io
                violations += scan_kubernetes_object(scanner, "Event", event)
    violations += _ownership(configmaps, kube, (item for items in servicekeys.values() for item in items))

    if etcd_endpoint:
        for key, value in etcd_range(etcd_endpoint):
            violations += scan_etcd_value(scanner, key, value, scope if namespaces else None)
    return violations


def _servicekey_violations(servicekey: Mapping[str, Any], kube: _Kubernetes, vault: _Vault, config: OperatorConfig,
                           kv_mounts: Sequence[str]) -> tuple[list[Violation], KeyRecord | None]:
    """Invariants 2 and 3 for one ServiceKey (if Ready), and its record (if it owns one)."""
    metadata = servicekey["metadata"]
    namespace, owner = metadata["namespace"], f"{metadata['namespace']}/{metadata['name']}"
    try:
        desired: DesiredKey | None = desired_key(namespace, metadata["name"], metadata.get("uid", ""),
                                                 servicekey.get("spec") or {}, metadata.get("annotations") or {},
                                                 config)
    except InvalidSpec:
        desired = None
    location = _record_location(servicekey, desired, kv_mounts)
    ready = _is_ready(servicekey)
    if location is None:
        return [], None
    record = vault.record(*location)
    retain = desired.rotation.retain_previous if desired else int(
        ((servicekey.get("spec") or {}).get("rotation") or {}).get("retainPrevious", 1))
    status = servicekey.get("status") or {}
    if desired is None or status.get("vaultPath") != vault_location(desired):
        status = {}  # published elsewhere (a new Transit key, another mount): not this record's history
    if record is None and status.get("keyId"):
        return rollback_violations(owner, status, None, f"{location[0]}/{location[1]}", retain), None
    if record is None or record.owner != owner:
        holder = "no secret" if record is None else f"a secret owned by {record.owner or 'no ServiceKey'}"
        problem = Violation(2, CURRENT_KEY_MISMATCH, "ServiceKey", owner,
                            f"Ready, but Vault holds {holder} at {location[0]}/{location[1]}")
        return ([problem] if ready else []), None
    if desired is not None and desired.engine == "transit":
        record = dataclasses.replace(record, transit_public=vault.transit_public(desired.vault_mount, record))
    rolled_back = rollback_violations(owner, status, record, record.location, retain)
    if not ready:
        return rolled_back, record
    name = _configmap_name_of(servicekey)
    published = kube.configmap(namespace, name)
    found = rolled_back + record_violations(record, owner)
    found += ownership_proof_violations(record, owner, kube.namespace_uid(namespace))
    found += configmap_violations(f"{namespace}/{name}", None if published is None else published.get("data") or {},
                                  record, retain)
    return found, record


def _ownership(configmaps: Sequence[Mapping[str, Any]], kube: _Kubernetes,
               servicekeys: Iterable[Mapping[str, Any]]) -> list[Violation]:
    own_configmaps: dict[tuple[str, str], list[str]] = {}
    for servicekey in servicekeys:
        metadata = servicekey["metadata"]
        own_configmaps.setdefault((metadata["namespace"], _configmap_name_of(servicekey)), []).append(
            f"ServiceKey {metadata['namespace']}/{metadata['name']}")
    owners: dict[tuple[str, str], Mapping[str, Any] | None] = {}
    sources: dict[tuple[str, str], Mapping[str, str] | None] = {}
    for configmap in configmaps:
        labels, metadata = _labels(configmap), configmap["metadata"]
        if labels.get(publish.MANAGED_BY_LABEL) != publish.MANAGED_BY or not labels.get(publish.NAME_LABEL):
            continue
        namespace = labels.get(publish.SOURCE_NAMESPACE_LABEL) or metadata["namespace"]
        owners[(namespace, labels[publish.NAME_LABEL])] = kube.servicekey(namespace, labels[publish.NAME_LABEL])
        if namespace != metadata["namespace"]:
            source = kube.configmap(namespace, metadata["name"])
            sources[(namespace, metadata["name"])] = None if source is None else source.get("data") or {}
    return ownership_violations(configmaps, owners, sources, own_configmaps)


def summary(violations: Sequence[Violation]) -> str:
    """``N violations`` (and how many informational findings there are besides)."""
    count = sum(1 for violation in violations if not violation.informational)
    line = f"{count} violation{'' if count == 1 else 's'}"
    informational = len(violations) - count
    return line + (f", {informational} informational" if informational else "")

