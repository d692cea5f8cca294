"""The signer and verifier of deploy/examples as pods on the node: what the demo shows and the e2e tests run.

The manifests are the files users copy, adapted only where this machine differs (the locally built image,
Vault at the node's address) and for the namespace and ServiceKey they serve.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import yaml

from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.node import wait_for_deployment
from devcluster.process import StartError

EXAMPLES = REPO_ROOT / "deploy" / "examples"
SIGNER_SERVICE_ACCOUNT = "payments-signer"


def manifests(name: str) -> list[dict[str, Any]]:
    """The YAML documents of ``deploy/examples/<name>``."""
    return [doc for doc in yaml.safe_load_all((EXAMPLES / name).read_text()) if doc]


def adapt(docs: list[dict[str, Any]], env: DevEnvironment, namespace: str, key: str) -> list[dict[str, Any]]:
    """The example manifests for this machine: the examples image (never pulled), Vault at the node's address,
    the Vault role ``<namespace>-signer``; and the namespace and ServiceKey they serve."""
    adapted = copy.deepcopy(docs)
    for doc in adapted:
        doc["metadata"]["namespace"] = namespace
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for container in spec["containers"]:
            container["image"] = env.node_images["examples"].ref
            container["imagePullPolicy"] = "Never"
            values = {"VAULT_ADDR": env.vault.pod_addr, "SECRET_PATH": f"servicekeys/{namespace}/{key}",
                      "VAULT_ROLE": f"{namespace}-signer"}
            for variable in container.get("env", []):
                if variable["name"] in values:
                    variable["value"] = values[variable["name"]]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                volume["configMap"]["name"] = f"{key}-public"
    return adapted


def get_json(url: str) -> dict[str, Any]:
    """GET ``url`` (an example app's endpoint) and decode its JSON reply."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@dataclass
class ExamplePods:
    """Where the signer and the verifier of one ServiceKey answer (pod IPs, reachable from the node's host)."""

    signer_ip: str
    verifier_ip: str

    def stats(self) -> dict[str, Any]:
        """The signer's tally: signed, verified, failed, errors, kids (tokens per kid), failures."""
        return get_json(f"http://{self.signer_ip}:8080/stats")

    def accepted_kids(self) -> list[str]:
        """The kids the verifier accepts now (its mounted jwks.json)."""
        return get_json(f"http://{self.verifier_ip}:8080/kids")["kids"]


def _pod_ip(env: DevEnvironment, namespace: str, app: str) -> str:
    reply = env.kube.kubectl("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/name={app}",
                             "-o", "jsonpath={.items[0].status.podIP}")
    return reply.stdout.strip()


def deploy_examples(env: DevEnvironment, namespace: str, key: str, servicekey: dict[str, Any]) -> ExamplePods:
    """Apply ``servicekey`` as ``namespace/key`` (as is: the operator's defaults apply) and wait until it is
    Ready; give the signer the Vault policy and role signer-deployment.yaml documents; deploy the verifier and
    the signer; return once the verifier has accepted the signer's first tokens. Raise StartError otherwise."""
    kubectl = env.kube.kubectl
    if kubectl("get", "namespace", namespace, check=False).returncode != 0:
        kubectl("create", "namespace", namespace)
    servicekey = copy.deepcopy(servicekey)
    servicekey["metadata"].update(name=key, namespace=namespace)
    kubectl("apply", "-f", "-", input_text=yaml.safe_dump(servicekey))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=90s", f"servicekey/{key}")
    env.vault.create_policy(f"{namespace}-signer", f'path "secret/data/servicekeys/{namespace}/{key}" '
                                                   '{ capabilities = ["read"] }')
    env.vault.create_kubernetes_role(f"{namespace}-signer", service_accounts=[SIGNER_SERVICE_ACCOUNT],
                                     namespaces=[namespace], policies=[f"{namespace}-signer"], token_ttl="15m")
    kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(adapt(manifests("verifier-deployment.yaml"), env,
                                                                    namespace, key)))
    wait_for_deployment(env.kube, namespace, "payments-verifier")
    kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(adapt(manifests("signer-deployment.yaml"), env,
                                                                    namespace, key)))
    wait_for_deployment(env.kube, namespace, "payments-signer")
    pods = ExamplePods(_pod_ip(env, namespace, "payments-signer"), _pod_ip(env, namespace, "payments-verifier"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if pods.stats()["verified"] >= 10:
                return pods
        time.sleep(0.5)
    raise StartError(f"{namespace}: the verifier accepted fewer than 10 of the signer's tokens in 60 s")
