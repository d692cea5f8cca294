"""A real OpenBao server on 127.0.0.1: ``-dev`` (in memory) or raft storage (survives restarts).

Optionally with a TLS listener whose certificate a test CA signs (and which can require client
certificates), and with helpers that set up what production uses instead of the root token:
policies, the kubernetes auth method (TokenReview against the test apiserver) and AppRole.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hvac
import yaml

from devcluster.kube import node_address
from devcluster.pki import DevCertificateAuthority, IssuedCert
from devcluster.process import ManagedProcess, free_port

if TYPE_CHECKING:
    from devcluster.kube import KubernetesControlPlane

DEV_ROOT_TOKEN = "servicekey-dev-root"
TOKEN_REVIEWER = ("kube-system", "openbao-token-reviewer")  # (namespace, ServiceAccount) Vault reviews tokens as


def create_dev_root_token(generated_root: hvac.Client) -> None:
    """Give a freshly initialised server (a client with its generated root token) the same well-known root token
    as -dev mode, so callers need not care which kind of server they got."""
    generated_root.auth.token.create(id=DEV_ROOT_TOKEN, policies=["root"], no_parent=True, period="768h")


def mount_engines(client: hvac.Client) -> None:
    """KV v2 at ``secret/`` and Transit at ``transit/``, where not mounted yet (what every test expects)."""
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if "secret/" not in mounts:
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    if "transit/" not in mounts:
        client.sys.enable_secrets_engine("transit", path="transit")


class OpenBaoServer:
    """One OpenBao server with KV v2 at ``secret/`` and Transit at ``transit/``, root token known.

    ``persistent=True`` uses raft storage in ``workdir`` with one unseal key, so a test can stop it,
    start it again and find its data; ``-dev`` mode keeps everything in memory and starts faster.

    ``tls=True`` serves ``addr`` (https) with a certificate for ``tls_dns_names``/``tls_ip_addresses``
    signed by a CA of its own (``ca``, ``ca_cert_path``); ``tls_require_client_cert`` makes that
    listener demand a client certificate from the same CA (``client_cert`` is one). The server then
    also listens on plain HTTP at ``admin_addr``, on loopback, which ``client()`` uses, so the
    harness's own administration does not depend on the TLS settings under test.
    """

    def __init__(self, bao_binary: Path, workdir: Path, *, persistent: bool = False, tls: bool = False,
                 tls_dns_names: Sequence[str] = ("localhost",), tls_ip_addresses: Sequence[str] = ("127.0.0.1",),
                 tls_require_client_cert: bool = False, audit_log: Path | None = None) -> None:
        self.bao_binary = bao_binary
        # OpenBao takes audit devices only from its configuration file ("declarative"), not through the API.
        self.audit_log = audit_log
        self.workdir = workdir
        self.persistent = persistent
        self.tls = tls
        self.tls_require_client_cert = tls_require_client_cert
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.admin_port = self.port
        self.admin_addr = self.addr
        self.root_token = DEV_ROOT_TOKEN
        self._unseal_key: str | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca: DevCertificateAuthority | None = None
        self.ca_cert_path: Path | None = None
        self.server_cert: IssuedCert | None = None
        self.client_cert: IssuedCert | None = None
        if tls:
            (workdir / "tls").mkdir(exist_ok=True)
            self.ca = DevCertificateAuthority(workdir / "tls", "openbao-test-ca")
            self.ca_cert_path = self.ca.cert_path
            self.server_cert = self.ca.issue("openbao-server", "openbao", dns_names=tuple(tls_dns_names),
                                             ip_addresses=tuple(tls_ip_addresses))
            self.client_cert = self.ca.issue("openbao-client", "servicekey-operator")
            self.admin_port = free_port()
            self.addr = f"https://127.0.0.1:{self.port}"
            self.admin_addr = f"http://127.0.0.1:{self.admin_port}"
        self.process = ManagedProcess("openbao", self._argv(), workdir / "openbao.log",
                                      env={"HOME": str(workdir), "PATH": "/usr/bin:/bin"})

    def _tls_listener(self) -> str:
        assert self.server_cert is not None and self.ca_cert_path is not None
        client_auth = (f'  tls_require_and_verify_client_cert = true\n  tls_client_ca_file = "{self.ca_cert_path}"\n'
                       if self.tls_require_client_cert else "")
        return f"""
listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{free_port()}"
  tls_cert_file = "{self.server_cert.cert}"
  tls_key_file = "{self.server_cert.key}"
{client_auth}}}
"""

    def _audit_stanza(self) -> str:
        if self.audit_log is None:
            return ""
        return f"""
audit "file" "to-file" {{
  options {{
    file_path = "{self.audit_log}"
  }}
}}
"""

    def _argv(self) -> list[str]:
        if not self.persistent:
            # -dev keeps its plain listener (on the admin port with TLS); a config file adds the TLS listener
            # and the audit device.
            argv = [str(self.bao_binary), "server", "-dev", f"-dev-root-token-id={DEV_ROOT_TOKEN}",
                    # Every address: pods on the node reach it at the machine's own (``pod_addr``).
                    f"-dev-listen-address=0.0.0.0:{self.admin_port}", "-dev-no-store-token"]
            extra = (self._tls_listener() if self.tls else "") + self._audit_stanza()
            if extra:
                config = self.workdir / "openbao-dev.hcl"
                config.write_text(extra)
                argv.append(f"-config={config}")
            return argv
        cluster_port = free_port()
        (self.workdir / "raft").mkdir(exist_ok=True)
        # With TLS the test listener is the TLS one and a plain one serves the harness on the admin port.
        tls_listener = self._tls_listener() if self.tls else ""
        config = self.workdir / "openbao.hcl"
        config.write_text(f"""
