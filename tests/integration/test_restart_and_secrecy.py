"""Invariants 1 and 5: no private key material in Kubernetes or logs; a restart over healthy keys writes nothing."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from devcluster.operator_process import OperatorProcess
from tests.support import GROUP, PLURAL, VERSION, ServiceKeys, metric_samples, metric_value, wait_for

pytestmark = pytest.mark.integration
ALGORITHMS_UNDER_TEST = ("RS256", "ES256", "EdDSA")


def _private_fragments(private_pem: str) -> list[str]:
    """Distinctive pieces of a private key PEM: any one of them in Kubernetes would be a leak."""
    body = "".join(line for line in private_pem.splitlines() if "-----" not in line)
    return ["PRIVATE KEY", *(body[i:i + 40] for i in range(0, len(body) - 40, 40))]


def _snapshot(servicekeys: ServiceKeys, names: tuple[str, ...]) -> dict[str, object]:
    vault_versions = {name: servicekeys.vault_versions(*servicekeys.vault_path(name)) for name in names}
    configmaps = {name: servicekeys.configmap(f"{name}-public").metadata.resource_version for name in names}
    return {"vault_versions": vault_versions, "configmap_resource_versions": configmaps}


def _passes(operator: OperatorProcess) -> float:
    return metric_value(metric_samples(operator), "servicekey_reconcile_duration_seconds_count")


def _reports_ready(operator: OperatorProcess, namespace: str, names: tuple[str, ...]) -> bool:
    """servicekey_ready_status{condition="True"} is 1 for each key, whatever its algorithm and engine labels."""
    ready = {dict(labels)["name"] for (metric, labels), value in metric_samples(operator).items()
             if metric == "servicekey_ready_status" and value == 1.0
             and {("namespace", namespace), ("condition", "True")} <= labels}
    return set(names) <= ready


def test_restart_over_ready_keys_writes_nothing_and_defers_their_checks(
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys):
    first = start_operator()
    names = tuple(f"steady-{algorithm.lower()}" for algorithm in ALGORITHMS_UNDER_TEST)
    for name, algorithm in zip(names, ALGORITHMS_UNDER_TEST, strict=True):
        servicekeys.create(name, {"algorithm": algorithm, "rotation": {"period": "720h"}},
                           annotations={"servicekey.io/rotate": "earlier"})
    for name in names:
        servicekeys.wait_ready(name)
    before = _snapshot(servicekeys, names)
    statuses = {name: servicekeys.get(name)["status"] for name in names}
    first.stop()

    # Its pass count must be about this test's keys alone, not about keys that other tests left behind.
    second = start_operator(SERVICEKEY_WATCH_NAMESPACES=servicekeys.namespace)
    # Taken in from their status: Ready in the metrics, their first pass spread over the resync period.
    wait_for(lambda: _reports_ready(second, servicekeys.namespace, names), 30, "every key to be reported Ready")
    time.sleep(2)

    assert _snapshot(servicekeys, names) == before
    assert {name: servicekeys.get(name)["status"] for name in names} == statuses
    assert _passes(second) == 0


def test_a_configmap_deleted_or_edited_while_the_operator_was_down_is_restored_at_start(
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys):
    first = start_operator()
    names = ("cm-deleted", "cm-edited", "cm-untouched")
    for name in names:
        servicekeys.create(name, {"algorithm": "ES256"})
    kids = {name: servicekeys.wait_ready(name)["status"]["keyId"] for name in names}
    first.stop()
    servicekeys.core.delete_namespaced_config_map("cm-deleted-public", servicekeys.namespace)
    servicekeys.core.patch_namespaced_config_map("cm-edited-public", servicekeys.namespace,
                                                 {"data": {"jwks.json": '{"keys": []}'}})

    # Its pass count must be about this test's keys alone, not about keys that other tests left behind.
    second = start_operator(SERVICEKEY_WATCH_NAMESPACES=servicekeys.namespace)
    for name in ("cm-deleted", "cm-edited"):
        wait_for(lambda name=name: servicekeys.configmap(f"{name}-public") is not None
                 and servicekeys.kids(f"{name}-public") == [kids[name]], 30, f"{name}-public to be restored from Vault")
    wait_for(lambda: _reports_ready(second, servicekeys.namespace, names), 30, "every key to be reported Ready")

    for name in names:
        assert servicekeys.vault_versions(*servicekeys.vault_path(name)) == 1
    assert _passes(second) == 2, "only the two keys whose ConfigMap changed needed a pass at start"


def test_no_private_key_material_in_any_kubernetes_object_event_or_log(
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys):
    operator = start_operator()
    names = []
    for algorithm in ALGORITHMS_UNDER_TEST:
        name = f"secret-{algorithm.lower()}"
        servicekeys.create(name, {"algorithm": algorithm}, annotations={"servicekey.io/rotate": "first"})
        names.append(name)
    for name in names:
        old = servicekeys.wait_ready(name)["status"]["keyId"]
        servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": "second"}}})
        servicekeys.wait_new_kid(name, old)
    fragments = []
    for name in names:
        mount, path = servicekeys.vault_path(name)
        for version in (1, 2):
            fragments += _private_fragments(servicekeys.vault_secret(mount, path, version)["private_key"])

    namespace = servicekeys.namespace
    api = servicekeys.core.api_client
    dumps = {
        "servicekeys": servicekeys.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
        "configmaps": api.sanitize_for_serialization(servicekeys.core.list_namespaced_config_map(namespace)),
        "secrets": api.sanitize_for_serialization(servicekeys.core.list_namespaced_secret(namespace)),
        "events": api.sanitize_for_serialization(servicekeys.core.list_namespaced_event(namespace)),
    }
    haystacks = {kind: json.dumps(dump) for kind, dump in dumps.items()}
    haystacks["operator log"] = operator.log_text()

    assert dumps["secrets"]["items"] == [], "the operator must never create Secrets"
    assert len(dumps["events"]["items"]) > 0, "the scan must see the operator's events"
    for where, text in haystacks.items():
        leaked = [fragment for fragment in fragments if fragment in text]
        assert not leaked, f"private key material found in {where}: {leaked[:1]}"
    private_jwk_members = re.compile(r'"(d|p|q|dp|dq|qi)"\s*:')
    jwks_texts = [cm["data"]["jwks.json"] for cm in dumps["configmaps"]["items"] if "jwks.json" in cm.get("data", {})]
    assert jwks_texts and not any(private_jwk_members.search(text) for text in jwks_texts)
