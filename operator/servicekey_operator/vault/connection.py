"""One authenticated hvac client per operator, and the translation of hvac errors into ours.

``VaultConnection.client`` is how every caller (vault/kv.py, vault/transit.py, from worker threads)
gets an authenticated client. Behind it:

- TLS: the CA bundle (VAULT_CACERT), a client certificate (VAULT_CLIENT_CERT/KEY) and a server
  name override (VAULT_TLS_SERVER_NAME, for SNI and certificate matching when the address is an IP
  or an alias); a TLS failure becomes VaultUnavailable with a message that says what to fix;
- auth (vault/auth.py): the token is obtained, renewed at 2/3 of its TTL when the client is handed
  out, and replaced when Vault stops accepting it;
- every request that gets a 403 because the token is expired or revoked (not because of policy) is
  sent once more with a fresh token, so a token expiry never loses a request.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import hvac
import hvac.adapters
import hvac.exceptions
import requests
import requests.adapters

from servicekey_operator.config import VaultSettings
from servicekey_operator.errors import InvalidSpec, VaultPermissionDenied, VaultUnavailable, VaultWriteConflict
from servicekey_operator.metrics import VAULT_REQUEST_DURATION
from servicekey_operator.vault.auth import TokenManager, login_method

CAS_MISMATCH_TEXT = "check-and-set"
# Set on a Forbidden once lookup-self showed the token valid: the policy, not the token, said no.
POLICY_DENIAL_MARK = "servicekey_policy_denial"
# Worker threads share one connection pool per Vault host; size it like the default thread pool.
POOL_SIZE = 32


@contextlib.contextmanager
def vault_call(operation: str, what: str) -> Iterator[None]:
    """Time one Vault request as ``operation`` and re-raise hvac and transport errors as ours.

    ``what`` names the request in error messages; it never includes secret data. Our own errors
    (raised by the connection for TLS and login failures) pass through unchanged.
    """
    try:
        with VAULT_REQUEST_DURATION.labels(operation).time():
            yield
    except hvac.exceptions.Forbidden as denied:
        because = (" by the policies of the operator's token (the token itself is valid)"
                   if getattr(denied, POLICY_DENIAL_MARK, False) else "")
        raise VaultPermissionDenied(f"Vault denied {what}: permission denied{because}") from denied
    except (hvac.exceptions.InvalidPath, hvac.exceptions.UnsupportedOperation) as no_engine:
        raise InvalidSpec(f"Vault has no engine of the expected kind for {what} (is the mount a KV v2 or "
                          f"Transit engine?): {type(no_engine).__name__}") from no_engine
    except hvac.exceptions.InvalidRequest as invalid:
        if CAS_MISMATCH_TEXT in str(invalid):
            raise VaultWriteConflict(f"{what}: another writer changed the secret first") from invalid
        raise VaultUnavailable(f"Vault rejected {what}: {invalid}") from invalid
    except (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError,
            hvac.exceptions.BadGateway, hvac.exceptions.RateLimitExceeded,
            hvac.exceptions.UnexpectedError) as down:
        raise VaultUnavailable(f"Vault failed {what}: {type(down).__name__}") from down
    except requests.exceptions.SSLError as tls:  # a ConnectionError too: must come first
        raise VaultUnavailable(f"TLS to Vault failed during {what}: {_ssl_reason(tls)}") from tls
    except (requests.ConnectionError, requests.Timeout) as unreachable:
        raise VaultUnavailable(f"Vault unreachable during {what}: {type(unreachable).__name__}") from unreachable


# ------------------------------------------------------------------------------------------------
# TLS
# ------------------------------------------------------------------------------------------------

class TLSServerNameAdapter(requests.adapters.HTTPAdapter):
    """An HTTPS transport that presents ``server_name`` as SNI and verifies the certificate against it.

    requests has no such option; urllib3's pools take ``server_hostname`` (SNI) and
    ``assert_hostname`` (the name the certificate must carry), so they go into the pool kwargs.
    """

    def __init__(self, server_name: str | None = None, **kwargs: Any) -> None:
        self.server_name = server_name  # read by init_poolmanager, which the base __init__ calls
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """Build the pool manager with the server name override in every pool's kwargs."""
        if self.server_name:
            pool_kwargs.update(server_hostname=self.server_name, assert_hostname=self.server_name)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def vault_session(settings: VaultSettings, pool_size: int = POOL_SIZE) -> requests.Session:
    """A requests session with the TLS settings (CA bundle, client cert, server name) and a large pool."""
    session = requests.Session()
    session.verify = str(settings.ca_cert) if settings.ca_cert else True
    if settings.client_cert:
        session.cert = ((str(settings.client_cert), str(settings.client_key)) if settings.client_key
                        else str(settings.client_cert))
    session.mount("https://", TLSServerNameAdapter(settings.tls_server_name, pool_maxsize=pool_size))
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=pool_size))
    return session


