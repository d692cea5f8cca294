"""Ask for a rotation the way a human does: set ``servicekey.io/rotate`` to a new value (pykube), and tell from
the status what the operator made of it (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykube

from servicekey_operator.publish import API_GROUP, API_VERSION
from servicekey_operator.spec import ROTATE_ANNOTATION
from servicekey_operator.status_view import pending_activation


class ServiceKeyObject(pykube.objects.NamespacedAPIObject):
    """The ServiceKey custom resource for pykube-ng."""

    version = f"{API_GROUP}/{API_VERSION}"
    endpoint = "servicekeys"
    kind = "ServiceKey"


def request_rotation(servicekey: ServiceKeyObject, request_id: str) -> None:
    """Set the rotate annotation to ``request_id``; the operator rotates once per distinct value."""
    servicekey.patch({"metadata": {"annotations": {ROTATE_ANNOTATION: request_id}}})


@dataclass(frozen=True)
class RotationOutcome:
    """What the operator did with a rotate request: a new key signs (``staged`` False), or a new key is
    published and signs from ``signs_from`` (``staged`` True, rotation.publishAhead)."""

    old_kid: str | None
    new_kid: str
    staged: bool
    signs_from: str | None = None

    def describe(self) -> str:
        """One line for the user: ``staged <kid>, signs from <time>`` or ``rotated: <old> -> <new>``."""
        if self.staged:
            return f"staged {self.new_kid}, signs from {self.signs_from or 'an unknown time'}"
        return rotated_line(self.old_kid, self.new_kid)


def rotated_line(old_kid: str | None, new_kid: str) -> str:
    """``rotated: <old> -> <new>``."""
    return f"rotated: {old_kid or '<none>'} -> {new_kid}"


def rotation_outcome(before: Mapping[str, Any], after: Mapping[str, Any], request_digest: str | None
                     ) -> RotationOutcome | None:
    """The operator's answer to the request whose digest (``spec.rotate_request_digest``) is ``request_digest``,
    from the status read ``before`` the annotation was set and one read ``after``; None while it has not answered.

    A key that answers the request records it: ``status.observedRotateRequest`` is its digest once that key
    signs. With publishAhead the answer is first a staged key: a ``pendingKeyId`` that is neither the key that
    signed nor the one that was pending before (a key staged earlier by the schedule is promoted first, and
    the request is answered by the next one).
    """
    old_kid = before.get("keyId")
    if request_digest and after.get("observedRotateRequest") == request_digest and after.get("keyId"):
        return RotationOutcome(old_kid, after["keyId"], staged=False)
    pending = after.get("pendingKeyId")
    if pending and pending not in (old_kid, before.get("pendingKeyId")):
        return RotationOutcome(old_kid, pending, staged=True, signs_from=pending_activation(after))
    return None
