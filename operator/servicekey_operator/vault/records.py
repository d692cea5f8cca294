"""What the key store holds, as plain values (no hvac types leak past ``vault/``)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from servicekey_operator.errors import InvalidSpec
from servicekey_operator.vault.ownership import Owner, RecordedOwner

# The secret's custom_metadata (KV v2): a mirror of the owner its versions record, for people and the
# invariant checker, plus what only the metadata can hold (values are at most 512 bytes).
OWNER_METADATA_KEY = "servicekey.io/owner"
OWNER_UID_METADATA_KEY = "servicekey.io/owner-uid"
NAMESPACE_UID_METADATA_KEY = "servicekey.io/namespace-uid"
# The uid of the earlier namespace whose record this ServiceKey adopted (ownership.verify_owner).
ADOPTED_NAMESPACE_UID_METADATA_KEY = "servicekey.io/adopted-namespace-uid"
# The owner's deletionPolicy, so that a secret left after its ServiceKey is gone can be told apart:
# kept on purpose (Retain) or a Delete that failed.
DELETION_POLICY_METADATA_KEY = "servicekey.io/deletion-policy"
# The Transit keys this record claimed before creating them, as ``<mount>:<key type>,...``: a Transit key
# that exists without such a claim was made by someone else.
TRANSIT_KEYS_METADATA_KEY = "servicekey.io/transit-keys"
MANAGED_BY_METADATA_KEY = "managed-by"
MANAGED_BY = "servicekey-operator"
# Vault's limit on one custom_metadata value.
CUSTOM_METADATA_VALUE_MAX_BYTES = 512


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 / RFC 3339 timestamp as stored in Vault and in status (``Z`` or an offset)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def live_versions(versions: Mapping[str, Mapping[str, object]], now: datetime.datetime) -> list[int]:
    """The version numbers of a KV v2 secret that can still be read, newest first.

    ``versions`` is the ``versions`` map of the secret's metadata (Vault API: GET <mount>/metadata/<path>): a
    version is gone when ``destroyed``, or deleted once its ``deletion_time`` has passed. A future
    ``deletion_time`` is the mount's or the secret's ``delete_version_after`` at work: the version is live
    until then.
    """
    def live(info: Mapping[str, object]) -> bool:
        deletion_time = str(info.get("deletion_time") or "")
        return not info.get("destroyed") and (not deletion_time or parse_time(deletion_time) > now)
    return sorted((int(number) for number, info in versions.items() if live(info)), reverse=True)


@dataclass(frozen=True, order=True)
class TransitClaim:
    """A Transit key a record may create and own: its mount and key type (the name follows from the path)."""

    mount: str
    key_type: str


@dataclass(frozen=True)
class TransitRef:
    """Where a key generated inside Vault's Transit engine lives: mount, key name and key version."""

    key_name: str
    version: int
    mount: str = ""


@dataclass(frozen=True)
class LostKey:
    """A public key that was published, and may have signed, but whose private half Vault no longer holds: Vault
    was restored to a state older than the key (``rollback``). The key version that replaced it carries it, so the
    JWKS keeps listing it for as long as ``retainPrevious`` keeps that version's predecessor; ``legacy_kids`` are
    the other kids it was published under (an imported key's)."""

    kid: str
    algorithm: str
    public_pem: str
    legacy_kids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredKey:
    """One key version as Vault holds it; ``private_pem`` never appears in a repr."""

    version: int
    kid: str
    algorithm: str
    key_size: int | None
    public_pem: str
    service_name: str
    created_at: datetime.datetime
    rotate_annotation: str | None
    rotation_reason: str = ""
    activate_at: datetime.datetime | None = None
    transit: TransitRef | None = None
    # For a pending key: the KV version of <path>/pending, which a check-and-set reschedule names.
    pending_revision: int = 0
    owner: RecordedOwner = field(default_factory=RecordedOwner)
    private_pem: str = field(default="", repr=False)
    # Kids the key had before it was imported (``servicekey-operator import``): the JWKS lists it under those too,
    # for as long as it lists the key.
    legacy_kids: tuple[str, ...] = ()
    # Written when Vault was found rolled back: the published keys it had lost, which this version replaced.
    lost_keys: tuple[LostKey, ...] = ()

    @property
    def engine(self) -> str:
        """``transit`` when the private key never left Vault's Transit engine, else ``kv``."""
        return "transit" if self.transit else "kv"

    @property
    def key_version(self) -> int:
        """The version a signer names: the Transit key version (transit/sign's ``key_version``) for a Transit
        key, else the KV version."""
        return self.transit.version if self.transit else self.version


