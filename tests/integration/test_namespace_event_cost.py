"""What a namespace event costs: a pass only for the keys that publish into that namespace.

Its own module: the operator whose passes it counts must be the only one watching the test's namespace (the
other publishing tests share a cluster-wide operator for their whole module).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import kubernetes.client
import pytest

from devcluster.operator_process import OperatorProcess
from tests.support import MakeNamespace, ServiceKeys, metric_samples, metric_value, wait_for

pytestmark = pytest.mark.integration


def test_namespace_events_run_passes_only_for_the_keys_they_concern(
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys, make_namespace: MakeNamespace,
        core_api: kubernetes.client.CoreV1Api):
    # Issue #13: any namespace event used to re-plan every key that publishes elsewhere.
    # The target exists before the operator starts, so it arrives in the initial listing, not as a watch
    # event that a slow machine could deliver after the key's first pass (and rightly re-plan the key for).
    target = make_namespace(accept_from=servicekeys.namespace)
    operator = start_operator(SERVICEKEY_WATCH_NAMESPACES=servicekeys.namespace)
    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": {"namespaces": [target]}})
    servicekeys.wait_ready("shared")
    passes = metric_value(metric_samples(operator), "servicekey_reconcile_duration_seconds_count")
    assert passes == 1, "the only operator of this module made the key in one pass"

    unrelated = [make_namespace() for _ in range(3)]
    for name in unrelated:
        core_api.patch_namespace(name, {"metadata": {"labels": {"churn": "yes"}}})
    time.sleep(3)  # an absence: long enough for the passes those events used to start (milliseconds each)
    after_churn = metric_value(metric_samples(operator), "servicekey_reconcile_duration_seconds_count")
    core_api.patch_namespace(target, {"metadata": {"labels": {"marker": "now"}}})  # concerns the key

    assert after_churn == passes, f"{after_churn - passes} passes for namespaces the key does not publish into"
    wait_for(lambda: metric_value(metric_samples(operator), "servicekey_reconcile_duration_seconds_count")
             == passes + 1, 20, "the one pass the target's change asks for")
