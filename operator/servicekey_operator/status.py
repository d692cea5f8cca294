"""The ServiceKey status: pure builders for the fields and the ``Ready`` condition."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from servicekey_operator import publish
from servicekey_operator.publish import Refusal
from servicekey_operator.spec import DesiredKey, rotate_request_digest
from servicekey_operator.vault.records import KeyHistory, LostKey
from servicekey_operator.vault.transit import transit_key_name


def rfc3339(moment: datetime.datetime) -> str:
    """UTC time in the form Kubernetes uses (seconds precision, Z suffix)."""
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def vault_location(desired: DesiredKey) -> str:
    """Where the key lives, as ``status.vaultPath`` shows it: the KV secret, or the Transit key."""
    if desired.engine == "transit":
        return f"{desired.vault_mount}/keys/{transit_key_name(desired.vault_path, desired.algorithm, desired.key_size)}"
    return f"{desired.vault_mount}/{desired.vault_path}"


def ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``Ready`` condition of a status (empty when there is none)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})


def with_condition(conditions: Sequence[Mapping[str, Any]], *, type_: str, status: str, reason: str,
                   message: str, generation: int | None, now: datetime.datetime) -> list[dict[str, Any]]:
    """Set one condition in a list-map by type; keep lastTransitionTime unless the status flips."""
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = rfc3339(now)
    if previous and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = previous["lastTransitionTime"]
    updated = {"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": transition, "observedGeneration": generation}
    return [*(dict(c) for c in conditions if c.get("type") != type_), updated]


def ready_status(desired: DesiredKey, history: KeyHistory, next_rotation: datetime.datetime | None,
                 generation: int | None, observed: Mapping[str, Any], now: datetime.datetime,
                 configmap_version: str | None, published_namespaces: Sequence[str] = (),
                 refused: Sequence[Refusal] = ()) -> dict[str, Any]:
    """The full status of a ServiceKey whose key is in Vault and published.

    While a key is published ahead of use the key still works, so Ready stays True with reason
    ``Rotating`` and ``pendingKeyId`` names the next key; while keys whose private halves a Vault rollback lost are
    published, the reason is ``VaultRolledBack`` (``rollback``). ``publishedKeyIds`` are the kids the JWKS lists
    (with an imported key's legacy kids): what a later pass may take back from the ConfigMap after a rollback.
    ``observedRotateRequest``, ``observedRecheckRequest`` and ``configMapResourceVersion`` are what a restarted
    operator compares to skip the key's first pass (see ``resume``).
    """
    current, pending = history.current, history.pending
    assert current is not None
    published = publish.published_keys(history, desired.rotation.retain_previous)
    lost = [key.kid for key in published if isinstance(key, LostKey)]
    if pending is not None:
        reason, message = "Rotating", (f"key {current.kid} signs; {pending.kid} is published and signs from "
                                       f"{rfc3339(pending.activate_at or now)}")
    elif lost:
        reason, message = "VaultRolledBack", (f"key {current.kid} signs; Vault was rolled back to an older state and "
                                              f"lost the private keys of {', '.join(lost)}, which stay published "
                                              "until retainPrevious drops them")
    else:
        reason, message = "KeyReady", f"key {current.kid} is in Vault and published"
    return {
        "observedGeneration": generation,
        "keyId": current.kid,
        "keyVersion": current.key_version,
        "algorithm": current.algorithm,
        "lastRotationTime": rfc3339(current.created_at),
        "nextRotationTime": rfc3339(next_rotation) if next_rotation else None,
        "configMapName": desired.configmap_name,
        "configMapResourceVersion": configmap_version,
        "observedRotateRequest": rotate_request_digest(current.rotate_annotation),
        "observedRecheckRequest": desired.recheck_request,
        "vaultPath": vault_location(desired),
        "pendingKeyId": pending.kid if pending else None,
        "publishedKeyIds": list(dict.fromkeys(kid for key in published for kid in (key.kid, *key.legacy_kids))),
        "publishedNamespaces": list(published_namespaces) or None,
        "refusedNamespaces": [{"namespace": r.namespace, "reason": r.reason, **({"message": r.message}
                                                                              if r.message else {})}
                              for r in refused] or None,
        "conditions": with_condition(observed.get("conditions") or [], type_="Ready", status="True",
                                     reason=reason, message=message, generation=generation, now=now),
    }


def failed_status(reason: str, message: str, generation: int | None, observed: Mapping[str, Any],
                  now: datetime.datetime) -> dict[str, Any]:
    """Status fields for a pass that could not finish: Ready=False with the reason; key fields kept."""
    return {
        "observedGeneration": generation,
        "conditions": with_condition(observed.get("conditions") or [], type_="Ready", status="False",
                                     reason=reason, message=message, generation=generation, now=now),
    }


def differs(observed: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when writing ``wanted`` as a merge patch would change the observed status."""
    return any(observed.get(key) != value for key, value in wanted.items())
