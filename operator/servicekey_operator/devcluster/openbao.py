"""A real OpenBao server on 127.0.0.1: ``-dev`` (in memory) or raft storage (survives restarts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import hvac

from servicekey_operator.devcluster.process import ManagedProcess, free_port

DEV_ROOT_TOKEN = "servicekey-dev-root"


class OpenBaoServer:
    """One OpenBao server with KV v2 at ``secret/`` and Transit at ``transit/``, root token known.

    ``persistent=True`` uses raft storage in ``workdir`` with one unseal key, so a test can stop it,
    start it again and find its data; ``-dev`` mode keeps everything in memory and starts faster.
    """

    def __init__(self, bao_binary: Path, workdir: Path, *, persistent: bool = False) -> None:
        self.bao_binary = bao_binary
        self.workdir = workdir
        self.persistent = persistent
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token = DEV_ROOT_TOKEN
        self._unseal_key: str | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess("openbao", self._argv(), workdir / "openbao.log",
                                      env={"HOME": str(workdir), "PATH": "/usr/bin:/bin"})

    def _argv(self) -> list[str]:
        if not self.persistent:
            return [str(self.bao_binary), "server", "-dev", f"-dev-root-token-id={DEV_ROOT_TOKEN}",
                    f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"]
        cluster_port = free_port()
        (self.workdir / "raft").mkdir(exist_ok=True)
        config = self.workdir / "openbao.hcl"
        config.write_text(f"""
storage "raft" {{
  path = "{self.workdir / 'raft'}"
  node_id = "dev"
}}
listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "{self.addr}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
""")
        return [str(self.bao_binary), "server", f"-config={config}"]

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client for this server (root token unless another is given)."""
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=10)

    def _answers(self) -> bool:
        # sys/health answers with 200, 429, 501 (not initialised) or 503 (sealed) once listening.
        return self.client().sys.is_initialized() in (True, False)

    def _unsealed(self) -> bool:
        return not self.client().sys.is_sealed()

    def start(self) -> None:
        """Start the server; on first start initialise, unseal and mount the engines."""
        self.process.start()
        self.process.wait_ready(self._answers, timeout_seconds=60)
        if self.persistent:
            client = self.client()
            generated_root = None
            if not client.sys.is_initialized():
                init = client.sys.initialize(secret_shares=1, secret_threshold=1)
                self._unseal_key, generated_root = init["keys"][0], init["root_token"]
            self.unseal()
            self.process.wait_ready(self._unsealed, timeout_seconds=60)
            if generated_root:
                self._set_root_token(generated_root)
        self.process.wait_ready(self._unsealed, timeout_seconds=60)
        self._mount_engines()

    def _set_root_token(self, generated_root: str) -> None:
        # Give the persistent server the same well-known root token as -dev mode, so callers need
        # not care which mode they got.
        self.client(generated_root).auth.token.create(id=DEV_ROOT_TOKEN, policies=["root"],
                                                      no_parent=True, period="768h")

    def unseal(self) -> None:
        """Unseal a persistent server with its single unseal key."""
        if self._unseal_key:
            self.client().sys.submit_unseal_key(self._unseal_key)

    def _mount_engines(self) -> None:
        client = self.client()
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if "secret/" not in mounts:
            client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        if "transit/" not in mounts:
            client.sys.enable_secrets_engine("transit", path="transit")

    def version(self) -> str:
        """The server's own version string."""
        return subprocess.run([str(self.bao_binary), "version"], capture_output=True, text=True,
                              check=True).stdout.strip()

    def restart(self) -> None:
        """Stop and start again (data survives only when persistent)."""
        self.stop()
        self.process = ManagedProcess("openbao", self._argv() if self.persistent else self.process.argv,
                                      self.workdir / "openbao.log", env=self.process.env)
        self.start()

    def stop(self) -> None:
        """Stop the server."""
        self.process.stop()
