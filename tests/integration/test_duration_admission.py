"""The duration grammar against the real API server (issue #15, item 9).

Each ``spec.rotation`` below is submitted as a server-side dry run (nothing is stored, no operator runs), and
whether the API server admits it (or answers 422) must be what spec.py decides for the same spec
(``desired_key`` raising InvalidSpec = refused). The sample: edge cases around every bound, both spellings of
micro, Go's own range, and what only Python or only Go reads as a duration; then rotations drawn,
deterministically, from the strategies of tests/unit/test_duration_grammar.py.

The same sample also checks that module's model of the CRD (RE2 patterns, lengths, CEL with Go's
time.ParseDuration) against the API server, so that its properties stand for the real admission. Cases marked
DISAGREEMENT are admitted and refused by spec.py, or the other way round (see the issue-15 item-9 report).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

import kubernetes.client
import pytest
from hypothesis import HealthCheck, given, settings
from kubernetes.client.rest import ApiException

from tests.support import GROUP, PLURAL, VERSION
from tests.unit.test_duration_grammar import GREEK_MU, MICRO_SIGN, Verdict, crd_verdict, operator_verdict, rotations

pytestmark = pytest.mark.integration

EDGE_CASES: list[dict[str, str]] = [
    *({"period": period} for period in (
        "1m", "60s", "59s", "59.999999999s", "59.99999999999999999s", "1h30m", "720h", "1.5h",
        "60000000us", "60000000" + MICRO_SIGN + "s", "60000000" + GREEK_MU + "s", "59999999" + GREEK_MU + "s",
        "87600h", "315360000000000000ns", "87599h59m59.999999999s", "87601h",
        "2562047h47m16.854775807s", "2562048h",           # Go's last duration; beyond it CEL's duration() fails
        "0" * 30 + "1h",                                  # 32 characters, maxLength
        "1h\n", "+1h", "-1h", "0", ".5h", "1.h", "1d", " 1h", "1H",
        "59.999999999999999s",                            # DISAGREEMENT: Go 59.999999999s, float 60.0
        "0.016666666666666666h",                          # DISAGREEMENT: the same in hours
        "87600h1ns",                                      # DISAGREEMENT: float seconds lose the nanosecond
        "315360000000000001ns",                           # DISAGREEMENT: the same in one part
        "0" * 31 + "1h",                                  # DISAGREEMENT: beyond maxLength
        "",                                               # DISAGREEMENT: minLength; spec.py: no period
        "\u0663h", "\uff11h",                             # DISAGREEMENT: non-ASCII digits are \d in Python
    )),
    *({"publishAhead": publish_ahead} for publish_ahead in (
        "0s", "3m", "8760h", "8761h", "1500" + MICRO_SIGN + "s", "1500" + GREEK_MU + "s", "31536000000000001ns",
        "0" * 29 + "1" + MICRO_SIGN + "s",                # 32 characters, 33 bytes: maxLength counts characters
        "0" * 29 + "1" + GREEK_MU + "s",
        "0" * 30 + "1" + GREEK_MU + "s",                  # DISAGREEMENT: 33 characters, beyond maxLength
        "8760h1ns",                                       # DISAGREEMENT
        "31536000000000000ns",                            # DISAGREEMENT: exactly 8760h, refused by spec.py
        "",                                               # DISAGREEMENT: minLength; spec.py: the default 3m
    )),
    {"period": "1h", "publishAhead": "59m59.999999999s"},
    {"period": "1h", "publishAhead": "1h"},
    {"period": "1h", "publishAhead": "3600s"},
    {"period": "1m", "publishAhead": "59999999" + GREEK_MU + "s"},
    {"period": "30s", "publishAhead": "10s"},
    {"period": "2562048h", "publishAhead": "1h"},
    {"period": "2h", "publishAhead": "2562048h"},
    {"period": "8760h1ns", "publishAhead": "8760h"},            # DISAGREEMENT: admitted, spec.py refuses
    {"period": "1m", "publishAhead": "59.999999999999999s"},    # DISAGREEMENT: admitted, spec.py refuses
    {"period": "1.1h", "publishAhead": "66m"},                  # DISAGREEMENT: refused (equal), spec.py admits
]


@pytest.fixture(scope="module")
def custom_objects(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube_client)


def admission(api: kubernetes.client.CustomObjectsApi, namespace: str, rotation: Mapping[str, str]) -> Verdict:
    """Submit a ServiceKey with this rotation as a server-side dry run: admitted, or refused with a 422."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceKey",
            "metadata": {"name": f"grammar-{uuid.uuid4().hex[:10]}"}, "spec": {"rotation": dict(rotation)}}
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All")
    except ApiException as refused:
        if refused.status != 422:
            raise
        return Verdict(False, json.loads(refused.body).get("message", refused.body))
    return Verdict(True, "admitted")


def _verdict(verdict: Verdict) -> str:
    return "admitted" if verdict.admitted else f"refused ({verdict.why})"


def test_the_crd_model_decides_as_the_api_server(custom_objects, namespace):
    """The unit test's model of the CRD admits exactly what the API server admits."""
    wrong = [f"{rotation!r}: API server {_verdict(server)}; model {_verdict(model)}"
             for rotation in EDGE_CASES
             if (server := admission(custom_objects, namespace, rotation)).admitted
             != (model := crd_verdict(rotation)).admitted]
    assert not wrong, "\n".join(wrong)


def test_admitted_iff_spec_py_accepts(custom_objects, namespace):
    wrong = [f"{rotation!r}: API server {_verdict(server)}; spec.py {_verdict(operator)}"
             for rotation in EDGE_CASES
             if (server := admission(custom_objects, namespace, rotation)).admitted
             != (operator := operator_verdict(rotation)).admitted]
    assert not wrong, f"{len(wrong)} of {len(EDGE_CASES)} disagree:\n" + "\n".join(wrong)


@settings(max_examples=25, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rotation=rotations())
def test_generated_rotations_admitted_iff_spec_py_accepts(custom_objects, namespace, rotation):
    server = admission(custom_objects, namespace, rotation)
    assert server.admitted == crd_verdict(rotation).admitted, f"{rotation!r}: the model is wrong: {server.why}"
    assert server.admitted == operator_verdict(rotation).admitted, (
        f"{rotation!r}: API server {_verdict(server)}; spec.py {_verdict(operator_verdict(rotation))}")
