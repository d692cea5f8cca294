"""``servicekey-operator import`` from a real PostgreSQL and MariaDB ``service_keys`` table, a MongoDB-compatible
(FerretDB) ``service_keys`` collection and a dump of the coordinator's in-memory store: every valid row becomes a
Ready ServiceKey with the very key of its row (nothing rotated), every token the coordinator signed before the
import verifies against the published JWKS alone (its kid, the service id, is published as a legacy kid of the key;
tokens without a kid find the one key), every broken row is reported with its reason, a second run changes nothing,
and no private key reaches Kubernetes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from devcluster.databases import FerretDBServer, MariaDBServer, PostgreSQLServer
from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from servicekey_operator.import_rows import servicekey_name
from servicekey_operator.keys import kid_for
from tests.service_keys_table import CoordinatorRow, seed_mariadb, seed_mongodb, seed_postgresql, write_json_dump
from tests.support import GROUP, PLURAL, VERSION, ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration

# The reason each kind of broken row must be reported with (tests/service_keys_table.py names the defects).
REASONS = {"unparseable-private-key": "InvalidPrivateKey", "empty-private-key": "InvalidPrivateKey",
           "unparseable-public-key": "InvalidPublicKey", "key-mismatch": "KeyMismatch",
           "unsupported-algorithm": "UnsupportedAlgorithm", "key-size-mismatch": "KeyAlgorithmMismatch",
           "algorithm-key-mismatch": "KeyAlgorithmMismatch", "invalid-name": "InvalidName",
           "name-collision": "NameCollision"}
# How long the operator may take to adopt every imported key (a pass each: Vault reads, a ConfigMap, a status).
ADOPTION_TIMEOUT = 180.0


def run_import(dev_env: DevEnvironment, source: str, namespace: str, *extra: str) -> tuple[dict[str, Any], float]:
    """The import's JSON report, and how long the command took (s); it exits 1 as some rows are refused."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "servicekey_operator", "import", source, "-n", namespace,
                             "-o", "json", *extra], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, **dev_env.operator_env()))
    elapsed = time.monotonic() - started
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr}"
    return json.loads(result.stdout), elapsed


def servicekey_list(servicekeys: ServiceKeys) -> list[dict[str, Any]]:
    return servicekeys.custom.list_namespaced_custom_object(GROUP, VERSION, servicekeys.namespace, PLURAL)["items"]


def assert_imported_unchanged(report: dict[str, Any], rows: list[CoordinatorRow], servicekeys: ServiceKeys,
                              dev_env: DevEnvironment) -> None:
    valid = [row for row in rows if row.valid]
    broken = [row for row in rows if not row.valid]
    failures = {key["message"] for key in report["keys"] if key["outcome"] != "imported"}
    assert report["counts"] == {"imported": len(valid), "refused": len(broken)}, (report["counts"], failures)
    refused = {(error["service_id"], error["reason"]) for error in report["refused"]}
    assert refused == {(row.service_id, REASONS[row.defect]) for row in broken}
    assert "PRIVATE KEY" not in json.dumps(report)

    def all_ready() -> list[dict[str, Any]] | None:
        items = servicekey_list(servicekeys)
        ready = [item for item in items if ready_condition(item).get("status") == "True"]
        return items if len(ready) == len(valid) else None
    items = {item["metadata"]["name"]: item for item in wait_for(all_ready, ADOPTION_TIMEOUT,
                                                                 "every imported key to be Ready", interval=1)}

    for row in valid:
        name = servicekey_name(row.service_id)
        assert name is not None
        item = items[name]
        kid = kid_for(row.public_key or "")
        assert item["status"]["keyId"] == kid, f"{name}: the operator adopted another key"
        assert item["spec"]["deletionPolicy"] == "Retain"
        configmap = servicekeys.configmap(f"{name}-public")
        assert kid_for(configmap.data["public.pem"]) == kid
        mount, path = servicekeys.vault_path(name)
        assert servicekeys.vault_versions(mount, path) == 1, f"{name}: rotated on adoption"
        jwks = jwt.PyJWKSet.from_dict(json.loads(configmap.data["jwks.json"]))
        token_kid = jwt.get_unverified_header(row.token).get("kid")
        # A verifier matches the token's kid (here the service id, a legacy kid); without one, the key set holds
        # a single key, under its kids.
        candidates = [key for key in jwks.keys if key.key_id == token_kid] if token_kid else jwks.keys[:1]
        assert candidates, f"{name}: no key for kid {token_kid} in the JWKS"
        claims = jwt.decode(row.token, candidates[0].key, algorithms=[row.algorithm], issuer="coordinator")
        assert claims["sub"] == row.service_id

    checked = subprocess.run([sys.executable, "-m", "servicekey_operator", "check", "-n", servicekeys.namespace],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, **dev_env.operator_env()))
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr


