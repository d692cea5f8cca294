"""``servicekey-operator uninstall``, what the chart's uninstall hook runs: drain every ServiceKey through the running
operator, or strip the operator's finalizer once it is gone, so that no deletion waits for an operator that will
not come back. Each test runs its own operator (``start_operator``), to stop it when the test says so."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from servicekey_operator.spec import FINALIZER
from tests.support import MakeNamespace, ServiceKeys

pytestmark = pytest.mark.integration


def uninstall(dev_env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servicekey_operator", "uninstall", *args], capture_output=True,
                          text=True, env=dict(os.environ, KUBECONFIG=str(dev_env.kube.kubeconfig)), timeout=120)


def finalizers(servicekeys: ServiceKeys, name: str) -> list[str]:
    return (servicekeys.get(name) or {}).get("metadata", {}).get("finalizers") or []


def test_strip_finalizers_after_the_operator_stopped_lets_every_key_go_at_once(
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys, make_namespace: MakeNamespace,
        dev_env: DevEnvironment):
    operator = start_operator()
    target = make_namespace(accept_from=servicekeys.namespace)
    servicekeys.create("doomed", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    servicekeys.create("copied", {"algorithm": "ES256", "publicKey": {"namespaces": [target]}})
    servicekeys.create("plain", {"algorithm": "ES256"})
    for name in ("doomed", "copied", "plain"):
        servicekeys.wait_ready(name)
    assert finalizers(servicekeys, "doomed") == finalizers(servicekeys, "copied") == [FINALIZER]
    operator.stop()

    result = uninstall(dev_env, "--strip-finalizers", "-n", servicekeys.namespace)

    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        f"servicekey {servicekeys.namespace}/{name}: finalizer removed (its key stays in Vault, copies elsewhere stay)"
        for name in ("copied", "doomed")]
    mount, path = servicekeys.vault_path("doomed")
    for name in ("doomed", "copied", "plain"):
        servicekeys.delete(name)
        servicekeys.wait_gone(name, timeout=5)
    assert servicekeys.vault_versions(mount, path) == 1, "nothing is done in Vault without the operator"
    assert servicekeys.configmap("copied-public", target) is not None, "nor to the copies"


def test_strip_finalizers_says_so_when_a_running_operator_puts_them_back(
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys, dev_env: DevEnvironment):
    start_operator()
    servicekeys.create("doomed", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    servicekeys.wait_ready("doomed")

    result = uninstall(dev_env, "--strip-finalizers", "-n", servicekeys.namespace, "--timeout", "3")

    assert result.returncode == 1
    assert "an operator still runs" in result.stderr


def test_drain_deletes_every_key_through_the_operator_and_names_what_it_could_not(
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys, dev_env: DevEnvironment):
    start_operator()
    servicekeys.create("doomed", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    servicekeys.create("kept", {"algorithm": "ES256"})
    for name in ("doomed", "kept"):
        servicekeys.wait_ready(name)
    doomed, kept = servicekeys.vault_path("doomed"), servicekeys.vault_path("kept")

    result = uninstall(dev_env, "--drain", "-n", servicekeys.namespace)

    assert result.returncode == 0, result.stderr
    assert servicekeys.get("doomed") is None and servicekeys.get("kept") is None
    assert servicekeys.vault_versions(*doomed) == 0, "deletionPolicy Delete was honoured"
    assert servicekeys.vault_versions(*kept) == 1, "Retain kept the key"

    # A key some other controller holds: the drain gives up after --timeout and says which and why.
    servicekeys.create("held", {"algorithm": "ES256"})
    servicekeys.patch("held", {"metadata": {"finalizers": ["example.com/hold"]}})
    result = uninstall(dev_env, "--drain", "-n", servicekeys.namespace, "--timeout", "2")
    servicekeys.patch("held", {"metadata": {"finalizers": None}})

    assert result.returncode == 1
    assert f"servicekey {servicekeys.namespace}/held is still there after 2s (finalizers ['example.com/hold']" \
        in result.stderr
