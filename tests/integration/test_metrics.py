"""The /metrics endpoint, parsed with prometheus_client's own parser, moves as keys are created and rotated."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from servicekey_operator.devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.integration


def _samples(operator: OperatorProcess) -> dict[tuple[str, frozenset], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(operator.metrics_text()) for sample in family.samples}


def _value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def test_metrics_follow_creation_rotation_and_failures(operator: OperatorProcess, servicekeys: ServiceKeys):
    before = _samples(operator)
    namespace = servicekeys.namespace

    servicekeys.create("measured", {"algorithm": "ES256", "rotation": {"period": "720h"}})
    status = servicekeys.wait_ready("measured")["status"]
    servicekeys.patch("measured", {"metadata": {"annotations": {"servicekey.io/rotate": "1"}}})
    servicekeys.wait_new_kid("measured", status["keyId"])
    servicekeys.core.create_namespaced_config_map(namespace, {"metadata": {"name": "blocked-public"}})
    servicekeys.create("blocked", {"algorithm": "EdDSA"})
    servicekeys.wait_condition("blocked", "False", "ConfigMapConflict")

    def settled() -> dict | None:
        samples = _samples(operator)
        return samples if _value(samples, "servicekey_ready_status", namespace=namespace, name="blocked",
                                 condition="False") == 1.0 else None
    after = wait_for(settled, 10, "the failure to show in the metrics")

    assert _value(after, "servicekey_ready_status", namespace=namespace, name="measured", condition="True") == 1.0
    assert _value(after, "servicekey_ready_status", namespace=namespace, name="measured", condition="False") == 0.0
    for reason in ("Created", "Requested"):
        grown = (_value(after, "servicekey_rotations_total", reason=reason)
                 - _value(before, "servicekey_rotations_total", reason=reason))
        assert grown >= 1, f"servicekey_rotations_total{{reason={reason}}} did not grow"
    errors = (_value(after, "servicekey_reconcile_errors_total", reason="ConfigMapConflict")
              - _value(before, "servicekey_reconcile_errors_total", reason="ConfigMapConflict"))
    assert errors >= 1
    next_rotation = _value(after, "servicekey_next_rotation_timestamp_seconds", namespace=namespace, name="measured")
    created = _value(after, "servicekey_key_created_timestamp_seconds", namespace=namespace, name="measured")
    assert next_rotation - created == pytest.approx(720 * 3600, abs=5)
    assert _value(after, "servicekey_vault_request_duration_seconds_count", operation="write_version") >= 2
    assert _value(after, "servicekey_reconcile_duration_seconds_count") > 0
