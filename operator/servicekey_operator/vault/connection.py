"""One authenticated hvac client per operator, and the translation of hvac errors into ours."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import requests

from servicekey_operator.config import VaultSettings
from servicekey_operator.errors import VaultPermissionDenied, VaultUnavailable, VaultWriteConflict
from servicekey_operator.metrics import VAULT_REQUEST_DURATION

CAS_MISMATCH_TEXT = "check-and-set"


@contextlib.contextmanager
def vault_call(operation: str, what: str) -> Iterator[None]:
    """Time one Vault request as ``operation`` and re-raise hvac and transport errors as ours.

    ``what`` names the request in error messages; it never includes secret data.
    """
    try:
        with VAULT_REQUEST_DURATION.labels(operation).time():
            yield
    except hvac.exceptions.Forbidden as denied:
        raise VaultPermissionDenied(f"Vault denied {what}: permission denied") from denied
    except hvac.exceptions.InvalidRequest as invalid:
        if CAS_MISMATCH_TEXT in str(invalid):
            raise VaultWriteConflict(f"{what}: another writer changed the secret first") from invalid
        raise VaultUnavailable(f"Vault rejected {what}: {invalid}") from invalid
    except (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError,
            hvac.exceptions.BadGateway, hvac.exceptions.RateLimitExceeded,
            hvac.exceptions.UnexpectedError) as down:
        raise VaultUnavailable(f"Vault failed {what}: {type(down).__name__}") from down
    except (requests.ConnectionError, requests.Timeout) as unreachable:
        raise VaultUnavailable(f"Vault unreachable during {what}: {type(unreachable).__name__}") from unreachable
    except requests.exceptions.SSLError as tls:
        raise VaultUnavailable(f"TLS to Vault failed during {what}: {tls}") from tls


class VaultConnection:
    """Builds and hands out the hvac client; logs in again when the token stops working."""

    def __init__(self, settings: VaultSettings, timeout_seconds: float = 10.0) -> None:
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._client: hvac.Client | None = None

    def _new_client(self) -> hvac.Client:
        settings = self.settings
        verify: bool | str = str(settings.ca_cert) if settings.ca_cert else True
        cert = (str(settings.client_cert), str(settings.client_key)) if settings.client_cert else None
        client = hvac.Client(url=settings.addr, namespace=settings.namespace, verify=verify, cert=cert,
                             timeout=self.timeout_seconds)
        if settings.auth_method == "token":
            token = settings.token
            if settings.token_file:
                token = Path(settings.token_file).read_text().strip()
            client.token = token
        return client

    @property
    def client(self) -> hvac.Client:
        """The shared client (created on first use)."""
        with self._lock:
            if self._client is None:
                self._client = self._new_client()
            return self._client
