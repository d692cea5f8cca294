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

from servicekey_operator.devcluster.binaries import Binaries, ensure_binaries
from servicekey_operator.devcluster.kube import KubernetesControlPlane
from servicekey_operator.devcluster.openbao import OpenBaoServer

REPO_ROOT = Path(__file__).resolve().parents[3]
CRD_PATH = REPO_ROOT / "crds" / "servicekey.io_servicekeys.yaml"


class DevEnvironment:
    """etcd + kube-apiserver + kube-controller-manager + OpenBao on loopback, in one temp dir.

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
