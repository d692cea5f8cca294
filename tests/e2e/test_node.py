"""The operator as users run it, on a real node (kubelet, containerd, kube-proxy): a pod from its own image,
installed with Helm, logging in to Vault with the chart's projected ServiceAccount token; the signer and
verifier of deploy/examples as pods; and rotations that fail no token with the default settings.

The examples are the files users copy, adapted only where this machine differs (see devcluster.examples).
"""

from __future__ import annotations

import concurrent.futures
import copy
import datetime
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
import pytest
import yaml

from devcluster.chart import OPERATOR_SELECTOR, RELEASE, RELEASE_NAMESPACE, helm, install_operator_pod
from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.examples import ExamplePods, deploy_examples, manifests
from devcluster.node import KubernetesNode, wait_for_deployment, wait_for_pod
from tests.support import GROUP, VERSION, ServiceKeys, wait_for

pytestmark = pytest.mark.e2e
# How long a mounted ConfigMap may take to change in a pod (the kubelet's sync period, 60-90 s) plus the default
# publishAhead (3m), with a margin: the bound of a wait for a rotation to reach a signer.
ROTATION_TIMEOUT = 360.0


@dataclass
class Pair:
    """A signer and a verifier of one ServiceKey, and what the test saw of them."""

    namespace: str
    key: str
    servicekeys: ServiceKeys
    pods: ExamplePods
    notes: dict[str, float] = field(default_factory=dict)
    pending: str = ""

    def stats(self) -> dict[str, Any]:
        return self.pods.stats()

    def accepted_kids(self) -> list[str]:
        return self.pods.accepted_kids()

    def published_kids(self) -> list[str]:
        configmap = self.servicekeys.configmap(f"{self.key}-public")
        return [key["kid"] for key in json.loads(configmap.data["jwks.json"])["keys"]] if configmap else []


def deploy_pair(env: DevEnvironment, kube_client: kubernetes.client.ApiClient, namespace: str, key: str,
                servicekey: dict[str, Any]) -> Pair:
    return Pair(namespace, key, ServiceKeys(kube_client, namespace, env),
                deploy_examples(env, namespace, key, servicekey))


def _installed(env: DevEnvironment) -> bool:
    return env.kube.kubectl("get", "deployment", "-n", RELEASE_NAMESPACE, RELEASE, check=False).returncode == 0


@pytest.fixture(scope="module")
def operator_pod(dev_env: DevEnvironment, node: KubernetesNode) -> Iterator[None]:
    """The chart installed as users install it, with the image built from the Dockerfile."""
    install_operator_pod(dev_env)
    yield
    if _installed(dev_env):
        helm(dev_env, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "120s")


def test_the_node_goes_down_without_a_trace_and_comes_up_again(dev_env: DevEnvironment, node: KubernetesNode):
    dev_env.kube.kubectl("create", "namespace", "cycle")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": "cycle",
                                                           "labels": {"app": "probe"}},
           "spec": {"containers": [{"name": "probe", "image": dev_env.node_images["examples"].ref,
                                    "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}
    dev_env.kube.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(pod))
    wait_for_pod(dev_env.kube, "cycle", "app=probe")

    node.stop()
    leftovers = node.leftovers()
    node.start()

    assert leftovers == []
    dev_env.kube.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(pod))
    wait_for_pod(dev_env.kube, "cycle", "app=probe")
    dev_env.kube.kubectl("delete", "namespace", "cycle", "--wait=false")


def test_the_operator_pod_logs_in_with_the_projected_token_and_makes_keys(
        dev_env: DevEnvironment, operator_pod: None, kube_client: kubernetes.client.ApiClient, namespace: str):
    servicekeys = ServiceKeys(kube_client, namespace, dev_env)
    servicekeys.create("pod-made-es256", {"algorithm": "ES256"})
    servicekeys.create("pod-made-rs4096", {"algorithm": "RS256", "keySize": 4096})

    for name in ("pod-made-es256", "pod-made-rs4096"):
        kid = servicekeys.wait_ready(name, timeout=60)["status"]["keyId"]
        assert servicekeys.vault_secret("secret", f"servicekeys/{namespace}/{name}")["kid"] == kid
    pod = json.loads(dev_env.kube.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-l",
                                          OPERATOR_SELECTOR, "-o", "json").stdout)["items"][0]
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["image"] == dev_env.node_images["operator"].ref
    log = dev_env.kube.kubectl("logs", "-n", RELEASE_NAMESPACE, pod["metadata"]["name"]).stdout
    assert "kubernetes auth" in log and "Authenticated to Vault" in log


