"""Operator settings from the environment: one frozen dataclass, validated once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

AUTH_METHODS = ("token", "kubernetes", "approle")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


@dataclass(frozen=True)
class VaultSettings:
    """How to reach and authenticate to Vault."""

    addr: str
    auth_method: str = "token"
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    role: str | None = None
    auth_mount: str | None = None
    sa_token_file: Path = Path(DEFAULT_SA_TOKEN_FILE)
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    namespace: str | None = None
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tls_server_name: str | None = None


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator is told by its deployment (see the README's configuration table)."""

    vault: VaultSettings
    kv_mount: str = "secret"
    transit_mount: str = "transit"
    path_prefix: str = "servicekeys"
    watch_namespaces: tuple[str, ...] = ()
    # With watch_namespaces (namespaced RBAC): the other namespaces the operator may publish copies into. Copies are
    # then looked for in these and the watched ones only, where its Roles let it list ConfigMaps.
    publish_namespaces: tuple[str, ...] = ()
    metrics_port: int = 8080
    health_port: int = 8081
    log_format: str = "text"
    log_level: str = "info"
    peering: str | None = None
    peering_lifetime_seconds: int = 60
    resync_seconds: float = 600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read and validate the settings; raise ConfigError naming the first bad variable."""
        env = os.environ if env is None else env

        def text(name: str, default: str | None = None) -> str | None:
            value = env.get(name, "").strip()
            return value or default

        def path(name: str) -> Path | None:
            value = text(name)
            return Path(value) if value else None

        def port(name: str, default: int) -> int:
            raw = text(name, str(default)) or str(default)
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ConfigError(f"{name} must be a port number 1..65535, got {raw!r}")
            return int(raw)

        addr = text("VAULT_ADDR")
        if not addr:
            raise ConfigError("VAULT_ADDR is required (for example https://vault.vault.svc:8200)")
        auth_method = text("SERVICEKEY_VAULT_AUTH_METHOD", "token") or "token"
        if auth_method not in AUTH_METHODS:
            raise ConfigError(f"SERVICEKEY_VAULT_AUTH_METHOD must be one of {AUTH_METHODS}, got {auth_method!r}")
        vault = VaultSettings(
            addr=addr, auth_method=auth_method, token=text("VAULT_TOKEN"), token_file=path("VAULT_TOKEN_FILE"),
            role=text("SERVICEKEY_VAULT_ROLE"), auth_mount=text("SERVICEKEY_VAULT_AUTH_MOUNT"),
            sa_token_file=Path(text("SERVICEKEY_VAULT_SA_TOKEN_FILE", DEFAULT_SA_TOKEN_FILE) or ""),
            role_id_file=path("SERVICEKEY_VAULT_ROLE_ID_FILE"),
            secret_id_file=path("SERVICEKEY_VAULT_SECRET_ID_FILE"),
            namespace=text("VAULT_NAMESPACE"), ca_cert=path("VAULT_CACERT"),
            client_cert=path("VAULT_CLIENT_CERT"), client_key=path("VAULT_CLIENT_KEY"),
            tls_server_name=text("VAULT_TLS_SERVER_NAME"),
        )
        if auth_method == "token" and not (vault.token or vault.token_file):
            raise ConfigError("token auth needs VAULT_TOKEN or VAULT_TOKEN_FILE")
        if auth_method == "kubernetes" and not vault.role:
            raise ConfigError("kubernetes auth needs SERVICEKEY_VAULT_ROLE")
        if auth_method == "approle" and not (vault.role_id_file and vault.secret_id_file):
            raise ConfigError("approle auth needs SERVICEKEY_VAULT_ROLE_ID_FILE and SERVICEKEY_VAULT_SECRET_ID_FILE")
        log_format = text("SERVICEKEY_LOG_FORMAT", "text") or "text"
        if log_format not in ("text", "json"):
            raise ConfigError(f"SERVICEKEY_LOG_FORMAT must be text or json, got {log_format!r}")
        log_level = (text("SERVICEKEY_LOG_LEVEL", "info") or "info").lower()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"SERVICEKEY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
        watch, publish = (tuple(ns.strip() for ns in (text(variable, "") or "").split(",") if ns.strip())
                          for variable in ("SERVICEKEY_WATCH_NAMESPACES", "SERVICEKEY_PUBLISH_NAMESPACES"))
        prefix = (text("SERVICEKEY_PATH_PREFIX", "servicekeys") or "servicekeys").strip("/")
        if not prefix or ".." in prefix.split("/"):
            raise ConfigError(f"SERVICEKEY_PATH_PREFIX must be a relative path without '..', got {prefix!r}")
        resync = text("SERVICEKEY_RESYNC_SECONDS", "600") or "600"
        try:
            resync_seconds = float(resync)
        except ValueError as bad:
            raise ConfigError(f"SERVICEKEY_RESYNC_SECONDS must be a number, got {resync!r}") from bad
        lifetime = text("SERVICEKEY_PEERING_LIFETIME", "60") or "60"
        if not lifetime.isdigit() or not 10 <= int(lifetime) <= 3600:
            raise ConfigError(f"SERVICEKEY_PEERING_LIFETIME must be whole seconds 10..3600, got {lifetime!r}")
        return cls(
            vault=vault,
            kv_mount=(text("SERVICEKEY_KV_MOUNT", "secret") or "secret").strip("/"),
            transit_mount=(text("SERVICEKEY_TRANSIT_MOUNT", "transit") or "transit").strip("/"),
            path_prefix=prefix, watch_namespaces=watch, publish_namespaces=publish,
            metrics_port=port("SERVICEKEY_METRICS_PORT", 8080), health_port=port("SERVICEKEY_HEALTH_PORT", 8081),
            log_format=log_format, log_level=log_level, peering=text("SERVICEKEY_PEERING"),
            peering_lifetime_seconds=int(lifetime),
            resync_seconds=resync_seconds,
        )
