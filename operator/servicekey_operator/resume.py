"""What a restarted operator may take from a ServiceKey's status instead of running its pass at once.

A new operator sees every ServiceKey in its first listing. Running a full pass for each (a ConfigMap
read and three Vault reads) costs minutes at 10,000 keys, and for a healthy key it finds nothing to do:
invariant 5 says such a restart writes nothing. So a key whose status proves that nothing changed since
its last pass gets that pass later, spread over the resync period like every later re-check, and one
whose status cannot prove it gets its pass at once.

The proof covers every trigger of a pass: the spec (generation), the rotate request, the schedule, the
ConfigMap (its resourceVersion still the one the last pass wrote or read) and copies in other namespaces
(never trusted: namespaces may have changed their labels or opt-in meanwhile). What it cannot cover is a
change made in Vault behind the operator's back while it was down; the spread pass finds that within
one resync period, as it would for a change made while the operator was running.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from servicekey_operator.spec import DesiredKey
from servicekey_operator.status import ready_condition, vault_location
from servicekey_operator.vault.records import parse_time


def is_settled(desired: DesiredKey, status: Mapping[str, Any], generation: int | None,
               configmap_version: str | None) -> bool:
    """True when ``status`` shows a finished pass for exactly this spec and rotate request, nothing
    pending, no copies elsewhere, and the ConfigMap still at ``configmap_version`` as that pass left it."""
    ready = ready_condition(status)
    return (generation is not None
            and status.get("observedGeneration") == generation == ready.get("observedGeneration")
            # VaultRolledBack: a rollback dealt with, which lasts until its lost keys age out.
            and ready.get("status") == "True" and ready.get("reason") in ("KeyReady", "VaultRolledBack")
            and bool(status.get("keyId"))
            and (desired.rotate_request is None or desired.rotate_request == status.get("observedRotateRequest"))
            and desired.recheck_request == status.get("observedRecheckRequest")
            and status.get("configMapName") == desired.configmap_name
            and status.get("vaultPath") == vault_location(desired)  # the operator's mount or prefix may have moved
            and configmap_version is not None and status.get("configMapResourceVersion") == configmap_version
            and not status.get("publishedNamespaces") and not status.get("refusedNamespaces")
            and not desired.target_namespaces and desired.namespace_selector is None
            and (desired.rotation.period_seconds is None or bool(status.get("nextRotationTime"))))


def first_pass_time(desired: DesiredKey, status: Mapping[str, Any], generation: int | None,
                    configmap_version: str | None, now: datetime.datetime,
                    latest: datetime.datetime) -> datetime.datetime | None:
    """When a key from the first listing needs its first pass: None for now, else the earlier of its
    next staging time (``publishAhead`` before ``nextRotationTime``) and ``latest``."""
    if not is_settled(desired, status, generation, configmap_version):
        return None
    if status.get("nextRotationTime"):
        stage_at = parse_time(status["nextRotationTime"]) - datetime.timedelta(
            seconds=desired.rotation.publish_ahead_seconds)
        if stage_at <= now:
            return None
        return min(stage_at, latest)
    return latest
