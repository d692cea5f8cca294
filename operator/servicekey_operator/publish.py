"""The public-key ConfigMap: a pure projection of what Vault holds, and the ownership rules for it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servicekey_operator.keys import jwk_set
from servicekey_operator.spec import DesiredKey
from servicekey_operator.vault.records import KeyHistory, StoredKey

API_GROUP = "servicekey.io"
API_VERSION = "v1alpha1"
KIND = "ServiceKey"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "servicekey-operator"
NAME_LABEL = "servicekey.io/name"
SOURCE_NAMESPACE_LABEL = "servicekey.io/source-namespace"
KEY_VERSION_ANNOTATION = "servicekey.io/key-version"


def published_keys(history: KeyHistory, retain_previous: int) -> list[StoredKey]:
    """The keys the JWKS lists: the current one first, the pending one (published ahead of use),
    then up to ``retain_previous`` older ones."""
    if history.current is None:
        return []
    pending = [history.pending] if history.pending else []
    return [history.current, *pending, *history.previous[:retain_previous]]


def configmap_data(history: KeyHistory, retain_previous: int) -> dict[str, str]:
    """``public.pem``, ``jwks.json`` and ``kid`` for the current key and the retained ones."""
    keys = published_keys(history, retain_previous)
    if not keys:
        raise ValueError("no current key to publish")
    jwks = jwk_set([(key.public_pem, key.algorithm) for key in keys])
    return {
        "public.pem": keys[0].public_pem,
        # Fixed member order and formatting: equal keys give byte-equal output, so an unchanged
        # key never causes a ConfigMap write.
        "jwks.json": json.dumps(jwks, indent=2) + "\n",
        "kid": keys[0].kid,
    }


def desired_configmap(desired: DesiredKey, history: KeyHistory, namespace: str | None = None) -> dict[str, Any]:
    """The whole ConfigMap body for ``namespace`` (the ServiceKey's own unless a copy elsewhere)."""
    target_namespace = namespace or desired.namespace
    labels = {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: desired.name}
    metadata: dict[str, Any] = {
        "name": desired.configmap_name, "namespace": target_namespace, "labels": labels,
        "annotations": {KEY_VERSION_ANNOTATION: str(history.current.version if history.current else 0)},
    }
    if target_namespace == desired.namespace:
        metadata["ownerReferences"] = [{
            "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": desired.name,
            "uid": desired.uid, "controller": True, "blockOwnerDeletion": True,
        }]
    else:
        # No owner references across namespaces: the finalizer removes copies.
        labels[SOURCE_NAMESPACE_LABEL] = desired.namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": configmap_data(history, desired.rotation.retain_previous)}


def is_ours(configmap: Mapping[str, Any], desired: DesiredKey) -> bool:
    """True when an existing ConfigMap was written by this operator for this ServiceKey."""
    labels = (configmap.get("metadata") or {}).get("labels") or {}
    same_source = labels.get(SOURCE_NAMESPACE_LABEL, desired.namespace) == desired.namespace
    return (labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(NAME_LABEL) == desired.name
            and same_source)


def needs_update(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when the fields we own differ (data, our labels and annotations, owner references)."""
    existing_meta = existing.get("metadata") or {}
    wanted_meta = wanted["metadata"]
    labels = existing_meta.get("labels") or {}
    annotations = existing_meta.get("annotations") or {}
    return (
        (existing.get("data") or {}) != wanted["data"]
        or any(labels.get(k) != v for k, v in wanted_meta["labels"].items())
        or any(annotations.get(k) != v for k, v in wanted_meta["annotations"].items())
        or [ref.get("uid") for ref in existing_meta.get("ownerReferences") or []]
        != [ref["uid"] for ref in wanted_meta.get("ownerReferences") or []]
    )


ACCEPT_FROM_ANNOTATION = "servicekey.io/accept-from"


@dataclass(frozen=True)
class Refusal:
    """A namespace the public key was not published to, and why."""

    namespace: str
    reason: str


@dataclass(frozen=True)
class CopyPlan:
    """Where copies of the ConfigMap go, and where they may not."""

    targets: tuple[str, ...]
    refused: tuple[Refusal, ...]


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    return key not in labels  # DoesNotExist


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics: every matchLabels pair and every expression must hold."""
    return (all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())
            and all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or []))


def accepts_from(namespace: Mapping[str, Any], source_namespace: str) -> bool:
    """Whether a namespace opted in to receive public keys from ``source_namespace``.

    The opt-in is the namespace annotation ``servicekey.io/accept-from``: a comma-separated list of
    source namespaces, or ``*``. Only those who may edit the namespace itself can set it, so a user of
    the source namespace cannot push objects into namespaces that did not agree.
    """
    annotations = (namespace.get("metadata") or {}).get("annotations") or {}
    accepted = {entry.strip() for entry in annotations.get(ACCEPT_FROM_ANNOTATION, "").split(",")}
    return "*" in accepted or source_namespace in accepted


def plan_copies(desired: DesiredKey, namespaces: list[Mapping[str, Any]]) -> CopyPlan:
    """Which namespaces get a copy: the listed ones and the selected ones, if they exist and opted in."""
    by_name = {ns["metadata"]["name"]: ns for ns in namespaces}
    wanted = set(desired.target_namespaces)
    if desired.namespace_selector is not None:
        wanted |= {name for name, ns in by_name.items()
                   if selector_matches(desired.namespace_selector, (ns["metadata"].get("labels") or {}))}
    wanted.discard(desired.namespace)
    targets, refused = [], []
    for name in sorted(wanted):
        namespace = by_name.get(name)
        if namespace is None:
            refused.append(Refusal(name, "NamespaceNotFound"))
        elif (namespace.get("status") or {}).get("phase") == "Terminating":
            refused.append(Refusal(name, "NamespaceTerminating"))
        elif not accepts_from(namespace, desired.namespace):
            refused.append(Refusal(name, "NotAccepted"))
        else:
            targets.append(name)
    return CopyPlan(tuple(targets), tuple(refused))


SOURCES_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},!{SOURCE_NAMESPACE_LABEL}"
"""The label selector of every ConfigMap this operator publishes in its ServiceKey's own namespace."""


def copies_selector(desired: DesiredKey) -> str:
    """The label selector that finds every copy of this ServiceKey's ConfigMap in other namespaces."""
    return (f"{MANAGED_BY_LABEL}={MANAGED_BY},{NAME_LABEL}={desired.name},"
            f"{SOURCE_NAMESPACE_LABEL}={desired.namespace}")
