"""The kubectl-style CLI without a cluster: the status table and detailed view, exit codes, what ``rotate`` says,
``-o json|yaml``, the kubeconfig context's namespace, ``version``, shell completion and the plugin entry point."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from servicekey_operator import cli, completion, status_view
from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.rotation_request import RotationOutcome, rotation_outcome
from servicekey_operator.spec import desired_key, rotate_request_digest
from servicekey_operator.status import ready_status
from servicekey_operator.vault.records import KeyHistory, StoredKey
from servicekey_operator.version import package_version

REPO_ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"), path_prefix="servicekeys")
OLD, CURRENT, PENDING = "old-kid-AAAA", "current-kid-BBBB", "pending-kid-CCCC"


def _stored(kid: str, version: int, created: datetime.datetime, request: str | None = None,
            activate_at: datetime.datetime | None = None) -> StoredKey:
    return StoredKey(version=version, kid=kid, algorithm="ES256", key_size=None, public_pem="", service_name="api",
                     created_at=created, rotate_annotation=request, activate_at=activate_at)


def _status(*, pending: bool, request: str | None = None, **extra: object) -> dict:
    """A status as the operator writes it (status.ready_status), staged or not."""
    desired = desired_key("team-a", "api", "uid", {"algorithm": "ES256", "rotation": {"period": "720h"}}, {}, CONFIG)
    history = KeyHistory(owner="o", current_version=2,
                         current=_stored(CURRENT, 2, NOW - datetime.timedelta(hours=1), request),
                         previous=(_stored(OLD, 1, NOW - datetime.timedelta(days=31)),),
                         pending=_stored(PENDING, 0, NOW, activate_at=NOW + datetime.timedelta(minutes=3))
                         if pending else None)
    status = ready_status(desired, history, NOW + datetime.timedelta(days=29), 1, {}, NOW, "7")
    return {**status, **extra}


def _key(name: str, status: dict | None, namespace: str = "team-a", created: str = "2026-04-01T12:00:00Z",
         **metadata: object) -> dict:
    return {"apiVersion": "servicekey.io/v1alpha1", "kind": "ServiceKey",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created, "generation": 1,
                         "uid": f"uid-{name}", **metadata},
            "spec": {"algorithm": "ES256", "rotation": {"period": "720h", "publishAhead": "3m"}},
            **({"status": status} if status is not None else {})}


def _failed(reason: str = "InvalidSpec") -> dict:
    return {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False", "reason": reason,
                                                     "message": "vault.path must be below servicekeys/team-a/"}]}


def _event(reason: str, at: str, message: str, count: int = 1, type_: str = "Normal") -> dict:
    return {"type": type_, "reason": reason, "message": message, "lastTimestamp": at, "count": count,
            "firstTimestamp": "2026-05-01T11:00:00Z" if count > 1 else at}


def _cells(line: str) -> list[str]:
    """The cells of a line of columns (three or more spaces apart)."""
    return re.split(r"\s{3,}", line.strip())


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (119, "119s"), (200, "3m20s"), (300, "5m"), (720, "12m"), (179 * 60, "179m"),
    (5 * 3600 + 7 * 60, "5h7m"), (30 * 3600, "30h"), (3 * 86400 + 4 * 3600, "3d4h"), (60 * 86400, "60d"),
    (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y"), (-5, "<invalid>"),
])
def test_durations_read_like_kubectl_ages(seconds, text):
    assert status_view.human_duration(datetime.timedelta(seconds=seconds)) == text


def test_the_table_has_the_kubectl_columns_and_one_line_per_key():
    ready = _key("api", _status(pending=False))
    failed = _key("broken", _failed())
    fresh = _key("new", None, created="2026-05-01T11:59:50Z")

    lines = status_view.table([ready, failed, fresh], NOW).splitlines()

    assert _cells(lines[0]) == ["NAME", "ALGORITHM", "KEY ID", "READY", "REASON", "NEXT ROTATION", "AGE"]
    assert lines[1].split() == ["api", "ES256", CURRENT, "True", "KeyReady", "in", "29d", "30d"]
    assert lines[2].split() == ["broken", "<none>", "<none>", "False", "InvalidSpec", "<none>", "30d"]
    assert lines[3].split() == ["new", "<none>", "<none>", "Unknown", "<none>", "<none>", "10s"]
    assert all(not line.endswith(" ") for line in lines)
    header = lines[0]
    assert all(line[header.index("READY"):].split()[0] in {"True", "False", "Unknown"} for line in lines[1:]), \
        "the columns are aligned"


def test_all_namespaces_adds_a_namespace_column_and_wide_the_pending_key_and_vault():
    rotating = _key("api", _status(pending=True), namespace="team-b")

    lines = status_view.table([rotating], NOW, wide=True, with_namespace=True).splitlines()

    assert _cells(lines[0])[0] == "NAMESPACE"
    assert _cells(lines[0])[-4:] == ["PENDING KEY ID", "KEY VERSION", "VAULT PATH", "CONFIGMAP"]
    assert lines[1].split()[:2] == ["team-b", "api"]
    assert lines[1].split()[-4:] == [PENDING, "2", "secret/servicekeys/team-a/api", "api-public"]
    assert "Rotating" in lines[1]


@pytest.mark.parametrize(("statuses", "code"), [
    ([], 0),
    ([_status(pending=False)], 0),
    ([_status(pending=True)], 0),  # Rotating: the current key still signs, so the key is Ready
    ([_status(pending=False), _failed()], 1),
    ([_failed("VaultUnavailable")], 1),
    ([None], 1),  # not seen by the operator yet
])
def test_status_exits_1_when_any_listed_key_is_not_ready(statuses, code):
    assert status_view.exit_code([_key(f"k{i}", s) for i, s in enumerate(statuses)]) == code


def test_the_pending_keys_activation_is_read_from_the_ready_message_the_operator_writes():
    status = _status(pending=True)

    assert status["pendingKeyId"] == PENDING
    assert status_view.pending_activation(status) == "2026-05-01T12:03:00Z"
    assert status_view.pending_activation(_status(pending=False)) is None


def test_the_detailed_view_of_a_rotating_key():
    obj = _key("api", _status(pending=True, publishedNamespaces=["team-c"],
                              refusedNamespaces=[{"namespace": "team-d", "reason": "NotAccepted"},
                                                 {"namespace": "team-e", "reason": "Forbidden",
                                                  "message": "denied by policy"}]))
    published = status_view.published_kids({"data": {"jwks.json": json.dumps(
        {"keys": [{"kid": CURRENT}, {"kid": PENDING}, {"kid": OLD}]})}})
    events = [_event("Staged", "2026-05-01T12:00:00Z", f"staged {PENDING}"),
              _event("Generated", "2026-04-01T12:00:00Z", "generated ES256 key"),
              _event("Published", "2026-05-01T11:59:59Z", "ConfigMap api-public publishes", count=3)]

    view = status_view.detail(obj, published, events, NOW)

    assert "Ready:          True (Rotating)\n" in view
    assert f"key {CURRENT} signs; {PENDING} is published and signs from 2026-05-01T12:03:00Z" in view
    keys = view[view.index("  KEY ID"):].splitlines()[:4]
    assert [line.split()[:2] for line in keys] == [["KEY", "ID"], [CURRENT, "signing"], [PENDING, "pending"],
                                                   [OLD, "retained"]]
    assert "since 2026-05-01T11:00:00Z (60m ago)" in keys[1]
    assert "signs from 2026-05-01T12:03:00Z (in 3m)" in keys[2]
    assert "Next rotation:  2026-05-30T12:00:00Z (in 29d)" in view
    assert "Vault path:     secret/servicekeys/team-a/api" in view
    assert "Key version:    2" in view
    assert "Copies:         team-c" in view
    assert "team-e      Forbidden     denied by policy" in view
    assert "ConfigMap api-public (jwks.json)" in view
    event_lines = view[view.index("Events:"):].splitlines()[2:]
    assert [_cells(line)[2] for line in event_lines] == ["Generated", "Published", "Staged"]
    assert "1s (x3 over 60m)" in event_lines[1]


def test_the_detailed_view_says_what_it_could_not_read_and_lists_at_most_the_last_events():
    obj = _key("api", _status(pending=False))
    events = [_event(f"Reason{i}", f"2026-05-01T11:{i:02d}:00Z", "m") for i in range(15)]

    view = status_view.detail(obj, status_view.published_kids(None, "cannot read ConfigMap api-public: "
                                                                      "Forbidden"), events, NOW)

    assert "<jwks.json unknown: cannot read ConfigMap api-public: Forbidden>" in view
    assert f"{CURRENT}   signing" in view
    listed = [line.split()[2] for line in view[view.index("Events:"):].splitlines()[2:]]
    assert listed == [f"Reason{i}" for i in range(5, 15)]
    unreadable = status_view.detail(obj, status_view.published_kids(None), [], NOW, "cannot list Events: 403")
    assert "Events:         <unknown: cannot list Events: 403>" in unreadable
    assert "<jwks.json unknown: the ConfigMap does not exist>" in unreadable


def test_the_detailed_view_of_a_key_that_is_not_ready():
    view = status_view.detail(_key("broken", _failed()), status_view.published_kids(None, "nothing yet"), [], NOW)

    assert "Ready:          False (InvalidSpec)" in view
    assert "Message:        vault.path must be below servicekeys/team-a/" in view
    assert "Keys:           <none>" in view
    assert "Events:         <none>" in view


def test_a_key_listed_in_status_but_not_yet_in_jwks_is_marked():
    status = _status(pending=True)
    rows = status_view.key_rows(status, status_view.published_kids({"data": {"jwks.json": json.dumps(
        {"keys": [{"kid": CURRENT}]})}}), NOW)

    assert [row[:2] for row in rows] == [[PENDING, "pending, not in jwks.json"], [CURRENT, "signing"]]


def test_an_imported_keys_legacy_kid_is_shown_as_such():
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "abc", "alg": "EdDSA", "use": "sig"}
    jwks = {"keys": [{**jwk, "kid": CURRENT}, {**jwk, "kid": "svc-0001"}]}
    rows = status_view.key_rows(_status(pending=False), status_view.published_kids(
        {"data": {"jwks.json": json.dumps(jwks)}}), NOW)

    assert rows[1] == ["svc-0001", "legacy kid", f"of {CURRENT}"]


def test_json_and_yaml_show_the_object_or_a_list_without_managed_fields():
    obj = _key("api", _status(pending=False), managedFields=[{"manager": "kopf"}])

    single = json.loads(status_view.render_document(status_view.as_document([obj], single=True), "json"))
    listed = yaml.safe_load(status_view.render_document(status_view.as_document([obj, obj], single=False), "yaml"))

    assert single["metadata"]["name"] == "api" and "managedFields" not in single["metadata"]
    assert listed["kind"] == "List" and len(listed["items"]) == 2
    assert "managedFields" not in listed["items"][0]["metadata"]
    assert "managedFields" in obj["metadata"], "the object read is not changed"


REQUEST = "2026-05-01T12:00:00+00:00"


def test_a_rotation_that_signs_at_once_is_reported_as_rotated():
    before = _status(pending=False)
    after = {**_status(pending=False, request=REQUEST), "keyId": "new-kid"}

    outcome = rotation_outcome(before, after, rotate_request_digest(REQUEST))

    assert outcome == RotationOutcome(CURRENT, "new-kid", staged=False)
    assert outcome.describe() == f"rotated: {CURRENT} -> new-kid"


def test_a_staged_rotation_is_reported_with_the_time_the_new_key_signs_from():
    outcome = rotation_outcome(_status(pending=False), _status(pending=True), rotate_request_digest(REQUEST))

    assert outcome == RotationOutcome(CURRENT, PENDING, staged=True, signs_from="2026-05-01T12:03:00Z")
    assert outcome.describe() == f"staged {PENDING}, signs from 2026-05-01T12:03:00Z"


def test_no_answer_yet_and_an_earlier_staged_key_are_not_taken_for_the_answer():
    digest = rotate_request_digest(REQUEST)
    assert rotation_outcome(_status(pending=False), _status(pending=False), digest) is None
    assert rotation_outcome(_status(pending=True), _status(pending=True), digest) is None
    # the key staged earlier (by the schedule) is promoted: it answers another request, not this one
    promoted = {**_status(pending=False, request="scheduled"), "keyId": PENDING}
    assert rotation_outcome(_status(pending=True), promoted, digest) is None


def test_an_emergency_rotation_is_answered_by_its_own_digest():
    request = "emergency:" + REQUEST
    after = {**_status(pending=False, request=request), "keyId": "new-kid"}

    outcome = rotation_outcome(_status(pending=True), after, rotate_request_digest(request))

    assert outcome is not None and outcome.describe() == f"rotated: {CURRENT} -> new-kid"


def _kubeconfig(path: Path, namespace: str | None) -> Path:
    context = {"cluster": "c", "user": "u", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "main",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "main", "context": context},
                     {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "from-other"}}]}))
    return path


def test_the_namespace_defaults_to_the_kubeconfig_contexts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", "team-x")))
    parse = cli.parser().parse_args

    assert cli._kube(parse(["status"]))[1] == "team-x"
    assert cli._kube(parse(["status", "-n", "team-y"]))[1] == "team-y"
    assert cli._kube(parse(["rotate", "api", "--context", "other"]))[1] == "from-other"
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "plain", None)))
    assert cli._kube(parse(["inspect", "api"]))[1] == "default"
    with pytest.raises(cli._KubeError, match="context 'nope' not found"):
        cli._kube(parse(["status", "--context", "nope"]))


def test_the_commands_and_their_kubectl_flags_parse():
    parse = cli.parser().parse_args

    status = parse(["status", "-A", "-l", "app=x", "-o", "wide"])
    assert (status.name, status.all_namespaces, status.selector, status.output) == (None, True, "app=x", "wide")
    assert parse(["status", "api"]).namespace is None, "no hard-coded default namespace"
    inspect = parse(["inspect", "api", "-n", "ns"])
    assert (inspect.func, inspect.name, inspect.namespace) == (status.func, "api", "ns")
    rotate = parse(["rotate", "api", "--emergency", "--wait", "--timeout", "5"])
    assert (rotate.emergency, rotate.wait, rotate.timeout) == (True, True, 5.0)
    with pytest.raises(SystemExit):
        parse(["status", "-o", "table"])


@pytest.mark.parametrize(("argv", "message"), [
    (["status", "api", "-A"], "cannot be retrieved by name across all namespaces"),
    (["status", "api", "-l", "a=b"], "together with a selector"),
])
def test_status_refuses_what_kubectl_refuses(argv, message, capsys: pytest.CaptureFixture[str]):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"servicekey-operator {package_version()}\n"


def test_run_as_the_kubectl_plugin_it_calls_itself_kubectl_servicekey(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/kubectl-servicekey", "status"])
    assert cli.parser().prog == "kubectl servicekey"
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/servicekey-operator"])
    assert cli.parser().prog == "servicekey-operator"


def test_the_kubectl_plugin_entry_point_is_the_same_main():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    assert scripts["kubectl-servicekey"] == scripts["servicekey-operator"] == "servicekey_operator.cli:main"


def _complete(script: str, *words: str) -> list[str]:
    """The words bash's completion function offers for the command line ``words`` (the last is being typed)."""
    line = " ".join(f"'{w}'" for w in words)
    result = subprocess.run(
        ["bash", "-c", f'{script}\nCOMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); '
                       f'PATH=/nonexistent; {completion.FUNCTION}; printf "%s\\n" "${{COMPREPLY[@]}}"'],
        capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_bash_completion_completes_commands_flags_and_values(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)

    assert "complete -F _servicekey_operator servicekey-operator kubectl-servicekey" in script
    assert _complete(script, "servicekey-operator", "st") == ["status"]
    assert set(_complete(script, "servicekey-operator", "")) >= {"rotate", "status", "inspect", "version",
                                                                 "completion", "run", "check", "jwks-server"}
    assert _complete(script, "kubectl-servicekey", "status", "-o", "") == ["wide", "json", "yaml"]
    assert _complete(script, "servicekey-operator", "status", "--all") == ["--all-namespaces"]
    assert set(_complete(script, "servicekey-operator", "rotate", "api", "--")) >= {"--emergency", "--wait",
                                                                                   "--timeout", "--namespace"}
    assert _complete(script, "servicekey-operator", "completion", "") == ["bash", "zsh"]
    assert _complete(script, "servicekey-operator", "status", "-n", "x", "") == [], "no kubectl: no names"


def test_the_zsh_completion_uses_bash_completion_emulation():
    script = completion.zsh_script(cli.parser())

    assert script.startswith("#compdef servicekey-operator kubectl-servicekey\n")
    assert "bashcompinit" in script and "complete -F _servicekey_operator" in script
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n"], input=script, text=True, check=True)
