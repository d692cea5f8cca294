"""Ask for a rotation the way a human does: set ``servicekey.io/rotate`` to a new value (pykube)."""

from __future__ import annotations

import pykube

from servicekey_operator.publish import API_GROUP, API_VERSION
from servicekey_operator.spec import ROTATE_ANNOTATION


class ServiceKeyObject(pykube.objects.NamespacedAPIObject):
    """The ServiceKey custom resource for pykube-ng."""

    version = f"{API_GROUP}/{API_VERSION}"
    endpoint = "servicekeys"
    kind = "ServiceKey"


def request_rotation(servicekey: ServiceKeyObject, request_id: str) -> None:
    """Set the rotate annotation to ``request_id``; the operator rotates once per distinct value."""
    servicekey.patch({"metadata": {"annotations": {ROTATE_ANNOTATION: request_id}}})