storage "raft" {{
  path = "{self.workdir / 'raft'}"
  node_id = "dev"
  # Raft's production timings (multiplier 5) make a single node wait ~5-9 s to elect itself during
  # sys/init, which on a loaded CI machine outlasted the client timeout; 1 is the fastest setting.
  performance_multiplier = 1
}}
{tls_listener}
listener "tcp" {{
  address = "127.0.0.1:{self.admin_port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
{self._audit_stanza()}
api_addr = "{self.addr}"
cluster_addr = "{"https" if self.tls else "http"}://127.0.0.1:{cluster_port}"
disable_mlock = true
""")
        return [str(self.bao_binary), "server", f"-config={config}"]

    @property
    def pod_addr(self) -> str:
        """The address pods on the node use (a -dev server without TLS listens on every address)."""
        return f"http://{node_address()}:{self.admin_port}"

    def client(self, token: str | None = None, *, timeout: float = 10) -> hvac.Client:
        """An hvac client for this server (root token unless another is given).

        With ``tls=True`` it talks to the plain loopback ``admin_addr``; ``tls_client()`` goes through TLS.
        """
        return hvac.Client(url=self.admin_addr, token=token or self.root_token, timeout=timeout)

    def tls_client(self, token: str | None = None, *, client_cert: bool = True) -> hvac.Client:
        """An hvac client that reaches ``addr`` over TLS, trusting ``ca_cert_path`` (with ``client_cert``)."""
        assert self.tls and self.ca_cert_path and self.client_cert, "tls_client() needs OpenBaoServer(tls=True)"
        cert = (str(self.client_cert.cert), str(self.client_cert.key)) if client_cert else None
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=10,
                           verify=str(self.ca_cert_path), cert=cert)

    def _answers(self) -> bool:
        # sys/health answers with 200, 429, 501 (not initialised) or 503 (sealed) once listening.
        if self.tls:  # the TLS listener accepts connections (its certificate may not name 127.0.0.1)
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        return self.client().sys.is_initialized() in (True, False)

    def _unsealed(self) -> bool:
        return not self.client().sys.is_sealed()

    def _active(self) -> bool:
        # Unsealed is not enough with raft: until this node has elected itself leader, requests fail
        # with "local node not active". sys/health answers 200 only on the active node.
        try:
            with urllib.request.urlopen(f"{self.admin_addr}/v1/sys/health", timeout=2) as reply:
                return reply.status == 200
        except urllib.error.HTTPError:  # 429 standby, 503 sealed: not yet
            return False

    def start(self) -> None:
        """Start the server; on first start initialise, unseal and mount the engines."""
        self.process.start()
        self.process.wait_ready(self._answers, timeout_seconds=60)
        if self.persistent:
            # Initialisation happens once and cannot be retried: a timed-out init leaves a server whose
            # unseal key we never saw. So it gets a generous timeout.
            client = self.client(timeout=120)
            generated_root = None
            if not client.sys.is_initialized():
                init = client.sys.initialize(secret_shares=1, secret_threshold=1)
                self._unseal_key, generated_root = init["keys"][0], init["root_token"]
            self.unseal()
            self.process.wait_ready(self._active, timeout_seconds=60)
            if generated_root:
                create_dev_root_token(self.client(generated_root))
        self.process.wait_ready(self._unsealed, timeout_seconds=60)
        mount_engines(self.client())

    def unseal(self) -> None:
        """Unseal a persistent server with its single unseal key."""
        if self._unseal_key:
            self.client().sys.submit_unseal_key(self._unseal_key)

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

    # --------------------------------------------------------------------------------------------
    # What production uses instead of the root token: policies, kubernetes auth, AppRole.
    # --------------------------------------------------------------------------------------------

    def create_policy(self, name: str, hcl: str) -> None:
        """Write (or replace) an ACL policy."""
        self.client().sys.create_or_update_policy(name=name, policy=hcl)

    def enable_kv(self, mount: str) -> None:
        """Mount another KV v2 engine at ``mount`` (no-op if something is mounted there)."""
        client = self.client()
        if f"{mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})

    def _enable_auth(self, method: str, mount: str) -> None:
        client = self.client()
        if f"{mount}/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method(method, path=mount)

    def _write(self, path: str, data: dict[str, Any]) -> Any:
        return self.client().adapter.post(f"/v1/{path}", json=data)

    def enable_kubernetes_auth(self, kube: KubernetesControlPlane, mount: str = "kubernetes") -> None:
        """Enable kubernetes auth at ``mount`` against ``kube``'s apiserver.

        OpenBao checks login JWTs with a TokenReview. It reviews as a ServiceAccount of its own
        (``TOKEN_REVIEWER``, bound to ``system:auth-delegator``), so the ServiceAccounts that log in
        need no extra rights, as in a cluster where Vault runs with its own reviewer account.
        """
        namespace, name = TOKEN_REVIEWER
        manifests = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": f"{name}-auth-delegator"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "system:auth-delegator"},
             "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        ]
        kube.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(manifests))
        reviewer_jwt = kube.kubectl("create", "token", name, "-n", namespace, "--duration=48h").stdout.strip()
        self._enable_auth("kubernetes", mount)
        self._write(f"auth/{mount}/config", {
            "kubernetes_host": kube.server, "kubernetes_ca_cert": kube.ca.cert_path.read_text(),
            "token_reviewer_jwt": reviewer_jwt, "disable_local_ca_jwt": True,
        })

    def create_kubernetes_role(self, name: str, *, service_accounts: Sequence[str], namespaces: Sequence[str],
                               policies: Sequence[str], token_ttl: str | None = None,
                               token_max_ttl: str | None = None, audience: str | None = None,
                               mount: str = "kubernetes") -> None:
        """A kubernetes auth role for those ServiceAccounts, issuing tokens with ``policies``.

        ``audience``: the audience the login JWTs must carry (the chart projects tokens for "vault").
        """
        data: dict[str, Any] = {"bound_service_account_names": list(service_accounts),
                                "bound_service_account_namespaces": list(namespaces),
                                "token_policies": list(policies), "token_no_default_policy": True}
        if audience:
            data["audience"] = audience
        if token_ttl:
            data["token_ttl"] = token_ttl
        if token_max_ttl:
            data["token_max_ttl"] = token_max_ttl
        self._write(f"auth/{mount}/role/{name}", data)

    def create_approle(self, name: str, *, policies: Sequence[str], token_ttl: str | None = None,
                       token_max_ttl: str | None = None, mount: str = "approle") -> tuple[str, str]:
        """Enable AppRole at ``mount`` (if needed), create the role, return (role_id, a new secret_id)."""
        self._enable_auth("approle", mount)
        data: dict[str, Any] = {"token_policies": list(policies), "token_no_default_policy": True}
        if token_ttl:
            data["token_ttl"] = token_ttl
        if token_max_ttl:
            data["token_max_ttl"] = token_max_ttl
        self._write(f"auth/{mount}/role/{name}", data)
        client = self.client()
        role_id = client.adapter.get(f"/v1/auth/{mount}/role/{name}/role-id")["data"]["role_id"]
        secret_id = self._write(f"auth/{mount}/role/{name}/secret-id", {})["data"]["secret_id"]
        return role_id, secret_id