_SSL_NOISE = re.compile(r"^\[SSL(?::\s*[A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)$")


def _ssl_reason(failure: BaseException) -> str:
    """The innermost ssl error's own words, without the '[SSL: X]' and '(_ssl.c:N)' decoration."""
    seen: set[int] = set()
    stack: list[Any] = [failure]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) and current.verify_message:
            return f"certificate verify failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError) or type(current).__name__ == "CertificateError":
            # (urllib3 raises its own CertificateError when it checks VAULT_TLS_SERVER_NAME itself)
            return _SSL_NOISE.sub("", str(current)) or type(current).__name__
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return _SSL_NOISE.sub("", str(failure))


def describe_tls_failure(settings: VaultSettings, failure: BaseException) -> str:
    """A one-line, actionable explanation of a failed TLS connection to Vault."""
    reason = _ssl_reason(failure).rstrip(". ")
    lowered = reason.lower()
    trust = (f"the CA bundle VAULT_CACERT={settings.ca_cert}" if settings.ca_cert
             else "the system CA bundle (VAULT_CACERT is not set)")
    if "mismatch" in lowered or "doesn't match" in lowered or "not valid for" in lowered:
        checked = settings.tls_server_name or "the host in VAULT_ADDR"
        hint = (f"the server's certificate does not name {checked}; set VAULT_TLS_SERVER_NAME to a name "
                "the certificate carries")
    elif "certificate verify failed" in lowered:
        hint = f"the server's certificate is not signed by a CA in {trust}"
    elif "certificate required" in lowered or "handshake failure" in lowered or "unknown ca" in lowered \
            or "bad certificate" in lowered:
        hint = ("the server did not accept the client certificate "
                + (f"VAULT_CLIENT_CERT={settings.client_cert}" if settings.client_cert
                   else "(none is configured: set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY)"))
    elif "eof occurred in violation of protocol" in lowered or "unexpected eof" in lowered:
        # Nothing was verified yet: the peer hung up mid-handshake. Behind a load balancer in TCP mode that is
        # what a client sees while no node is healthy (an HA cluster electing a new active node), so blaming the
        # CA bundle here sent operators after the wrong thing during every failover.
        hint = ("the connection was closed during the TLS handshake, before any certificate was checked: Vault "
                "is restarting, or a load balancer in front of it has no healthy active node to pass it to")
    elif "wrong version number" in lowered or "record layer failure" in lowered:
        hint = ("the server does not speak TLS at that address "
                "(VAULT_ADDR should start with http://, or name the TLS port)")
    else:
        hint = f"the server's certificate is checked against {trust}"
    return f"TLS connection to Vault at {settings.addr} failed: {reason}; {hint}"


# ------------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------------

