"""ServiceKey spec → a typed, defaulted value object (pure).

The CRD schema already rejects most bad input at admission; this module applies the defaults that
depend on the operator's configuration and raises InvalidSpec for what the schema cannot express.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servicekey_operator.config import OperatorConfig
from servicekey_operator.errors import InvalidSpec
from servicekey_operator.keys import KeySpecError, effective_key_size
from servicekey_operator.vault.ownership import ADOPT_NAMESPACE_UID_ANNOTATION

ROTATE_ANNOTATION = "servicekey.io/rotate"
# A key rotated more often than verifiers refresh what they hold (a mounted ConfigMap: about a minute; a
# JWKS cache: minutes) is retired before they have it. The CRD enforces the same floor at admission.
MIN_ROTATION_PERIOD_SECONDS = 60.0
# A pod that mounts the ConfigMap sees a change at the kubelet's next sync of the pod: at most 90 s with the
# default syncFrequency (1m, jittered by up to half); measured 11-73 s on a real node while the operator pod was
# killed and the container runtime restarted (tests/e2e/test_node.py; docs/benchmarks.md). 3m is twice the
# kubelet's bound.
DEFAULT_PUBLISH_AHEAD_SECONDS = 180.0
# A rotate request whose value starts with this takes effect at once, whatever publishAhead says: the key it
# replaces signs nothing more (verifiers that do not have the new key yet reject its tokens meanwhile).
EMERGENCY_PREFIX = "emergency:"
_DIGEST = re.compile(rf"^({EMERGENCY_PREFIX})?sha256:[0-9a-f]{{64}}$")
# The grammar of the CRD's pattern (Go's time.ParseDuration): micro is "us", or "µs" with either the micro
# sign U+00B5 or the Greek mu U+03BC.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}
# The CRD's upper bounds (CEL), here too for objects admitted before them: a schedule or window beyond them is
# a typo, and would overflow the date arithmetic (Python's datetime ends in the year 9999).
MAX_PERIOD_SECONDS = 87600 * 3600.0  # 10 years
MAX_PUBLISH_AHEAD_SECONDS = 8760 * 3600.0  # 1 year
# Vault's built-in mounts: cubbyhole would silently accept (and keep, per token) whatever is written.
RESERVED_MOUNTS = frozenset({"cubbyhole", "sys", "identity", "auth"})
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def rotate_request_digest(request: str | None) -> str | None:
    """How a rotate request is kept in memory, in Vault and in status: its SHA-256 (the annotation may be
    256 KiB), marked ``emergency:`` when the request is one. Idempotent: a value that already is such a digest
    is returned as it is, and so is an empty one (which asks for nothing)."""
    if not request or _DIGEST.match(request):
        return request
    marker = EMERGENCY_PREFIX if request.startswith(EMERGENCY_PREFIX) else ""
    return marker + "sha256:" + hashlib.sha256(request.encode()).hexdigest()


def parse_duration_seconds(text: str) -> float:
    """Parse a Go-style duration (``720h``, ``1h30m``, ``2.5s``) into seconds."""
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise InvalidSpec(f"{text!r} is not a duration like 90s, 15m or 720h")
    return total


def _vault_mount(mount: str) -> str:
    # One mount name: with a '/' in it, mount and path together could reach below another namespace's folder
    # (mount "secret/servicekeys/other" + path "servicekeys/mine/x").
    if not _PATH_SEGMENT.match(mount) or mount in (".", ".."):
        raise InvalidSpec(f"vault.mount {mount!r} must be one mount name: letters, digits, '.', '_', '-' and no '/'")
    if mount in RESERVED_MOUNTS:
        raise InvalidSpec(f"vault.mount {mount!r} is one of Vault's own mounts, not a KV v2 or Transit engine")
    return mount


def _vault_path(path: str, field: str) -> str:
    segments = path.split("/")
    if not path or any(not _PATH_SEGMENT.match(s) or s in (".", "..") for s in segments):
        raise InvalidSpec(f"{field} {path!r} must be slash-separated segments of letters, digits, '.', '_', '-' "
                          "without '..' or empty segments")
    return path


@dataclass(frozen=True)
class RotationPolicy:
    """When and how keys rotate."""

    period_seconds: float | None
    retain_previous: int
    publish_ahead_seconds: float


@dataclass(frozen=True)
class DesiredKey:
    """What one ServiceKey asks for, with every default applied."""

    namespace: str
    name: str
    uid: str
    service_name: str
    algorithm: str
    key_size: int | None
    engine: str
    vault_mount: str
    vault_path: str
    record_mount: str
    configmap_name: str
    rotation: RotationPolicy
    deletion_policy: str
    # The digest of the servicekey.io/rotate annotation (``rotate_request_digest``).
    rotate_request: str | None
    target_namespaces: tuple[str, ...]
    namespace_selector: Mapping[str, Any] | None
    # The earlier namespace (of the same name) whose Vault records this ServiceKey may adopt.
    adopt_namespace_uid: str | None = None

    @property
    def emergency(self) -> bool:
        """The rotate request is an emergency: its key signs at once (``EMERGENCY_PREFIX``)."""
        return bool(self.rotate_request and self.rotate_request.startswith(EMERGENCY_PREFIX))


def desired_key(namespace: str, name: str, uid: str, spec: Mapping[str, Any],
                annotations: Mapping[str, str], config: OperatorConfig) -> DesiredKey:
    """Build the defaulted desired state of one ServiceKey; raise InvalidSpec on what admission let through."""
    algorithm = spec.get("algorithm", "RS256")
    try:
        key_size = effective_key_size(algorithm, spec.get("keySize"))
    except KeySpecError as bad:
        raise InvalidSpec(str(bad)) from bad
    rotation = spec.get("rotation") or {}
    period = rotation.get("period")
    period_seconds = parse_duration_seconds(period) if period else None
    if period_seconds is not None and period_seconds > MAX_PERIOD_SECONDS:
        raise InvalidSpec(f"rotation.period {period!r} is longer than 87600h (10 years)")
    if period_seconds is not None and period_seconds < MIN_ROTATION_PERIOD_SECONDS:
        raise InvalidSpec(f"rotation.period {period!r} is shorter than 1m: verifiers would not have a key "
                          "before it is retired")
    vault = spec.get("vault") or {}
    engine = vault.get("engine", "kv")
    if rotation.get("publishAhead"):
        publish_ahead_seconds = parse_duration_seconds(rotation["publishAhead"])
    else:
        publish_ahead_seconds = min(DEFAULT_PUBLISH_AHEAD_SECONDS, (period_seconds or math.inf) / 2)
    if publish_ahead_seconds > MAX_PUBLISH_AHEAD_SECONDS:
        raise InvalidSpec(f"rotation.publishAhead {rotation['publishAhead']!r} is longer than 8760h (a year)")
    if period_seconds is not None and publish_ahead_seconds >= period_seconds:
        raise InvalidSpec("rotation.publishAhead must be shorter than rotation.period")
    retain_previous = int(rotation.get("retainPrevious", 1))
    if not 0 <= retain_previous <= 10:
        raise InvalidSpec(f"rotation.retainPrevious must be 0..10, got {retain_previous}")
    default_mount = config.kv_mount if engine == "kv" else config.transit_mount
    mount = _vault_mount(vault["mount"]) if vault.get("mount") else default_mount
    path = _vault_path(vault.get("path") or f"{config.path_prefix}/{namespace}/{name}", "vault.path")
    # A key lives below its own namespace's folder, so no ServiceKey can name (and so read, promote or
    # delete) a secret that belongs to another namespace.
    own_folder = f"{config.path_prefix}/{namespace}/"
    if not path.startswith(config.path_prefix + "/"):
        raise InvalidSpec(f"vault.path {path!r} is outside the operator's prefix {config.path_prefix!r}/")
    if not path.startswith(own_folder):
        raise InvalidSpec(f"vault.path {path!r} must be below {own_folder!r}, this namespace's folder")
    public_key = spec.get("publicKey") or {}
    return DesiredKey(
        namespace=namespace, name=name, uid=uid,
        service_name=spec.get("serviceName") or name,
        algorithm=algorithm, key_size=key_size, engine=engine,
        vault_mount=mount, vault_path=path,
        # Transit keys keep their record (history, rotation requests, ownership) in KV.
        record_mount=mount if engine == "kv" else config.kv_mount,
        configmap_name=public_key.get("configMapName") or f"{name}-public",
        rotation=RotationPolicy(period_seconds, retain_previous, publish_ahead_seconds),
        deletion_policy=spec.get("deletionPolicy", "Retain"),
        rotate_request=rotate_request_digest(annotations.get(ROTATE_ANNOTATION) or None),
        target_namespaces=tuple(public_key.get("namespaces") or ()),
        namespace_selector=public_key.get("namespaceSelector"),
        adopt_namespace_uid=annotations.get(ADOPT_NAMESPACE_UID_ANNOTATION) or None,
    )