def test_the_example_signer_signs_and_the_example_verifier_verifies(
        dev_env: DevEnvironment, operator_pod: None, kube_client: kubernetes.client.ApiClient):
    servicekey = manifests("servicekey-rs256.yaml")[0]
    pair = deploy_pair(dev_env, kube_client, "demo", servicekey["metadata"]["name"], servicekey)

    stats = pair.stats()
    assert stats["failed"] == 0 and stats["errors"] == 0, stats
    assert list(stats["kids"]) == [pair.servicekeys.get(pair.key)["status"]["keyId"]]


def _rotation_report(pairs: dict[str, Pair]) -> str:
    def report(stats: dict[str, Any], notes: dict[str, float]) -> dict[str, Any]:
        return {"stats": {k: v for k, v in stats.items() if k != "failures"}, "failures": stats["failures"][-3:],
                **notes}
    return json.dumps({kind: report(pair.stats(), pair.notes) for kind, pair in pairs.items()}, indent=1)


def _emergency_window(pair: Pair, compromised: str) -> dict[str, float]:
    """Rotate ``pair``'s key as an emergency and measure its cost: how many tokens the verifier rejects, and
    for how long, before the kubelet has put the new key in its file (none when the kubelet's sync of the
    verifier happens to come before the signer's next read of Vault)."""
    before = pair.stats()
    started = time.time()
    pair.servicekeys.patch("signing", {"metadata": {"annotations": {"servicekey.io/rotate": "emergency:leaked"}}})
    emergency = wait_for(lambda: (kid := pair.servicekeys.vault_secret(
        "secret", f"servicekeys/{pair.namespace}/signing")["kid"]) != compromised and kid, 30,
        "the emergency key to be Vault's current one")
    signing_after = time.time() - started
    failed, first_failure, last_failure = before["failed"], 0.0, 0.0
    deadline = time.time() + ROTATION_TIMEOUT
    while time.time() < deadline:
        stats = pair.stats()
        if stats["failed"] > failed:
            failed, last_failure = stats["failed"], time.time()
            first_failure = first_failure or last_failure
        if emergency in stats["kids"] and emergency in pair.accepted_kids() and time.time() - last_failure > 5:
            break
        time.sleep(0.5)
    return {"signs_with_the_new_key_after": signing_after, "rejected": failed - before["failed"],
            "rejecting_for": last_failure - first_failure, "signed_with_it": stats["kids"].get(emergency, 0),
            "accepted": float(emergency in pair.accepted_kids())}


ROTATION_KINDS = ("manual", "spec-change", "scheduled", "emergency")


@pytest.fixture
def rotation_namespaces(dev_env: DevEnvironment, operator_pod: None) -> Iterator[None]:
    """Removed while the operator still runs, so their keys' finalizers are honoured and no pod outlives them."""
    yield
    dev_env.kube.kubectl("delete", "namespace", *(f"rot-{kind}" for kind in ROTATION_KINDS), "--ignore-not-found",
                         "--timeout=120s", check=False)


