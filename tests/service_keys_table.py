"""A coordinator's ``service_keys`` table for the import tests: its schema per dialect, deterministic rows (most of
them valid key pairs, a few broken in distinct ways) with a token each row's key signed before any import, and the
means to put them in PostgreSQL, MariaDB, MongoDB (FerretDB) or a JSON/NDJSON dump of the coordinator's in-memory
store.

``rows(500)``: ``svc-0001`` ... ``svc-0500``, where row ``i`` is
  - RS256 with an RSA-4096 key when ``i % 20 == 7`` (5%),
  - ES256 (P-256) when ``i % 10`` is 1, 4 or 8 (30%); ``key_size`` is NULL on half the ES256 rows and 256 on
    the other half: coordinators store either, and an importer must take both,
  - RS256 with an RSA-2048 key otherwise (65%),
and ten rows spread over the range are replaced by the broken ones of ``DEFECTS`` (nine kinds; a name collision
takes two rows). Private keys are PKCS#8 PEM, except a fourth of the RSA and a third of the EC keys, which are
in the traditional PKCS#1 / SEC1 PEM ("BEGIN RSA PRIVATE KEY", "BEGIN EC PRIVATE KEY") that coordinators written
with OpenSSL-era libraries store; public keys are SPKI PEM ("BEGIN PUBLIC KEY"), what the operator publishes too.

The keys are generated once and kept in the devcluster cache dir (``devcluster.binaries.cache_dir()``), the rows
built from them too: test data, never a real secret. Bump ``KEYS_VERSION`` to generate new keys, ``ROWS_VERSION``
when ``rows()`` changes what it builds.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt
import psycopg
import pymongo
import pymysql
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devcluster.binaries import cache_dir

KEYS_VERSION = "v1"
ROWS_VERSION = "v2"
ISSUER = "coordinator"
# 2100-01-01T00:00:00Z: the tokens outlive any test run, and a fixed expiry keeps the cached tokens what rows() makes.
TOKEN_EXPIRY = 4102444800
CREATED = datetime(2023, 1, 2, 9, 0, tzinfo=UTC)  # when the coordinator made its first key, for the timestamps

COLUMNS = ("service_id", "service_name", "public_key", "private_key", "algorithm", "key_size", "created_at",
           "updated_at")
SCHEMA = {
    "postgresql": """
        CREATE TABLE service_keys (
            service_id   text PRIMARY KEY,
            service_name text,
            public_key   text,
            private_key  text,
            algorithm    text DEFAULT 'RS256',
            key_size     integer DEFAULT 2048,
            created_at   timestamptz DEFAULT now(),
            updated_at   timestamptz DEFAULT now()
        )""",
    # A primary key must have a length in MariaDB; the rest as a MySQL-backed coordinator declares it (TIMESTAMP
    # with the ON UPDATE clause that such schemas use for updated_at).
    "mariadb": """
        CREATE TABLE service_keys (
            service_id   varchar(255) NOT NULL PRIMARY KEY,
            service_name text,
            public_key   text,
            private_key  text,
            algorithm    varchar(32) DEFAULT 'RS256',
            key_size     int DEFAULT 2048,
            created_at   timestamp NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at   timestamp NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
}

# The kinds of broken row, in the order they are spread over the range, with the reason an importer must give.
DEFECTS: dict[str, str] = {
    "unparseable-private-key": "private_key is cut short (as by a column too narrow for it) and does not parse",
    "key-mismatch": "public_key is not the public half of private_key",
    "unsupported-algorithm": "algorithm HS256 is an HMAC algorithm, not one of the operator's; the row holds an RSA "
                             "key pair",
    "key-size-mismatch": "key_size says 4096 but the key is RSA-2048",
    "invalid-name": "service_id 'Billing Service' gives no valid ServiceKey name (a space, upper-case letters)",
    "name-collision": "service_ids 'svc-NNNN' and 'SVC_NNNN' give the same ServiceKey name 'svc-NNNN' once "
                      "lower-cased and '_' made '-'; both rows are refused, neither wins",
    "algorithm-key-mismatch": "algorithm ES256 but the key is RSA-2048",
    "unparseable-public-key": "public_key is cut short and does not parse",
    "empty-private-key": "private_key is empty",
}
RSA_2048, RSA_4096, EC_P256 = "RSA-2048", "RSA-4096", "EC-P256"


