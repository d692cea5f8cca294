"""Fixtures of the integration suite beyond the shared ones (tests/conftest.py): the coordinator databases that
``servicekey-operator import`` reads, the rows to seed them with (tests/service_keys_table.py), and a 3-node
OpenBao cluster behind one client address for the tests of Vault's own failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from devcluster.binaries import find_bao
from devcluster.databases import FerretDBServer, MariaDBServer, PostgreSQLServer
from devcluster.openbao_cluster import OpenBaoCluster
from devcluster.process import StartError
from tests.service_keys_table import CoordinatorRow, rows

Server = TypeVar("Server", PostgreSQLServer, MariaDBServer, FerretDBServer, OpenBaoCluster)


def _running(make: Callable[[], Server]) -> Iterator[Server]:
    """The server, started, then stopped; a server that is missing or does not start fails the test, never skips
    it."""
    try:
        server = make().start()
    except StartError as failed:
        message = str(failed)
    else:
        yield server
        server.stop()
        return
    # Outside the except block, so the report shows the server's message and log tail, not a chained traceback.
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgreSQLServer]:
    """A real PostgreSQL (Debian's ``postgresql``) on 127.0.0.1, database ``coordinator`` empty: ``.url`` is
    ``postgresql://coordinator:<password>@127.0.0.1:<port>/coordinator``. Stopped and removed after the session."""
    yield from _running(PostgreSQLServer)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A real MariaDB (Debian's ``mariadb-server``) on 127.0.0.1, database ``coordinator`` empty: ``.url`` is
    ``mysql://coordinator:<password>@127.0.0.1:<port>/coordinator``. Stopped and removed after the session."""
    yield from _running(MariaDBServer)


@pytest.fixture(scope="session")
def ferretdb_server() -> Iterator[FerretDBServer]:
    """A real FerretDB (MongoDB-compatible, SQLite backend, built by ``python3 -m devcluster build``) on 127.0.0.1,
    database ``coordinator`` empty: ``.url`` is ``mongodb://127.0.0.1:<port>/coordinator`` (no authentication).
    Stopped and removed after the session."""
    yield from _running(FerretDBServer)


@pytest.fixture(scope="session")
def coordinator_rows() -> list[CoordinatorRow]:
    """The coordinator's 500 rows (``rows()``): the same on every run, from the cache after the first."""
    return rows(500)


@pytest.fixture(scope="session")
def vault_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoCluster]:
    """Three OpenBao nodes on raft, TLS everywhere (CA ``.ca_cert_path``), unsealed, KV v2 at ``secret/`` and
    Transit at ``transit/``, root token ``DEV_ROOT_TOKEN``, behind HAProxy at ``.addr`` (follows the active node;
    ``.operator_env()`` points an operator there). A test that kills or stops a node restarts it before it ends;
    logs stay in the session's temp dir."""
    yield from _running(lambda: OpenBaoCluster(find_bao(), tmp_path_factory.mktemp("openbao-cluster")))