class VaultAdapter(hvac.adapters.JSONAdapter):
    """hvac's JSON adapter, plus: TLS errors become VaultUnavailable, and with ``tokens`` set, each
    request carries the manager's current token and is retried once with a new one after a 403 that
    the manager attributes to an invalid token.
    """

    settings: VaultSettings | None = None
    tokens: TokenManager | None = None

    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                raise_exception: bool = True, **kwargs: Any) -> Any:
        """Send one request (see the class docstring)."""
        tokens = self.tokens
        if tokens is None:
            return self._send(method, url, headers, raise_exception, kwargs)
        used = tokens.token
        try:
            return self._send(method, url, _with_token(headers, used), raise_exception, kwargs)
        except hvac.exceptions.Forbidden as denied:
            if _LOGIN_PATH.search(url):
                raise
            if not tokens.replace_rejected(used):
                setattr(denied, POLICY_DENIAL_MARK, True)
                raise
        return self._send(method, url, _with_token(headers, tokens.token), raise_exception, kwargs)

    def _send(self, method: str, url: str, headers: dict[str, str] | None, raise_exception: bool,
              kwargs: dict[str, Any]) -> Any:
        try:
            return super().request(method, url, dict(headers or {}), raise_exception, **kwargs)
        except requests.exceptions.SSLError as tls:
            if self.settings is None:
                raise
            raise VaultUnavailable(describe_tls_failure(self.settings, tls)) from tls
        except requests.RequestException:
            raise
        except hvac.exceptions.InvalidRequest as invalid:
            if _PLAIN_TO_TLS_TEXT not in str(invalid):
                raise
            raise VaultUnavailable(f"Vault at {self.base_uri} only speaks TLS: "
                                   "VAULT_ADDR must start with https://") from invalid
        except OSError as unusable:  # requests' own check of the CA bundle / client cert paths
            raise VaultUnavailable(f"cannot set up TLS to Vault at {self.base_uri}: {unusable}") from unusable


_PLAIN_TO_TLS_TEXT = "Client sent an HTTP request to an HTTPS server"
_LOGIN_PATH = re.compile(r"(^|/)v1/auth/.+/login(/|$)")


def _with_token(headers: dict[str, str] | None, token: str) -> dict[str, str]:
    merged = dict(headers or {})
    if token:
        merged["X-Vault-Token"] = token
    return merged


def _hvac_client(settings: VaultSettings, session: requests.Session, timeout_seconds: float) -> hvac.Client:
    # token="" (not None): hvac would otherwise pick up VAULT_TOKEN or ~/.vault-token by itself.
    client = hvac.Client(url=settings.addr, token="", namespace=settings.namespace, session=session,
                         verify=session.verify, cert=session.cert, timeout=timeout_seconds, adapter=VaultAdapter)
    client.adapter.settings = settings
    return client


class VaultConnection:
    """Builds and hands out the hvac client; renews its token, and logs in again when it stops working."""

    def __init__(self, settings: VaultSettings, timeout_seconds: float = 10.0) -> None:
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._client: hvac.Client | None = None
        self._tokens: TokenManager | None = None

    def _new_client(self) -> tuple[hvac.Client, TokenManager]:
        session = vault_session(self.settings)
        # Two clients over one session: one for the auth endpoints, used only under the manager's lock,
        # and the shared one whose requests carry the manager's current token.
        tokens = TokenManager(login_method(self.settings), _hvac_client(self.settings, session, self.timeout_seconds),
                              instrument=vault_call)
        client = _hvac_client(self.settings, session, self.timeout_seconds)
        client.adapter.tokens = tokens
        return client, tokens

    @property
    def tokens(self) -> TokenManager:
        """The token manager (created with the client)."""
        with self._lock:
            if self._tokens is None:
                self._client, self._tokens = self._new_client()
            return self._tokens

    @property
    def client(self) -> hvac.Client:
        """The shared, authenticated client: logs in on first use and renews the token when it is due.

        Raises our errors (VaultUnavailable, VaultPermissionDenied) when authentication fails.
        """
        tokens = self.tokens
        tokens.ensure_fresh()
        assert self._client is not None
        return self._client
