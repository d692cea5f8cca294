"""A 3-node OpenBao cluster on raft storage, behind one client address that follows the active node.

Each node is a real ``bao server`` on 127.0.0.1 with a TLS listener (a certificate from the cluster's own test
CA, for 127.0.0.1 and ``localhost``) and raft storage whose ``retry_join`` blocks name the other nodes, verified
against that CA. One node is initialised (Shamir: ``UNSEAL_SHARES`` keys, ``UNSEAL_THRESHOLD`` to unseal, held
by the harness), the others join it when they are unsealed; KV v2 is mounted at ``secret/`` and Transit at
``transit/``, and the root token is the harness's well-known ``DEV_ROOT_TOKEN``, as for ``OpenBaoServer``.

The client address (``addr``) is HAProxy (Debian's ``haproxy``) in TCP mode with TLS passthrough: clients see
the node's own certificate, so they verify the same CA as with a direct connection. HAProxy checks every node's
``GET /v1/sys/health`` over TLS (verified against the CA) every 500 ms and routes only to the node that answers
200, which only the active node does (a standby answers 429, a sealed node 503). One failed check marks a node
down and ``on-marked-down shutdown-sessions`` cuts its connections at once, so no client keeps talking to a
dead or demoted node. This is the load balancer Vault's documentation describes in front of an HA cluster: it
health-checks ``sys/health``, whose default codes exist so that only the active node passes (``standbyok`` is for
load balancers that cannot be told otherwise), and sends traffic to the active node only. In Kubernetes the Vault
Helm chart's ``vault-active`` Service plays this part (it selects the pod labelled active). A client needs no
cluster awareness of its own, which is how the operator is deployed (one VAULT_ADDR).
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import hvac
import hvac.exceptions

from devcluster.openbao import DEV_ROOT_TOKEN, create_dev_root_token, mount_engines
from devcluster.pki import DevCertificateAuthority, IssuedCert
from devcluster.process import ManagedProcess, StartError, free_port

UNSEAL_SHARES = 3
UNSEAL_THRESHOLD = 2
HAPROXY_BINARY = Path("/usr/sbin/haproxy")
# HAProxy's check interval: how long, at most, a dead or demoted active node keeps the client address, and how
# long a new active node waits for it after its election.
CHECK_INTERVAL_MS = 500
# sys/health status codes (Vault's defaults, which OpenBao keeps).
HEALTH_ACTIVE, HEALTH_STANDBY, HEALTH_UNINITIALISED, HEALTH_SEALED = 200, 429, 501, 503


class ClusterError(StartError):
    """The cluster did not reach the state asked for in time; the message names the node and its log tail."""


@dataclass
class OpenBaoNode:
    """One node of the cluster: its addresses, certificate, config and process."""

    name: str
    addr: str  # https://127.0.0.1:<port>, its own API address (also what it advertises as api_addr)
    cluster_addr: str  # https://127.0.0.1:<port>, raft and request forwarding between nodes
    workdir: Path
    certificate: IssuedCert
    process: ManagedProcess = field(repr=False)

    @property
    def port(self) -> int:
        """The API port."""
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def log_path(self) -> Path:
        """The node's server log."""
        return self.workdir / "openbao.log"


