"""Keys that never leave Vault: non-exportable Transit keys, one per ServiceKey and key type.

Transit has no check-and-set and no per-version metadata, so the KV record (vault/kv.py) stays the
source of truth for history and rotation requests; this module only makes sure the Transit key has
the version the record is about to name, without rotating twice for one record.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

import hvac.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from servicekey_operator.keys import KeyPair, is_rsa, kid_for
from servicekey_operator.vault.connection import VaultConnection, vault_call
from servicekey_operator.vault.records import TransitRef, parse_time

_CURVE_KEY_TYPES = {"ES256": "ecdsa-p256", "ES384": "ecdsa-p384", "ES512": "ecdsa-p521", "EdDSA": "ed25519"}


def transit_key_type(algorithm: str, key_size: int | None) -> str:
    """The Transit key type for a JWS algorithm (RS*/PS* share the RSA type of their size)."""
    return f"rsa-{key_size}" if is_rsa(algorithm) else _CURVE_KEY_TYPES[algorithm]


# Transit names cannot hold '/'. Each '/' becomes '.', so '.' and '_' in the path are escaped: the mapping
# is injective (prefix-free), and ServiceKey ``x.y`` can never share a name with a key at path ``.../x/y``.
_NAME_ESCAPES = str.maketrans({"_": "_u", ".": "_d", "/": "."})


def transit_key_name(path: str, algorithm: str, key_size: int | None) -> str:
    """``servicekeys/ns/name`` → ``servicekeys.ns.name.ecdsa-p256``; ``servicekeys/ns/x.y_z`` →
    ``servicekeys.ns.x_dy_uz.ecdsa-p256``.

    Different paths or key types always give different names (the key type has no '.'). The key type is
    part of the name because a Transit key's type is fixed: an algorithm change needs a new key.
    """
    return transit_name(path, transit_key_type(algorithm, key_size))


def transit_name(path: str, key_type: str) -> str:
    """The Transit key name for a record's ``path`` and a Transit ``key_type`` (see ``transit_key_name``)."""
    return f"{path.translate(_NAME_ESCAPES)}.{key_type}"


def _unused(key: dict, known_version: int, reusable_after: datetime.datetime | None) -> bool:
    """Whether the key's latest version is newer than every version the record knows, and was made after it."""
    latest = int(key["latest_version"])
    if latest <= known_version:
        return False
    created = (key.get("keys") or {}).get(str(latest), {}).get("creation_time")
    return reusable_after is None or (bool(created) and parse_time(created) > reusable_after)


def _spki_pem(public_key: str, key_type: str) -> str:
    if key_type != "ed25519":
        return public_key
    # Transit returns Ed25519 public keys as base64 of the raw 32 bytes, not as PEM.
    raw = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    return raw.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class TransitKeys:
    """Create, rotate, restrict and delete Transit signing keys."""

    def __init__(self, connection: VaultConnection) -> None:
        self.connection = connection

    @property
    def _transit(self) -> Any:  # hvac's Transit has no public type
        return self.connection.client.secrets.transit

    def _read(self, mount: str, name: str) -> dict | None:
        with vault_call("transit_read", f"reading transit key {mount}/{name}"):
            try:
                return self._transit.read_key(name=name, mount_point=mount)["data"]
            except hvac.exceptions.InvalidPath:
                return None

    def exists(self, mount: str, name: str) -> bool:
        """Whether a Transit key of that name exists."""
        return self._read(mount, name) is not None

    def latest_version(self, mount: str, name: str) -> int:
        """The key's latest version (0 when the key does not exist): what a signer that names no
        ``key_version`` signs with. Vault API: GET <mount>/keys/<name>."""
        key = self._read(mount, name)
        return int(key["latest_version"]) if key else 0

    def version_kid(self, mount: str, name: str, version: int) -> tuple[bool, str | None]:
        """(whether the key's history has reached ``version``, the kid of that version's public key if Vault still
        has it: None when trimmed by min_available_version). Vault API: GET <mount>/keys/<name>."""
        key = self._read(mount, name)
        if key is None or version > int(key.get("latest_version") or 0):
            return False, None
        public = ((key.get("keys") or {}).get(str(version)) or {}).get("public_key")
        return True, (kid_for(_spki_pem(public, key.get("type", ""))) if public else None)

    def new_version(self, mount: str, algorithm: str, key_size: int | None, path: str, known_version: int,
                    retain_previous: int, reusable_after: datetime.datetime | None) -> tuple[KeyPair, TransitRef]:
        """Make sure the key has a version that no record has named yet, and return its public half.

        ``known_version``: the newest version of this key that the record names (current, retained or pending).
        A newer version created after ``reusable_after`` (the current record's creation; None: any) was never
        used by the record: a crash between a rotation and the record's write, or a rotation made outside the
        operator (Vault's ``auto_rotate_period``). It is taken as it is, so one request never rotates twice.
        Any other version is a retired key (an algorithm switched away and back, or an older record) and is
        never brought back: the key is rotated. Clock skew between Vault and the operator can only cost an
        unused version, never reuse a retired one within the record's history.
        """
        name = transit_key_name(path, algorithm, key_size)
        key_type = transit_key_type(algorithm, key_size)
        key = self._read(mount, name)
        if key is None:
            with vault_call("transit_write", f"creating transit key {mount}/{name}"):
                self._transit.create_key(name=name, key_type=key_type, exportable=False,
                                         allow_plaintext_backup=False, mount_point=mount)
        elif not _unused(key, known_version, reusable_after):
            with vault_call("transit_write", f"rotating transit key {mount}/{name}"):
                self._transit.rotate_key(name=name, mount_point=mount)
        key = self._read(mount, name)
        assert key is not None
        version = int(key["latest_version"])
        # Verification inside Vault honours min_decryption_version: keep what the JWKS retains.
        with vault_call("transit_write", f"configuring transit key {mount}/{name}"):
            self._transit.update_key_configuration(name=name, mount_point=mount,
                                                   min_decryption_version=max(1, version - retain_previous))
        public_pem = _spki_pem(key["keys"][str(version)]["public_key"], key_type)
        keypair = KeyPair(algorithm=algorithm, key_size=key_size, private_pem="", public_pem=public_pem,
                          kid=kid_for(public_pem))
        return keypair, TransitRef(key_name=name, version=version, mount=mount)

    def delete(self, mount: str, name: str) -> None:
        """Delete a Transit key (they refuse deletion until ``deletion_allowed`` is set)."""
        if self._read(mount, name) is None:
            return
        with vault_call("transit_write", f"deleting transit key {mount}/{name}"):
            self._transit.update_key_configuration(name=name, deletion_allowed=True, mount_point=mount)
            self._transit.delete_key(name=name, mount_point=mount)
