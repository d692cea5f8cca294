"""The public-key ConfigMap: a pure projection of what Vault holds, and the ownership rules for it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servicekey_operator.keys import jwk_set
from servicekey_operator.spec import DesiredKey
from servicekey_operator.vault.records import KeyHistory, LostKey, StoredKey

API_GROUP = "servicekey.io"
API_VERSION = "v1alpha1"
KIND = "ServiceKey"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "servicekey-operator"
NAME_LABEL = "servicekey.io/name"
SOURCE_NAMESPACE_LABEL = "servicekey.io/source-namespace"
# The uid of the ServiceKey a copy in another namespace belongs to (copies cannot have owner references).
OWNER_UID_LABEL = "servicekey.io/owner-uid"
KEY_VERSION_ANNOTATION = "servicekey.io/key-version"
# On the source ConfigMap only: whether the JWKS server serves it (spec.publicKey.http), and under which issuer.
HTTP_LABEL = "servicekey.io/http"
ISSUER_ANNOTATION = "servicekey.io/issuer"
# What the JWKS server lists and watches: source ConfigMaps (never copies) whose ServiceKey opted in.
SERVED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{HTTP_LABEL}=true,!{SOURCE_NAMESPACE_LABEL}"


def published_keys(history: KeyHistory, retain_previous: int) -> list[StoredKey | LostKey]:
    """The keys the JWKS lists: the current one first, the pending one (published ahead of use), then up to
    ``retain_previous`` older ones, each rank preceded by the lost keys (``rollback``) that the version of the
    rank before it replaced, so that they age out together with the key Vault was rolled back to."""
    if history.current is None:
        return []
    chain = [history.current, *history.previous[:retain_previous]]
    listed: list[StoredKey | LostKey] = [history.current, *([history.pending] if history.pending else [])]
    for rank in range(1, retain_previous + 1):
        listed += chain[rank - 1].lost_keys if rank - 1 < len(chain) else ()
        if rank < len(chain):
            listed.append(chain[rank])
    unique: dict[str, StoredKey | LostKey] = {}
    for key in listed:
        # Each kid once, where it first comes; a lost key that Vault's history holds again is Vault's key.
        if key.kid not in unique or (isinstance(unique[key.kid], LostKey) and isinstance(key, StoredKey)):
            unique[key.kid] = key
    return list(unique.values())


def configmap_data(history: KeyHistory, retain_previous: int) -> dict[str, str]:
    """What verifiers read: ``public.pem`` and ``kid`` of the current key; the JWK Set (RFC 7517) of the current,
    pending and retained keys as ``jwks.json`` and, byte-identical, ``jwks`` (the key Envoy Gateway's localJWKS
    reads); and ``<kid>.pem`` for each key in the set (for verifiers that take a list of PEM files)."""
    keys = published_keys(history, retain_previous)
    if not keys:
        raise ValueError("no current key to publish")
    # Fixed member order and formatting: equal keys give byte-equal output, so an unchanged key never causes a
    # ConfigMap write.
    aliases = {key.kid: key.legacy_kids for key in keys if key.legacy_kids}
    jwks = json.dumps(jwk_set([(key.public_pem, key.algorithm) for key in keys], aliases), indent=2) + "\n"
    # A kid is base64url: always a valid ConfigMap key.
    pems = {f"{key.kid}.pem": key.public_pem for key in keys}
    return {"public.pem": keys[0].public_pem, "jwks.json": jwks, "jwks": jwks, "kid": keys[0].kid, **pems}


def desired_configmap(desired: DesiredKey, history: KeyHistory, namespace: str | None = None) -> dict[str, Any]:
    """The whole ConfigMap body for ``namespace`` (the ServiceKey's own unless a copy elsewhere)."""
    target_namespace = namespace or desired.namespace
    labels = {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: desired.name, OWNER_UID_LABEL: desired.uid}
    metadata: dict[str, Any] = {
        "name": desired.configmap_name, "namespace": target_namespace, "labels": labels,
        "annotations": {KEY_VERSION_ANNOTATION: str(history.current.key_version if history.current else 0)},
    }
    if target_namespace == desired.namespace:
        labels[HTTP_LABEL] = "true" if desired.serve_http else "false"
        metadata["annotations"][ISSUER_ANNOTATION] = desired.issuer or ""
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
    """True when an existing ConfigMap is this ServiceKey's to overwrite or delete; what is not proven is not.

    In another namespace (a copy): our labels naming this ServiceKey's namespace, name and uid. A missing label
    proves nothing: the target namespace's own ConfigMap of the same name is never a copy. In the ServiceKey's
    own namespace, which only its own tenant (and the operator, for this namespace's keys) can write to: our
    labels naming this ServiceKey and no source namespace, and no controller but a ServiceKey of this name (this
    one, or a deleted predecessor whose ConfigMap the garbage collector is about to remove).
    """
    metadata = configmap.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or labels.get(NAME_LABEL) != desired.name:
        return False
    if metadata.get("namespace", desired.namespace) != desired.namespace:
        return (labels.get(SOURCE_NAMESPACE_LABEL) == desired.namespace
                and labels.get(OWNER_UID_LABEL) == desired.uid)
    controller = next((ref for ref in metadata.get("ownerReferences") or [] if ref.get("controller")), None)
    return SOURCE_NAMESPACE_LABEL not in labels and (
        controller is None or (controller.get("kind") == KIND and controller.get("name") == desired.name
                               and controller.get("apiVersion", "").split("/")[0] == API_GROUP))


def copy_source(configmap: Mapping[str, Any]) -> tuple[str, str] | None:
    """The ServiceKey (namespace, name) a ConfigMap says it is a copy of, or None when it is no copy of ours."""
    metadata = configmap.get("metadata") or {}
    labels = metadata.get("labels") or {}
    source = labels.get(SOURCE_NAMESPACE_LABEL)
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or not source or source == metadata.get("namespace"):
        return None
    return source, labels.get(NAME_LABEL, "")


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
    message: str = ""


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
    """Which namespaces get a copy: the listed ones and the selected ones, if they exist and opted in.

    What the plan reports (and so what status and Events show the ServiceKey's author) names only namespaces
    the author listed, or that accepted this namespace: a selected namespace that did not opt in is passed
    over in silence, and a listed one that did not is ``NotAccepted`` whether it exists, is being deleted or
    not, so that a tenant learns nothing about namespaces that did not let it in.
    """
    by_name = {ns["metadata"]["name"]: ns for ns in namespaces}
    listed = set(desired.target_namespaces)
    selected = set()
    if desired.namespace_selector is not None:
        selected = {name for name, ns in by_name.items()
                    if selector_matches(desired.namespace_selector, (ns["metadata"].get("labels") or {}))}
    targets, refused = [], []
    for name in sorted((listed | selected) - {desired.namespace}):
        namespace = by_name.get(name)
        if namespace is None or not accepts_from(namespace, desired.namespace):
            if name in listed:
                refused.append(Refusal(name, "NotAccepted"))
        elif (namespace.get("status") or {}).get("phase") == "Terminating":
            refused.append(Refusal(name, "NamespaceTerminating"))
        else:
            targets.append(name)
    return CopyPlan(tuple(targets), tuple(refused))


def selector_string(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as the API's ``labelSelector`` query string (``{}`` → ``""``: everything).

    The requirements are the CRD's, which admits only valid keys and values.
    """
    parts = [f"{key}={value}" for key, value in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator in ("In", "NotIn"):
            parts.append(f"{key} {operator.lower()} ({','.join(values)})")
        else:
            parts.append(key if operator == "Exists" else f"!{key}")
    return ",".join(parts)


def namespace_concerns(public_key: Mapping[str, Any], source_namespace: str, namespace: str,
                       labels_before: Mapping[str, str] | None, labels_after: Mapping[str, str] | None) -> bool:
    """Whether a change of ``namespace`` (its labels from ``labels_before`` to ``labels_after``; None: it did
    not exist) can change where a ServiceKey with this ``spec.publicKey`` publishes: it lists the namespace,
    or its selector matches the namespace before or after."""
    if namespace == source_namespace:
        return False
    if namespace in (public_key.get("namespaces") or ()):
        return True
    selector = public_key.get("namespaceSelector")
    return selector is not None and any(labels is not None and selector_matches(selector, labels)
                                        for labels in (labels_before, labels_after))


SOURCES_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},!{SOURCE_NAMESPACE_LABEL}"
"""The label selector of every ConfigMap this operator publishes in its ServiceKey's own namespace."""


def copies_selector(desired: DesiredKey) -> str:
    """The label selector that finds every copy of this ServiceKey's ConfigMap in other namespaces."""
    return (f"{MANAGED_BY_LABEL}={MANAGED_BY},{NAME_LABEL}={desired.name},"
            f"{SOURCE_NAMESPACE_LABEL}={desired.namespace},{OWNER_UID_LABEL}={desired.uid}")
