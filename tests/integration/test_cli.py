"""The kubectl-style CLI against the real apiserver and operator: ``rotate`` with publishAhead (staged, then
``--wait``), ``status`` of a rotating key and of a key that is not Ready (exit 1), ``-o json``, ``-A`` with
``-l``, the kubeconfig context's namespace as the default, and ``kubectl servicekey`` as a plugin."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import kubernetes.client
import pytest
import yaml

from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.support import MakeNamespace, ServiceKeys

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
STAGED = re.compile(r"^staged (\S+), signs from (\S+Z)$")
ROTATED = re.compile(r"^rotated: (\S+) -> (\S+)$")


def _cli(kubeconfig: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servicekey_operator", *args], capture_output=True, text=True,
                          env=dict(os.environ, KUBECONFIG=str(kubeconfig)), timeout=timeout)


def _kubeconfig_in(dev_env: DevEnvironment, namespace: str, path: Path) -> Path:
    """A copy of the admin kubeconfig whose context sets ``namespace``."""
    config = yaml.safe_load(dev_env.kube.kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_rotate_stages_with_publish_ahead_status_shows_the_pending_key_and_wait_waits_for_it(
        operator: OperatorProcess, servicekeys: ServiceKeys, dev_env: DevEnvironment, tmp_path: Path):
    # publishAhead 8s: time for two more commands while the key is staged, on a busy machine
    servicekeys.create("staged", {"algorithm": "ES256", "rotation": {"publishAhead": "8s"}})
    first_kid = servicekeys.wait_ready("staged")["status"]["keyId"]
    # No -n anywhere: the namespace is the kubeconfig context's.
    kubeconfig = _kubeconfig_in(dev_env, servicekeys.namespace, tmp_path / "kubeconfig")

    started = time.monotonic()
    rotate = _cli(kubeconfig, "rotate", "staged")

    assert rotate.returncode == 0, rotate.stderr
    staged = STAGED.match(rotate.stdout.strip())
    assert staged, rotate.stdout
    pending_kid, signs_from = staged.groups()
    assert time.monotonic() - started < 8, "rotate returns once the key is staged, not when it signs"
    status = servicekeys.get("staged")["status"]
    assert (status["keyId"], status["pendingKeyId"]) == (first_kid, pending_kid)
    detail = _cli(kubeconfig, "status", "staged")
    again = _cli(kubeconfig, "rotate", "staged")

    print(detail.stdout)  # the closing note's sample
    assert detail.returncode == 0, detail.stderr + detail.stdout  # Rotating is Ready: the old key still signs
    assert "Ready:          True (Rotating)" in detail.stdout
    assert re.search(rf"^  {first_kid}\s+signing\s+since ", detail.stdout, re.M), detail.stdout
    assert re.search(rf"^  {pending_kid}\s+pending\s+signs from {signs_from} \(in \d+s\)$", detail.stdout,
                     re.M), detail.stdout
    assert again.returncode == 1, "a second request while a key is staged is refused, not left unanswered"
    assert f"already has a staged key, {pending_kid}" in again.stderr

    second = servicekeys.wait_new_kid("staged", first_kid, timeout=20)["status"]
    assert second["keyId"] == pending_kid

    waited = _cli(kubeconfig, "rotate", "staged", "--wait", "--timeout", "40")

    assert waited.returncode == 0, waited.stderr
    first_line, second_line = waited.stdout.strip().splitlines()
    third_kid = STAGED.match(first_line).group(1)
    assert ROTATED.match(second_line).groups() == (pending_kid, third_kid)
    assert servicekeys.get("staged")["status"]["keyId"] == third_kid
    assert servicekeys.kids("staged-public")[:2] == [third_kid, pending_kid]


def test_rotate_timeouts_and_missing_keys_exit_non_zero_with_a_message(
        operator: OperatorProcess, servicekeys: ServiceKeys, dev_env: DevEnvironment):
    servicekeys.create("nowhere", {"vault": {"path": "elsewhere/key"}})
    servicekeys.wait_condition("nowhere", "False", "InvalidSpec")
    kubeconfig = dev_env.kube.kubeconfig

    timed_out = _cli(kubeconfig, "rotate", "nowhere", "-n", servicekeys.namespace, "--timeout", "2")
    missing = _cli(kubeconfig, "rotate", "absent", "-n", servicekeys.namespace)

    assert timed_out.returncode == 1
    assert re.search(r"timed out after \d+s: the operator has not answered the rotate request", timed_out.stderr)
    assert "Ready=False InvalidSpec" in timed_out.stderr
    assert missing.returncode == 2
    assert 'servicekeys.servicekey.io "absent" not found' in missing.stderr


def test_status_exits_1_when_a_key_is_not_ready_and_prints_json(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                               dev_env: DevEnvironment):
    servicekeys.create("good", {"algorithm": "EdDSA"})
    # vault.path outside this namespace's folder: refused (InvalidSpec), Ready=False
    servicekeys.create("bad", {"algorithm": "EdDSA", "vault": {"path": "servicekeys/elsewhere/key"}})
    good_kid = servicekeys.wait_ready("good")["status"]["keyId"]
    servicekeys.wait_condition("bad", "False", "InvalidSpec")
    namespace, kubeconfig = servicekeys.namespace, dev_env.kube.kubeconfig

    listed = _cli(kubeconfig, "status", "-n", namespace)
    good = _cli(kubeconfig, "status", "good", "-n", namespace)
    bad = _cli(kubeconfig, "inspect", "bad", "-n", namespace)
    as_json = _cli(kubeconfig, "status", "-n", namespace, "-o", "json")

    assert listed.returncode == 1, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["good"][1:5] == ["EdDSA", good_kid, "True", "KeyReady"]
    assert rows["bad"][1:5] == ["<none>", "<none>", "False", "InvalidSpec"]
    assert good.returncode == 0, good.stderr
    assert f"{good_kid}   signing" in good.stdout and "Generated" in good.stdout
    assert bad.returncode == 1
    assert "Ready:          False (InvalidSpec)" in bad.stdout
    assert "must be below" in bad.stdout
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["kind"] == "List"
    assert sorted(item["metadata"]["name"] for item in document["items"]) == ["bad", "good"]
    single = json.loads(_cli(kubeconfig, "status", "good", "-n", namespace, "-o", "json").stdout)
    assert single["status"]["keyId"] == good_kid


def test_all_namespaces_with_a_selector(operator: OperatorProcess, servicekeys: ServiceKeys,
                                        kube_client: kubernetes.client.ApiClient, make_namespace: MakeNamespace,
                                        dev_env: DevEnvironment):
    run = uuid.uuid4().hex[:8]
    other = ServiceKeys(kube_client, make_namespace(), dev_env)
    for keys in (servicekeys, other):
        keys.custom.create_namespaced_custom_object("servicekey.io", "v1alpha1", keys.namespace, "servicekeys", {
            "apiVersion": "servicekey.io/v1alpha1", "kind": "ServiceKey",
            "metadata": {"name": "labelled", "labels": {"cli-test": run}},
            "spec": {"algorithm": "EdDSA", "rotation": {"publishAhead": "0s"}}})
        keys.create("unlabelled", {"algorithm": "EdDSA"})
        keys.wait_ready("labelled")

    table = _cli(dev_env.kube.kubeconfig, "status", "-A", "-l", f"cli-test={run}")
    everything = _cli(dev_env.kube.kubeconfig, "status", "--all-namespaces", "-o", "json")

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert sorted(tuple(line.split()[:2]) for line in lines[1:]) == sorted(
        [(servicekeys.namespace, "labelled"), (other.namespace, "labelled")])
    items = json.loads(everything.stdout)["items"]
    listed = {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}
    assert {(ns, name) for ns in (servicekeys.namespace, other.namespace)
            for name in ("labelled", "unlabelled")} <= listed


def test_kubectl_servicekey_is_an_installed_plugin(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                   dev_env: DevEnvironment, tmp_path: Path):
    # Installed from a copy of the sources into a target directory (pip install . into the environment would
    # change what every other process on this machine imports).
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "operator", source / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(source)], check=True, capture_output=True, timeout=300)

    [distribution] = [d for d in importlib.metadata.distributions(path=[str(target)])
                      if d.metadata["Name"] == "servicekey-operator"]
    scripts = {entry.name: entry.value for entry in distribution.entry_points if entry.group == "console_scripts"}
    assert scripts["kubectl-servicekey"] == scripts["servicekey-operator"] == "servicekey_operator.cli:main"

    servicekeys.create("plugged", {"algorithm": "EdDSA"})
    kid = servicekeys.wait_ready("plugged")["status"]["keyId"]
    kubectl = subprocess.run(
        [str(dev_env.binaries.kubectl), "servicekey", "status", "plugged", "-n", servicekeys.namespace],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, KUBECONFIG=str(dev_env.kube.kubeconfig), PYTHONPATH=str(target),
                 PATH=f"{target / 'bin'}{os.pathsep}{os.environ['PATH']}"))

    assert kubectl.returncode == 0, kubectl.stderr
    assert f"{kid}   signing" in kubectl.stdout
    version = subprocess.run([str(target / "bin" / "kubectl-servicekey"), "version"], capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(target)), timeout=60)
    assert version.stdout == f"servicekey-operator {distribution.version}\n"

