"""Production auth against the real OpenBao and apiserver: token file, kubernetes (TokenReview), AppRole.

The operator runs with the shipped least-privilege policy, never root. Tokens expire, get revoked and
rotate under it; no request is lost to that, and a policy denial is reported as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hvac
import pytest

from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.openbao import OpenBaoServer
from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, ready_condition, wait_for

pytestmark = pytest.mark.integration

POLICY = "servicekey-operator"
POLICY_FILE = REPO_ROOT / "deploy" / "vault" / "servicekey-operator-policy.hcl"
# Used only if the shipped file is missing: KV v2 data and metadata below the default prefix, and the
# operator's own token.
MINIMAL_POLICY = """
path "secret/data/servicekeys/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/servicekeys/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"""
SERVICE_ACCOUNT = "servicekey-operator"
RELOGIN = "Authenticated to Vault again"


def operator_policy() -> str:
    """The shipped policy (deploy/vault), the one the README tells users to install."""
    return POLICY_FILE.read_text() if POLICY_FILE.exists() else MINIMAL_POLICY


@pytest.fixture(scope="module")
def auth_vault(dev_env: DevEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """An OpenBao of this module's own, with the operator policy, kubernetes auth and a foreign KV mount."""
    server = OpenBaoServer(dev_env.binaries.bao, tmp_path_factory.mktemp("auth-openbao"))
    try:
        server.start()
        server.create_policy(POLICY, operator_policy())
        server.enable_kubernetes_auth(dev_env.kube)
        server.enable_kv("other")
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_with(start_operator: Callable[..., OperatorProcess], auth_vault: OpenBaoServer,
               namespace: str) -> Callable[..., OperatorProcess]:
    """Start an operator on ``auth_vault`` for this test's namespace, without the root token."""
    def start(**env: str) -> OperatorProcess:
        return start_operator(VAULT_ADDR=auth_vault.addr, VAULT_TOKEN="", SERVICEKEY_WATCH_NAMESPACES=namespace,
                              **env)
    return start


def _stored_kid(vault: OpenBaoServer, namespace: str, name: str, mount: str = "secret") -> str | None:
    try:
        reply = vault.client().secrets.kv.v2.read_secret_version(path=f"servicekeys/{namespace}/{name}",
                                                                 mount_point=mount, raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return reply["data"]["data"]["kid"]


def _assert_ready_in(vault: OpenBaoServer, servicekeys: ServiceKeys, name: str, timeout: float = 30) -> None:
    status = servicekeys.wait_ready(name, timeout=timeout)["status"]
    assert status["keyId"] == _stored_kid(vault, servicekeys.namespace, name)


def _approle_files(vault: OpenBaoServer, directory: Path, role: str, **ttls: str) -> dict[str, str]:
    role_id, secret_id = vault.create_approle(role, policies=[POLICY], **ttls)
    (directory / "role-id").write_text(role_id)
    (directory / "secret-id").write_text(secret_id)
    return {"SERVICEKEY_VAULT_AUTH_METHOD": "approle",
            "SERVICEKEY_VAULT_ROLE_ID_FILE": str(directory / "role-id"),
            "SERVICEKEY_VAULT_SECRET_ID_FILE": str(directory / "secret-id")}


def _service_account_token(dev_env: DevEnvironment, namespace: str) -> str:
    return dev_env.kube.kubectl("create", "token", SERVICE_ACCOUNT, "-n", namespace, "--duration=1h").stdout.strip()


def test_token_file_auth_provisions_keys_and_picks_up_a_replaced_token(
        auth_vault: OpenBaoServer, start_with: Callable[..., OperatorProcess], servicekeys: ServiceKeys,
        tmp_path: Path):
    root = auth_vault.client()
    first_token = root.auth.token.create(policies=[POLICY], ttl="1h")["auth"]["client_token"]
    token_file = tmp_path / "vault-token"
    token_file.write_text(first_token + "\n")
    operator = start_with(SERVICEKEY_VAULT_AUTH_METHOD="token", VAULT_TOKEN_FILE=str(token_file))

    servicekeys.create("first", {"algorithm": "ES256"})
    _assert_ready_in(auth_vault, servicekeys, "first")

    # An agent writes a new token to the file and the old one is revoked: the next request gets a
    # 403, the operator reads the file again and sends the request once more.
    token_file.write_text(root.auth.token.create(policies=[POLICY], ttl="1h")["auth"]["client_token"])
    root.auth.token.revoke(first_token)
    servicekeys.create("second", {"algorithm": "EdDSA"})
    _assert_ready_in(auth_vault, servicekeys, "second")

    log = operator.log_text()
    assert f"{RELOGIN} (Vault no longer accepts the token" in log
    assert "VaultPermissionDenied" not in log, "the expiry must not fail a pass"
    assert first_token not in log


def test_kubernetes_auth_logs_in_through_a_token_review_and_reads_the_rotated_token_again(
        dev_env: DevEnvironment, auth_vault: OpenBaoServer, start_with: Callable[..., OperatorProcess],
        servicekeys: ServiceKeys, namespace: str, tmp_path: Path):
    dev_env.kube.kubectl("create", "serviceaccount", SERVICE_ACCOUNT, "-n", namespace)
    role = f"operator-{namespace}"
    auth_vault.create_kubernetes_role(role, service_accounts=[SERVICE_ACCOUNT], namespaces=[namespace],
                                      policies=[POLICY])
    jwt_file = tmp_path / "sa-token"
    jwt_file.write_text(_service_account_token(dev_env, namespace))
    operator = start_with(SERVICEKEY_VAULT_AUTH_METHOD="kubernetes", SERVICEKEY_VAULT_ROLE=role,
                          SERVICEKEY_VAULT_SA_TOKEN_FILE=str(jwt_file))

    servicekeys.create("first", {"algorithm": "ES256"})
    _assert_ready_in(auth_vault, servicekeys, "first")
    assert f"Authenticated to Vault with kubernetes auth as role '{role}'" in operator.log_text()

    # Vault revokes the operator's token while the projected token file holds garbage: the login is
    # refused and said so; once the kubelet writes a valid token again, the next login reads it.
    jwt_file.write_text("not-a-service-account-token")
    auth_vault.client().sys.revoke_prefix("auth/kubernetes/login")
    servicekeys.create("second", {"algorithm": "ES256"})
    refused = ready_condition(servicekeys.wait_condition("second", "False", "VaultPermissionDenied"))
    assert f"Vault refused the kubernetes auth as role '{role}'" in refused["message"]
    assert str(jwt_file) in refused["message"] and "not-a-service-account-token" not in refused["message"]

    jwt_file.write_text(_service_account_token(dev_env, namespace))
    _assert_ready_in(auth_vault, servicekeys, "second", timeout=60)
    assert "Traceback" not in operator.log_text()


def test_approle_auth_rides_out_short_lived_tokens_without_a_failed_pass(
        auth_vault: OpenBaoServer, start_with: Callable[..., OperatorProcess], servicekeys: ServiceKeys,
        namespace: str, tmp_path: Path):
    # 5 s tokens that can be renewed up to 10 s in total: renewals, capped renewals, then new logins.
    operator = start_with(**_approle_files(auth_vault, tmp_path, f"short-{namespace}", token_ttl="5s",
                                           token_max_ttl="10s"))
    started = time.monotonic()
    created = []
    while time.monotonic() - started < 15:
        name = f"k{len(created)}"
        servicekeys.create(name, {"algorithm": "ES256"})
        created.append(name)
        _assert_ready_in(auth_vault, servicekeys, name)
        time.sleep(1.5)

    for name in created:  # still Ready, each with the key Vault holds
        assert ready_condition(servicekeys.get(name) or {}).get("status") == "True"
    log = operator.log_text()
    assert "Renewed the Vault token" in log
    assert RELOGIN in log, "past the 10 s max TTL only a new login gives a token"
    assert "VaultPermissionDenied" not in log and "VaultUnavailable" not in log, "no pass may fail on expiry"


def test_a_revoked_token_is_replaced_within_the_request(
        auth_vault: OpenBaoServer, start_with: Callable[..., OperatorProcess], servicekeys: ServiceKeys,
        namespace: str, tmp_path: Path):
    operator = start_with(**_approle_files(auth_vault, tmp_path, f"long-{namespace}", token_ttl="1h"))
    servicekeys.create("before", {"algorithm": "ES256"})
    _assert_ready_in(auth_vault, servicekeys, "before")

    auth_vault.client().sys.revoke_prefix("auth/approle/login")
    servicekeys.create("after", {"algorithm": "ES256"})
    _assert_ready_in(auth_vault, servicekeys, "after")

    log = operator.log_text()
    assert f"{RELOGIN} (Vault no longer accepts the token: expired or revoked)" in log
    assert "VaultPermissionDenied" not in log


def test_a_mount_the_policy_does_not_grant_is_a_permission_denial_not_a_token_problem(
        auth_vault: OpenBaoServer, start_with: Callable[..., OperatorProcess], servicekeys: ServiceKeys,
        namespace: str, tmp_path: Path):
    operator = start_with(**_approle_files(auth_vault, tmp_path, f"policy-{namespace}", token_ttl="1h"))
    servicekeys.create("inside", {"algorithm": "ES256"})
    _assert_ready_in(auth_vault, servicekeys, "inside")

    servicekeys.create("outside", {"algorithm": "ES256", "vault": {"mount": "other"}})
    denied = ready_condition(servicekeys.wait_condition("outside", "False", "VaultPermissionDenied"))

    assert f"other/servicekeys/{namespace}/outside" in denied["message"]
    assert "permission denied by the policies of the operator's token" in denied["message"]
    assert _stored_kid(auth_vault, namespace, "outside", mount="other") is None
    wait_for(lambda: operator.process.running(), 1, "the operator to keep running")
    assert RELOGIN not in operator.log_text(), "a policy denial must not be mistaken for a dead token"
