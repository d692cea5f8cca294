"""What the key store holds, as plain values (no hvac types leak past ``vault/``)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

OWNER_METADATA_KEY = "servicekey.io/owner"
# The owner's deletionPolicy, so that a secret left after its ServiceKey is gone can be told apart:
# kept on purpose (Retain) or a Delete that failed.
DELETION_POLICY_METADATA_KEY = "servicekey.io/deletion-policy"
MANAGED_BY_METADATA_KEY = "managed-by"
MANAGED_BY = "servicekey-operator"


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 / RFC 3339 timestamp as stored in Vault and in status (``Z`` or an offset)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class TransitRef:
    """Where a key generated inside Vault's Transit engine lives: key name and key version."""

    key_name: str
    version: int


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
    private_pem: str = field(default="", repr=False)

    @property
    def engine(self) -> str:
        """``transit`` when the private key never left Vault's Transit engine, else ``kv``."""
        return "transit" if self.transit else "kv"


@dataclass(frozen=True)
class KeyHistory:
    """The current key, the retained previous ones (newest first), the pending one, and the path's owner.

    ``current_version`` is what a check-and-set write must name (0: nothing written yet). ``pending``
    is a key published ahead of use (``rotation.publishAhead``): it lives beside the secret until it
    is promoted to the next version at ``pending.activate_at``.
    """

    owner: str | None
    current_version: int
    current: StoredKey | None
    previous: tuple[StoredKey, ...] = ()
    pending: StoredKey | None = None
    # The deletionPolicy recorded with the owner (None for paths claimed before it was recorded).
    deletion_policy: str | None = None
