"""``python3 -m devcluster build|up|demo``: the local environment by hand, and the README's demo."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from devcluster.binaries import ensure_binaries, ensure_ferretdb, ensure_node_binaries, ensure_promtool
from devcluster.chart import RELEASE_NAMESPACE, install_operator_pod
from devcluster.environment import DevEnvironment
from devcluster.examples import deploy_examples, manifests
from devcluster.openbao_cluster import UNSEAL_THRESHOLD, OpenBaoCluster

# The key the example signer and verifier are written for.
DEMO_MANIFEST = "servicekey-rs256.yaml"


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


def _up(env: DevEnvironment, vault_cluster: OpenBaoCluster | None = None) -> None:
    _say("environment ready; use it from another shell with:")
    exports = env.operator_env()
    if vault_cluster is not None:
        exports.update(vault_cluster.operator_env())
    for name, value in exports.items():
        print(f"export {name}={value}")
    print(f"kubectl: {env.binaries.kubectl}\nhelm: {env.binaries.helm}")
    if vault_cluster is not None:
        _describe_cluster(vault_cluster)
    _say("Ctrl-C stops everything and removes the temp dir")
    _wait_for_interrupt()


def _describe_cluster(cluster: OpenBaoCluster) -> None:
    keys = cluster.workdir / "unseal-keys.json"
    keys.write_text(json.dumps({"keys": cluster.unseal_keys, "threshold": UNSEAL_THRESHOLD}, indent=2))
    keys.chmod(0o600)
    leader = cluster.wait_routed()
    _say(f"VAULT_ADDR is HAProxy ({cluster.proxy.log_path}): it routes to the active node only; the nodes:")
    for node in cluster.nodes:
        role = "active" if node is leader else "standby"
        print(f"  {node.name}: {node.addr} ({role}, pid {node.process.pid}, log {node.log_path})")
    print(f"bao: {cluster.bao_binary}\nunseal keys (a restarted node needs {UNSEAL_THRESHOLD}): {keys}")


def _demo(env: DevEnvironment) -> None:
    kubectl = env.kube.kubectl
    servicekey = manifests(DEMO_MANIFEST)[0]
    name, namespace = servicekey["metadata"]["name"], servicekey["metadata"]["namespace"]
    _say("starting the node: containerd, kubelet, kube-scheduler, kube-proxy (the first run builds the operator's "
         "image and the examples' image without Docker)")
    node = env.start_node()
    _say(f"helm install of the chart: the operator as a pod from {env.node_images['operator'].ref}, logging in to "
         "Vault with its projected ServiceAccount token (kubernetes auth, the shipped policy)")
    install_operator_pod(env)
    print(kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide").stdout)
    _say(f"kubectl apply -f deploy/examples/{DEMO_MANIFEST}, then the example verifier (mounts the ConfigMap) and "
         "signer (reads its key from Vault with its own ServiceAccount) as pods")
    pods = deploy_examples(env, namespace, name, servicekey)
    print(kubectl("get", "sk", "-n", namespace, "-o", "wide").stdout)
    print(kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout)
    configmap = kubectl("get", "sk", "-n", namespace, name, "-o", "jsonpath={.status.configMapName}").stdout
    _say(f"jwks.json of the ConfigMap {namespace}/{configmap}, as the verifier pod reads it from its volume:")
    print(kubectl("get", "configmap", "-n", namespace, configmap, "-o", "jsonpath={.data.jwks\\.json}").stdout)
    time.sleep(3)  # let the signer's tally grow: a token every 100 ms
    stats = pods.stats()
    _say(f"the signer pod signed {stats['signed']} JWTs with the private key from Vault; the verifier pod accepted "
         f"{stats['verified']} with the published JWKS and PyJWT, rejected {stats['failed']} "
         f"(tokens per kid: {stats['kids']})")
    _say(f"try: kubectl annotate sk {name} -n {namespace} servicekey.io/rotate=\"$(date +%s)\" --overwrite "
         f"(the signer moves to the new key after publishAhead, 5m, and no token fails)")
    print(f"export KUBECONFIG={env.kube.kubeconfig}\nkubectl: {env.binaries.kubectl}  (node: {node.address})")
    _say("Ctrl-C stops the pods, the node, the cluster and OpenBao")
    if sys.stdin.isatty():
        _wait_for_interrupt()


def main(argv: list[str] | None = None) -> int:
    """Carry out one sub-command."""
    parser = argparse.ArgumentParser(prog="python3 -m devcluster", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "demo"],
                        help="build: compile and cache the binaries (the node's, promtool and FerretDB too); up: "
                             "start and wait; demo: the full demo")
    parser.add_argument("--node", action="store_true",
                        help="up: also start the node (containerd, kubelet, scheduler, kube-proxy) with the images")
    parser.add_argument("--vault-ha", action="store_true",
                        help="up: also start a 3-node OpenBao raft cluster (TLS) behind HAProxy, and export its "
                             "address instead of the single OpenBao's")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(ensure_binaries())
        print(ensure_node_binaries())
        print(ensure_promtool())
        print(ensure_ferretdb())
        return 0
    with DevEnvironment() as env:
        env.install_crds()
        if args.command == "up":
            if args.node:
                env.start_node()
            if not args.vault_ha:
                _up(env)
                return 0
            _say("starting the OpenBao cluster: 3 nodes on raft, initialised, unsealed, behind HAProxy")
            cluster = OpenBaoCluster(env.binaries.bao, env.workdir / "openbao-cluster").start()
            try:
                _up(env, cluster)
            finally:
                cluster.stop()
        else:
            _demo(env)
    return 0
