"""``servicekey-operator dev build|up|demo``: the local environment by hand, and the README's demo."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

import yaml

from servicekey_operator.devcluster.binaries import ensure_binaries
from servicekey_operator.devcluster.chart import RELEASE_NAMESPACE, install_chart, service_account_kubeconfig
from servicekey_operator.devcluster.environment import REPO_ROOT, DevEnvironment
from servicekey_operator.devcluster.operator_process import OperatorProcess

DEMO_MANIFEST = REPO_ROOT / "deploy" / "examples" / "servicekey-es256.yaml"


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass


def _up(env: DevEnvironment) -> None:
    _say("environment ready; use it from another shell with:")
    for name, value in env.operator_env().items():
        print(f"export {name}={value}")
    print(f"kubectl: {env.binaries.kubectl}\nhelm: {env.binaries.helm}")
    _say("Ctrl-C stops everything and removes the temp dir")
    _wait_for_interrupt()


def _demo(env: DevEnvironment) -> None:
    import hvac
    import jwt

    kubectl = env.kube.kubectl
    manifest = yaml.safe_load(DEMO_MANIFEST.read_text())
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    _say("helm install of the chart (CRDs, ServiceAccount, RBAC; no kubelet here, so the operator runs locally "
         "with the chart's ServiceAccount identity)")
    service_account = install_chart(env)
    identity = service_account_kubeconfig(env, service_account, env.workdir / "operator.kubeconfig")
    operator = OperatorProcess(dict(env.operator_env(), KUBECONFIG=str(identity)), env.workdir / "operator.log").start()
    try:
        _say(f"operator running as {RELEASE_NAMESPACE}/{service_account} (log: {operator.log_path})")
        kubectl("create", "namespace", namespace)
        kubectl("apply", "-f", str(DEMO_MANIFEST))
        _say("waiting for the ServiceKey to be Ready")
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=60s", f"servicekey/{name}")
        print(kubectl("get", "sk", "-n", namespace).stdout)
        configmap = kubectl("get", "sk", "-n", namespace, name, "-o", "jsonpath={.status.configMapName}").stdout
        jwks_text = kubectl("get", "configmap", "-n", namespace, configmap,
                            "-o", "jsonpath={.data.jwks\\.json}").stdout
        _say(f"jwks.json from the ConfigMap {namespace}/{configmap}:")
        print(jwks_text)
        vault_path = kubectl("get", "sk", "-n", namespace, name, "-o", "jsonpath={.status.vaultPath}").stdout
        mount, path = vault_path.split("/", 1)
        secret = hvac.Client(url=env.vault.addr, token=env.vault.root_token).secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]
        token = jwt.encode({"sub": "demo", "iat": int(time.time())}, secret["private_key"],
                           algorithm=secret["algorithm"], headers={"kid": secret["kid"]})
        _say(f"a JWT signed with the private key from Vault ({vault_path}):")
        print(token)
        jwk = jwt.PyJWKSet.from_dict(json.loads(jwks_text))[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(token, jwk.key, algorithms=[secret["algorithm"]])
        _say(f"verified with the published JWKS only: claims {claims}")
        _say("Ctrl-C stops the operator, the cluster and OpenBao")
        if sys.stdin.isatty():
            _wait_for_interrupt()
    finally:
        operator.stop()


def run(command: str, _: argparse.Namespace) -> int:
    """Carry out one ``dev`` sub-command."""
    if command == "build":
        print(ensure_binaries())
        return 0
    with DevEnvironment() as env:
        env.install_crds()
        if command == "up":
            _up(env)
        else:
            _demo(env)
    return 0
