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
# Any new value asks for a pass now, as a resync would (``servicekey-operator recheck``): after Vault was restored,
# every key is checked against it at once instead of within the resync period.
RECHECK_ANNOTATION = "servicekey.io/recheck"
# The operator's finalizer, on the keys whose deletion does work (``deletion_does_work``).
FINALIZER = "servicekey.io/finalizer"
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
# The grammar of the CRD's pattern (Go's time.ParseDuration without sign, bare "0", ".5s" or "1.s"): ASCII
# digits only (Python's \d also takes the digits of other scripts, and float() reads them); micro is "us", or
# "µs" with either the micro sign U+00B5 or the Greek mu U+03BC.
_DURATION_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_SECOND = 10**9
_UNIT_NANOSECONDS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": _SECOND,
                     "m": 60 * _SECOND, "h": 3600 * _SECOND}
_INT64_MAX = 2**63 - 1
# The CRD's maxLength of rotation.period and rotation.publishAhead.
MAX_DURATION_LENGTH = 32
# The CRD's upper bounds (CEL), here too for objects admitted before them: a schedule or window beyond them is
# a typo, and would overflow the date arithmetic (Python's datetime ends in the year 9999). Compared in integer
# nanoseconds, as CEL compares them: in float seconds, 87600h1ns is 87600h.
MAX_PERIOD_NANOSECONDS = 87600 * 3600 * _SECOND  # 10 years
MAX_PUBLISH_AHEAD_NANOSECONDS = 8760 * 3600 * _SECOND  # 1 year
MIN_ROTATION_PERIOD_NANOSECONDS = int(MIN_ROTATION_PERIOD_SECONDS) * _SECOND
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


def _go_fraction_nanoseconds(digits: str | None, unit: int) -> int:
    """Go's ParseDuration on the digits after the point: those that fit in an int64, scaled in float64 and
    truncated to whole nanoseconds (so "59.999999999999999s" is 59.999999999s, and "59.99999999999999999s" 60s)."""
    value, scale = 0, 1.0
    for digit in digits or "":
        if value > _INT64_MAX // 10 or value * 10 + int(digit) > _INT64_MAX + 1:
            break
        value, scale = value * 10 + int(digit), scale * 10
    return int(float(value) * (unit / scale))


def parse_duration_nanoseconds(text: str) -> int:
    """Parse a Go-style duration (``720h``, ``1h30m``, ``2.5s``) into nanoseconds, exactly as the API server's
    CEL ``duration()`` (Go's time.ParseDuration) does."""
    position, total = 0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        unit = _UNIT_NANOSECONDS[match.group(3)]
        total += int(match.group(1)) * unit + _go_fraction_nanoseconds(match.group(2), unit)
        position = match.end()
    if not text or position != len(text):
        raise InvalidSpec(f"{text!r} is not a duration like 90s, 15m or 720h")
    return total  # beyond Go's 2562047h CEL's duration() fails; the bounds of desired_key are far below it


def parse_duration_seconds(text: str) -> float:
    """Parse a Go-style duration (``720h``, ``1h30m``, ``2.5s``) into seconds."""
    return parse_duration_nanoseconds(text) / _SECOND


def _rotation_duration(rotation: Mapping[str, Any], field: str) -> int | None:
    """rotation.<field> in nanoseconds, None when absent; as the CRD's pattern and maxLength admit it."""
    text = rotation.get(field)
    if text is None:
        return None
    if len(text) > MAX_DURATION_LENGTH:
        raise InvalidSpec(f"rotation.{field} is longer than {MAX_DURATION_LENGTH} characters")
    return parse_duration_nanoseconds(text)


# The CRD's pattern of spec.publicKey.issuer (RE2 there: spelled out, \s differs): an https URL without query or
# fragment.
_ISSUER = re.compile(r"https://[^\t\n\f\r /?#]+(/[^\t\n\f\r ?#]*)?")


def _issuer(issuer: str | None) -> str | None:
    if issuer is not None and not (_ISSUER.fullmatch(issuer) and len(issuer) <= 2048):
        raise InvalidSpec(f"publicKey.issuer {issuer!r} must be an https URL without query or fragment")
    return issuer


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
    # spec.publicKey.http and .issuer: served by URL from the JWKS server, under this issuer (None: its default).
    serve_http: bool = False
    issuer: str | None = None
    # The digest of the servicekey.io/recheck annotation: a new value asks for a pass now.
    recheck_request: str | None = None

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
    period_ns = _rotation_duration(rotation, "period")
    if period_ns is not None and period_ns > MAX_PERIOD_NANOSECONDS:
        raise InvalidSpec(f"rotation.period {period!r} is longer than 87600h (10 years)")
    if period_ns is not None and period_ns < MIN_ROTATION_PERIOD_NANOSECONDS:
        raise InvalidSpec(f"rotation.period {period!r} is shorter than 1m: verifiers would not have a key "
                          "before it is retired")
    period_seconds = None if period_ns is None else period_ns / _SECOND
    vault = spec.get("vault") or {}
    engine = vault.get("engine", "kv")
    publish_ahead_ns = _rotation_duration(rotation, "publishAhead")
    if publish_ahead_ns is not None:
        if publish_ahead_ns > MAX_PUBLISH_AHEAD_NANOSECONDS:
            raise InvalidSpec(f"rotation.publishAhead {rotation['publishAhead']!r} is longer than 8760h (a year)")
        if period_ns is not None and publish_ahead_ns >= period_ns:
            raise InvalidSpec("rotation.publishAhead must be shorter than rotation.period")
        publish_ahead_seconds = publish_ahead_ns / _SECOND
    elif engine == "transit":
        # Opt-in: a staged Transit version already signs for signers that do not pin the record's key_version
        # (the README's example before Transit keys could be staged).
        publish_ahead_seconds = 0.0
    else:  # below the period: at most half of it
        publish_ahead_seconds = min(DEFAULT_PUBLISH_AHEAD_SECONDS, (period_seconds or math.inf) / 2)
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
        serve_http=bool(public_key.get("http", False)),
        issuer=_issuer(public_key.get("issuer")),
        recheck_request=rotate_request_digest(annotations.get(RECHECK_ANNOTATION) or None),
    )


def deletion_does_work(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether deleting this ServiceKey needs the operator, so that it must carry the finalizer: with
    deletionPolicy Delete (the key goes from Vault), or with copies in other namespaces, asked for or still
    there (owner references cannot cross namespaces). Anything else the API server's garbage collector ends:
    the ConfigMap by its owner reference, and Retain keeps Vault as it is.

    Read from the raw object, so a spec the operator refuses still gets the finalizer it asks for.
    """
    public_key = spec.get("publicKey") or {}
    # An empty namespaceSelector selects every namespace (as publish.py reads it).
    return (spec.get("deletionPolicy") == "Delete" or public_key.get("namespaceSelector") is not None
            or bool(public_key.get("namespaces")) or bool(status.get("publishedNamespaces")))