def test_rotations_fail_no_token_with_the_default_publish_ahead(
        dev_env: DevEnvironment, node: KubernetesNode, operator_pod: None, rotation_namespaces: None,
        kube_client: kubernetes.client.ApiClient):
    """Manual, spec-change and scheduled rotations with the defaults (publishAhead 3m, the kubelet's default
    sync); a token every 100 ms from the signer pod to the verifier pod; the operator pod is killed and the
    container runtime restarted in the middle of them. Meanwhile an emergency rotation, whose cost (the window
    in which the verifier does not have the new key yet) is measured."""
    key = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceKey", "metadata": {},
           "spec": {"algorithm": "ES256"}}
    scheduled = copy.deepcopy(key)
    scheduled["spec"]["rotation"] = {"period": "10m"}  # publishAhead: the default, 3m
    staging = ServiceKeys(kube_client, "rot-scheduled", dev_env)
    dev_env.kube.kubectl("create", "namespace", "rot-scheduled")
    # A key 6 minutes into its 10: its successor is staged (tick - publishAhead) a minute from now.
    staging.seed_key("signing", "ES256", datetime.timedelta(minutes=6))
    specs = {kind: scheduled if kind == "scheduled" else key for kind in ROTATION_KINDS}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pairs = dict(zip(specs, pool.map(lambda kind: deploy_pair(dev_env, kube_client, f"rot-{kind}", "signing",
                                                                 specs[kind]), specs), strict=True))
    first = {kind: pair.servicekeys.get("signing")["status"]["keyId"] for kind, pair in pairs.items()}

    pairs["manual"].servicekeys.patch("signing", {"metadata": {"annotations": {"servicekey.io/rotate": "now"}}})
    pairs["spec-change"].servicekeys.patch("signing", {"spec": {"algorithm": "ES384"}})
    for kind in ("manual", "spec-change", "scheduled"):
        pair = pairs[kind]
        staged_at = wait_for(lambda pair=pair: len(pair.published_kids()) == 2 and time.time(), 120,
                             f"{kind}: the next key to be published")
        pair.notes["published_at"] = staged_at
        pair.pending = pair.published_kids()[1]
    # The operator pod dies and the container runtime restarts while the rotations wait out publishAhead.
    dev_env.kube.kubectl("delete", "pods", "-n", RELEASE_NAMESPACE, "-l", OPERATOR_SELECTOR,
                         "--force", "--grace-period=0")
    node.restart_containerd()
    wait_for_deployment(dev_env.kube, RELEASE_NAMESPACE, RELEASE)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        emergency = pool.submit(_emergency_window, pairs["emergency"], first["emergency"])

        rotating = [pairs[kind] for kind in ("manual", "spec-change", "scheduled")]

        def all_propagated() -> bool:
            """Note when each verifier first accepts its next key (all polled together, so one kind's wait
            never inflates another's figure)."""
            for pair in rotating:
                if "verifier_has_it_after" not in pair.notes and pair.pending in pair.accepted_kids():
                    pair.notes["verifier_has_it_after"] = time.time() - pair.notes["published_at"]
            return all("verifier_has_it_after" in pair.notes for pair in rotating)

        wait_for(all_propagated, ROTATION_TIMEOUT, "the verifier pods to see the next keys", interval=0.5)
        wait_for(lambda: all(len(pair.stats()["kids"]) == 2 for pair in rotating), ROTATION_TIMEOUT,
                 "the signers to sign with the new keys")
        time.sleep(5)  # tokens signed with the new key reach the verifier
        window = emergency.result()

    report = _rotation_report(pairs)
    print(f"rotations on the node: {report}")
    for kind in ("manual", "spec-change", "scheduled"):
        stats = pairs[kind].stats()
        assert stats["failed"] == 0 and stats["errors"] == 0, f"{kind}: {report}"
        assert first[kind] in stats["kids"] and len(stats["kids"]) == 2, f"{kind}: {report}"
        assert pairs[kind].servicekeys.vault_versions("secret", f"servicekeys/rot-{kind}/signing") == 2, \
            f"{kind}: one new key per request"
    delays = [pairs[kind].notes["verifier_has_it_after"] for kind in ("manual", "spec-change", "scheduled")]
    print(f"propagation to a mounted ConfigMap: p50 {statistics.median(delays):.1f}s, max {max(delays):.1f}s")
    print(f"emergency rotation: Vault signs with the new key {window['signs_with_the_new_key_after']:.1f}s after "
          f"the request; {window['rejected']:.0f} tokens rejected over {window['rejecting_for']:.0f}s, until the "
          "kubelet updated the verifier's file")
    # At once, not after publishAhead (3m): the wait above gave it 30 s.
    assert window["signs_with_the_new_key_after"] < 30
    assert window["signed_with_it"] and window["accepted"], f"the emergency key in use and accepted: {window}"
    assert pairs["emergency"].servicekeys.vault_versions("secret", "servicekeys/rot-emergency/signing") == 2


