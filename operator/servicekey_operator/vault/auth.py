"""How the operator gets, keeps and replaces its Vault token: token, kubernetes or approle auth.

Three pieces, from pure to effectful:

- the decisions, pure and unit-tested: when to renew a token or log in again (``refresh_action``) and
  what a 403 means (``classify_forbidden``: Vault answers 403 both for "your policy does not allow
  this" and for "this token is expired or revoked"; lookup-self with the same token tells them apart);
- the login methods (``TokenFile``, ``KubernetesLogin``, ``AppRoleLogin``), which read their
  credentials from files on every login because projected ServiceAccount tokens and secret ids rotate;
- ``TokenManager``, the thread-safe owner of the current token, used by ``vault/connection.py``.

Nothing here ever logs or puts into an exception message a token, a JWT or a secret id.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import hvac
import hvac.exceptions

from servicekey_operator.config import VaultSettings
from servicekey_operator.errors import VaultPermissionDenied

logger = logging.getLogger(__name__)

# Renew once this share of the token's TTL has passed (what Vault Agent and the Kubernetes client do).
RENEW_AFTER_FRACTION = 2 / 3
# hvac errors that mean "Vault answered, and said no" (as opposed to "Vault is not there").
REFUSALS = (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized, hvac.exceptions.InvalidRequest)


class RefreshAction(enum.Enum):
    """What to do with the current token before the next request."""

    KEEP = "keep"
    RENEW = "renew"
    LOGIN = "login"


class ForbiddenCause(enum.Enum):
    """Why Vault answered 403."""

    POLICY = "policy"              # the token is fine; its policies do not allow the request
    TOKEN_INVALID = "token-invalid"  # the token is expired, revoked or unknown: log in again


@dataclass(frozen=True)
class TokenLease:
    """What Vault said about the current token, on the operator's monotonic clock.

    ``ttl`` counts from ``obtained_at`` (0: the token never expires, as a root token); ``full_ttl`` is
    the TTL a fresh login (or the token's creation) granted, so a renewal that grants less has run
    into the token's max TTL.
    """

    obtained_at: float
    ttl: float
    renewable: bool
    full_ttl: float = 0.0

    @property
    def capped(self) -> bool:
        """The last renewal gave less than a full TTL: the max TTL is close, renewing will not help."""
        return 0 < self.ttl < self.full_ttl

    def renewed(self, granted_ttl: float, at: float) -> TokenLease:
        """The lease after a renewal that granted ``granted_ttl`` seconds at ``at``."""
        return replace(self, obtained_at=at, ttl=granted_ttl)


def refresh_action(lease: TokenLease | None, now: float, *, can_login: bool = True) -> RefreshAction:
    """Decide, before a request, whether the token is good as it is, wants renewing, or a new login.

    - no token yet, or the TTL is over: log in (for the token method: read the token again);
    - before ``RENEW_AFTER_FRACTION`` of the TTL: keep it;
    - after that: renew it if it is renewable, unless renewals have reached the max TTL and a
      login can get a fresh token instead; otherwise log in again.
    """
    if lease is None:
        return RefreshAction.LOGIN
    if lease.ttl <= 0:
        return RefreshAction.KEEP
    elapsed = now - lease.obtained_at
    if elapsed >= lease.ttl:
        return RefreshAction.LOGIN
    if elapsed < lease.ttl * RENEW_AFTER_FRACTION:
        return RefreshAction.KEEP
    if lease.renewable and not (lease.capped and can_login):
        return RefreshAction.RENEW
    return RefreshAction.LOGIN


def classify_forbidden(lookup_self_status: int | None) -> ForbiddenCause:
    """Why a request got 403, from the HTTP status of ``auth/token/lookup-self`` with the same token.

    A token that cannot even look itself up (403, or 401) is expired, revoked or unknown; ``None``
    means there was no token to look up. A token that can is valid: its policy denied the request.
    (A token whose policies lack lookup-self, which Vault's default policy grants, is taken for an
    invalid one: the operator logs in once more and retries once, then reports the denial.)
    """
    if lookup_self_status is None or lookup_self_status in (401, 403):
        return ForbiddenCause.TOKEN_INVALID
    return ForbiddenCause.POLICY


# ------------------------------------------------------------------------------------------------
# Login methods
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Login:
    """A token and what Vault said about its lifetime."""

    token: str
    ttl: float
    renewable: bool
    full_ttl: float = 0.0


class LoginMethod(Protocol):
    """Gets a token from Vault (or from a file), using the unauthenticated ``client``."""

    name: str
    can_login: bool  # False: "logging in again" can only re-read a token someone else renews

    def describe(self) -> str:
        """Names the method and the credentials' location (never their content) for logs and errors."""
        ...

    def login(self, client: hvac.Client) -> Login:
        """A fresh token; raises VaultPermissionDenied when Vault or the credential files refuse."""
        ...


def _vault_errors(refusal: hvac.exceptions.VaultError) -> str:
    return "; ".join(str(error).strip() for error in refusal.errors) if refusal.errors else str(refusal.args[0])


def read_credential(path: Path, variable: str) -> str:
    """The stripped content of a credential file; VaultPermissionDenied (naming the file) if unusable."""
    try:
        value = Path(path).read_text().strip()
    except OSError as unreadable:
        raise VaultPermissionDenied(
            f"cannot read {variable} {path}: {unreadable.strerror or unreadable}") from unreadable
    if not value:
        raise VaultPermissionDenied(f"{variable} {path} is empty")
    return value


def _login_from_auth(auth: dict[str, Any]) -> Login:
    ttl = float(auth.get("lease_duration") or 0)
    return Login(token=auth["client_token"], ttl=ttl, renewable=bool(auth.get("renewable")), full_ttl=ttl)


class TokenFile:
    """``token`` auth: VAULT_TOKEN, or VAULT_TOKEN_FILE read again on every login (an agent may rewrite it)."""

    name = "token"
    can_login = False

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings

    def describe(self) -> str:
        if self.settings.token_file:
            return f"the token in VAULT_TOKEN_FILE {self.settings.token_file}"
        return "the token in VAULT_TOKEN"

    def login(self, client: hvac.Client) -> Login:
        if self.settings.token_file:
            token = read_credential(self.settings.token_file, "VAULT_TOKEN_FILE")
        elif self.settings.token:
            token = self.settings.token
        else:
            raise VaultPermissionDenied("token auth needs VAULT_TOKEN or VAULT_TOKEN_FILE")
        client.token = token
        try:
            data = client.auth.token.lookup_self()["data"]
        except REFUSALS as refused:
            # Used as it is: requests will tell whether it works (and the 403 handling re-reads it).
            logger.warning(f"Vault refused lookup-self for {self.describe()} ({_vault_errors(refused)}); "
                           "using it without renewal")
            return Login(token=token, ttl=0, renewable=False)
        ttl = float(data.get("ttl") or 0)
        return Login(token=token, ttl=ttl, renewable=bool(data.get("renewable")),
                     full_ttl=float(data.get("creation_ttl") or ttl))


class KubernetesLogin:
    """``kubernetes`` auth: the pod's ServiceAccount token (re-read each time: projected tokens rotate)."""

    name = "kubernetes"
    can_login = True

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self.mount = (settings.auth_mount or "kubernetes").strip("/")

    def describe(self) -> str:
        return f"kubernetes auth as role {self.settings.role!r} at auth/{self.mount}"

    def login(self, client: hvac.Client) -> Login:
        jwt = read_credential(self.settings.sa_token_file, "the ServiceAccount token file")
        try:
            reply = client.auth.kubernetes.login(role=self.settings.role, jwt=jwt, use_token=False,
                                                 mount_point=self.mount)
        except REFUSALS as refused:
            raise VaultPermissionDenied(
                f"Vault refused the {self.describe()} with the ServiceAccount token from "
                f"{self.settings.sa_token_file}: {_vault_errors(refused)}") from refused
        return _login_from_auth(reply["auth"])


class AppRoleLogin:
    """``approle`` auth: role_id and secret_id from files, read again on every login."""

    name = "approle"
    can_login = True

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self.mount = (settings.auth_mount or "approle").strip("/")

    def describe(self) -> str:
        return f"approle auth at auth/{self.mount} (role_id from {self.settings.role_id_file})"

    def login(self, client: hvac.Client) -> Login:
        if not (self.settings.role_id_file and self.settings.secret_id_file):
            raise VaultPermissionDenied("approle auth needs SERVICEKEY_VAULT_ROLE_ID_FILE and "
                                        "SERVICEKEY_VAULT_SECRET_ID_FILE")
        role_id = read_credential(self.settings.role_id_file, "SERVICEKEY_VAULT_ROLE_ID_FILE")
        secret_id = read_credential(self.settings.secret_id_file, "SERVICEKEY_VAULT_SECRET_ID_FILE")
        try:
            reply = client.auth.approle.login(role_id=role_id, secret_id=secret_id, use_token=False,
                                              mount_point=self.mount)
        except REFUSALS as refused:
            raise VaultPermissionDenied(f"Vault refused the {self.describe()}: {_vault_errors(refused)}") from refused
        return _login_from_auth(reply["auth"])


def login_method(settings: VaultSettings) -> LoginMethod:
    """The login method ``settings.auth_method`` names."""
    methods: dict[str, Callable[[VaultSettings], LoginMethod]] = {
        "token": TokenFile, "kubernetes": KubernetesLogin, "approle": AppRoleLogin}
    try:
        return methods[settings.auth_method](settings)
    except KeyError:
        raise ValueError(f"unknown Vault auth method {settings.auth_method!r}") from None


# ------------------------------------------------------------------------------------------------
# The token's owner
# ------------------------------------------------------------------------------------------------

def _login_reason(lease: TokenLease | None, now: float) -> str:
    if lease is None:
        return "first login"
    if now >= lease.obtained_at + lease.ttl:
        return "the token expired"
    return "renewals reached the max TTL" if lease.capped else "the token is not renewable"


Instrument = Callable[[str, str], AbstractContextManager[None]]


def _no_instrument(_operation: str, _what: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


class TokenManager:
    """Holds the operator's current token: logs in, renews, and replaces a token Vault stopped accepting.

    ``client`` is an hvac client used only for the auth endpoints, only under this manager's lock;
    ``instrument(operation, what)`` wraps each of those requests (timing and error translation).
    Request threads read ``token`` without locking and report a 403 through ``replace_rejected``.
    """

    def __init__(self, method: LoginMethod, client: hvac.Client, *, instrument: Instrument = _no_instrument,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.method = method
        self._client = client
        self._instrument = instrument
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._lease: TokenLease | None = None
        self.logins = 0
        self.renewals = 0

    @property
    def token(self) -> str:
        """The current token ("" before the first login)."""
        return self._token

    @property
    def lease(self) -> TokenLease | None:
        """What is known about the current token's lifetime."""
        return self._lease

    def ensure_fresh(self) -> str:
        """Log in, renew or log in again as ``refresh_action`` decides; return the token to use."""
        with self._lock:
            now = self._clock()
            action = refresh_action(self._lease, now, can_login=self.method.can_login)
            if action is RefreshAction.RENEW:
                self._renew()
            elif action is RefreshAction.LOGIN:
                self._login(_login_reason(self._lease, now))
            return self._token

    def replace_rejected(self, used_token: str) -> bool:
        """After a 403 for a request made with ``used_token``: True if a retry with ``token`` may succeed.

        False means the token is valid and its policy denied the request. Raises VaultPermissionDenied
        when the token is invalid and no other one can be had (token auth, unchanged file).
        """
        with self._lock:
            if used_token != self._token:
                return True  # another thread already replaced it
            if classify_forbidden(self._lookup_status(used_token)) is ForbiddenCause.POLICY:
                return False
            self._login("Vault no longer accepts the token: expired or revoked")
            if self._token == used_token:
                raise VaultPermissionDenied(
                    f"Vault rejects the operator's token (lookup-self fails too: it is expired or revoked, or "
                    f"lacks the default policy) and {self.method.describe()} has no other one")
            return True

    def _lookup_status(self, token: str) -> int | None:
        if not token:
            return None
        self._client.token = token
        with self._instrument("lookup_self", "looking up the operator's Vault token"):
            try:
                self._client.auth.token.lookup_self()
            except hvac.exceptions.Forbidden:
                return 403
            except hvac.exceptions.Unauthorized:
                return 401
            except hvac.exceptions.InvalidRequest:
                return 400
        return 200

    def _renew(self) -> None:
        assert self._lease is not None
        self._client.token = self._token
        started = self._clock()
        with self._instrument("renew_self", "renewing the operator's Vault token"):
            try:
                reply = self._client.auth.token.renew_self()
            except hvac.exceptions.VaultError as failed:
                # Any answer but success (refused, past the max TTL, or a 500 when the token expires
                # during the renewal): a login gets a fresh token. Vault being unreachable is raised.
                reason = f"renewal failed: {type(failed).__name__}: {_vault_errors(failed)}"
                reply = None
        if reply is None:
            self._login(reason)
            return
        granted = float(reply["auth"].get("lease_duration") or 0)
        self._lease = self._lease.renewed(granted, started)
        self.renewals += 1
        capped = " (capped by the max TTL)" if self._lease.capped else ""
        logger.info(f"Renewed the Vault token: TTL {granted:.0f}s{capped}")

    def _login(self, reason: str) -> None:
        started = self._clock()
        with self._instrument("login", f"authenticating to Vault with {self.method.describe()}"):
            login = self.method.login(self._client)
        first, unchanged = self._lease is None, login.token == self._token
        self._token = login.token
        self._lease = TokenLease(obtained_at=started, ttl=login.ttl, renewable=login.renewable,
                                 full_ttl=login.full_ttl or login.ttl)
        self.logins += 1
        lifetime = (f"TTL {login.ttl:.0f}s, {'renewable' if login.renewable else 'not renewable'}"
                    if login.ttl else "no expiry")
        if unchanged and not first:
            logger.debug(f"Read {self.method.describe()} again ({reason}): unchanged, {lifetime}")
            return
        again = "" if first else f" again ({reason})"
        logger.info(f"Authenticated to Vault{again} with {self.method.describe()}: {lifetime}")
