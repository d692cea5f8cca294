"""A real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

Clients use it on 127.0.0.1. It is also ready for the node (``node``): the apiserver listens on every address
and advertises the machine's own, which pods reach through the ``kubernetes`` Service (10.96.0.1), it
authorizes kubelets (Node authorizer) and reaches them with a client certificate, and the controller manager
runs the controllers that Deployments, Jobs and a node need.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from functools import cache
from pathlib import Path

import yaml

from devcluster.binaries import Binaries
from devcluster.pki import DevCertificateAuthority, write_service_account_keypair
from devcluster.process import ManagedProcess, free_port

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The audit log records what ServiceAccounts of this namespace do (the chart's release namespace): the
# least-privilege test compares the operator's calls with the chart's RBAC. Everything else stays unlogged.
AUDITED_NAMESPACE = "servicekey-system"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "userGroups": [f"system:serviceaccounts:{AUDITED_NAMESPACE}"]},
              {"level": "None"}],
}
CONTROLLERS = ("garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
               "serviceaccount-token-controller",
               # for the node: Deployments and Jobs (Helm hooks), Services, the node's readiness, and the
               # kube-root-ca.crt ConfigMap that every ServiceAccount token projection mounts
               "deployment-controller", "replicaset-controller", "job-controller", "disruption-controller",
               "endpointslice-controller", "node-lifecycle-controller", "taint-eviction-controller",
               "pod-garbage-collector-controller", "root-ca-certificate-publisher-controller",
               "ttl-after-finished-controller",
               # the chart's tenant ClusterRoles are aggregated into edit, view and admin
               "clusterrole-aggregation-controller")
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"


@cache
def node_address() -> str:
    """The machine's own address (the source of its default route): what pods and the node use to reach the
    apiserver and OpenBao. 127.0.0.1 on a machine without a route (no node can run there)."""
    result = subprocess.run(["ip", "-4", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    fields = result.stdout.split()
    return fields[fields.index("src") + 1] if "src" in fields else "127.0.0.1"


def write_kubeconfig(path: Path, server: str, ca_path: Path, *, client_cert: Path | None = None,
                     client_key: Path | None = None, token: str | None = None,
                     user: str = "admin") -> Path:
    """Write a single-context kubeconfig for ``server`` with a client cert or a bearer token."""
    credentials: dict[str, str] = {}
    if client_cert and client_key:
        credentials = {"client-certificate": str(client_cert), "client-key": str(client_key)}
    if token:
        credentials = {"token": token}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "servicekey-dev",
        "clusters": [{"name": "servicekey-dev",
                      "cluster": {"server": server, "certificate-authority": str(ca_path)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "servicekey-dev", "context": {"cluster": "servicekey-dev", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class KubernetesControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in ``workdir``, admin kubeconfig included."""

    def __init__(self, binaries: Binaries, workdir: Path) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.pki_dir = workdir / "pki"
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        self.ca = DevCertificateAuthority(self.pki_dir, "kubernetes-ca")
        self.serving = self.ca.issue("apiserver", "kube-apiserver",
                                     dns_names=("localhost", "kubernetes", "kubernetes.default",
                                                "kubernetes.default.svc",
                                                "kubernetes.default.svc.cluster.local"),
                                     ip_addresses=("127.0.0.1", node_address(), KUBERNETES_SERVICE_IP))
        self.admin = self.ca.issue("admin", "servicekey-dev-admin", organizations=("system:masters",))
        # What the apiserver presents to kubelets (logs, exec, port-forward).
        self.kubelet_client = self.ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                            organizations=("system:masters",))
        self.sa_private_key, self.sa_public_key = write_service_account_keypair(self.pki_dir)
        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        self.controller_manager_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.audit_log = workdir / "audit.log"
        self.audit_policy = workdir / "audit-policy.yaml"
        self.audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.kubeconfig = write_kubeconfig(workdir / "admin.kubeconfig", self.server, self.ca.cert_path,
                                           client_cert=self.admin.cert, client_key=self.admin.key)
        self.etcd = ManagedProcess("etcd", self._etcd_argv(), workdir / "etcd.log")
        self.apiserver = ManagedProcess("kube-apiserver", self._apiserver_argv(),
                                        workdir / "kube-apiserver.log")
        self.controller_manager = ManagedProcess("kube-controller-manager",
                                                 self._controller_manager_argv(),
                                                 workdir / "kube-controller-manager.log")

    @property
    def etcd_endpoint(self) -> str:
        """The etcd client URL (the invariant checker reads the raw keyspace through it)."""
        return f"http://127.0.0.1:{self.etcd_port}"

    def _etcd_argv(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{free_port()}"
        return [str(self.binaries.etcd), "--name=dev", f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_endpoint}", f"--advertise-client-urls={self.etcd_endpoint}",
                f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=dev={peer_url}", "--log-level=warn",
                "--quota-backend-bytes=4294967296"]

    def _apiserver_argv(self) -> list[str]:
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_endpoint}",
            "--bind-address=0.0.0.0", f"--advertise-address={node_address()}",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={self.serving.cert}", f"--tls-private-key-file={self.serving.key}",
            f"--client-ca-file={self.ca.cert_path}",
            "--authorization-mode=Node,RBAC",
            f"--kubelet-client-certificate={self.kubelet_client.cert}",
            f"--kubelet-client-key={self.kubelet_client.key}", "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self.sa_public_key}",
            f"--service-account-signing-key-file={self.sa_private_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # As on OpenShift and other hardened clusters: setting blockOwnerDeletion needs the right to
            # update the owner's finalizers, which the chart grants for the ConfigMaps' owner references.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement,NodeRestriction",
            f"--audit-policy-file={self.audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            f"--cert-dir={self.pki_dir / 'apiserver-generated'}",
            "--profiling=false", "--v=1",
        ]

    def _controller_manager_argv(self) -> list[str]:
        return [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={self.controller_manager_port}",
            f"--cert-dir={self.pki_dir / 'kcm-generated'}",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={self.sa_private_key}",
            f"--root-ca-file={self.ca.cert_path}",
            "--use-service-account-credentials=false", "--leader-elect=false",
            # The garbage collector's default resync is minutes; tests wait for it.
            "--concurrent-gc-syncs=5", "--v=1",
        ]

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return context

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a path from the apiserver as admin (used for readiness and version probes)."""
        with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=5) as reply:
            return reply.status, reply.read()

    def _apiserver_ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def _controller_manager_ready(self) -> bool:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{self.controller_manager_port}/healthz"
        with urllib.request.urlopen(url, context=insecure, timeout=5) as reply:
            return reply.status == 200

    def _default_service_account_exists(self) -> bool:
        return self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    def start(self) -> None:
        """Start etcd, then the apiserver, then the controller manager, each waited for."""
        self.etcd.start()
        self.etcd.wait_ready(lambda: self._etcd_ready(), timeout_seconds=60)
        self.start_apiserver()
        self.controller_manager.start()
        self.controller_manager.wait_ready(self._controller_manager_ready, timeout_seconds=120)
        self.controller_manager.wait_ready(self._default_service_account_exists, timeout_seconds=60)

    def start_apiserver(self) -> None:
        """Start (or restart) kube-apiserver and wait until /readyz answers 200."""
        self.apiserver.start()
        self.apiserver.wait_ready(self._apiserver_ready, timeout_seconds=180)

    def _etcd_ready(self) -> bool:
        with urllib.request.urlopen(self.etcd_endpoint + "/health", timeout=5) as reply:
            return json.loads(reply.read()).get("health") == "true"

    def version(self) -> str:
        """The gitVersion the running apiserver reports."""
        return json.loads(self.get("/version")[1])["gitVersion"]

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl against this cluster (admin unless another kubeconfig is given)."""
        argv = [str(self.binaries.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def stop(self) -> None:
        """Stop every process, controller manager first so nothing acts on a dying API."""
        for process in (self.controller_manager, self.apiserver, self.etcd):
            process.stop()