def test_import_from_postgresql_keeps_every_key_and_every_old_token_and_a_second_run_changes_nothing(
        operator: OperatorProcess, servicekeys: ServiceKeys, dev_env: DevEnvironment,
        postgresql_server: PostgreSQLServer, coordinator_rows: list[CoordinatorRow], record_property):
    seed_postgresql(postgresql_server.url, coordinator_rows)

    dry, _ = run_import(dev_env, postgresql_server.url, servicekeys.namespace, "--dry-run")
    assert dry["counts"]["planned"] == sum(row.valid for row in coordinator_rows)
    assert servicekey_list(servicekeys) == [], "a dry run writes nothing"

    report, elapsed = run_import(dev_env, postgresql_server.url, servicekeys.namespace)
    rate = len(coordinator_rows) / elapsed
    record_property("import_rows_per_second", round(rate))
    print(f"\nimport of {len(coordinator_rows)} PostgreSQL rows: {elapsed:.1f}s ({rate:.0f} rows/s)")
    assert_imported_unchanged(report, coordinator_rows, servicekeys, dev_env)

    # Again, after one key's first rotation: the import recognises its key among the older versions.
    rotated = next(row for row in coordinator_rows if row.valid)
    name = servicekey_name(rotated.service_id) or ""
    # An emergency rotation signs at once (the imported ServiceKey has the default publishAhead, 3m).
    servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": "emergency:after-the-import"}}})
    servicekeys.wait_new_kid(name, kid_for(rotated.public_key or ""))
    again, _ = run_import(dev_env, postgresql_server.url, servicekeys.namespace)
    assert again["counts"] == {"unchanged": sum(row.valid for row in coordinator_rows),
                               "refused": sum(not row.valid for row in coordinator_rows)}


@pytest.mark.parametrize("source", ["mariadb", "mongodb", "json", "ndjson"])
def test_import_from_mariadb_and_from_a_dump_of_the_in_memory_store(
        operator: OperatorProcess, servicekeys: ServiceKeys, dev_env: DevEnvironment, tmp_path: Path,
        request: pytest.FixtureRequest, coordinator_rows: list[CoordinatorRow], source: str):
    # Every kind of key, kid and PEM format is among the first 24 rows, and every defect among the broken rows;
    # the 500 are PostgreSQL's test.
    rows = coordinator_rows[:24] + [row for row in coordinator_rows[24:] if not row.valid]
    sources: dict[str, Callable[[], str]] = {
        "mariadb": lambda: _seeded_mariadb(request.getfixturevalue("mariadb_server"), rows),
        "mongodb": lambda: _seeded_mongodb(request.getfixturevalue("ferretdb_server"), rows),
        "json": lambda: str(write_json_dump(tmp_path / "keys.json", rows)),
        "ndjson": lambda: str(write_json_dump(tmp_path / "keys.ndjson", rows, ndjson=True)),
    }

    report, _ = run_import(dev_env, sources[source](), servicekeys.namespace)

    assert_imported_unchanged(report, rows, servicekeys, dev_env)


def _seeded_mariadb(server: MariaDBServer, rows: list[CoordinatorRow]) -> str:
    seed_mariadb(server.url, rows)
    return server.url


def _seeded_mongodb(server: FerretDBServer, rows: list[CoordinatorRow]) -> str:
    seed_mongodb(server.url, rows)
    return server.url
