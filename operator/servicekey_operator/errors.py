"""Our exceptions: each names the ``Ready`` condition reason it maps to and whether to retry.

Vault and Kubernetes errors are translated into these at their boundary (``vault/``, ``kube.py``);
``handlers.py`` turns them into status conditions and kopf retries in one place.
"""

from __future__ import annotations


class ServiceKeyError(Exception):
    """Base class: a reason for the ``Ready=False`` condition and a retry policy."""

    reason = "Error"
    retryable = True


class InvalidSpec(ServiceKeyError):
    """The spec passed admission but cannot be carried out (for example a transit-incompatible algorithm)."""

    reason = "InvalidSpec"
    retryable = False


class VaultUnavailable(ServiceKeyError):
    """Vault could not be reached, is sealed, or answered with a server error."""

    reason = "VaultUnavailable"


class VaultPermissionDenied(ServiceKeyError):
    """Vault refused the operator's token for this path (policy or auth problem)."""

    reason = "VaultPermissionDenied"


class VaultPathConflict(ServiceKeyError):
    """A secret at the key's Vault path belongs to someone else; it is never overwritten."""

    reason = "VaultPathConflict"
    retryable = False


class VaultWriteConflict(ServiceKeyError):
    """A check-and-set write lost a race: another writer moved the secret on; re-read and decide again."""

    reason = "Rotating"


class ConfigMapConflict(ServiceKeyError):
    """A ConfigMap with the target name exists and is not ours; it is never overwritten.

    ``holder`` is the ServiceKey (namespace, name) whose copy it is, when it is one: that key's next pass
    withdraws a copy that stands where this namespace publishes its own key.
    """

    reason = "ConfigMapConflict"
    retryable = False

    def __init__(self, message: str, holder: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class KubernetesUnavailable(ServiceKeyError):
    """The Kubernetes API could not be reached or failed with a server error."""

    reason = "KubernetesUnavailable"


class KubernetesRefused(ServiceKeyError):
    """The API server refused a request (403, 422, 400, ...: RBAC, an admission policy or webhook, a quota).

    ``api_reason`` is the reason of the API's Status (for example ``Forbidden`` or ``Invalid``). Retried with
    the key's backoff: whoever refused may change their mind.
    """

    reason = "KubernetesRefused"

    def __init__(self, message: str, api_reason: str) -> None:
        super().__init__(message)
        self.api_reason = api_reason


class InternalError(ServiceKeyError):
    """A pass failed in a way none of the others describe (a bug): reported, and retried with backoff."""

    reason = "InternalError"
