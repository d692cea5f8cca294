"""Keys in a KV v2 engine: one secret per ServiceKey, one KV version per key, check-and-set writes.

Secret data per version (DESIGN.md): private_key, public_key, algorithm, key_size, kid, service_name,
created_at; plus rotate_annotation, the digest of the ``servicekey.io/rotate`` value that the version
answered, so that a rotation request is recorded in the same atomic write that fulfils it, rotation_reason,
and the owner (owner, owner_uid, owner_namespace_uid). The owner is written with the key in one
check-and-set write, so two ServiceKeys racing for one path can never both believe they own it: the loser's
write fails and its next read finds the winner's name (``ownership``). The custom_metadata only mirrors it.

For Transit keys the same secret is the key's record without ``private_key``: ``engine: transit``,
``transit_key`` and ``transit_version`` say where the private half lives. KV versions stay the key
history, and the check-and-set write of the record is what makes a rotation happen exactly once.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Collection
from typing import Any

import hvac.exceptions

from servicekey_operator.errors import InvalidSpec, VaultPermissionDenied
from servicekey_operator.keys import KeyPair
from servicekey_operator.vault.connection import VaultConnection, vault_call
from servicekey_operator.vault.ownership import Owner, RecordedOwner, verify_owner
from servicekey_operator.vault.records import (
    ADOPTED_NAMESPACE_UID_METADATA_KEY,
    LOST_KEYS_FIELD,
    TRANSIT_KEYS_METADATA_KEY,
    KeyHistory,
    LostKey,
    StoredKey,
    TransitClaim,
    TransitRef,
    format_lost_keys,
    live_versions,
    metadata_owner,
    parse_lost_keys,
    parse_time,
    parse_transit_claims,
)

# Keep more versions than the largest retainPrevious (10) so history outlives the JWKS window.
KV_MAX_VERSIONS = 32
# How long a mount found to be KV v2 is trusted: re-mounting is rare, and a check per pass would cost a request.
MOUNT_CHECK_SECONDS = 300.0
WRITE_MOUNT_CHECK_SECONDS = 10.0
# The key published ahead of use lives beside the secret, so signers reading the secret's latest
# version never see it before it is promoted. It names its owner like every version, so a key's own secret
# that happens to sit at another key's pending path is never mistaken for (promoted or deleted as) a
# pending key.
PENDING_SUFFIX = "pending"


def pending_path(path: str) -> str:
    """Where the key published ahead of use is kept."""
    return f"{path}/{PENDING_SUFFIX}"


def _format_time(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _recorded_owner(data: dict[str, str]) -> RecordedOwner:
    return RecordedOwner(ref=data.get("owner"), namespace_uid=data.get("owner_namespace_uid"),
                         uid=data.get("owner_uid"))


def _stored_key(version: int, data: dict[str, str]) -> StoredKey:
    key_size = data.get("key_size")
    activate_at = data.get("activate_at")
    transit = None
    if data.get("engine") == "transit":
        transit = TransitRef(key_name=data["transit_key"], version=int(data["transit_version"]),
                             mount=data.get("transit_mount", ""))
    return StoredKey(
        version=version, kid=data["kid"], algorithm=data["algorithm"],
        key_size=int(key_size) if key_size else None, public_pem=data["public_key"],
        service_name=data.get("service_name", ""), created_at=parse_time(data["created_at"]),
        rotate_annotation=data.get("rotate_annotation") or None,
        rotation_reason=data.get("rotation_reason", ""),
        activate_at=parse_time(activate_at) if activate_at else None, transit=transit,
        owner=_recorded_owner(data), private_pem=data.get("private_key", ""),
        legacy_kids=tuple(kid for kid in data.get("legacy_kids", "").split(",") if kid),
        lost_keys=parse_lost_keys(data.get(LOST_KEYS_FIELD)),
    )


def _secret_data(keypair: KeyPair, owner: Owner, service_name: str, rotate_annotation: str | None,
                 rotation_reason: str, created_at: datetime.datetime,
                 transit: TransitRef | None = None) -> dict[str, str]:
    data = {
        "public_key": keypair.public_pem, "algorithm": keypair.algorithm, "kid": keypair.kid,
        "service_name": service_name, "created_at": _format_time(created_at),
        "rotate_annotation": rotate_annotation or "", "rotation_reason": rotation_reason,
        "owner": owner.ref, "owner_uid": owner.uid, "owner_namespace_uid": owner.namespace_uid,
    }
    if transit is None:
        data["private_key"] = keypair.private_pem
    else:
        data.update(engine="transit", transit_key=transit.key_name, transit_version=str(transit.version),
                    transit_mount=transit.mount)
    if keypair.key_size:
        data["key_size"] = str(keypair.key_size)
    return data


class KvKeyStore:
    """Read, write (check-and-set), mirror ownership into the metadata of, and delete keys in KV v2 mounts."""

    def __init__(self, connection: VaultConnection) -> None:
        self.connection = connection
        # mount -> when it was last found to be KV version 2 (time.monotonic())
        self._kv2_mounts: dict[str, float] = {}

    def check_mount(self, mount: str, path: str, *, trusted_for: float = MOUNT_CHECK_SECONDS) -> None:
        """Raise InvalidSpec, before anything is read or written, unless ``mount`` is a KV version 2 engine: a
        KV version 1 mount would take the private key through the v2 API as a plain secret at ``data/<path>``.

        Vault API: GET sys/internal/ui/mounts/<mount> (what the ``vault kv`` CLI asks; allowed to any token with
        a capability below the mount). A check is trusted for ``trusted_for`` seconds: ``MOUNT_CHECK_SECONDS``
        for a read, ``WRITE_MOUNT_CHECK_SECONDS`` before a write (the mount may have been re-mounted meanwhile; a
        burst of writes still costs one check). ``path`` (the secret's) is for messages only. Raises
        VaultPermissionDenied when the mount does not exist or the token has no capability below it (Vault does
        not tell the two apart).
        """
        checked_at = self._kv2_mounts.get(mount)
        if checked_at is not None and time.monotonic() - checked_at < trusted_for:
            return
        client = self.connection.client  # outside the try: a login failure is not a mount problem
        try:
            with vault_call("read_mount", f"reading the engine of mount {mount}"):
                reply = client.adapter.get(f"/v1/sys/internal/ui/mounts/{mount}")
        except VaultPermissionDenied as denied:  # Vault answers so for a mount that does not exist, too
            raise VaultPermissionDenied(f"vault.mount {mount!r} (for {mount}/{path}) does not exist, or the "
                                        f"operator's token may not use it ({denied})") from denied
        data = (reply.get("data") if isinstance(reply, dict) else None) or {}
        engine, version = data.get("type"), str((data.get("options") or {}).get("version") or "1")
        if engine != "kv" or version != "2":
            kind = f"KV version {version}" if engine == "kv" else f"a {engine or 'unknown'} engine"
            raise InvalidSpec(f"vault.mount {mount!r} is {kind}, not KV version 2: nothing was written there")
        self._kv2_mounts[mount] = time.monotonic()

    @property
    def _kv(self) -> Any:  # hvac's KvV2 has no public type
        return self.connection.client.secrets.kv.v2

    def _metadata(self, mount: str, path: str) -> dict | None:
        with vault_call("read_metadata", f"reading metadata of {mount}/{path}"):
            try:
                return self._kv.read_secret_metadata(path=path, mount_point=mount)["data"]
            except hvac.exceptions.InvalidPath:
                return None

    def _version_data(self, mount: str, path: str, version: int) -> dict[str, str] | None:
        """One version's data; None when Vault has deleted it since its metadata said it was live (its
        ``deletion_time`` passed meanwhile, or Vault's clock is ahead of ours)."""
        with vault_call("read_version", f"reading {mount}/{path} version {version}"):
            try:
                reply = self._kv.read_secret_version(path=path, version=version, mount_point=mount,
                                                     raise_on_deleted_version=True)
            except hvac.exceptions.InvalidPath:
                return None
        return reply["data"]["data"]

    def _readable_versions(self, mount: str, path: str, live: list[int], wanted: int) -> list[tuple[int, dict]]:
        """The first ``wanted`` of the ``live`` versions (newest first) that can still be read, with their data."""
        readable: list[tuple[int, dict]] = []
        for number in live:
            if len(readable) == wanted:
                break
            data = self._version_data(mount, path, number)
            if data is not None:
                readable.append((number, data))
        return readable

    def read(self, mount: str, path: str, owner: Owner, retain_previous: int, *, with_pending: bool,
             adopt_namespace_uid: str | None = None) -> KeyHistory:
        """The current key, up to ``retain_previous`` older live versions and (if asked) the pending key.

        Raises VaultPathConflict unless every record found proves to be ``owner``'s (``ownership``): the
        newest live version, or, when no version is live, the owner the metadata names; and the pending key.
        ``adopt_namespace_uid`` is the earlier namespace whose records ``owner`` may adopt (its annotation).
        """
        where = f"{mount}/{path}"
        self.check_mount(mount, path)
        metadata = self._metadata(mount, path)
        if metadata is None:
            # Still look: a foreign secret where our pending key would go is a conflict from the start.
            pending, revision = self._pending(mount, path, owner, {adopt_namespace_uid}, with_pending)
            return KeyHistory(owner=None, current_version=0, current=None, pending=pending, pending_revision=revision)
        custom = dict(metadata.get("custom_metadata") or {})
        named = metadata_owner(custom)
        # An adoption is recorded in the metadata only after it was proven, so it holds for later passes.
        recorded_adoption = custom.get(ADOPTED_NAMESPACE_UID_METADATA_KEY) \
            if (named.ref, named.namespace_uid) == (owner.ref, owner.namespace_uid) else None
        adopted = {adopt_namespace_uid, recorded_adoption} - {None}
        current_version = int(metadata.get("current_version") or 0)
        live = live_versions(metadata.get("versions") or {}, datetime.datetime.now(datetime.UTC))
        readable = self._readable_versions(mount, path, live, retain_previous + 1)
        keys: list[StoredKey] = []
        if readable:
            verify_owner(_recorded_owner(readable[0][1]), owner, adopted, where)
            keys = [_stored_key(number, data) for number, data in readable]
        elif named.ref is not None:
            verify_owner(named, owner, adopted, where)
        else:
            # Versions all deleted (or none yet) and nothing claimed: nobody's yet.
            pending, revision = self._pending(mount, path, owner, adopted, with_pending)
            return KeyHistory(owner=None, current_version=current_version, current=None, pending=pending,
                              pending_revision=revision)
        pending, revision = self._pending(mount, path, owner, adopted, with_pending)
        # The metadata's claims count only while it names this owner; the versions' own Transit keys always.
        claims = {TransitClaim(key.transit.mount, key.transit.key_name.rsplit(".", 1)[-1])
                  for key in keys if key.transit and key.transit.mount}
        if named.ref == owner.ref and named.namespace_uid in (owner.namespace_uid, *adopted):
            claims |= parse_transit_claims(custom.get(TRANSIT_KEYS_METADATA_KEY))
        current = keys[0] if keys and keys[0].version == current_version else None
        # With the latest version deleted or destroyed, the live ones before it are still retained keys.
        previous = tuple(keys[1:]) if current else tuple(keys[:retain_previous])
        return KeyHistory(owner=owner.ref, current_version=current_version, current=current, previous=previous,
                          pending=pending, pending_revision=revision, metadata=custom,
                          max_versions=int(metadata.get("max_versions") or 0), transit_claims=frozenset(claims))

    def version_kid(self, mount: str, path: str, version: int) -> tuple[bool, str | None]:
        """(whether the secret's history has reached ``version``, the kid recorded there if it can still be read:
        None when deleted, destroyed or trimmed by max_versions). Vault API: GET <mount>/metadata/<path>, then
        GET <mount>/data/<path>?version=N."""
        metadata = self._metadata(mount, path)
        if metadata is None or version > int(metadata.get("current_version") or 0):
            return False, None
        data = self._version_data(mount, path, version) if str(version) in (metadata.get("versions") or {}) else None
        return True, (str(data["kid"]) if data and data.get("kid") else None)

    def _pending(self, mount: str, path: str, owner: Owner, adopted: Collection[str | None],
                 wanted: bool) -> tuple[StoredKey | None, int]:
        return self.read_pending(mount, path, owner, adopted) if wanted else (None, 0)

    def read_pending(self, mount: str, path: str, owner: Owner,
                     adopted: Collection[str | None]) -> tuple[StoredKey | None, int]:
        """(the key staged at ``<path>/pending`` or None, that path's current KV version: what staging the next
        key names in its check-and-set, 0 when nothing was ever written there).

        A latest version that was deleted or destroyed (an administrator cancelling a rotation) is no pending
        key. Raises VaultPathConflict unless what is there is ``owner``'s (``adopted``: earlier namespace uids it
        may adopt, see ``read``).
        """
        where = f"{mount}/{pending_path(path)} (this ServiceKey's pending key)"
        with vault_call("read_version", f"reading {mount}/{pending_path(path)}"):
            try:
                reply = self._kv.read_secret_version(path=pending_path(path), mount_point=mount,
                                                     raise_on_deleted_version=True)
            except hvac.exceptions.InvalidPath as missing:
                # Vault answers a deleted or destroyed latest version with 404 and that version's metadata.
                metadata = (((missing.json or {}).get("data") or {}).get("metadata") or {})
                if not metadata.get("version"):
                    return None, 0
                return None, self._cancelled_pending_revision(mount, path, owner, adopted, where)
        data = reply["data"]["data"]
        # Another key's secret that merely sits where ours would keep its pending key is a conflict.
        verify_owner(_recorded_owner(data), owner, adopted, where)
        revision = int(reply["data"]["metadata"]["version"])
        return dataclasses.replace(_stored_key(0, data), pending_revision=revision), revision

    def _cancelled_pending_revision(self, mount: str, path: str, owner: Owner, adopted: Collection[str | None],
                                    where: str) -> int:
        """The current version of a pending path whose latest version is gone, once what remains there proves
        to be no other key's: the owner its metadata names, else its newest readable version's."""
        metadata = self._metadata(mount, pending_path(path))
        if metadata is None:  # deleted meanwhile
            return 0
        named = metadata_owner(dict(metadata.get("custom_metadata") or {}))
        if named.ref is not None:
            verify_owner(named, owner, adopted, where)
        live = live_versions(metadata.get("versions") or {}, datetime.datetime.now(datetime.UTC))
        for _number, data in self._readable_versions(mount, pending_path(path), live, 1):
            verify_owner(_recorded_owner(data), owner, adopted, where)
        return int(metadata.get("current_version") or 0)

    def custom_metadata(self, mount: str, path: str) -> dict[str, str]:
        """The secret's custom_metadata as Vault holds it now (empty when there is none)."""
        return dict(((self._metadata(mount, path) or {}).get("custom_metadata")) or {})

    def write_metadata(self, mount: str, path: str, custom_metadata: dict[str, str]) -> None:
        """Replace the secret's custom_metadata (see ``records.record_metadata``) and keep ``KV_MAX_VERSIONS``
        versions of it (fewer would take the retained keys out of the JWKS at the next rotation)."""
        # Not hvac's update_metadata, which always sends delete_version_after ("0s" by default) and so would
        # erase the administrator's setting; a field left out keeps its value (Vault API: POST
        # <mount>/metadata/<path>).
        client = self.connection.client
        with vault_call("write_metadata", f"writing the metadata of {mount}/{path}"):
            client.adapter.post(f"/v1/{mount}/metadata/{path}",
                                json={"max_versions": KV_MAX_VERSIONS, "custom_metadata": custom_metadata})

    def write(self, mount: str, path: str, keypair: KeyPair, *, owner: Owner, service_name: str,
              rotate_annotation: str | None, rotation_reason: str, created_at: datetime.datetime,
              expected_version: int, transit: TransitRef | None = None,
              legacy_kids: tuple[str, ...] = (), lost_keys: tuple[LostKey, ...] = ()) -> StoredKey:
        """Write a new key version, naming ``owner``, if the current version is still ``expected_version``
        (check-and-set).

        ``transit`` records a Transit key instead of the private key itself; ``legacy_kids`` (an imported key's
        kids of before, no commas) are published as aliases of it; ``lost_keys`` (after a rollback, see
        ``rollback``) stay published as the keys this version replaced. Raises VaultWriteConflict when another writer
        got there first.
        """
        self.check_mount(mount, path, trusted_for=WRITE_MOUNT_CHECK_SECONDS)
        data = _secret_data(keypair, owner, service_name, rotate_annotation, rotation_reason, created_at, transit)
        if legacy_kids:
            data["legacy_kids"] = ",".join(legacy_kids)
        if lost_keys:
            data[LOST_KEYS_FIELD] = format_lost_keys(lost_keys)
        with vault_call("write_version", f"writing {mount}/{path}"):
            reply = self._kv.create_or_update_secret(path=path, secret=data, cas=expected_version,
                                                     mount_point=mount)
        return _stored_key(int(reply["data"]["version"]), data)

    def write_pending(self, mount: str, path: str, keypair: KeyPair, *, owner: Owner, service_name: str,
                      rotate_annotation: str | None, rotation_reason: str, created_at: datetime.datetime,
                      activate_at: datetime.datetime, expected_revision: int = 0,
                      transit: TransitRef | None = None) -> StoredKey:
        """Stage the next key, to be promoted at ``activate_at``, if the pending key is still at
        ``expected_revision`` (0: only if there is none; the revision of the current one: reschedule it).

        ``transit`` records a Transit key version instead of the private key itself. Raises VaultWriteConflict
        when another writer got there first.
        """
        self.check_mount(mount, path, trusted_for=WRITE_MOUNT_CHECK_SECONDS)
        data = _secret_data(keypair, owner, service_name, rotate_annotation, rotation_reason, created_at, transit)
        data.update(activate_at=_format_time(activate_at))
        with vault_call("write_version", f"writing {mount}/{pending_path(path)}"):
            reply = self._kv.create_or_update_secret(path=pending_path(path), secret=data, cas=expected_revision,
                                                     mount_point=mount)
        return dataclasses.replace(_stored_key(0, data), pending_revision=int(reply["data"]["version"]))

    def delete_pending(self, mount: str, path: str) -> None:
        """Forget the pending key (after its promotion, or when the spec changed under it); only call it
        for a pending key that ``read`` has proven to be the caller's."""
        self._delete(mount, pending_path(path))

    def delete(self, mount: str, path: str) -> None:
        """Delete every version and the metadata (deletionPolicy: Delete); only call it for a record that
        ``read`` has proven to be the caller's. The pending key is separate: ``delete_pending``."""
        self._delete(mount, path)

    def _delete(self, mount: str, path: str) -> None:
        with vault_call("delete", f"deleting {mount}/{path}"):
            try:
                self._kv.delete_metadata_and_all_versions(path=path, mount_point=mount)
            except hvac.exceptions.InvalidPath:
                return
