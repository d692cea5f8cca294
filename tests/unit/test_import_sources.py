"""Reading a coordinator's dump: the shapes its in-memory store is dumped in, and errors that never quote it; the
mongodb:// source's URL and ``--query`` filter checks."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from servicekey_operator.import_sources import SourceError, mongodb_filter, read_rows

ENTRY = {"serviceId": "orders", "serviceName": "Orders", "publicKey": "...", "privateKey": "-----BEGIN PRIVATE KEY-"}


@pytest.mark.parametrize(("name", "text"), [
    ("keys.json", json.dumps([ENTRY])),
    ("keys.json", json.dumps({"orders": ENTRY})),  # the store's own map of service id -> entry
    ("keys.ndjson", json.dumps(ENTRY) + "\n\n"),
])
def test_a_dump_is_a_list_a_map_or_one_entry_a_line(tmp_path: Path, name: str, text: str):
    (tmp_path / name).write_text(text)
    assert read_rows(str(tmp_path / name)) == [ENTRY]


def test_a_broken_dump_is_reported_by_position_without_its_content(tmp_path: Path):
    (tmp_path / "keys.json").write_text('[{"privateKey": "-----BEGIN PRIVATE KEY-----\nMIIE", }]')
    with pytest.raises(SourceError) as refused:
        read_rows(str(tmp_path / "keys.json"))
    assert "line 1" in str(refused.value) and "MIIE" not in str(refused.value)


@pytest.mark.parametrize(("source", "table", "message"), [
    ("redis://cache:6379/0", "service_keys", "unsupported source redis://"),
    ("postgresql://db/coordinator", "keys; DROP TABLE x", "is not a table name"),
    ("/no/such/dump.json", "service_keys", "cannot read /no/such/dump.json"),
])
def test_sources_and_tables_it_cannot_read_are_refused_before_any_query(source: str, table: str, message: str):
    with pytest.raises(SourceError, match=message):
        read_rows(source, table=table)


# mongodb://: the URL names the database, --query is a JSON filter document; both are checked before connecting
# (port 1 on loopback: nothing answers, and nothing is asked).
MONGODB = "mongodb://127.0.0.1:1/coordinator"


@pytest.mark.parametrize(("query", "criteria"), [
    (None, {}),
    ("", {}),
    ('{"algorithm": "ES256"}', {"algorithm": "ES256"}),
    ('{"serviceId": {"$in": ["orders", "billing"]}}', {"serviceId": {"$in": ["orders", "billing"]}}),
    # Extended JSON, for what plain JSON has no type for.
    ('{"updatedAt": {"$gte": {"$date": "2024-01-01T00:00:00Z"}}}', {"updatedAt": {"$gte": datetime(2024, 1, 1)}}),
])
def test_a_mongodb_query_is_a_json_filter_document(query: str | None, criteria: dict[str, object]):
    assert mongodb_filter(query) == criteria


@pytest.mark.parametrize(("source", "query", "message"), [
    (MONGODB, "SELECT * FROM service_keys", "must be a JSON filter document, .*: not valid JSON"),
    (MONGODB, '["algorithm", "ES256"]', r"must be a JSON filter document \(an object\)"),
    (MONGODB, '{"updatedAt": {"$date": "yesterday"}}', "--query for mongodb://: "),
    ("mongodb://127.0.0.1:1", None, "must name the database"),
    ("mongodb://127.0.0.1:1/", None, "must name the database"),
    ("mongodb://coordinator:s3cret@127.0.0.1:port/coordinator", None, "^MongoDB: "),
    ("mongodb+srv://cluster.example/coordinator", None, r"unsupported source mongodb\+srv://"),
])
def test_mongodb_urls_and_filters_it_cannot_use_are_refused_before_connecting(source: str, query: str | None,
                                                                                message: str):
    with pytest.raises(SourceError, match=message) as refused:
        read_rows(source, query=query)
    assert "s3cret" not in str(refused.value)


def test_a_password_a_driver_quotes_is_never_in_the_message():
    with pytest.raises(SourceError) as refused:
        read_rows("postgresql://coordinator:s3cr%zzet@127.0.0.1:1/coordinator")
    assert "s3cr" not in str(refused.value)


def test_a_mysql_url_option_that_would_be_dropped_is_refused():
    with pytest.raises(SourceError, match=r"unsupported option.*ssl-mode"):
        read_rows("mysql://coordinator:hunter22@127.0.0.1:1/db?ssl-mode=REQUIRED")


def test_an_ndjson_error_names_its_line(tmp_path: Path):
    (tmp_path / "keys.ndjson").write_text(json.dumps(ENTRY) + "\n" + "{broken\n")
    with pytest.raises(SourceError, match="line 2"):
        read_rows(str(tmp_path / "keys.ndjson"))
