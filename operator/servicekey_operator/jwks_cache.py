"""What the JWKS server serves, by key: built from the operator's source ConfigMaps, pure (no I/O).

The documents are the ConfigMap's own bytes (``jwks.json``, ``public.pem``), so a verifier that fetches by URL
sees exactly what a pod that mounts the ConfigMap sees, in the same order; each carries a strong ETag
(RFC 9110 section 8.8.3) computed once, when the ConfigMap changes, not per request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from servicekey_operator.publish import ISSUER_ANNOTATION, NAME_LABEL

KeyRef = tuple[str, str]  # (namespace, ServiceKey name)


@dataclass(frozen=True)
class Document:
    """One response body with its media type and strong ETag (quoted, as sent)."""

    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Document:
        """``body`` with the ETag ``"<base64url of its SHA-256>"``."""
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        return cls(body, content_type, f'"{digest}"')


@dataclass(frozen=True)
class ServedKey:
    """The JWK Set and current PEM of one ServiceKey, the issuer it names, and the signing algorithms in the set."""

    jwks: Document
    pem: Document
    issuer: str
    algorithms: tuple[str, ...]

    def discovery(self, base_url: str, ref: KeyRef) -> Document:
        """The key's OIDC-style discovery document (OpenID Connect Discovery 1.0, section 3: the members a
        verifier uses): ``issuer`` (spec.publicKey.issuer, default the key's URL), ``jwks_uri`` and the signing
        algorithms."""
        key_url = f"{base_url}/keys/{ref[0]}/{ref[1]}"
        body = json.dumps({"issuer": self.issuer or key_url, "jwks_uri": f"{key_url}/jwks.json",
                           "id_token_signing_alg_values_supported": list(self.algorithms)}, indent=2) + "\n"
        return Document.of(body.encode(), "application/json")


def served_key(configmap: Mapping[str, Any]) -> tuple[KeyRef, ServedKey] | None:
    """The key a source ConfigMap serves, or None when it holds no JWK Set (not yet published, or edited)."""
    metadata = configmap.get("metadata") or {}
    data = configmap.get("data") or {}
    name = (metadata.get("labels") or {}).get(NAME_LABEL)
    jwks, pem = data.get("jwks.json"), data.get("public.pem")
    if not name or not jwks or not pem:
        return None
    try:
        algorithms = tuple(dict.fromkeys(str(key["alg"]) for key in json.loads(jwks)["keys"]))
    except (ValueError, KeyError, TypeError):
        return None
    issuer = (metadata.get("annotations") or {}).get(ISSUER_ANNOTATION) or ""
    return (metadata["namespace"], name), ServedKey(
        jwks=Document.of(jwks.encode(), "application/jwk-set+json"),  # RFC 7517 section 8.5
        pem=Document.of(pem.encode(), "application/x-pem-file"), issuer=issuer, algorithms=algorithms)


class KeyCache:
    """The served keys, replaced whole after a list and changed one by one by watch events; safe to read from the
    event loop while the watch thread writes (each entry is immutable and swapped in one assignment)."""

    def __init__(self) -> None:
        self._keys: dict[KeyRef, ServedKey] = {}
        # Which ConfigMap serves which key, both ways: a ConfigMap deleted drops its key only if it is still the
        # one serving it (after a configMapName change the new ConfigMap serves it, and the old one goes).
        self._sources: dict[tuple[str, str], KeyRef] = {}
        self._served_by: dict[KeyRef, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self.listed = threading.Event()
        self.updated_at = time.monotonic()

    def get(self, ref: KeyRef) -> ServedKey | None:
        """The served key, or None."""
        return self._keys.get(ref)

    def __len__(self) -> int:
        return len(self._keys)

    def replace_all(self, configmaps: Iterable[Mapping[str, Any]], namespace: str | None = None) -> None:
        """A full list (of ``namespace``, or of every namespace when None): what it lacks is no longer served."""
        with self._lock:
            for source in [source for source in self._sources if namespace in (None, source[0])]:
                self._drop(source)
            for configmap in configmaps:
                self._put(configmap)
            self.updated_at = time.monotonic()

    def apply(self, event_type: str, configmap: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED)."""
        with self._lock:
            if event_type == "DELETED":
                self._drop(_source(configmap))
            else:
                self._put(configmap)
            self.updated_at = time.monotonic()

    def touch(self) -> None:
        """The watch confirmed that nothing changed (a bookmark, or a quiet reconnect)."""
        self.updated_at = time.monotonic()

    def _put(self, configmap: Mapping[str, Any]) -> None:
        source = _source(configmap)
        self._drop(source)
        found = served_key(configmap)
        if found is not None:
            ref, key = found
            self._keys[ref] = key
            self._sources[source] = ref
            self._served_by[ref] = source

    def _drop(self, source: tuple[str, str]) -> None:
        ref = self._sources.pop(source, None)
        if ref is not None and self._served_by.get(ref) == source:
            del self._served_by[ref]
            del self._keys[ref]


def _source(configmap: Mapping[str, Any]) -> tuple[str, str]:
    metadata = configmap.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")