@dataclass(frozen=True)
class CoordinatorRow:
    """One row of ``service_keys`` (the table's columns), and what the tests know about it.

    ``valid``: a correct importer imports it; otherwise ``defect`` (a key of ``DEFECTS``) and ``why`` say what is
    wrong with it. ``token``: a JWT its private key signed before any import, with claims ``{"sub": service_id,
    "iss": "coordinator", "exp": TOKEN_EXPIRY}``, header ``kid`` = ``service_id`` on every other row of a key kind
    and no ``kid`` on the rest; signed with the row's algorithm (RS256 or ES256), or for a broken row whose
    algorithm the key cannot sign with, the key's own; empty when the private key does not parse. The PEMs and
    the token are left out of the repr, so a failing assertion on rows stays readable.
    """

    service_id: str
    service_name: str | None
    public_key: str | None = field(repr=False)
    private_key: str | None = field(repr=False)
    algorithm: str | None
    key_size: int | None
    created_at: datetime
    updated_at: datetime
    valid: bool
    defect: str
    why: str
    token: str = field(repr=False)

    def column_values(self) -> tuple[Any, ...]:
        """The values of ``COLUMNS``, in that order."""
        return tuple(getattr(self, column) for column in COLUMNS)

    def dump_entry(self) -> dict[str, Any]:
        """The row as the coordinator's in-memory store holds it (``{serviceId, serviceName, ...}``)."""
        return {"serviceId": self.service_id, "serviceName": self.service_name, "publicKey": self.public_key,
                "privateKey": self.private_key, "algorithm": self.algorithm, "keySize": self.key_size}


def _log(message: str) -> None:
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def _write_atomically(path: Path, text: str) -> None:
    # Two test processes may fill the cache at once: each writes its own file and renames it into place.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(staging, path)