def test_helm_upgrade_to_a_new_image_and_two_replicas_then_uninstall_drains_the_keys_and_leaves_nothing_wedged(
        dev_env: DevEnvironment, node: KubernetesNode, operator_pod: None, kube_client: kubernetes.client.ApiClient):
    demo = ServiceKeys(kube_client, "demo", dev_env)
    before = demo.get("payments-signing")["status"]
    image = dev_env.node_images["operator"].ref
    upgraded = f"{image.rsplit(':', 1)[0]}:upgraded"
    node.ctr("images", "tag", "--force", image, upgraded)

    helm(dev_env, "upgrade", RELEASE, str(REPO_ROOT / "charts" / "servicekey-operator"), "--namespace",
         RELEASE_NAMESPACE, "--reuse-values", "--set", "image.tag=upgraded", "--set", "replicaCount=2",
         "--set", "peering.enabled=true", "--set", "uninstall.serviceKeys=drain", "--wait", "--timeout", "180s")
    wait_for_deployment(dev_env.kube, RELEASE_NAMESPACE, RELEASE)

    def operator_pods() -> list[dict[str, Any]]:
        return json.loads(dev_env.kube.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-l", OPERATOR_SELECTOR,
                                               "-o", "json").stdout)["items"]

    def keepalives() -> dict[str, Any]:
        return json.loads(dev_env.kube.kubectl("get", "clusterkopfpeering", RELEASE, "-o", "json").stdout).get(
            "status") or {}
    # The Deployment is available before the replaced pod has finished its graceful stop (and withdrawn its
    # keep-alive): wait for the rollout's end, then the state must be exactly the two new replicas.
    wait_for(lambda: len(operator_pods()) == 2 and len(keepalives()) == 2, 90,
             "the replaced operator pod to be gone and its keep-alive withdrawn")
    pods = operator_pods()
    demo.create("after-upgrade", {"algorithm": "EdDSA"})
    demo.wait_ready("after-upgrade", timeout=60)

    assert sorted(pod["spec"]["containers"][0]["image"] for pod in pods) == [upgraded, upgraded]
    assert all(not pod["metadata"].get("deletionTimestamp") for pod in pods)
    assert len(keepalives()) == 2, "both replicas keep their keep-alive in the peering object"
    after = demo.get("payments-signing")["status"]
    assert (after["keyId"], after["keyVersion"]) == (before["keyId"], before["keyVersion"]), "no key churn"

    demo.create("doomed", {"algorithm": "ES256", "deletionPolicy": "Delete"})
    demo.wait_ready("doomed", timeout=60)
    assert demo.get("doomed")["metadata"]["finalizers"] == ["servicekey.io/finalizer"]

    # The pre-delete hook's Job, a pod on the node, deletes every ServiceKey while the operator still runs.
    helm(dev_env, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "300s")
    assert json.loads(dev_env.kube.kubectl("get", "servicekeys", "-A", "-o", "json").stdout)["items"] == []
    assert demo.vault_versions("secret", "servicekeys/demo/doomed") == 0, "deletionPolicy Delete was honoured"
    assert demo.vault_versions("secret", "servicekeys/demo/payments-signing") >= 1, "Retain kept the key"
    dev_env.kube.kubectl("delete", "namespace", "demo", "--timeout=120s")

    def remaining() -> list[str]:
        return dev_env.kube.kubectl("get", "all,serviceaccounts,configmaps,networkpolicies", "-n",
                                    RELEASE_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
                                    "-o", "name").stdout.split()
    # helm --wait waits for the Deployment; its pods go afterwards, through the garbage collector and their
    # graceful termination: gone within a bound, not at once.
    wait_for(lambda: remaining() == [], 90, "the release's objects, pods included, to be gone")
    assert dev_env.kube.kubectl("get", "namespace", "demo", check=False).returncode != 0