@dataclass(frozen=True)
class KeyHistory:
    """The current key, the retained previous ones (newest first), the pending one, and the path's owner.

    ``current_version`` is what a check-and-set write must name (0: nothing written yet). ``pending``
    is a key published ahead of use (``rotation.publishAhead``): it lives beside the secret until it
    is promoted to the next version at ``pending.activate_at``; ``pending_revision`` is the current KV version
    of that pending path, which staging a key names in its check-and-set (0: nothing there; not 0 without a
    pending key when an administrator deleted or destroyed the staged one). ``owner`` is set once the record has
    proven to be the reader's (None: nobody's yet); ``metadata`` is the secret's custom_metadata as read,
    ``max_versions`` its own setting of how many versions Vault keeps (0: the mount's), ``transit_claims``
    the Transit keys the record proves to be its own, and ``transit_latest`` the latest version of the current
    key's Transit key, where a pass read it (0: not read) to find rotations made outside the operator.
    """

    owner: str | None
    current_version: int
    current: StoredKey | None
    previous: tuple[StoredKey, ...] = ()
    pending: StoredKey | None = None
    pending_revision: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    max_versions: int = 0
    transit_claims: frozenset[TransitClaim] = frozenset()
    transit_latest: int = 0

    def newest_transit_version(self, key_name: str) -> int:
        """The newest version of the Transit key ``key_name`` that the current, retained or pending key names
        (0: none)."""
        keys = (self.current, *self.previous, self.pending)
        return newest_version_of(key_name, ((key.transit.key_name, key.transit.version)
                                            for key in keys if key and key.transit))


def newest_version_of(key_name: str, versions: Iterable[tuple[str | None, int | None]]) -> int:
    """The newest version of the Transit key ``key_name`` among (key name, version) pairs (0: none)."""
    return max((version or 0 for name, version in versions if name == key_name), default=0)


LOST_KEYS_FIELD = "lost_public_keys"
"""The KV data field of a version written after a rollback: a JSON array of ``{"kid", "alg", "public_key",
"legacy_kids"}`` (public halves only, SPKI PEM), newest first."""


def format_lost_keys(lost: Iterable[LostKey]) -> str:
    """The ``LOST_KEYS_FIELD`` value for ``lost`` (compact JSON)."""
    return json.dumps([{"kid": key.kid, "alg": key.algorithm, "public_key": key.public_pem,
                        "legacy_kids": list(key.legacy_kids)} for key in lost], separators=(",", ":"))


def parse_lost_keys(text: str | None) -> tuple[LostKey, ...]:
    """``format_lost_keys`` read back; an entry that is not such an object is skipped (the record is Vault's,
    an administrator may have edited it), and the PEM is not parsed here."""
    try:
        entries = json.loads(text or "[]")
    except ValueError:
        return ()
    lost = []
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and all(isinstance(entry.get(name), str) for name in ("kid", "alg", "public_key")):
            aliases = entry.get("legacy_kids")
            lost.append(LostKey(entry["kid"], entry["alg"], entry["public_key"],
                                tuple(str(kid) for kid in aliases) if isinstance(aliases, list) else ()))
    return tuple(lost)


def parse_transit_claims(text: str | None) -> frozenset[TransitClaim]:
    """``transit:ecdsa-p256,transit:rsa-2048`` → the claims (malformed entries are skipped)."""
    claims = set()
    for entry in (text or "").split(","):
        mount, _, key_type = entry.strip().rpartition(":")
        if mount and key_type:
            claims.add(TransitClaim(mount, key_type))
    return frozenset(claims)


def record_metadata(owner: Owner, deletion_policy: str, transit_claims: frozenset[TransitClaim],
                    adopted_namespace_uid: str | None) -> dict[str, str]:
    """The whole custom_metadata a record of ``owner`` carries (KV v2 replaces the map on every write).

    Raises InvalidSpec when the Transit claims do not fit Vault's 512-byte limit on a value (only a key
    moved across many Transit mounts gets there).
    """
    metadata = {MANAGED_BY_METADATA_KEY: MANAGED_BY, OWNER_METADATA_KEY: owner.ref,
                NAMESPACE_UID_METADATA_KEY: owner.namespace_uid, DELETION_POLICY_METADATA_KEY: deletion_policy}
    if owner.uid:  # unknown for a key imported before its ServiceKey exists; Vault refuses empty values
        metadata[OWNER_UID_METADATA_KEY] = owner.uid
    if transit_claims:
        claims = ",".join(f"{claim.mount}:{claim.key_type}" for claim in sorted(transit_claims))
        if len(claims.encode()) > CUSTOM_METADATA_VALUE_MAX_BYTES:
            raise InvalidSpec(f"the Transit keys claimed ({claims}) do not fit in Vault's custom_metadata; "
                              "delete the ServiceKey's Transit keys on mounts it no longer uses")
        metadata[TRANSIT_KEYS_METADATA_KEY] = claims
    if adopted_namespace_uid:
        metadata[ADOPTED_NAMESPACE_UID_METADATA_KEY] = adopted_namespace_uid
    return metadata


def adoption(history: KeyHistory, namespace_uid: str) -> str | None:
    """The uid of the earlier namespace whose records the owner (now in ``namespace_uid``) relies on: what
    proves the record (its current and pending keys, or the metadata's claim when no key is live) was written
    there. None once keys written in this namespace replace them."""
    proofs = [key.owner for key in (history.current, history.pending) if key is not None]
    if not proofs:
        proofs = [metadata_owner(history.metadata)]
    return next((proof.namespace_uid for proof in proofs if proof.namespace_uid not in (None, namespace_uid)), None)


def metadata_owner(metadata: Mapping[str, str]) -> RecordedOwner:
    """The owner a secret's custom_metadata names."""
    return RecordedOwner(ref=metadata.get(OWNER_METADATA_KEY), namespace_uid=metadata.get(NAMESPACE_UID_METADATA_KEY),
                         uid=metadata.get(OWNER_UID_METADATA_KEY))