def _read_cache(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or cut short by a run that died while writing: made again
        return None


# ------------------------------------------------------------------------------------------------------------------
# The keys: PKCS#8 PEMs by kind, generated once (RSA-4096 takes about half a second each) and cached.
# ------------------------------------------------------------------------------------------------------------------

def _generate(kind: str) -> str:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == EC_P256:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=4096 if kind == RSA_4096 else 2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _key_pool(needed: Counter[str]) -> dict[str, list[str]]:
    """At least ``needed[kind]`` private keys of each kind: the cached ones, and new ones added to the cache."""
    path = cache_dir() / "test-data" / f"coordinator-keys-{KEYS_VERSION}.json"
    pool: dict[str, list[str]] = _read_cache(path) or {}
    missing = [kind for kind, count in needed.items() for _ in range(count - len(pool.get(kind, [])))]
    if missing:
        started = time.monotonic()
        # cryptography lets go of the GIL while it searches for primes, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as workers:
            for kind, pem in zip(missing, workers.map(_generate, missing), strict=True):
                pool.setdefault(kind, []).append(pem)
        _write_atomically(path, json.dumps(pool))
        _log(f"generated {dict(Counter(missing))} test keys in {time.monotonic() - started:.1f}s into {path}")
    return pool


# ------------------------------------------------------------------------------------------------------------------
# The rows.
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    index: int
    service_id: str
    kind: str
    defect: str = ""


def _kind(index: int) -> str:
    if index % 20 == 7:
        return RSA_4096
    if index % 10 in (1, 4, 8):
        return EC_P256
    return RSA_2048


def _plans(count: int, broken: bool) -> list[_Plan]:
    plans = [_Plan(index, f"svc-{index:04d}", _kind(index)) for index in range(1, count + 1)]
    if not broken:
        return plans
    # One row per defect (two for the collision), spread evenly so every slice of the table has some.
    slots = len(DEFECTS) + 1
    if count < 2 * slots:
        raise ValueError(f"rows(count={count}) has no room for the broken rows; ask for {2 * slots} or more, "
                         "or broken=False")
    positions = iter((slot + 1) * count // (slots + 1) for slot in range(slots))
    for defect in DEFECTS:
        plan = plans[next(positions) - 1]
        plan.defect, plan.kind = defect, EC_P256 if defect == "invalid-name" else RSA_2048
        if defect == "invalid-name":
            plan.service_id = "Billing Service"
        if defect == "name-collision":
            twin = plans[next(positions) - 1]
            twin.defect, twin.kind = defect, EC_P256
            twin.service_id = plan.service_id.upper().replace("-", "_")
    return plans


def _load_private(pem: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    # Our own keys, generated by cryptography: its RSA consistency check (about 60 ms a key) would find nothing.
    key = serialization.load_pem_private_key(pem.encode(), None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _traditional_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def _cut_short(pem: str) -> str:
    """The PEM with its base64 body cut after the first line: header and footer intact, the DER truncated."""
    lines = pem.strip().splitlines()
    return "\n".join([lines[0], lines[1], lines[-1]]) + "\n"


def _build(plans: list[_Plan]) -> list[CoordinatorRow]:
    needed = Counter(plan.kind for plan in plans)
    needed[RSA_2048] += sum(plan.defect == "key-mismatch" for plan in plans)  # the other key's public half
    pool = {kind: iter(pems) for kind, pems in _key_pool(needed).items()}
    of_kind: Counter[str] = Counter()  # the n-th row of its kind picks kid, ES256 key_size and PEM format
    rows: list[CoordinatorRow] = []
    for plan in plans:
        nth = of_kind[plan.kind]
        of_kind[plan.kind] += 1
        key = _load_private(next(pool[plan.kind]))
        is_ec = plan.kind == EC_P256
        # kid on even rows of a kind; key_size NULL and the PEM format follow nth // 2, so that no two of the three
        # go together (every format and every ES256 key_size comes with and without a kid).
        traditional = (nth // 2) % (3 if is_ec else 4) == 1
        private_key = _traditional_pem(key) if traditional else key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        public_key = _public_pem(key)
        algorithm = "ES256" if is_ec else "RS256"
        key_size: int | None = ((None if (nth // 2) % 2 == 0 else 256) if is_ec
                                else 4096 if plan.kind == RSA_4096 else 2048)
        # The token is signed with the key the coordinator had, before any defect is applied to the row's columns.
        headers = {"kid": plan.service_id} if nth % 2 == 0 else None
        token = jwt.encode({"sub": plan.service_id, "iss": ISSUER, "exp": TOKEN_EXPIRY}, key, algorithm=algorithm,
                           headers=headers)
        if plan.defect == "unparseable-private-key":
            private_key, token = _cut_short(private_key), ""
        elif plan.defect == "empty-private-key":
            private_key, token = "", ""
        elif plan.defect == "key-mismatch":
            public_key = _public_pem(_load_private(next(pool[RSA_2048])))
        elif plan.defect == "unsupported-algorithm":
            algorithm = "HS256"
        elif plan.defect == "key-size-mismatch":
            key_size = 4096
        elif plan.defect == "algorithm-key-mismatch":
            algorithm, key_size = "ES256", None
        elif plan.defect == "unparseable-public-key":
            public_key = _cut_short(public_key)
        why = DEFECTS.get(plan.defect, "")
        if plan.defect == "name-collision":
            name = plan.service_id.lower().replace("_", "-")
            why = (f"service_ids {name!r} and {name.upper().replace('-', '_')!r} give the same ServiceKey name "
                   f"{name!r} once lower-cased and '_' made '-'; both rows are refused, neither wins")
        created = CREATED + timedelta(hours=7 * plan.index)
        rows.append(CoordinatorRow(
            service_id=plan.service_id, service_name=f"Service {plan.index:04d}", public_key=public_key,
            private_key=private_key, algorithm=algorithm, key_size=key_size, created_at=created,
            updated_at=created + timedelta(days=plan.index % 30, minutes=plan.index % 60), valid=not plan.defect,
            defect=plan.defect, why=why, token=token))
    return rows


def rows(count: int = 500, *, broken: bool = True) -> list[CoordinatorRow]:
    """The coordinator's rows, ``svc-0001`` on (see the module's docstring); ``broken=False``: valid rows only.

    The same rows (the same keys, tokens and all) on every call and every run, from the cache after the first.
    """
    started = time.monotonic()
    path = cache_dir() / "test-data" / f"coordinator-rows-{ROWS_VERSION}-{KEYS_VERSION}-{count}-{int(broken)}.json"
    cached = _read_cache(path)
    if cached is not None:
        loaded = [CoordinatorRow(**dict(entry, created_at=datetime.fromisoformat(entry["created_at"]),
                                        updated_at=datetime.fromisoformat(entry["updated_at"])))
                  for entry in cached]
        _log(f"{len(loaded)} coordinator rows from the cache in {time.monotonic() - started:.2f}s ({path})")
        return loaded
    built = _build(_plans(count, broken))
    _write_atomically(path, json.dumps([asdict(row) for row in built], default=datetime.isoformat))
    _log(f"built {len(built)} coordinator rows in {time.monotonic() - started:.1f}s into {path}")
    return built


# ------------------------------------------------------------------------------------------------------------------
# Where the rows go: the servers of devcluster.databases (their ``url``), or a dump file.
# ------------------------------------------------------------------------------------------------------------------

def _insert(placeholder: str) -> str:
    return (f"INSERT INTO service_keys ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join(placeholder for _ in COLUMNS)})")


def seed_postgresql(url: str, rows: Iterable[CoordinatorRow]) -> None:
    """Drop and create ``service_keys`` at ``url`` (``postgresql://...``) and insert ``rows``, in one transaction."""
    with psycopg.connect(url) as connection:  # commits when the block ends without an exception
        connection.execute("DROP TABLE IF EXISTS service_keys")
        connection.execute(SCHEMA["postgresql"])
        with connection.cursor() as cursor:
            cursor.executemany(_insert("%s"), [row.column_values() for row in rows])


def _mariadb_connect(url: str) -> pymysql.Connection:
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"not a mysql:// URL: {parts.scheme}://...")
    # TIMESTAMP columns convert from the session's time zone: UTC, so the stored instants are the rows' own.
    return pymysql.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                           user=unquote(parts.username or ""), password=unquote(parts.password or ""),
                           database=parts.path.lstrip("/"), charset="utf8mb4", init_command="SET time_zone = '+00:00'")


def seed_mariadb(url: str, rows: Iterable[CoordinatorRow]) -> None:
    """Drop and create ``service_keys`` at ``url`` (``mysql://...``) and insert ``rows`` in one transaction (the DDL
    before it commits on its own in MySQL/MariaDB)."""
    def naive_utc(moment: datetime) -> datetime:
        return moment.astimezone(UTC).replace(tzinfo=None)

    with _mariadb_connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS service_keys")
        cursor.execute(SCHEMA["mariadb"])
        connection.begin()
        # PyMySQL sends executemany of an INSERT ... VALUES as multi-row INSERTs, not one statement a row.
        cursor.executemany(_insert("%s"), [(*row.column_values()[:-2], naive_utc(row.created_at),
                                            naive_utc(row.updated_at)) for row in rows])
        connection.commit()


def seed_mongodb(url: str, rows: Iterable[CoordinatorRow], *, column_names: bool = False) -> None:
    """Drop the collection ``service_keys`` of ``url``'s database (``mongodb://.../<database>``) and insert ``rows``
    as documents: ``dump_entry()`` (``{serviceId, serviceName, ...}``) plus ``createdAt``/``updatedAt`` dates, as a
    coordinator that moved its in-memory store to MongoDB keeps them; with ``column_names`` the table's columns."""
    if urlsplit(url).scheme != "mongodb":
        raise ValueError(f"not a mongodb:// URL: {urlsplit(url).scheme}://...")

    def document(row: CoordinatorRow) -> dict[str, Any]:
        if column_names:
            return dict(zip(COLUMNS, row.column_values(), strict=True))
        return {**row.dump_entry(), "createdAt": row.created_at, "updatedAt": row.updated_at}

    with pymongo.MongoClient(url, serverSelectionTimeoutMS=10000) as client:
        collection = client.get_default_database()["service_keys"]
        collection.drop()
        documents = [document(row) for row in rows]
        if documents:  # insert_many refuses an empty list
            collection.insert_many(documents)


def read_postgresql(url: str) -> list[dict[str, Any]]:
    """Every row of ``service_keys`` at ``url``, by ``service_id``, as the columns' values."""
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM service_keys ORDER BY service_id")
        return [dict(zip(COLUMNS, values, strict=True)) for values in cursor.fetchall()]


def read_mariadb(url: str) -> list[dict[str, Any]]:
    """Every row of ``service_keys`` at ``url``, by ``service_id``, timestamps as aware UTC datetimes."""
    with _mariadb_connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM service_keys ORDER BY service_id")
        read = [dict(zip(COLUMNS, values, strict=True)) for values in cursor.fetchall()]
    for row in read:
        for column in ("created_at", "updated_at"):
            row[column] = row[column].replace(tzinfo=UTC)
    return read


def write_json_dump(path: Path, rows: Sequence[CoordinatorRow], ndjson: bool = False) -> Path:
    """The rows as a dump of the coordinator's in-memory store: a JSON array of ``{serviceId, serviceName,
    publicKey, privateKey, algorithm, keySize}``, or with ``ndjson`` one such object a line."""
    entries = [row.dump_entry() for row in rows]
    if ndjson:
        path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    else:
        path.write_text(json.dumps(entries, indent=2) + "\n")
    return path
