"""Keys in a KV v2 engine: one secret per ServiceKey, one KV version per key, check-and-set writes.

Secret data per version (DESIGN.md): private_key, public_key, algorithm, key_size, kid, service_name,
created_at; plus rotate_annotation, the value of ``servicekey.io/rotate`` that the version answered,
so that a rotation request is recorded in the same atomic write that fulfils it, and rotation_reason.

For Transit keys the same secret is the key's record without ``private_key``: ``engine: transit``,
``transit_key`` and ``transit_version`` say where the private half lives. KV versions stay the key
history, and the check-and-set write of the record is what makes a rotation happen exactly once.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import hvac.exceptions

from servicekey_operator.errors import VaultPathConflict
from servicekey_operator.keys import KeyPair
from servicekey_operator.vault.connection import VaultConnection, vault_call
from servicekey_operator.vault.records import (
    DELETION_POLICY_METADATA_KEY,
    MANAGED_BY,
    MANAGED_BY_METADATA_KEY,
    OWNER_METADATA_KEY,
    KeyHistory,
    StoredKey,
    TransitRef,
    parse_time,
)

# Keep more versions than the largest retainPrevious (10) so history outlives the JWKS window.
KV_MAX_VERSIONS = 32
# The key published ahead of use lives beside the secret, so signers reading the secret's latest
# version never see it before it is promoted.
PENDING_SUFFIX = "pending"
# The pending secret names its ServiceKey, so a key's own secret that happens to sit at another key's
# pending path is never mistaken for (promoted or deleted as) a pending key.
PENDING_OWNER_FIELD = "owner"


def pending_path(path: str) -> str:
    """Where the key published ahead of use is kept."""
    return f"{path}/{PENDING_SUFFIX}"


def _format_time(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _stored_key(version: int, data: dict[str, str]) -> StoredKey:
    key_size = data.get("key_size")
    activate_at = data.get("activate_at")
    transit = None
    if data.get("engine") == "transit":
        transit = TransitRef(key_name=data["transit_key"], version=int(data["transit_version"]))
    return StoredKey(
        version=version, kid=data["kid"], algorithm=data["algorithm"],
        key_size=int(key_size) if key_size else None, public_pem=data["public_key"],
        service_name=data.get("service_name", ""), created_at=parse_time(data["created_at"]),
        rotate_annotation=data.get("rotate_annotation") or None,
        rotation_reason=data.get("rotation_reason", ""),
        activate_at=parse_time(activate_at) if activate_at else None, transit=transit,
        private_pem=data.get("private_key", ""),
    )


def _secret_data(keypair: KeyPair, service_name: str, rotate_annotation: str | None, rotation_reason: str,
                 created_at: datetime.datetime, transit: TransitRef | None = None) -> dict[str, str]:
    data = {
        "public_key": keypair.public_pem, "algorithm": keypair.algorithm, "kid": keypair.kid,
        "service_name": service_name, "created_at": _format_time(created_at),
        "rotate_annotation": rotate_annotation or "", "rotation_reason": rotation_reason,
    }
    if transit is None:
        data["private_key"] = keypair.private_pem
    else:
        data.update(engine="transit", transit_key=transit.key_name, transit_version=str(transit.version))
    if keypair.key_size:
        data["key_size"] = str(keypair.key_size)
    return data


class KvKeyStore:
    """Read, write (check-and-set), claim and delete keys in KV v2 mounts."""

    def __init__(self, connection: VaultConnection) -> None:
        self.connection = connection

    @property
    def _kv(self) -> Any:  # hvac's KvV2 has no public type
        return self.connection.client.secrets.kv.v2

    def _metadata(self, mount: str, path: str) -> dict | None:
        with vault_call("read_metadata", f"reading metadata of {mount}/{path}"):
            try:
                return self._kv.read_secret_metadata(path=path, mount_point=mount)["data"]
            except hvac.exceptions.InvalidPath:
                return None

    def _version(self, mount: str, path: str, version: int) -> StoredKey:
        with vault_call("read_version", f"reading {mount}/{path} version {version}"):
            reply = self._kv.read_secret_version(path=path, version=version, mount_point=mount,
                                                 raise_on_deleted_version=True)
        return _stored_key(version, reply["data"]["data"])

    def read(self, mount: str, path: str, owner: str, retain_previous: int, *, with_pending: bool) -> KeyHistory:
        """The current key, up to ``retain_previous`` older live versions and (if asked) the pending key.

        Raises VaultPathConflict when the path holds a secret that another owner (or no operator) wrote.
        """
        metadata = self._metadata(mount, path)
        if metadata is None:
            # Still look: a foreign secret where our pending key would go is a conflict from the start.
            pending = self._pending(mount, path, owner) if with_pending else None
            return KeyHistory(owner=None, current_version=0, current=None, pending=pending)
        custom = metadata.get("custom_metadata") or {}
        recorded_owner = custom.get(OWNER_METADATA_KEY)
        current_version = int(metadata.get("current_version") or 0)
        live_versions = sorted(
            (int(number) for number, info in (metadata.get("versions") or {}).items()
             if not info.get("destroyed") and not info.get("deletion_time")),
            reverse=True,
        )
        if recorded_owner != owner and live_versions:
            holder = f"ServiceKey {recorded_owner}" if recorded_owner else "something other than this operator"
            raise VaultPathConflict(f"{mount}/{path} already holds a secret written by {holder}; "
                                    "it is left untouched")
        pending = self._pending(mount, path, owner) if with_pending else None
        policy = custom.get(DELETION_POLICY_METADATA_KEY)
        if not live_versions or live_versions[0] != current_version:
            return KeyHistory(owner=recorded_owner, current_version=current_version, current=None, pending=pending,
                              deletion_policy=policy)
        keys = [self._version(mount, path, number) for number in live_versions[: retain_previous + 1]]
        return KeyHistory(owner=recorded_owner, current_version=current_version, current=keys[0],
                          previous=tuple(keys[1:]), pending=pending, deletion_policy=policy)

    def _pending(self, mount: str, path: str, owner: str) -> StoredKey | None:
        with vault_call("read_version", f"reading {mount}/{pending_path(path)}"):
            try:
                reply = self._kv.read_secret_version(path=pending_path(path), mount_point=mount,
                                                     raise_on_deleted_version=True)
            except hvac.exceptions.InvalidPath:
                return None
        data = reply["data"]["data"]
        if data.get(PENDING_OWNER_FIELD) != owner:
            # Another key's secret that merely sits where ours would keep its pending key.
            raise VaultPathConflict(f"{mount}/{pending_path(path)} holds a secret that is not this ServiceKey's "
                                    "pending key; it is left untouched")
        return dataclasses.replace(_stored_key(0, data), pending_revision=int(reply["data"]["metadata"]["version"]))

    def claim(self, mount: str, path: str, owner: str, deletion_policy: str) -> None:
        """Mark the path as ours (with the owner's deletionPolicy) before the first write, so a crash never
        leaves an unowned secret; called again when the policy changes."""
        with vault_call("write_metadata", f"claiming {mount}/{path}"):
            self._kv.update_metadata(path=path, mount_point=mount, max_versions=KV_MAX_VERSIONS,
                                     cas_required=True,
                                     custom_metadata={MANAGED_BY_METADATA_KEY: MANAGED_BY,
                                                      OWNER_METADATA_KEY: owner,
                                                      DELETION_POLICY_METADATA_KEY: deletion_policy})

    def write(self, mount: str, path: str, keypair: KeyPair, *, service_name: str, rotate_annotation: str | None,
              rotation_reason: str, created_at: datetime.datetime, expected_version: int,
              transit: TransitRef | None = None) -> StoredKey:
        """Write a new key version if the current version is still ``expected_version`` (check-and-set).

        ``transit`` records a Transit key instead of the private key itself. Raises VaultWriteConflict
        when another writer got there first.
        """
        data = _secret_data(keypair, service_name, rotate_annotation, rotation_reason, created_at, transit)
        with vault_call("write_version", f"writing {mount}/{path}"):
            reply = self._kv.create_or_update_secret(path=path, secret=data, cas=expected_version,
                                                     mount_point=mount)
        return _stored_key(int(reply["data"]["version"]), data)

    def write_pending(self, mount: str, path: str, keypair: KeyPair, *, service_name: str,
                      rotate_annotation: str | None, rotation_reason: str, created_at: datetime.datetime,
                      activate_at: datetime.datetime, owner: str, expected_revision: int = 0) -> StoredKey:
        """Stage the next key, to be promoted at ``activate_at``, if the pending key is still at
        ``expected_revision`` (0: only if there is none; the revision of the current one: reschedule it).

        Raises VaultWriteConflict when another writer got there first.
        """
        data = _secret_data(keypair, service_name, rotate_annotation, rotation_reason, created_at)
        data.update(activate_at=_format_time(activate_at), **{PENDING_OWNER_FIELD: owner})
        with vault_call("write_version", f"writing {mount}/{pending_path(path)}"):
            reply = self._kv.create_or_update_secret(path=pending_path(path), secret=data, cas=expected_revision,
                                                     mount_point=mount)
        return dataclasses.replace(_stored_key(0, data), pending_revision=int(reply["data"]["version"]))

    def delete_pending(self, mount: str, path: str) -> None:
        """Forget the pending key (after its promotion, or when the spec changed under it)."""
        self._delete(mount, pending_path(path))

    def delete(self, mount: str, path: str) -> None:
        """Delete every version, the metadata and any pending key (deletionPolicy: Delete)."""
        self._delete(mount, pending_path(path))
        self._delete(mount, path)

    def _delete(self, mount: str, path: str) -> None:
        with vault_call("delete", f"deleting {mount}/{path}"):
            try:
                self._kv.delete_metadata_and_all_versions(path=path, mount_point=mount)
            except hvac.exceptions.InvalidPath:
                return
