"""Vault auth decisions (renewal timing, what a 403 means), the token manager, and the TLS plumbing."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
import requests

from servicekey_operator.config import VaultSettings
from servicekey_operator.errors import VaultPermissionDenied, VaultUnavailable
from servicekey_operator.vault.auth import (
    RENEW_AFTER_FRACTION,
    AppRoleLogin,
    ForbiddenCause,
    KubernetesLogin,
    Login,
    RefreshAction,
    TokenFile,
    TokenLease,
    TokenManager,
    classify_forbidden,
    login_method,
    refresh_action,
)
from servicekey_operator.vault.connection import (
    TLSServerNameAdapter,
    VaultAdapter,
    describe_tls_failure,
    vault_call,
    vault_session,
)

ADDR = "https://vault.example:8200"


def lease(ttl: float, renewable: bool = True, full_ttl: float | None = None, at: float = 100.0) -> TokenLease:
    return TokenLease(obtained_at=at, ttl=ttl, renewable=renewable, full_ttl=ttl if full_ttl is None else full_ttl)


# ------------------------------------------------------------------------------------------------
# refresh_action: when to renew, when to log in again
# ------------------------------------------------------------------------------------------------

def test_no_token_yet_means_login():
    assert refresh_action(None, 0.0) is RefreshAction.LOGIN


def test_a_token_without_ttl_is_kept_forever():
    assert refresh_action(lease(0, renewable=False), 10**9) is RefreshAction.KEEP


@pytest.mark.parametrize(("elapsed", "action"), [
    (0.0, RefreshAction.KEEP), (30.0, RefreshAction.KEEP), (59.9, RefreshAction.KEEP),
    (60.0, RefreshAction.RENEW), (89.0, RefreshAction.RENEW), (90.0, RefreshAction.LOGIN),
    (500.0, RefreshAction.LOGIN),
])
def test_a_renewable_token_is_renewed_after_two_thirds_of_its_ttl_and_replaced_once_expired(elapsed, action):
    assert pytest.approx(2 / 3) == RENEW_AFTER_FRACTION
    assert refresh_action(lease(90), 100.0 + elapsed) is action


def test_a_non_renewable_token_is_replaced_by_a_login_instead_of_renewed():
    assert refresh_action(lease(90, renewable=False), 100.0 + 61) is RefreshAction.LOGIN
    assert refresh_action(lease(90, renewable=False), 100.0 + 10) is RefreshAction.KEEP


def test_when_renewals_hit_the_max_ttl_a_login_gets_a_fresh_token():
    capped = lease(5, full_ttl=30).renewed(3.0, at=200.0)

    assert capped.capped and not lease(30).capped
    assert refresh_action(capped, 200.0 + 1.0) is RefreshAction.KEEP
    assert refresh_action(capped, 200.0 + 2.5) is RefreshAction.LOGIN
    # token auth cannot log in: it keeps renewing what it has for as long as Vault allows
    assert refresh_action(capped, 200.0 + 2.5, can_login=False) is RefreshAction.RENEW


def test_a_full_renewal_keeps_renewing():
    renewed = lease(30).renewed(30.0, at=150.0)

    assert not renewed.capped
    assert refresh_action(renewed, 150.0 + 21) is RefreshAction.RENEW


# ------------------------------------------------------------------------------------------------
# classify_forbidden: policy denial versus invalid token
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "cause"), [
    (200, ForbiddenCause.POLICY), (204, ForbiddenCause.POLICY),
    (403, ForbiddenCause.TOKEN_INVALID), (401, ForbiddenCause.TOKEN_INVALID), (None, ForbiddenCause.TOKEN_INVALID),
])
def test_a_403_is_a_policy_denial_only_when_the_token_can_still_look_itself_up(status, cause):
    assert classify_forbidden(status) is cause


# ------------------------------------------------------------------------------------------------
# TokenManager, with a fake login method and a fake auth client
# ------------------------------------------------------------------------------------------------

class FakeTokenApi:
    def __init__(self, vault: FakeVault) -> None:
        self.vault = vault

    def lookup_self(self) -> dict[str, Any]:
        token = self.vault.client_token
        if token not in self.vault.valid:
            raise hvac.exceptions.Forbidden("permission denied")
        return {"data": {"ttl": 60, "renewable": True}}

    def renew_self(self) -> dict[str, Any]:
        token = self.vault.client_token
        self.vault.renewals.append(token)
        if token not in self.vault.valid or self.vault.refuse_renewal:
            raise hvac.exceptions.Forbidden("permission denied")
        return {"auth": {"lease_duration": self.vault.renew_grants}}


class FakeVault:
    """Stands in for the auth client: which tokens are valid, and what renew-self grants."""

    def __init__(self) -> None:
        self.client_token = ""
        self.valid: set[str] = set()
        self.renewals: list[str] = []
        self.renew_grants = 30
        self.refuse_renewal = False
        self.auth = type("Auth", (), {})()
        self.auth.token = FakeTokenApi(self)

    @property
    def token(self) -> str:
        return self.client_token

    @token.setter
    def token(self, value: str) -> None:
        self.client_token = value


class FakeLogin:
    name = "fake"
    can_login = True

    def __init__(self, vault: FakeVault, ttl: float = 30, delay: float = 0.0) -> None:
        self.vault, self.ttl, self.delay, self.count = vault, ttl, delay, 0

    def describe(self) -> str:
        return "fake auth"

    def login(self, client: Any) -> Login:
        time.sleep(self.delay)
        self.count += 1
        token = f"token-{self.count}"
        self.vault.valid.add(token)
        return Login(token=token, ttl=self.ttl, renewable=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manager(ttl: float = 30, delay: float = 0.0) -> tuple[TokenManager, FakeVault, FakeLogin, Clock]:
    vault, clock = FakeVault(), Clock()
    method = FakeLogin(vault, ttl=ttl, delay=delay)
    return TokenManager(method, vault, clock=clock), vault, method, clock  # type: ignore[arg-type]


def test_the_manager_logs_in_once_then_renews_then_logs_in_when_renewal_is_refused():
    tokens, vault, method, clock = manager()

    assert tokens.ensure_fresh() == "token-1"
    clock.now += 10
    assert tokens.ensure_fresh() == "token-1" and vault.renewals == []
    clock.now += 11  # 21 s of 30: past 2/3
    assert tokens.ensure_fresh() == "token-1" and vault.renewals == ["token-1"]
    clock.now += 21
    vault.refuse_renewal = True
    assert tokens.ensure_fresh() == "token-2"
    assert (method.count, tokens.renewals, tokens.logins) == (2, 1, 2)


def test_a_renewal_that_fails_inside_vault_is_replaced_by_a_login():
    tokens, vault, method, clock = manager()
    tokens.ensure_fresh()
    clock.now += 25

    def expired_during_renewal() -> dict[str, Any]:
        raise hvac.exceptions.InternalServerError("internal error")
    vault.auth.token.renew_self = expired_during_renewal

    assert tokens.ensure_fresh() == "token-2" and method.count == 2


def test_the_manager_logs_in_instead_of_renewing_once_the_max_ttl_caps_renewals():
    tokens, vault, _, clock = manager(ttl=6)
    tokens.ensure_fresh()
    vault.renew_grants = 2  # the max TTL is near: Vault grants less than a full TTL

    clock.now += 4.5
    tokens.ensure_fresh()
    clock.now += 1.5

    assert tokens.ensure_fresh() == "token-2"
    assert vault.renewals == ["token-1"]


def test_a_403_with_a_valid_token_is_a_policy_denial_and_keeps_the_token():
    tokens, _, method, _ = manager()
    token = tokens.ensure_fresh()

    assert tokens.replace_rejected(token) is False
    assert tokens.token == token and method.count == 1


def test_a_403_with_a_revoked_token_logs_in_again_once_for_all_threads():
    tokens, vault, method, _ = manager(delay=0.05)
    token = tokens.ensure_fresh()
    vault.valid.clear()  # revoked behind the operator's back
    answers: list[bool] = []

    threads = [threading.Thread(target=lambda: answers.append(tokens.replace_rejected(token))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert answers == [True] * 8
    assert method.count == 2 and tokens.token == "token-2"


def test_token_auth_with_an_unchanged_invalid_token_reports_it(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("s.old\n")
    vault = FakeVault()
    vault.valid = {"s.old"}
    tokens = TokenManager(TokenFile(VaultSettings(addr=ADDR, token_file=token_file)), vault)  # type: ignore[arg-type]
    assert tokens.ensure_fresh() == "s.old"
    vault.valid.clear()

    with pytest.raises(VaultPermissionDenied, match="expired or revoked"):
        tokens.replace_rejected("s.old")

    token_file.write_text("s.new")  # an agent wrote a fresh one: the next login reads it
    vault.valid.add("s.new")
    assert tokens.replace_rejected("s.old") is True and tokens.token == "s.new"


def test_login_methods_follow_the_settings_and_name_their_credentials_not_their_content(tmp_path: Path):
    settings = VaultSettings(addr=ADDR, auth_method="kubernetes", role="operator",
                             sa_token_file=tmp_path / "missing-token")
    method = login_method(settings)

    assert isinstance(method, KubernetesLogin) and method.mount == "kubernetes"
    assert isinstance(login_method(VaultSettings(addr=ADDR, auth_method="approle", auth_mount="ci/")), AppRoleLogin)
    with pytest.raises(VaultPermissionDenied, match=r"cannot read the ServiceAccount token file .*missing-token"):
        method.login(FakeVault())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# The adapter: one retry after a token replacement, none after a policy denial
# ------------------------------------------------------------------------------------------------

class ScriptedAdapter(VaultAdapter):
    def __init__(self, answers: list[Any]) -> None:
        super().__init__(base_uri=ADDR, token="")
        self.answers = answers
        self.sent: list[str | None] = []

    def _send(self, method, url, headers, raise_exception, kwargs):
        self.sent.append((headers or {}).get("X-Vault-Token"))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class StubTokens:
    def __init__(self, replace_with: str | None) -> None:
        self.token, self.replace_with, self.asked = "old", replace_with, 0

    def replace_rejected(self, used: str) -> bool:
        self.asked += 1
        if self.replace_with is None:
            return False
        self.token = self.replace_with
        return True


def test_a_request_rejected_for_its_token_is_sent_once_more_with_the_new_token():
    adapter = ScriptedAdapter([hvac.exceptions.Forbidden("permission denied"), {"data": "ok"}])
    adapter.tokens = StubTokens("new")  # type: ignore[assignment]

    assert adapter.request("get", "/v1/secret/data/servicekeys/ns/a") == {"data": "ok"}
    assert adapter.sent == ["old", "new"]


def test_a_policy_denial_is_not_retried():
    adapter = ScriptedAdapter([hvac.exceptions.Forbidden("permission denied")])
    adapter.tokens = StubTokens(None)  # type: ignore[assignment]

    with pytest.raises(VaultPermissionDenied, match="Vault denied writing other/x: permission denied by the "
                       "policies of the operator's token"), \
            vault_call("write_version", "writing other/x"):
        adapter.request("post", "/v1/other/data/x")
    assert adapter.sent == ["old"]


def test_a_second_403_after_the_new_login_is_reported_not_retried_again():
    adapter = ScriptedAdapter([hvac.exceptions.Forbidden("denied"), hvac.exceptions.Forbidden("denied")])
    adapter.tokens = StubTokens("new")  # type: ignore[assignment]

    with pytest.raises(hvac.exceptions.Forbidden):
        adapter.request("get", "/v1/secret/data/servicekeys/ns/a")
    assert adapter.sent == ["old", "new"] and adapter.tokens.asked == 1  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------
# TLS settings and messages
# ------------------------------------------------------------------------------------------------

def test_the_server_name_override_goes_into_every_https_pool():
    adapter = TLSServerNameAdapter("vault.internal", pool_maxsize=4)
    pool = adapter.poolmanager.connection_from_url("https://127.0.0.1:8200")

    assert adapter.poolmanager.connection_pool_kw["server_hostname"] == "vault.internal"
    assert adapter.poolmanager.connection_pool_kw["assert_hostname"] == "vault.internal"
    assert pool.conn_kw.get("server_hostname") == "vault.internal" and pool.assert_hostname == "vault.internal"
    assert "server_hostname" not in TLSServerNameAdapter(None).poolmanager.connection_pool_kw


def test_the_session_carries_ca_bundle_client_cert_and_server_name(tmp_path: Path):
    settings = VaultSettings(addr=ADDR, ca_cert=tmp_path / "ca.crt", client_cert=tmp_path / "c.crt",
                             client_key=tmp_path / "c.key", tls_server_name="vault.internal")
    session = vault_session(settings)

    assert session.verify == str(tmp_path / "ca.crt")
    assert session.cert == (str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    https = session.get_adapter("https://127.0.0.1:8200")
    assert isinstance(https, TLSServerNameAdapter) and https.server_name == "vault.internal"
    assert vault_session(VaultSettings(addr=ADDR)).verify is True


def _wrapped(error: BaseException) -> requests.exceptions.SSLError:
    # what requests raises: SSLError(MaxRetryError(reason=urllib3 SSLError(ssl error)))
    import urllib3.exceptions
    inner = urllib3.exceptions.SSLError(error)
    return requests.exceptions.SSLError(urllib3.exceptions.MaxRetryError(None, "/v1/sys/health", inner))


def _verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_message = message
    return error


def test_an_untrusted_certificate_names_tls_and_the_ca_bundle():
    settings = VaultSettings(addr=ADDR, ca_cert=Path("/etc/vault/ca.crt"))
    message = describe_tls_failure(settings, _wrapped(_verify_error("unable to get local issuer certificate")))

    assert message.startswith(f"TLS connection to Vault at {ADDR} failed: certificate verify failed: unable to get")
    assert "not signed by a CA in the CA bundle VAULT_CACERT=/etc/vault/ca.crt" in message
    assert "_ssl.c" not in message and "MaxRetryError" not in message


def test_a_name_mismatch_points_at_vault_tls_server_name():
    message = describe_tls_failure(VaultSettings(addr=ADDR), _wrapped(_verify_error(
        "IP address mismatch, certificate is not valid for '127.0.0.1'.")))

    assert "does not name the host in VAULT_ADDR; set VAULT_TLS_SERVER_NAME" in message


def test_a_connection_closed_in_the_handshake_blames_no_certificate():
    # What a client of an HA cluster sees through a TCP load balancer while no node is active.
    settings = VaultSettings(addr=ADDR, ca_cert=Path("/etc/vault/ca.crt"))
    eof = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol (_ssl.c:992)")

    message = describe_tls_failure(settings, _wrapped(eof))

    assert message == (f"TLS connection to Vault at {ADDR} failed: EOF occurred in violation of protocol; the "
                       "connection was closed during the TLS handshake, before any certificate was checked: Vault "
                       "is restarting, or a load balancer in front of it has no healthy active node to pass it to")


def test_the_adapter_turns_tls_errors_into_vault_unavailable(tmp_path: Path):
    settings = VaultSettings(addr="https://127.0.0.1:1", ca_cert=tmp_path / "does-not-exist.crt")
    adapter = VaultAdapter(base_uri=settings.addr, token="", session=vault_session(settings),
                           verify=str(settings.ca_cert), timeout=2)
    adapter.settings = settings

    with pytest.raises(VaultUnavailable, match=r"cannot set up TLS to Vault .*does-not-exist\.crt"):
        adapter.request("get", "/v1/sys/health")
