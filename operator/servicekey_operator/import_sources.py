"""Where a coordinator keeps its keys, read as rows (mappings of column name to value): a PostgreSQL or
MySQL/MariaDB ``service_keys`` table or a MongoDB ``service_keys`` collection, through the ecosystem's drivers
(psycopg 3, PyMySQL, pymongo: the ``import`` extra), or a JSON / NDJSON dump of the in-memory store
(``{serviceId, serviceName, publicKey, privateKey, algorithm, keySize}`` per service).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# A table name as the options accept it: an identifier, optionally schema-qualified; quoted by each driver.
TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
POSTGRESQL_SCHEMES = ("postgresql", "postgres")
MYSQL_TLS_OPTIONS = frozenset({"ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_identity"})
MYSQL_SCHEMES = ("mysql", "mariadb")
MONGODB_SCHEMES = ("mongodb",)


class SourceError(Exception):
    """The source cannot be read: a bad URL or file, a missing driver, a refused connection or query."""


def read_rows(source: str, *, table: str = "service_keys", query: str | None = None) -> list[Mapping[str, Any]]:
    """Every row of ``source``: a ``postgresql://``, ``mysql://`` (or ``mariadb://``) URL, read with ``query`` or
    ``SELECT * FROM <table>``; a ``mongodb://`` URL, every document of the collection ``table`` of the URL's
    database that matches ``query`` (a JSON filter document: MongoDB Extended JSON, so ``{"$date": ...}`` works),
    without ``_id``; or the path of a ``.json`` (a list, or an object of entries) / ``.ndjson`` dump.

    Raises SourceError, whose message never holds the URL's password (a driver may quote it).
    """
    try:
        return _read(source, table, query)
    except SourceError as failed:
        message = str(failed)
        password = urllib.parse.urlsplit(source).password
        for secret in {password, urllib.parse.unquote(password or "")} - {None, ""}:
            message = message.replace(secret, "***")  # type: ignore[arg-type]
        raise SourceError(message) from None


def _read(source: str, table: str, query: str | None) -> list[Mapping[str, Any]]:
    scheme = urllib.parse.urlsplit(source).scheme
    if not TABLE.fullmatch(table):
        raise SourceError(f"--table {table!r} is not a table name")
    if scheme in POSTGRESQL_SCHEMES:
        return _postgresql(source, table, query)
    if scheme in MYSQL_SCHEMES:
        return _mysql(source, table, query)
    if scheme in MONGODB_SCHEMES:
        return _mongodb(source, table, query)
    if scheme:
        raise SourceError(f"unsupported source {scheme}://: use postgresql://, mysql://, mariadb://, mongodb:// or a "
                          "JSON file")
    return _dump(Path(source))


def _postgresql(url: str, table: str, query: str | None) -> list[Mapping[str, Any]]:
    try:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row
    except ImportError as missing:
        raise SourceError("reading PostgreSQL needs psycopg: pip install 'servicekey-operator[import]'") from missing
    statement = sql.SQL(query) if query else sql.SQL("SELECT * FROM {}").format(sql.Identifier(*table.split(".")))
    try:
        with psycopg.connect(url, row_factory=dict_row, connect_timeout=10) as connection:
            return list(connection.execute(statement).fetchall())
    except psycopg.Error as failed:
        raise SourceError(f"PostgreSQL: {failed}") from failed


def _mysql(url: str, table: str, query: str | None) -> list[Mapping[str, Any]]:
    try:
        import pymysql
        import pymysql.cursors
    except ImportError as missing:
        raise SourceError("reading MySQL/MariaDB needs PyMySQL: pip install 'servicekey-operator[import]'") from missing
    parts = urllib.parse.urlsplit(url)
    # TLS as PyMySQL takes it; any other option is refused rather than dropped (the rows carry private keys).
    options = dict(urllib.parse.parse_qsl(parts.query))
    unknown = set(options) - MYSQL_TLS_OPTIONS
    if unknown:
        raise SourceError(f"unsupported option(s) {', '.join(sorted(unknown))} in the mysql:// URL; TLS options: "
                          f"{', '.join(sorted(MYSQL_TLS_OPTIONS))}")
    statement = query or "SELECT * FROM " + ".".join(f"`{part}`" for part in table.split("."))
    try:
        connection = pymysql.connect(host=parts.hostname or "localhost", port=parts.port or 3306,
                                     user=urllib.parse.unquote(parts.username or ""),
                                     password=urllib.parse.unquote(parts.password or ""),
                                     database=parts.path.lstrip("/") or None, charset="utf8mb4",
                                     cursorclass=pymysql.cursors.DictCursor, connect_timeout=10,
                                     ssl_ca=options.get("ssl_ca"), ssl_cert=options.get("ssl_cert"),
                                     ssl_key=options.get("ssl_key"),
                                     ssl_verify_identity=bool(options.get("ssl_ca"))
                                     and options.get("ssl_verify_identity", "true") == "true")
        with connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())
    except pymysql.MySQLError as failed:
        raise SourceError(f"MySQL: {failed}") from failed


def mongodb_filter(query: str | None) -> dict[str, Any]:
    """``--query`` for a ``mongodb://`` source: a JSON filter document (Extended JSON), ``{}`` without one.

    Raises SourceError.
    """
    if not query:
        return {}
    try:
        from bson import json_util  # pymongo's
        from bson.errors import BSONError
    except ImportError as missing:
        raise SourceError("reading MongoDB needs pymongo: pip install 'servicekey-operator[import]'") from missing
    example = "e.g. '{\"algorithm\": \"ES256\"}'"
    try:
        document = json_util.loads(query)
    except json.JSONDecodeError as bad:  # the position only, as for a dump
        raise SourceError(f"--query for mongodb:// must be a JSON filter document, {example}: not valid JSON "
                          f"(column {bad.colno})") from None
    except (ValueError, TypeError, BSONError) as bad:  # JSON, but an Extended JSON value ($date, $oid...) is not
        raise SourceError(f"--query for mongodb://: {bad}") from None
    if not isinstance(document, dict):
        raise SourceError(f"--query for mongodb:// must be a JSON filter document (an object), {example}")
    return document


def _mongodb(url: str, collection: str, query: str | None) -> list[Mapping[str, Any]]:
    try:
        import pymongo
        import pymongo.errors
    except ImportError as missing:
        raise SourceError("reading MongoDB needs pymongo: pip install 'servicekey-operator[import]'") from missing
    criteria = mongodb_filter(query)
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=10000, connectTimeoutMS=10000)
    except (pymongo.errors.PyMongoError, ValueError, TypeError) as failed:  # URL and option errors
        raise SourceError(f"MongoDB: {failed}") from failed
    try:
        with client:
            try:
                database = client.get_default_database()
            except pymongo.errors.ConfigurationError:
                raise SourceError("a mongodb:// URL must name the database: mongodb://host:27017/<database>") from None
            # _id left out: the rows are the coordinator's fields; its ObjectId is no column of the table.
            return list(database[collection].find(criteria, {"_id": False}))
    except pymongo.errors.PyMongoError as failed:
        raise SourceError(f"MongoDB: {failed}") from failed


def _dump(path: Path) -> list[Mapping[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as failed:
        raise SourceError(f"cannot read {path}: {failed.strerror or failed}") from failed
    try:
        if path.suffix in (".ndjson", ".jsonl"):
            entries: Any = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        entries.append(json.loads(line))
                    except ValueError:  # the position only: a line of the dump may hold a private key
                        raise SourceError(f"{path} is not valid NDJSON (line {number})") from None
        else:
            entries = json.loads(text)
    except ValueError as bad:
        raise SourceError(f"{path} is not valid JSON (line {getattr(bad, 'lineno', '?')})") from None
    if isinstance(entries, dict):
        # A map of serviceId -> entry, as the in-memory store holds it: the key is the id where the entry has none.
        entries = [{"serviceId": key, **entry} if isinstance(entry, dict) else entry for key, entry in entries.items()]
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise SourceError(f"{path}: expected a list of objects, or an object of objects")
    return entries
