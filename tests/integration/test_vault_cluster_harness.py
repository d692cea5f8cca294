"""The OpenBao cluster of the harness is what it claims: three raft voters, one active, TLS verified end to end,
one client address that follows the active node, and raft snapshots that restore on every node."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests
from cryptography import x509

from devcluster.openbao_cluster import HEALTH_ACTIVE, HEALTH_STANDBY, OpenBaoCluster, OpenBaoNode

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(vault_cluster: OpenBaoCluster) -> Iterator[OpenBaoCluster]:
    """The session's cluster; any node a test leaves stopped is started again afterwards."""
    yield vault_cluster
    for node in vault_cluster.nodes:
        if not node.process.running():
            vault_cluster.restart(node)


def _write(cluster: OpenBaoCluster, path: str, value: str) -> None:
    cluster.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"value": value}, mount_point="secret")


def _read(cluster: OpenBaoCluster, path: str) -> str | None:
    try:
        reply = cluster.client().secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                                   raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return reply["data"]["data"]["value"]


def _served_certificate(address: str) -> x509.Certificate:
    host, port = address.removeprefix("https://").split(":")
    return x509.load_pem_x509_certificate(ssl.get_server_certificate((host, int(port))).encode())


def _node_certificate(node: OpenBaoNode) -> x509.Certificate:
    return x509.load_pem_x509_certificate(node.certificate.cert.read_bytes())


def test_three_raft_voters_one_active_and_the_proxy_routes_to_it(cluster: OpenBaoCluster):
    leader = cluster.wait_routed()

    health = {node.name: cluster.health(node) for node in cluster.nodes}
    configuration = cluster.client().adapter.get("/v1/sys/storage/raft/configuration")["data"]["config"]

    assert health == {node.name: HEALTH_ACTIVE if node is leader else HEALTH_STANDBY for node in cluster.nodes}
    assert sorted((server["node_id"], server["voter"]) for server in configuration["servers"]) == \
        [(node.name, True) for node in cluster.nodes]
    assert cluster.routed() == [leader.name]
    assert cluster.client().lookup_token()["data"]["id"] == cluster.root_token
    assert {"secret/", "transit/"} <= set(cluster.client().sys.list_mounted_secrets_engines()["data"])


def test_tls_is_verified_end_to_end_with_the_clusters_ca(cluster: OpenBaoCluster):
    leader = cluster.wait_routed()

    through_proxy = _served_certificate(cluster.addr)

    # Passthrough: a client sees the active node's own certificate, issued by the cluster's CA for 127.0.0.1.
    assert through_proxy == _node_certificate(leader)
    assert cluster.client().sys.read_health_status(method="GET")["initialized"] is True
    for address in (cluster.addr, leader.addr):
        with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
            hvac.Client(url=address, token=cluster.root_token, timeout=5).sys.read_health_status(method="GET")


def test_the_client_address_follows_a_killed_leader_and_the_restarted_node_rejoins_as_a_standby(
        cluster: OpenBaoCluster):
    path = f"harness/failover-{uuid.uuid4().hex[:8]}"
    _write(cluster, path, "before")
    old_leader = cluster.wait_routed()

    cluster.kill(old_leader)
    new_leader = cluster.leader(timeout=30)
    routed = cluster.wait_routed(timeout=30)

    assert new_leader is not old_leader
    assert routed is new_leader
    assert _read(cluster, path) == "before", "the new leader serves what the old one committed"
    _write(cluster, path, "after")

    cluster.restart(old_leader)

    assert cluster.health(old_leader) == HEALTH_STANDBY
    assert cluster.wait_routed() is new_leader, "a rejoining node takes nothing over"
    assert _read(cluster, path) == "after"


def test_a_snapshot_restores_the_saved_state_and_every_node_serves_it(cluster: OpenBaoCluster, tmp_path: Path):
    kept, later = f"harness/snapshot-{uuid.uuid4().hex[:8]}", f"harness/after-snapshot-{uuid.uuid4().hex[:8]}"
    _write(cluster, kept, "saved")
    snapshot = tmp_path / "raft.snap"

    cluster.save_snapshot(snapshot)
    _write(cluster, kept, "changed after the snapshot")
    _write(cluster, later, "written after the snapshot")
    cluster.restore_snapshot(snapshot)

    assert snapshot.stat().st_size > 0
    # Every node in turn becomes the active one and answers through the proxy with the restored state.
    served = {}
    for node in cluster.nodes:
        cluster.make_active(node)
        served[node.name] = (_read(cluster, kept), _read(cluster, later))
    assert served == {node.name: ("saved", None) for node in cluster.nodes}
