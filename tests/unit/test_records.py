"""Which KV v2 versions are live (Vault's metadata ``versions`` map)."""

from __future__ import annotations

import datetime

from servicekey_operator.vault.records import live_versions

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


def test_a_version_is_gone_when_destroyed_or_once_its_deletion_time_has_passed():
    versions = {
        "1": {"deletion_time": "", "destroyed": True},
        "2": {"deletion_time": "2026-12-01T11:59:59.999999999Z", "destroyed": False},  # deleted a moment ago
        "3": {"deletion_time": "2027-01-02T12:00:00.123456789Z", "destroyed": False},  # delete_version_after
        "4": {"deletion_time": "", "destroyed": False},
    }

    assert live_versions(versions, NOW) == [4, 3]


def test_no_versions_none_live():
    assert live_versions({}, NOW) == []
