"""Whose is a Vault record? The pure rule behind every write to and delete of a secret, a pending key or a
Transit key (DESIGN.md invariant 7: tenants are hostile; a missing record proves nothing).

A record names its owner three ways: the ServiceKey's ``<namespace>/<name>``, the uid of the namespace it
was written in, and the ServiceKey's own uid. The first two decide: a ServiceKey deleted with ``Retain``
and created again in the same namespace adopts its key (a new ServiceKey uid, the same namespace uid), while
a namespace deleted and created again under the same name is a different tenant, whose ServiceKey adopts the
old key only when its annotation ``servicekey.io/adopt-namespace-uid`` names the old namespace's uid.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from servicekey_operator.errors import VaultPathConflict

ADOPT_NAMESPACE_UID_ANNOTATION = "servicekey.io/adopt-namespace-uid"


@dataclass(frozen=True)
class Owner:
    """The ServiceKey a pass works for: its namespace and name, and the uids of this incarnation of both."""

    namespace: str
    name: str
    namespace_uid: str
    uid: str

    @property
    def ref(self) -> str:
        """``<namespace>/<name>``, as records and Events name a ServiceKey."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class RecordedOwner:
    """The owner a record names; any field may be missing from a record this operator did not write."""

    ref: str | None = None
    namespace_uid: str | None = None
    uid: str | None = None


def verify_owner(recorded: RecordedOwner, me: Owner, adopted_namespace_uids: Collection[str | None],
                 where: str) -> None:
    """Return if the record at ``where`` proves that it is ``me``'s; raise VaultPathConflict otherwise.

    ``adopted_namespace_uids`` are the uids of earlier namespaces (of the same name) whose records ``me``
    may take over: the value of its adoption annotation, and an adoption already recorded in the secret's
    metadata. A record without a namespace uid proves nothing, whatever its name says.
    """
    if recorded.ref != me.ref:
        holder = f"ServiceKey {recorded.ref}" if recorded.ref else "something other than this operator"
        raise VaultPathConflict(f"{where} holds a secret written by {holder}; it is left untouched")
    if recorded.namespace_uid == me.namespace_uid:
        return
    if recorded.namespace_uid is None:
        raise VaultPathConflict(f"{where} names ServiceKey {me.ref} but not the namespace uid it was written for, "
                                "so it cannot prove it is this ServiceKey's; it is left untouched")
    if recorded.namespace_uid in adopted_namespace_uids:
        return
    raise VaultPathConflict(
        f"{where} was written for ServiceKey {me.ref} in an earlier namespace {me.namespace} (uid "
        f"{recorded.namespace_uid}), not this one (uid {me.namespace_uid}); it is left untouched. To adopt that key "
        f"on purpose, annotate this ServiceKey {ADOPT_NAMESPACE_UID_ANNOTATION}={recorded.namespace_uid}")
