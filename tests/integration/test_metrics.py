"""The /metrics endpoint, parsed with prometheus_client's own parser, moves as keys are created and rotated."""

from __future__ import annotations

import pytest

from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, metric_samples, metric_value, wait_for

pytestmark = pytest.mark.integration


def test_metrics_follow_creation_rotation_and_failures(operator: OperatorProcess, servicekeys: ServiceKeys):
    before = metric_samples(operator)
    namespace = servicekeys.namespace

    servicekeys.create("measured", {"algorithm": "ES256", "rotation": {"period": "720h"}})
    status = servicekeys.wait_ready("measured")["status"]
    servicekeys.patch("measured", {"metadata": {"annotations": {"servicekey.io/rotate": "1"}}})
    servicekeys.wait_new_kid("measured", status["keyId"])
    servicekeys.core.create_namespaced_config_map(namespace, {"metadata": {"name": "blocked-public"}})
    servicekeys.create("blocked", {"algorithm": "EdDSA"})
    servicekeys.wait_condition("blocked", "False", "ConfigMapConflict")

    def settled() -> dict | None:
        samples = metric_samples(operator)
        return samples if metric_value(samples, "servicekey_ready_status", namespace=namespace, name="blocked",
                                       algorithm="EdDSA", engine="kv", condition="False") == 1.0 else None
    after = wait_for(settled, 10, "the failure to show in the metrics")

    measured = {"namespace": namespace, "name": "measured"}
    labels = {**measured, "algorithm": "ES256", "engine": "kv"}
    assert metric_value(after, "servicekey_ready_status", **labels, condition="True") == 1.0
    assert metric_value(after, "servicekey_ready_status", **labels, condition="False") == 0.0
    for reason in ("Created", "Requested"):
        grown = (metric_value(after, "servicekey_rotations_total", reason=reason, algorithm="ES256", engine="kv")
                 - metric_value(before, "servicekey_rotations_total", reason=reason, algorithm="ES256", engine="kv"))
        assert grown >= 1, f"servicekey_rotations_total{{reason={reason}}} did not grow"
    errors = (metric_value(after, "servicekey_reconcile_errors_total", reason="ConfigMapConflict")
              - metric_value(before, "servicekey_reconcile_errors_total", reason="ConfigMapConflict"))
    assert errors >= 1
    next_rotation = metric_value(after, "servicekey_next_rotation_timestamp_seconds", **measured)
    created = metric_value(after, "servicekey_key_created_timestamp_seconds", **measured)
    assert next_rotation - created == pytest.approx(720 * 3600, abs=5)
    assert metric_value(after, "servicekey_rotation_period_seconds", **measured) == 720 * 3600
    assert metric_value(after, "servicekey_operator_active") == 1.0, "a standalone operator is always active"
    assert metric_value(after, "servicekey_vault_request_duration_seconds_count", operation="write_version") >= 2
    assert metric_value(after, "servicekey_reconcile_duration_seconds_count") > 0
