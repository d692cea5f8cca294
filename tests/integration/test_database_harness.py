"""The coordinator databases of the import tests are real and hold what the tests think: PostgreSQL and MariaDB
servers that a password login over TCP reaches, seeded with the 500 rows and reading them back unchanged, and a
pre-import token for every valid row that its row's public key verifies."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pymysql
import pytest

from devcluster.databases import MariaDBServer, PostgreSQLServer
from tests.service_keys_table import (
    COLUMNS,
    DEFECTS,
    ISSUER,
    CoordinatorRow,
    read_mariadb,
    read_postgresql,
    seed_mariadb,
    seed_postgresql,
    write_json_dump,
)

pytestmark = pytest.mark.integration

Seed = Callable[[str, list[CoordinatorRow]], None]
Read = Callable[[str], list[dict[str, Any]]]
DIALECTS: dict[str, tuple[str, Seed, Read]] = {
    "postgresql": ("postgresql_server", seed_postgresql, read_postgresql),
    "mariadb": ("mariadb_server", seed_mariadb, read_mariadb),
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_server_is_seeded_with_every_row_and_reads_them_back_unchanged(
        dialect: str, request: pytest.FixtureRequest, coordinator_rows: list[CoordinatorRow]):
    fixture, seed, read = DIALECTS[dialect]
    server: PostgreSQLServer | MariaDBServer = request.getfixturevalue(fixture)

    seed(server.url, coordinator_rows)
    stored = {row["service_id"]: row for row in read(server.url)}

    assert len(stored) == len(coordinator_rows) == 500
    # Every column of every row, PEMs byte for byte: NULL key sizes, empty and cut-short keys and timestamps too.
    assert stored == {row.service_id: dict(zip(COLUMNS, row.column_values(), strict=True))
                      for row in coordinator_rows}
    broken = {row.service_id: row.defect for row in coordinator_rows if not row.valid}
    assert set(broken) <= set(stored) and set(broken.values()) == set(DEFECTS)


def test_the_url_is_a_password_login_that_a_wrong_password_does_not_pass(postgresql_server: PostgreSQLServer,
                                                                         mariadb_server: MariaDBServer):
    # Neither server trusts TCP clients (no trust auth, no --skip-grant-tables): the password in .url is what works.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgresql_server.url.replace(postgresql_server.password, "wrong"), connect_timeout=5)
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="coordinator", password="wrong",
                        database="coordinator", connect_timeout=5)


def test_every_valid_row_has_a_pre_import_token_its_public_key_verifies(coordinator_rows: list[CoordinatorRow]):
    valid = [row for row in coordinator_rows if row.valid]
    kinds = Counter((row.algorithm, row.key_size) for row in valid)
    # The documented mix: mostly RS256/2048, about 5% RS256/4096, about 30% ES256 with key_size NULL or 256.
    assert kinds[("RS256", 2048)] > 300 and kinds[("RS256", 4096)] >= 20
    assert kinds[("ES256", None)] + kinds[("ES256", 256)] >= 140 and kinds[("ES256", None)] and kinds[("ES256", 256)]
    assert len({row.private_key for row in coordinator_rows}) == len(coordinator_rows), "no two rows share a key"

    with_kid: Counter[str | None] = Counter()
    for row in valid:
        assert row.public_key is not None and row.algorithm is not None
        claims = jwt.decode(row.token, row.public_key, algorithms=[row.algorithm], issuer=ISSUER)
        assert claims["sub"] == row.service_id
        kid = jwt.get_unverified_header(row.token).get("kid")
        assert kid in (None, row.service_id)
        with_kid[f"{row.algorithm}/{row.key_size}/{'kid' if kid else 'no kid'}"] += 1
    # About half the tokens carry the service id as kid and half no kid, for every kind of key (the broken rows
    # take their turns too, so not exactly half).
    for kind, count in kinds.items():
        signed_with_kid = with_kid[f"{kind[0]}/{kind[1]}/kid"]
        assert 0.4 * count <= signed_with_kid <= 0.6 * count, (kind, signed_with_kid, count)


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
def test_the_dump_holds_the_in_memory_shape(tmp_path: Path, coordinator_rows: list[CoordinatorRow], ndjson: bool):
    # The importer tells NDJSON from JSON by the suffix, as a dump's reader would.
    path = write_json_dump(tmp_path / ("dump.ndjson" if ndjson else "dump.json"), coordinator_rows, ndjson=ndjson)

    text = path.read_text()
    entries = [json.loads(line) for line in text.splitlines()] if ndjson else json.loads(text)
    assert len(entries) == 500
    assert set(entries[0]) == {"serviceId", "serviceName", "publicKey", "privateKey", "algorithm", "keySize"}
    assert entries == [row.dump_entry() for row in coordinator_rows]
