"""Before the operator goes (``helm uninstall``): make sure no ServiceKey deletion can wait for it afterwards.

Only keys whose deletion does work carry the operator's finalizer (``spec.deletion_does_work``); without an
operator, deleting one of those, or its namespace, would hang. Two ways out, as the chart's pre-delete hook runs
them: *drain* deletes every ServiceKey while the operator still runs, so each deletion is honoured (Vault per
deletionPolicy, copies withdrawn); *strip* takes the finalizer off, so the keys stay and can be deleted any
time, with nothing done in Vault or to the copies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pykube

from servicekey_operator.rotation_request import ServiceKeyObject
from servicekey_operator.spec import FINALIZER

POLL_SECONDS = 1.0


def servicekeys(api: pykube.HTTPClient, namespaces: Sequence[str] | None) -> Iterator[ServiceKeyObject]:
    """Every ServiceKey in ``namespaces`` (None: all namespaces)."""
    for namespace in [pykube.all] if namespaces is None else namespaces:
        yield from ServiceKeyObject.objects(api, namespace=namespace)


def _name(servicekey: ServiceKeyObject) -> str:
    return f"{servicekey.namespace}/{servicekey.name}"


def _strip_once(api: pykube.HTTPClient, namespaces: Sequence[str] | None) -> list[str]:
    stripped = []
    for servicekey in servicekeys(api, namespaces):
        while FINALIZER in (servicekey.metadata.get("finalizers") or []):
            kept = [f for f in servicekey.metadata["finalizers"] if f != FINALIZER]
            try:
                servicekey.patch({"metadata": {"finalizers": kept or None,
                                               "resourceVersion": servicekey.metadata["resourceVersion"]}})
                stripped.append(_name(servicekey))
            except pykube.exceptions.HTTPError as refused:
                if refused.code == 404:
                    break  # deleted meanwhile
                if refused.code != 409:
                    raise
                try:
                    servicekey.reload()
                except pykube.exceptions.HTTPError as gone:
                    if gone.code != 404:
                        raise
                    break
    return stripped


def strip_finalizers(api: pykube.HTTPClient, namespaces: Sequence[str] | None,
                     timeout: float) -> tuple[list[str], bool]:
    """Take the operator's finalizer off every ServiceKey that has it, until a look a second later finds none
    (an operator still stopping may put one back); return the keys stripped (namespace/name) and whether it
    settled within ``timeout`` seconds (False: finalizers kept coming back, so an operator still runs).

    Each patch carries the resourceVersion it was computed from, so a concurrent change of the finalizers
    (another controller's) is read again rather than overwritten.

    Raises: pykube.PyKubeError or requests.RequestException when the API server refuses or cannot be reached.
    """
    deadline = time.monotonic() + timeout
    stripped: list[str] = []
    while True:
        this_look = _strip_once(api, namespaces)
        stripped += [name for name in this_look if name not in stripped]
        if not this_look:
            return stripped, True
        if time.monotonic() >= deadline:
            return stripped, False
        time.sleep(POLL_SECONDS)


def drain(api: pykube.HTTPClient, namespaces: Sequence[str] | None, timeout: float) -> list[dict[str, Any]]:
    """Delete every ServiceKey and wait up to ``timeout`` seconds for them to be gone (their finalizers run by the
    operator); return the ones still there, as objects, empty when all went.

    Raises: pykube.PyKubeError or requests.RequestException when the API server refuses or cannot be reached.
    """
    for servicekey in servicekeys(api, namespaces):
        try:
            servicekey.delete()
        except pykube.exceptions.HTTPError as refused:
            if refused.code != 404:
                raise
    deadline = time.monotonic() + timeout
    while True:
        left = [servicekey.obj for servicekey in servicekeys(api, namespaces)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_SECONDS)
