"""Invariant 6 against hostile and broken ServiceKeys: each is rejected at admission with a readable message, or
accepted and ends in a Ready condition with a clear reason. None crashes the operator, blocks other keys, or
writes outside the configured Vault prefix.

The corpus lives in one namespace for the whole module, so the last tests see the operator with every bad
key still present. Cases marked ``BUG`` reproduce operator bugs (see the issue-9 report): they state the
contract and are strict xfails, so they turn red when the bug is fixed and the mark must go.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hvac
import kubernetes.client
import pytest

from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.support import GROUP, VERSION, ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration

NS = "{NS}"            # replaced by the corpus namespace
OMIT = object()        # a field that is not there at all
WRONG_TYPE = "must be of type"
PATTERN = "should match"
ACCEPTED = "accepted"  # Ready=True, reason KeyReady
# Anything that names the problem: the operator must say *something* specific instead of looping silently.
SOME_CLEAR_REASON = ("InvalidSpec", "VaultUnavailable", "VaultPermissionDenied", "VaultPathConflict")


# A spec that the operator rejects before any Vault call reaches its condition within a pass or two.
CLEAR_REASON_TIMEOUT = 10.0
@dataclass(frozen=True)
class Case:
    """One ServiceKey and the outcome the contract promises for it."""

    id: str
    spec: Any = field(default_factory=dict)
    rejected: str | None = None                 # admission must fail with this in the message
    reasons: tuple[str, ...] = ()               # or: accepted, then Ready with one of these reasons
    name: str | None = None
    annotations: dict[str, str] | None = None
    body: dict[str, Any] = field(default_factory=dict)   # more top-level fields, e.g. a status
    marks: tuple[pytest.MarkDecorator, ...] = ()
    timeout: float = 30.0

    @property
    def object_name(self) -> str:
        return self.name or f"bad-{self.id}"

    def manifest(self, namespace: str) -> str:
        metadata: dict[str, Any] = {"name": self.object_name}
        if self.annotations is not None:
            metadata["annotations"] = self.annotations
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceKey", "metadata": metadata, **self.body}
        if self.spec is not OMIT:
            body["spec"] = self.spec
        return json.dumps(body).replace(NS, namespace)

    def param(self) -> Any:
        return pytest.param(self, id=self.id, marks=self.marks)


def reject(case_id: str, spec: Any, message: str, **more: Any) -> Case:
    return Case(case_id, spec, rejected=message, **more)


def ends_in(case_id: str, spec: Any, *reasons: str, **more: Any) -> Case:
    return Case(case_id, spec, reasons=reasons, **more)


CORPUS = [
    # Wrong types.
    reject("algorithm-integer", {"algorithm": 256}, "supported values"),
    reject("keysize-string", {"algorithm": "RS256", "keySize": "2048"}, WRONG_TYPE),
    reject("retain-string", {"rotation": {"retainPrevious": "2"}}, WRONG_TYPE),
    reject("spec-string", "RS256", WRONG_TYPE),
    reject("rotation-list", {"rotation": []}, WRONG_TYPE),
    reject("namespaces-string", {"publicKey": {"namespaces": "orders"}}, WRONG_TYPE),
    reject("deletion-policy-bool", {"deletionPolicy": True}, WRONG_TYPE),
    # Enums and ranges.
    reject("algorithm-hs256", {"algorithm": "HS256"}, 'Unsupported value: "HS256"'),
    reject("algorithm-lowercase", {"algorithm": "es256"}, 'Unsupported value: "es256"'),
    reject("algorithm-none", {"algorithm": "none"}, 'Unsupported value: "none"'),
    reject("keysize-1024", {"algorithm": "RS256", "keySize": 1024}, "Unsupported value: 1024"),
    reject("keysize-with-es256", {"algorithm": "ES256", "keySize": 2048}, "keySize is only valid with RS*/PS*"),
    reject("keysize-with-es512", {"algorithm": "ES512", "keySize": 4096}, "keySize is only valid with RS*/PS*"),
    reject("keysize-with-eddsa", {"algorithm": "EdDSA", "keySize": 4096}, "keySize is only valid with RS*/PS*"),
    reject("retain-11", {"rotation": {"retainPrevious": 11}}, "less than or equal to 10"),
    reject("retain-minus-1", {"rotation": {"retainPrevious": -1}}, "greater than or equal to 0"),
    reject("engine-database", {"vault": {"engine": "database"}}, 'Unsupported value: "database"'),
    reject("deletion-policy-destroy", {"deletionPolicy": "Destroy"}, 'Unsupported value: "Destroy"'),
    # Durations.
    reject("period-days", {"rotation": {"period": "1d"}}, PATTERN),
    reject("period-no-unit", {"rotation": {"period": "30"}}, PATTERN),
    reject("period-with-space", {"rotation": {"period": "1h 30m"}}, PATTERN),
    reject("period-negative", {"rotation": {"period": "-1h"}}, PATTERN),
    reject("period-iso-8601", {"rotation": {"period": "PT1H"}}, PATTERN),
    reject("period-empty", {"rotation": {"period": ""}}, "at least 2 chars long"),
    reject("period-below-1s", {"rotation": {"period": "500ms"}}, "rotation.period must be at least 1m"),
    # Issue #13: a key that rotates every second (RSA-4096: a CPU-second each) makes one tenant everybody's load.
    reject("period-1s-rsa-4096", {"algorithm": "RS256", "keySize": 4096, "rotation": {"period": "1s"}},
           "rotation.period must be at least 1m"),
    reject("period-59s", {"rotation": {"period": "59s"}}, "rotation.period must be at least 1m"),
    reject("period-beyond-duration-range", {"rotation": {"period": "9999999999h"}}, "google.protobuf.Duration"),
    reject("period-arabic-indic-digit", {"rotation": {"period": "\u0661h"}}, PATTERN),
    reject("publish-ahead-garbage", {"rotation": {"publishAhead": "abc"}}, PATTERN),
    reject("publish-ahead-longer-than-period", {"rotation": {"period": "1h", "publishAhead": "2h"}},
           "must be shorter than rotation.period"),
    reject("publish-ahead-equal-to-period", {"rotation": {"period": "1h", "publishAhead": "60m"}},
           "must be shorter than rotation.period"),
    # Issue #15.9: one grammar and the same bounds at admission and in the operator.
    reject("period-of-centuries", {"algorithm": "EdDSA", "rotation": {"period": "2000000h"}}, "at most 87600h"),
    reject("period-over-ten-years", {"rotation": {"period": "87601h"}}, "at most 87600h"),
    reject("publish-ahead-over-a-year", {"rotation": {"publishAhead": "8761h"}}, "at most 8760h"),
    reject("publish-ahead-beyond-duration-range", {"rotation": {"publishAhead": "70000000h"}},
           "google.protobuf.Duration"),
    ends_in("publish-ahead-in-greek-mu-microseconds", {"algorithm": "EdDSA",
                                                       "rotation": {"publishAhead": "90000000\u03bcs"}}, "KeyReady"),
    ends_in("publish-ahead-in-micro-sign-microseconds", {"algorithm": "EdDSA",
                                                         "rotation": {"publishAhead": "90000000\u00b5s"}}, "KeyReady"),
    # Vault paths and mounts.
    reject("path-leading-slash", {"vault": {"path": "/servicekeys/x"}}, "must not start with '/'"),
    reject("path-trailing-slash", {"vault": {"path": "servicekeys/x/"}}, "must not end with '/'"),
    reject("path-empty-segment", {"vault": {"path": "servicekeys//x"}}, "empty segment"),
    reject("path-dot-dot", {"vault": {"path": "servicekeys/../../sys/policy/x"}}, "'.' or '..' segment"),
    reject("path-dot", {"vault": {"path": "servicekeys/./x"}}, "'.' or '..' segment"),
    reject("path-space", {"vault": {"path": "servicekeys/a b"}}, PATTERN),
    reject("path-unicode", {"vault": {"path": "servicekeys/ключ"}}, PATTERN),
    reject("path-query", {"vault": {"path": "servicekeys/x?version=1"}}, PATTERN),
    reject("path-too-long", {"vault": {"path": "servicekeys/" + "x" * 501}}, "may not be more than 512"),
    # Issue #13: vault.mount is one mount name, so mount and path together always stay below the namespace's
    # own folder, and none of Vault's own mounts.
    reject("mount-dot-dot", {"vault": {"mount": ".."}}, "not '.' or '..'"),
    reject("mount-with-a-dot-dot-segment", {"vault": {"mount": "../sys"}}, PATTERN),
    reject("mount-inner-dot-dot", {"vault": {"mount": "secret/../sys"}}, PATTERN),
    reject("mount-leading-slash", {"vault": {"mount": "/secret"}}, PATTERN),
    reject("mount-empty-segment", {"vault": {"mount": "sec//ret"}}, PATTERN),
    reject("mount-reaching-another-namespaces-folder", {"vault": {"mount": "secret/servicekeys/victim"}}, PATTERN),
    reject("mount-below-cubbyhole", {"vault": {"mount": "cubbyhole/x"}}, PATTERN),
    reject("mount-cubbyhole", {"vault": {"mount": "cubbyhole"}}, "one of Vault's own mounts"),
    reject("mount-sys", {"vault": {"mount": "sys"}}, "one of Vault's own mounts"),
    reject("mount-identity", {"vault": {"mount": "identity"}}, "one of Vault's own mounts"),
    ends_in("path-outside-prefix", {"vault": {"path": "elsewhere/key"}}, "InvalidSpec"),
    ends_in("path-prefix-lookalike", {"vault": {"path": "servicekeys-evil/key"}}, "InvalidSpec"),
    ends_in("path-of-a-foreign-secret", {"vault": {"path": f"servicekeys/{NS}/foreign"}}, "VaultPathConflict"),
    ends_in("path-of-another-servicekey", {"vault": {"path": f"servicekeys/{NS}/path-owner"}}, "VaultPathConflict"),
    ends_in("mount-that-does-not-exist", {"vault": {"mount": "no-such-mount"}}, *SOME_CLEAR_REASON),
    ends_in("mount-of-another-engine", {"vault": {"mount": "transit"}}, *SOME_CLEAR_REASON),
    ends_in("path-in-another-namespace", {"vault": {"path": "servicekeys/elsewhere/key"}}, "InvalidSpec"),
    # Transit: publishAhead works there since signers pin key_version to the record (issue #15.6).
    ends_in("transit-with-publish-ahead", {"vault": {"engine": "transit"}, "rotation": {"publishAhead": "1m"}},
            "KeyReady"),
    ends_in("transit-es512", {"algorithm": "ES512", "vault": {"engine": "transit"}}, "InvalidSpec", "KeyReady"),
    ends_in("transit-rsa-4096", {"algorithm": "PS512", "keySize": 4096, "vault": {"engine": "transit"}},
            "InvalidSpec", "KeyReady"),
    # Names at the length limits, and other strings.
    reject("name-254", {"publicKey": {"configMapName": "short"}}, "must be no more than 253 characters",
           name="n" * 254),
    reject("name-247-with-default-configmap", {}, "may be at most 63 characters", name="n" * 247),
    reject("name-uppercase", {}, "RFC 1123 subdomain", name="Signing-Key"),
    ends_in("name-63", {"algorithm": "EdDSA"}, "KeyReady", name="n" * 63),
    # The name is a label value on the published ConfigMaps, so it is limited to 63 characters at admission.
    reject("name-64", {"algorithm": "EdDSA"}, "may be at most 63 characters", name="m" * 64),
    reject("name-253-with-configmap-name", {"algorithm": "EdDSA", "publicKey": {"configMapName": "short-253"}},
           "may be at most 63 characters", name="p" * 253),
    reject("service-name-huge", {"serviceName": "s" * 100_000}, "may not be more than 63"),
    reject("service-name-unicode", {"serviceName": "päyments"}, PATTERN),
    reject("service-name-uppercase", {"serviceName": "Payments"}, PATTERN),
    reject("configmap-name-underscore", {"publicKey": {"configMapName": "Bad_Name"}}, PATTERN),
    reject("configmap-name-254", {"publicKey": {"configMapName": "c" * 254}}, "may not be more than 253"),
    reject("namespaces-duplicate", {"publicKey": {"namespaces": ["orders", "orders"]}}, "Duplicate value"),
    reject("namespaces-unicode", {"publicKey": {"namespaces": ["zaméwienia"]}}, PATTERN),
    reject("selector-in-without-values",
           {"publicKey": {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}},
           "needs at least one value"),
    reject("selector-bad-label-key", {"publicKey": {"namespaceSelector": {"matchLabels": {"bad key!": "v"}}}},
           "must be a valid label key"),
    ends_in("configmap-name-of-someone-else", {"publicKey": {"configMapName": "someone-elses"}},
            "ConfigMapConflict"),
    # Missing and unknown fields.
    reject("no-spec", OMIT, "spec: Required value"),
    reject("null-spec", None, "spec: Required value"),
    reject("unknown-field", {"algorithm": "ES256", "signWith": "my-own-key"}, 'unknown field "spec.signWith"'),
    ends_in("empty-spec", {}, "KeyReady"),
    ends_in("empty-rotation-and-vault", {"algorithm": "ES256", "rotation": {}, "vault": {}, "publicKey": {}},
            "KeyReady"),
    # Status written by the user on create is dropped: status is a subresource.
    ends_in("status-on-create", {"algorithm": "ES256"}, "KeyReady",
            body={"status": {"keyId": "forged", "conditions": [{"type": "Ready", "status": "True",
                                                                 "reason": "KeyReady", "message": "trust me"}]}}),
    # Odd rotate annotations at creation: the first key answers them, whatever they are.
    ends_in("rotate-annotation-empty", {"algorithm": "ES256"}, "KeyReady", annotations={"servicekey.io/rotate": ""}),
    ends_in("rotate-annotation-unicode", {"algorithm": "ES256"}, "KeyReady",
            annotations={"servicekey.io/rotate": "🔑 ключ\u200b\n\t\"'<>"}),
    reject("annotations-over-256k", {}, "may not be more than 262144 bytes",
           annotations={"servicekey.io/rotate": "x" * 300_000}),
]


@dataclass
class Corpus:
    servicekeys: ServiceKeys
    vault_paths_before: set[str]


def _vault_paths(vault: hvac.Client, mount: str = "secret", folder: str = "") -> set[str]:
    try:
        keys = vault.secrets.kv.v2.list_secrets(path=folder, mount_point=mount)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return set()
    paths: set[str] = set()
    for key in keys:
        paths |= _vault_paths(vault, mount, folder + key) if key.endswith("/") else {folder + key}
    return paths


@pytest.fixture(scope="module")
def corpus(operator: OperatorProcess, dev_env: DevEnvironment, kube_client: kubernetes.client.ApiClient,
           core_api: kubernetes.client.CoreV1Api, vault_client: hvac.Client) -> Iterator[Corpus]:
    """A namespace for the whole corpus, with what the conflict cases collide with."""
    namespace = f"corpus-{uuid.uuid4().hex[:8]}"
    core_api.create_namespace({"metadata": {"name": namespace}})
    before = _vault_paths(vault_client)
    servicekeys = ServiceKeys(kube_client, namespace, dev_env)
    vault_client.secrets.kv.v2.create_or_update_secret(path=f"servicekeys/{namespace}/foreign", mount_point="secret",
                                                       secret={"owner": "someone else"})
    core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "someone-elses"}, "data": {"x": "y"}})
    servicekeys.create("path-owner", {"algorithm": "ES256"})
    servicekeys.wait_ready("path-owner")
    yield Corpus(servicekeys, before)
    core_api.delete_namespace(namespace)


def _wait_for_reason(servicekeys: ServiceKeys, name: str, reasons: tuple[str, ...],
                     timeout: float = 30) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = servicekeys.get(name)
        condition = ready_condition(obj or {})
        current = obj is not None and condition.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and condition.get("reason") in reasons else None
    return wait_for(probe, timeout, f"ServiceKey {name} Ready with reason in {reasons}")


@pytest.mark.parametrize("case", [case.param() for case in CORPUS])
def test_bad_input_is_rejected_at_admission_or_ends_in_a_clear_condition(case: Case, corpus: Corpus,
                                                                         dev_env: DevEnvironment):
    servicekeys = corpus.servicekeys
    result = dev_env.kube.kubectl("apply", "-n", servicekeys.namespace, "-f", "-",
                                  input_text=case.manifest(servicekeys.namespace), check=False)

    if case.rejected is not None:
        assert result.returncode != 0, f"{case.id} was admitted: {result.stdout}"
        assert case.rejected in result.stderr, f"{case.id}: expected {case.rejected!r} in {result.stderr!r}"
        assert servicekeys.get(case.object_name) is None
        return
    assert result.returncode == 0, f"{case.id} was rejected: {result.stderr}"
    obj = _wait_for_reason(servicekeys, case.object_name, case.reasons, case.timeout)
    condition = ready_condition(obj)
    assert condition["status"] == ("True" if condition["reason"] == "KeyReady" else "False")
    assert condition["message"], "a condition must say what is wrong"
    if "status" in case.body:
        assert obj["status"].get("keyId") != "forged"


def test_a_user_cannot_write_status_through_the_main_resource(corpus: Corpus):
    servicekeys = corpus.servicekeys
    servicekeys.create("status-by-user", {"algorithm": "ES256"})
    genuine = servicekeys.wait_ready("status-by-user")["status"]

    patched = servicekeys.patch("status-by-user", {"status": {"keyId": "forged", "keyVersion": 99}})

    assert patched["status"]["keyId"] == genuine["keyId"]
    assert servicekeys.get("status-by-user")["status"]["keyVersion"] == genuine["keyVersion"]


@pytest.mark.parametrize(("value", "rotates"), [
    ("", False),
    ("🔑 ключ\u200b\n\t\"'<>", True),
    ("r" * 100_000, True),
], ids=["empty", "unicode", "100k-characters"])
def test_odd_rotate_annotation_values_rotate_exactly_once_or_not_at_all(corpus: Corpus, value: str, rotates: bool):
    servicekeys = corpus.servicekeys
    name = f"annotated-{uuid.uuid4().hex[:6]}"
    servicekeys.create(name, {"algorithm": "ES256"})
    first = servicekeys.wait_ready(name)["status"]["keyId"]

    servicekeys.patch(name, {"metadata": {"annotations": {"servicekey.io/rotate": value}}})
    if rotates:
        servicekeys.wait_new_kid(name, first)
    time.sleep(2)  # room for a duplicate rotation to show itself

    mount, path = servicekeys.vault_path(name)
    assert servicekeys.vault_versions(mount, path) == (2 if rotates else 1)
    assert servicekeys.wait_ready(name)["status"]["keyVersion"] == (2 if rotates else 1)


# kopf used to mirror the annotations into its last-handled-configuration annotation, which cannot hold
# twice 200 KiB: every patch failed with a 422 and kopf retried the object forever.
def test_a_200k_rotate_annotation_rotates_once_without_an_endless_error_loop(corpus: Corpus,
                                                                              operator: OperatorProcess):
    servicekeys = corpus.servicekeys
    servicekeys.create("annotated-200k", {"algorithm": "ES256"})
    first = servicekeys.wait_ready("annotated-200k")["status"]["keyId"]

    servicekeys.patch("annotated-200k", {"metadata": {"annotations": {"servicekey.io/rotate": "z" * 200_000}}})
    try:
        servicekeys.wait_new_kid("annotated-200k", first)
        time.sleep(5)

        assert servicekeys.vault_versions(*servicekeys.vault_path("annotated-200k")) == 2
        errors = [line for line in operator.log_text().splitlines() if "annotated-200k" in line and "ERROR" in line]
        assert errors == [], errors[:1]
    finally:
        # Leave no object behind that makes every later operator in this session loop on it.
        servicekeys.patch("annotated-200k", {"metadata": {"annotations": {"servicekey.io/rotate": None}}})


def test_a_cubbyhole_mount_is_refused_at_admission_and_nothing_is_written(corpus: Corpus, vault_client: hvac.Client):
    servicekeys = corpus.servicekeys
    with pytest.raises(kubernetes.client.ApiException) as refused:
        servicekeys.create("cubby", {"algorithm": "ES256", "vault": {"mount": "cubbyhole"}})

    written = []
    for folder in ("data", "metadata"):
        with contextlib.suppress(hvac.exceptions.InvalidPath):
            written += vault_client.adapter.request("list", f"v1/cubbyhole/{folder}/servicekeys/")["data"]["keys"]
    assert refused.value.status == 422 and not written, f"written into cubbyhole: {written}"


def test_a_vault_path_in_another_namespace_is_refused_and_that_key_is_untouched(
        corpus: Corpus, kube_client: kubernetes.client.ApiClient, core_api: kubernetes.client.CoreV1Api,
        dev_env: DevEnvironment):
    victim_namespace = f"victim-{uuid.uuid4().hex[:6]}"
    core_api.create_namespace({"metadata": {"name": victim_namespace}})
    victim = ServiceKeys(kube_client, victim_namespace, dev_env)
    try:
        victim.create("pending", {"algorithm": "ES256"})
        victim_kid = victim.wait_ready("pending")["status"]["keyId"]
        mount, path = victim.vault_path("pending")
        thief = corpus.servicekeys
        thief.create("thief", {"algorithm": "ES256", "vault": {"path": f"servicekeys/{victim_namespace}"},
                               "rotation": {"publishAhead": "1s"}})
        obj = thief.wait_condition("thief", "False", "InvalidSpec")

        assert "this namespace's folder" in ready_condition(obj)["message"]
        assert victim.vault_versions(mount, path) == 1, "the victim's secret was deleted or changed"
        assert victim.vault_secret(mount, path)["kid"] == victim_kid
    finally:
        core_api.delete_namespace(victim_namespace)


def test_a_secret_where_another_key_keeps_its_pending_key_is_never_taken_or_deleted(corpus: Corpus):
    servicekeys = corpus.servicekeys
    folder = f"servicekeys/{servicekeys.namespace}/shared"
    servicekeys.create("inner", {"algorithm": "ES256", "vault": {"path": f"{folder}/pending"}})
    inner_kid = servicekeys.wait_ready("inner")["status"]["keyId"]
    servicekeys.create("outer", {"algorithm": "ES256", "vault": {"path": folder}, "rotation": {"publishAhead": "1s"}})
    obj = servicekeys.wait_condition("outer", "False", "VaultPathConflict")

    assert "pending key" in ready_condition(obj)["message"]
    assert servicekeys.vault_versions("secret", f"{folder}/pending") == 1
    assert servicekeys.vault_secret("secret", f"{folder}/pending")["kid"] == inner_kid


def test_after_the_whole_corpus_the_operator_runs_and_a_new_good_key_is_ready_within_seconds(
        corpus: Corpus, operator: OperatorProcess):
    servicekeys = corpus.servicekeys
    assert operator.process.running(), "the operator process died"

    started = time.monotonic()
    servicekeys.create("good-after-corpus", {"algorithm": "ES256"})
    servicekeys.wait_ready("good-after-corpus", timeout=10)

    assert time.monotonic() - started < 10
    owner = servicekeys.get("path-owner")
    assert owner["status"]["keyVersion"] == 1, "a conflicting ServiceKey must not touch the path's owner"
    assert servicekeys.vault_versions(*servicekeys.vault_path("path-owner")) == 1


def test_nothing_was_written_to_vault_outside_the_prefix(corpus: Corpus, vault_client: hvac.Client):
    new_paths = _vault_paths(vault_client) - corpus.vault_paths_before

    assert new_paths, "the corpus wrote its keys"
    assert sorted(path for path in new_paths if not path.startswith("servicekeys/")) == []
