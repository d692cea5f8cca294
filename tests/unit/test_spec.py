"""desired_key and durations: defaults from the contract and the operator config; InvalidSpec otherwise."""

from __future__ import annotations

import pytest

from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.errors import InvalidSpec
from servicekey_operator.spec import deletion_does_work, desired_key, parse_duration_seconds

CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"), path_prefix="servicekeys")


@pytest.mark.parametrize(("text", "seconds"), [
    ("0s", 0.0), ("90s", 90.0), ("1h30m", 5400.0), ("720h", 2592000.0), ("2.5s", 2.5), ("1500ms", 1.5),
])
def test_go_durations_parse(text, seconds):
    assert parse_duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "h", "1d", "-1s", "1h ", "s1"])
def test_malformed_durations_are_invalid(text):
    with pytest.raises(InvalidSpec, match="not a duration"):
        parse_duration_seconds(text)


def test_defaults_follow_the_contract():
    desired = desired_key("payments", "signing", "uid", {}, {}, CONFIG)

    assert (desired.algorithm, desired.key_size, desired.engine) == ("RS256", 2048, "kv")
    assert (desired.vault_mount, desired.vault_path) == ("secret", "servicekeys/payments/signing")
    assert desired.configmap_name == "signing-public"
    assert desired.service_name == "signing"
    assert desired.deletion_policy == "Retain"
    assert (desired.rotation.period_seconds, desired.rotation.retain_previous,
            desired.rotation.publish_ahead_seconds) == (None, 1, 180.0)


@pytest.mark.parametrize(("spec", "seconds"), [
    ({}, 180.0),
    ({"rotation": {"period": "720h"}}, 180.0),
    ({"rotation": {"period": "5m"}}, 150.0),
    ({"rotation": {"period": "1m"}}, 30.0),
    ({"rotation": {"publishAhead": "0s"}}, 0.0),
    ({"rotation": {"publishAhead": "2m"}}, 120.0),
    ({"vault": {"engine": "transit"}}, 0.0),  # opt-in: signers must pin key_version to the record (README)
], ids=["default", "long-period", "short-period", "shortest-period", "opted-out", "explicit", "transit"])
def test_publish_ahead_defaults_to_three_minutes_within_half_the_period(spec, seconds):
    assert desired_key("ns", "name", "uid", spec, {}, CONFIG).rotation.publish_ahead_seconds == seconds


@pytest.mark.parametrize(("spec", "message"), [
    ({"algorithm": "ES256", "keySize": 2048}, "keySize"),
    ({"vault": {"path": "../escape"}}, "without '..'"),
    ({"vault": {"path": "/absolute"}}, "without '..'"),
    ({"vault": {"path": "elsewhere/ns/name"}}, "outside the operator's prefix"),
    ({"rotation": {"period": "10m", "publishAhead": "10m"}}, "publishAhead"),
    ({"rotation": {"period": "59s"}}, "shorter than 1m"),
    ({"vault": {"mount": "secret/servicekeys/other"}}, "one mount name"),
    ({"vault": {"mount": "cubbyhole"}}, "Vault's own mounts"),
    ({"rotation": {"retainPrevious": 11}}, "retainPrevious"),
])
def test_what_admission_cannot_express_is_invalid_spec(spec, message):
    with pytest.raises(InvalidSpec, match=message):
        desired_key("ns", "name", "uid", spec, {}, CONFIG)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("1h30m", 5400.0), ("2.5s", 2.5), ("1500ms", 1.5), ("7us", 7e-6),
    ("7\u00b5s", 7e-6),  # the micro sign
    ("7\u03bcs", 7e-6),  # the Greek mu: the CRD's pattern (and Go's ParseDuration) admit both
])
def test_durations_follow_the_crd_grammar(text, seconds):
    assert parse_duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("rotation", "field"), [
    ({"period": "87601h"}, "rotation.period"),
    ({"publishAhead": "8761h"}, "rotation.publishAhead"),
    ({"publishAhead": "70000000h"}, "rotation.publishAhead"),  # used to overflow the next rotate request
])
def test_durations_beyond_the_crd_bounds_are_invalid(rotation, field):
    with pytest.raises(InvalidSpec, match=field):
        desired_key("ns", "name", "uid", {"rotation": rotation}, {}, CONFIG)


@pytest.mark.parametrize(("spec", "status", "needed"), [
    ({}, {}, False),
    ({"deletionPolicy": "Retain"}, {}, False),
    ({"deletionPolicy": "Delete"}, {}, True),
    ({"publicKey": {"namespaces": ["team-b"]}}, {}, True),
    ({"publicKey": {"namespaceSelector": {"matchLabels": {"jwks": "yes"}}}}, {}, True),
    ({"publicKey": {"namespaceSelector": {}}}, {}, True),  # selects every namespace
    ({"publicKey": {"namespaces": []}}, {}, False),
    ({}, {"publishedNamespaces": ["team-b"]}, True),  # copies still out there after the spec dropped them
])
def test_only_a_deletion_that_does_work_needs_the_finalizer(spec: dict, status: dict, needed: bool):
    assert deletion_does_work(spec, status) is needed
