"""The whole local test environment: a Kubernetes control plane and OpenBao, started and torn down together."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from devcluster import images
from devcluster.binaries import Binaries, ensure_binaries, ensure_node_binaries
from devcluster.images import Image
from devcluster.kube import KubernetesControlPlane
from devcluster.node import NODE_NAME, KubernetesNode
from devcluster.openbao import OpenBaoServer
from devcluster.paths import CRD_PATH, REPO_ROOT

__all__ = ["CRD_PATH", "REPO_ROOT", "DevEnvironment"]


class DevEnvironment:
    """etcd + kube-apiserver + kube-controller-manager + OpenBao, and on demand a node, in one temp dir.

    Use it as a context manager; teardown (processes and temp dir) also runs at interpreter exit so
    an interrupted run leaves nothing behind.
    """

    def __init__(self, *, persistent_vault: bool = False, keep_workdir: bool = False,
                 binaries: Binaries | None = None) -> None:
        self.binaries = binaries or ensure_binaries()
        self.workdir = Path(tempfile.mkdtemp(prefix="servicekey-dev-"))
        self.keep_workdir = keep_workdir
        self.kube = KubernetesControlPlane(self.binaries, self.workdir / "kube")
        self.vault = OpenBaoServer(self.binaries.bao, self.workdir / "openbao", persistent=persistent_vault)
        self.startup_seconds = 0.0
        self.node: KubernetesNode | None = None
        self.node_images: dict[str, Image] = {}
        self._stopped = False

    def start(self) -> DevEnvironment:
        """Start everything in parallel-safe order and wait for readiness."""
        atexit.register(self.stop)
        started = time.monotonic()
        try:
            self.vault.start()
            self.kube.start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        print(f"[devcluster] kube-apiserver {self.kube.version()} at {self.kube.server}; "
              f"{self.vault.version()} at {self.vault.addr}; "
              f"started in {self.startup_seconds:.1f}s (workdir {self.workdir})",
              file=sys.stderr, flush=True)
        return self

    def start_node(self) -> KubernetesNode:
        """Build (or take from the cache) the images and start the node: containerd, kubelet, scheduler and
        kube-proxy, with the operator's and the examples' images imported. Once per environment."""
        if self.node is None:
            started = time.monotonic()
            binaries = ensure_node_binaries()
            pause = images.pause_image()
            self.node_images = {"operator": images.operator_image(), "examples": images.example_apps_image()}
            self.node = KubernetesNode(binaries, self.kube, self.workdir / "n", list(self.node_images.values()))
            self.node.start(pause)
            print(f"[devcluster] node {NODE_NAME} Ready at {self.node.address} in {time.monotonic() - started:.1f}s "
                  f"(images: {', '.join(image.ref for image in self.node_images.values())})",
                  file=sys.stderr, flush=True)
        return self.node

    def stop_node(self) -> None:
        """Stop the node and leave the machine as it was (its pods are deleted through the API)."""
        if self.node is not None:
            self.node.stop()
            self.node = None

    def install_crds(self) -> None:
        """Apply the ServiceKey CRD and wait until the API serves it."""
        self.kube.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
        self.kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/servicekeys.servicekey.io")

    def operator_env(self) -> dict[str, str]:
        """Environment variables that point an operator process at this environment (root token)."""
        return {
            "KUBECONFIG": str(self.kube.kubeconfig),
            "VAULT_ADDR": self.vault.addr,
            "VAULT_TOKEN": self.vault.root_token,
            "SERVICEKEY_VAULT_AUTH_METHOD": "token",
        }

    def stop(self) -> None:
        """Stop every process and remove the temp dir (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):  # while the API is up: the node's pods are deleted through it
            self.stop_node()
        with contextlib.suppress(Exception):
            self.kube.stop()
        with contextlib.suppress(Exception):
            self.vault.stop()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DevEnvironment:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