class OpenBaoCluster:
    """``size`` OpenBao nodes on raft with TLS, unsealed by the harness, behind HAProxy at ``addr``.

    ``addr`` follows the active node; ``client()`` talks to it with the CA verified. ``kill``/``restart`` crash a
    node and bring it back as a standby; ``save_snapshot``/``restore_snapshot`` are the standard raft snapshots.
    ``stop`` (also at interpreter exit) stops the proxy and every node; the workdir is left for its logs.
    """

    def __init__(self, bao_binary: Path, workdir: Path, *, size: int = 3) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.bao_binary = bao_binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tls").mkdir(exist_ok=True)
        self.ca = DevCertificateAuthority(workdir / "tls", "openbao-cluster-ca")
        self.ca_cert_path = self.ca.cert_path
        self.root_token = DEV_ROOT_TOKEN
        self.unseal_keys: list[str] = []
        ports = [(free_port(), free_port()) for _ in range(size)]
        self.nodes = [self._node(index, api_port, cluster_port, [api for other, (api, _) in enumerate(ports)
                                                                 if other != index])
                      for index, (api_port, cluster_port) in enumerate(ports)]
        self.proxy_port = free_port()
        self.addr = f"https://127.0.0.1:{self.proxy_port}"
        self._proxy_socket = workdir / "haproxy.sock"
        self.proxy = ManagedProcess("haproxy", [str(HAPROXY_BINARY), "-db", "-f", str(self._write_proxy_config())],
                                    workdir / "haproxy.log", env={"PATH": "/usr/sbin:/usr/bin:/bin"})
        self._tls = ssl.create_default_context(cafile=str(self.ca_cert_path))
        self._stopped = False

    # --------------------------------------------------------------------------------------------
    # Configuration
    # --------------------------------------------------------------------------------------------

    def _node(self, index: int, api_port: int, cluster_port: int, peer_ports: Sequence[int]) -> OpenBaoNode:
        name = f"node-{index}"
        workdir = self.workdir / name
        (workdir / "raft").mkdir(parents=True, exist_ok=True)
        # The proxy's address is 127.0.0.1 as well, so this certificate is also the one clients verify through it.
        certificate = self.ca.issue(name, name, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        retry_join = "".join(f"""
  retry_join {{
    leader_api_addr = "https://127.0.0.1:{peer}"
    leader_ca_cert_file = "{self.ca.cert_path}"
  }}""" for peer in peer_ports)
        config = workdir / "openbao.hcl"
        config.write_text(f"""
storage "raft" {{
  path = "{workdir / 'raft'}"
  node_id = "{name}"
  # Raft's timeouts scale with this (production default 5); at 1, the fastest setting, a standby stands for
  # election about 2.5 s after the leader's last heartbeat here, five times sooner (see devcluster/openbao.py).
  performance_multiplier = 1
  # Autopilot promotes a joined node to voter, and reports a restarted one healthy, at its next reconcile
  # (default every 10 s); a node that is not a voter yet cannot stand in for a killed leader.
  autopilot_reconcile_interval = "1s"
  autopilot_update_interval = "500ms"
{retry_join}
}}

listener "tcp" {{
  address = "127.0.0.1:{api_port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file = "{certificate.cert}"
  tls_key_file = "{certificate.key}"
}}

api_addr = "https://127.0.0.1:{api_port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
disable_mlock = true
""")
        process = ManagedProcess(f"openbao {name}", [str(self.bao_binary), "server", f"-config={config}"],
                                 workdir / "openbao.log", env={"HOME": str(workdir), "PATH": "/usr/bin:/bin"})
        return OpenBaoNode(name=name, addr=f"https://127.0.0.1:{api_port}",
                           cluster_addr=f"https://127.0.0.1:{cluster_port}", workdir=workdir,
                           certificate=certificate, process=process)

    def _write_proxy_config(self) -> Path:
        servers = "\n".join(f"  server {node.name} 127.0.0.1:{node.port}" for node in self.nodes)
        checks = (f"check check-ssl verify required ca-file {self.ca_cert_path} check-sni localhost "
                  f"inter {CHECK_INTERVAL_MS}ms fall 1 rise 1 on-marked-down shutdown-sessions")
        config = self.workdir / "haproxy.cfg"
        config.write_text(f"""
global
  maxconn 1024
  stats socket {self._proxy_socket} mode 600 level user

defaults
  mode tcp
  timeout connect 2s
  timeout client 5m
  timeout server 5m
  timeout check 2s
  # A connection the dead node refuses before its failed check marks it down is tried once more, on another node
  # if one is up, after HAProxy's turn-around (up to 1 s); the default, 3 retries, held clients for 3 s.
  retries 1
  option redispatch

frontend vault
  bind 127.0.0.1:{self.proxy_port}
  default_backend active_node

backend active_node
  # Only the active node answers sys/health with 200 (standby 429, sealed 503, uninitialised 501).
  option httpchk GET /v1/sys/health
  http-check expect status 200
  # One failed check marks a node down, one good check up; its open connections are cut when it goes down.
  default-server {checks}
{servers}
""")
        return config

    # --------------------------------------------------------------------------------------------
    # Probes
    # --------------------------------------------------------------------------------------------

    def health(self, node: OpenBaoNode) -> int | None:
        """The node's sys/health status code (``HEALTH_*``), or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{node.addr}/v1/sys/health", timeout=2, context=self._tls) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as answered:
            return int(answered.code)
        except (OSError, urllib.error.URLError):
            return None

    def node_client(self, node: OpenBaoNode, token: str | None = None, *, timeout: float = 10) -> hvac.Client:
        """An hvac client for one node directly (TLS verified against the CA); root token unless another is given."""
        return hvac.Client(url=node.addr, token=token or self.root_token, verify=str(self.ca_cert_path),
                           timeout=timeout)

    def client(self, token: str | None = None, *, timeout: float = 10) -> hvac.Client:
        """An hvac client for ``addr`` (the active node, through the proxy), TLS verified against the CA."""
        return hvac.Client(url=self.addr, token=token or self.root_token, verify=str(self.ca_cert_path),
                           timeout=timeout)

    def leader(self, timeout: float = 60) -> OpenBaoNode:
        """Wait until one node is active (sys/health 200) and return it; ClusterError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.process.running() and self.health(node) == HEALTH_ACTIVE:
                    return node
            if time.monotonic() > deadline:
                raise ClusterError(f"no active node after {timeout:.0f}s; health: {self._health_summary()}")
            time.sleep(0.05)

    def routed(self) -> list[str]:
        """The names of the nodes HAProxy routes to now (its stats socket: servers whose check is UP)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
            stats.settimeout(2)
            stats.connect(str(self._proxy_socket))
            stats.sendall(b"show stat\n")
            reply = b""
            while chunk := stats.recv(65536):
                reply += chunk
        rows = csv.DictReader(io.StringIO(reply.decode().lstrip("# ")))
        return [row["svname"] for row in rows
                if row["pxname"] == "active_node" and row["svname"] != "BACKEND" and row["status"] == "UP"]

    def wait_routed(self, timeout: float = 60) -> OpenBaoNode:
        """Wait until the proxy routes to exactly one node, the active one, and return it."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ClusterError):
                routed = self.routed()
                leader = self.leader(timeout=0)
                if routed == [leader.name]:
                    return leader
            if time.monotonic() > deadline:
                raise ClusterError(f"the proxy did not route to the active node within {timeout:.0f}s; "
                                   f"health: {self._health_summary()}; log {self.proxy.log_path}")
            time.sleep(0.05)

    def _health_summary(self) -> str:
        return ", ".join(f"{node.name}={self.health(node) if node.process.running() else 'stopped'}"
                         for node in self.nodes)

    def _wait_node(self, node: OpenBaoNode, wanted: Sequence[int | None], what: str, timeout: float) -> None:
        """Wait until the node's health code is one of ``wanted``; ClusterError (with its log) otherwise."""
        try:
            node.process.wait_ready(lambda: self.health(node) in wanted, timeout_seconds=timeout)
        except StartError as failed:
            raise ClusterError(f"{node.name} did not become {what}: {failed}") from None

    # --------------------------------------------------------------------------------------------
    # Life cycle
    # --------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node, initialise the first, unseal all, mount the engines, start the proxy; return when a
        leader is elected, every other node is a standby and the proxy routes to the leader."""
        if not HAPROXY_BINARY.is_file():
            raise StartError(f"{HAPROXY_BINARY} not found: install the Debian package haproxy (bash hack/install.sh)")
        atexit.register(self.stop)
        try:
            for node in self.nodes:
                node.process.start()
            for node in self.nodes:
                self._wait_node(node, (HEALTH_UNINITIALISED, HEALTH_SEALED), "listening", 60)
            first = self.nodes[0]
            # Initialisation happens once and cannot be retried: a timed-out init leaves a cluster whose unseal
            # keys we never saw. So it gets a generous timeout.
            init = self.node_client(first, timeout=120).sys.initialize(secret_shares=UNSEAL_SHARES,
                                                                       secret_threshold=UNSEAL_THRESHOLD)
            self.unseal_keys = list(init["keys"])
            self._unseal(first)
            self._wait_node(first, (HEALTH_ACTIVE,), "active", 60)
            create_dev_root_token(self.node_client(first, init["root_token"]))
            # Autopilot promotes a joined node to voter once it has been healthy this long (default 10 s).
            self.node_client(first).adapter.post("/v1/sys/storage/raft/autopilot/configuration",
                                                 json={"server_stabilization_time": "1s"})
            for node in self.nodes[1:]:
                self._join(node)
            for node in self.nodes[1:]:
                self._wait_standby(node)
            mount_engines(self.node_client(first))
            self.proxy.start()
            self.proxy.wait_ready(lambda: self.routed() == [first.name], timeout_seconds=30)
        except BaseException:
            self.stop()
            raise
        return self

    def _unseal(self, node: OpenBaoNode) -> None:
        client = self.node_client(node)
        for key in self.unseal_keys[:UNSEAL_THRESHOLD]:
            if not client.sys.read_seal_status()["sealed"]:
                break
            client.sys.submit_unseal_key(key)

    def _join(self, node: OpenBaoNode, timeout: float = 60) -> None:
        """Unseal a node that has never been unsealed: its retry_join fetches the leader's challenge, which the
        unseal keys answer. Until it has the challenge, unsealing fails with 'not initialized': try again."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._unseal(node)
                break
            except (hvac.exceptions.InvalidRequest, hvac.exceptions.InternalServerError) as early:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} could not join the cluster: {early}") from None
                time.sleep(0.2)

    def _wait_standby(self, node: OpenBaoNode, timeout: float = 60) -> None:
        """Wait until the node is an unsealed standby that autopilot reports healthy (in contact with the
        leader, its log caught up)."""
        self._wait_node(node, (HEALTH_STANDBY,), "a standby", timeout)

        def healthy() -> bool:
            # Autopilot runs on the active node; asked directly, since the proxy may not run (yet) or re-route.
            leader = self.node_client(self.leader(timeout=0), timeout=5)
            state = leader.adapter.get("/v1/sys/storage/raft/autopilot/state")
            server = state["data"]["servers"].get(node.name, {})
            # A node joins as a non-voter and autopilot promotes it after server_stabilization_time; until
            # then it could not take part in an election.
            return bool(server.get("healthy")) and server.get("status") == "voter"

        try:
            node.process.wait_ready(healthy, timeout_seconds=timeout)
        except StartError as failed:
            raise ClusterError(f"{node.name} did not become a healthy raft follower: {failed}") from None

    def kill(self, node: OpenBaoNode) -> None:
        """SIGKILL the node: a crash, no step-down, no cleanup."""
        node.process.kill()

    def restart(self, node: OpenBaoNode, timeout: float = 60) -> None:
        """Start a stopped or killed node again, unseal it, and wait until it is a healthy standby."""
        node.process.stop()
        node.process = ManagedProcess(node.process.name, node.process.argv, node.log_path, env=node.process.env)
        node.process.start()
        self._wait_node(node, (HEALTH_SEALED,), "listening (sealed)", timeout)
        self._unseal(node)
        self._wait_standby(node, timeout)

    def step_down(self) -> OpenBaoNode:
        """Ask the active node to step down; return the node that was active (another one takes over: raft hands
        leadership to the most up-to-date follower, so which one is not for the caller to choose)."""
        active = self.wait_routed()
        self.client().sys.step_down()
        return active

    def make_active(self, node: OpenBaoNode, timeout: float = 60) -> None:
        """Make ``node`` the active node, the proxy routing to it: the nodes that could take over instead are
        killed, the active one steps down, and the killed ones are started again as standbys."""
        if self.wait_routed(timeout) is node:
            return
        others = [other for other in self.nodes if other is not node and other is not self.leader(timeout=0)]
        for other in others:
            self.kill(other)  # a standby stopped gracefully spends ~10 s on its HA lock; it has nothing to save
        try:
            self.step_down()
            deadline = time.monotonic() + timeout
            while (active := self.wait_routed(timeout)) is not node:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} did not become active; {active.name} is")
                time.sleep(0.05)
        finally:
            for other in others:
                self.restart(other, timeout)

    def stop(self) -> None:
        """Stop the proxy and every node (idempotent); the workdir stays, with the logs."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            self.proxy.stop()
        # All at once: a standby told to stop first waits ~10 s on its attempt to take the HA lock.
        with ThreadPoolExecutor(len(self.nodes)) as stopping:
            for node in self.nodes:
                stopping.submit(node.process.stop)

    # --------------------------------------------------------------------------------------------
    # Snapshots, the standard way: `bao operator raft snapshot save|restore`
    # --------------------------------------------------------------------------------------------

    def _bao(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.workdir), "PATH": "/usr/bin:/bin", "VAULT_ADDR": self.addr,
               "VAULT_CACERT": str(self.ca_cert_path), "VAULT_TOKEN": self.root_token}
        result = subprocess.run([str(self.bao_binary), *args], capture_output=True, text=True, env=env,
                                timeout=timeout)
        if result.returncode != 0:
            raise ClusterError(f"bao {' '.join(args)} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}")
        return result

    def save_snapshot(self, path: Path) -> None:
        """``bao operator raft snapshot save PATH`` against ``addr``: the whole raft state, from the active node."""
        self._bao("operator", "raft", "snapshot", "save", str(path))

    def restore_snapshot(self, path: Path, timeout: float = 120) -> None:
        """``bao operator raft snapshot restore PATH`` (a snapshot of this same cluster, so no ``-force``); return
        when requests through the proxy succeed again and every running node is a healthy member.

        The command returns as soon as the active node has applied the snapshot; the node then reloads its state
        and holds requests meanwhile (about 5 s here) while sys/health still answers 200.
        """
        self._bao("operator", "raft", "snapshot", "restore", str(path), timeout=timeout)
        deadline = time.monotonic() + timeout

        def serves() -> bool:
            return "secret/" in self.client(timeout=2).sys.list_mounted_secrets_engines()["data"]

        try:
            self.proxy.wait_ready(serves, timeout_seconds=timeout)
        except StartError as failed:
            raise ClusterError(f"the cluster did not serve requests after the restore: {failed}; "
                               f"health: {self._health_summary()}") from None
        active = self.wait_routed(max(1.0, deadline - time.monotonic()))
        for node in self.nodes:
            if node is not active and node.process.running():
                self._wait_standby(node, max(1.0, deadline - time.monotonic()))

    # --------------------------------------------------------------------------------------------
    # For callers
    # --------------------------------------------------------------------------------------------

    def operator_env(self) -> dict[str, str]:
        """Environment variables that point an operator process at the cluster (through the proxy, root token)."""
        return {"VAULT_ADDR": self.addr, "VAULT_CACERT": str(self.ca_cert_path), "VAULT_TOKEN": self.root_token,
                "SERVICEKEY_VAULT_AUTH_METHOD": "token"}
