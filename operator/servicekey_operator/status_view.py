"""What ``servicekey-operator status`` shows, built from the objects the API server returned (pure).

Nothing here talks to the API server: the CLI reads the ServiceKeys (and, for one key, its ConfigMap and
Events) and these functions turn them into the table, the detailed view, ``-o json|yaml`` and the exit code.
Times are compared with a ``now`` given by the caller.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

NONE = "<none>"
# The Ready condition's message while a key is staged (status.ready_status): "key A signs; B is published and
# signs from 2024-05-01T12:00:05Z".
_SIGNS_FROM = re.compile(r"signs from (\S+?)\.?$")
TABLE_COLUMNS = ("NAME", "ALGORITHM", "KEY ID", "READY", "REASON", "NEXT ROTATION", "AGE")
WIDE_COLUMNS = ("PENDING KEY ID", "KEY VERSION", "VAULT PATH", "CONFIGMAP")
# How many of a key's Events the detailed view lists (the newest).
EVENT_LIMIT = 10


def parse_time(value: str | None) -> datetime.datetime | None:
    """An RFC 3339 time from the API (``...Z``, with or without fractions), or None when absent or unreadable."""
    if not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def human_duration(delta: datetime.timedelta) -> str:
    """A duration the way kubectl prints ages (k8s.io/apimachinery's duration.HumanDuration): ``45s``,
    ``3m20s``, ``12m``, ``5h7m``, ``30h``, ``3d4h``, ``60d``, ``2y10d``."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = divmod(hours // 24, 365)
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def age(value: str | None, now: datetime.datetime) -> str:
    """How long ago an API time was (kubectl's AGE), or ``<none>``."""
    moment = parse_time(value)
    return human_duration(now - moment) if moment else NONE


def relative(value: str | None, now: datetime.datetime) -> str:
    """A time in the future as ``in 29d``, one in the past as ``3m ago``; ``<none>`` when absent."""
    moment = parse_time(value)
    if moment is None:
        return NONE
    if moment >= now:
        return f"in {human_duration(moment - now)}"
    return f"{human_duration(now - moment)} ago"


def ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Ready condition of a ServiceKey (empty when the operator has not written one yet)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Whether the ServiceKey's Ready condition is True (a key that is Rotating is Ready: its key still signs)."""
    return ready_condition(obj).get("status") == "True"


def exit_code(objects: Sequence[Mapping[str, Any]]) -> int:
    """``status``'s exit code: 1 when any listed key is not Ready, 0 otherwise (also when none is listed)."""
    return 0 if all(is_ready(obj) for obj in objects) else 1


def pending_activation(status: Mapping[str, Any]) -> str | None:
    """When the pending key starts signing, as the Ready condition's message names it (None without one)."""
    if not status.get("pendingKeyId"):
        return None
    condition = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    match = _SIGNS_FROM.search(condition.get("message") or "")
    return match.group(1) if match else None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _row(obj: Mapping[str, Any], now: datetime.datetime, *, wide: bool, with_namespace: bool) -> list[str]:
    meta, status, condition = _meta(obj), _status(obj), ready_condition(obj)
    row = [meta.get("namespace") or ""] if with_namespace else []
    row += [meta.get("name") or "", status.get("algorithm") or NONE, status.get("keyId") or NONE,
            condition.get("status") or "Unknown", condition.get("reason") or NONE,
            relative(status.get("nextRotationTime"), now), age(meta.get("creationTimestamp"), now)]
    if wide:
        version = status.get("keyVersion")
        row += [status.get("pendingKeyId") or NONE, NONE if version is None else str(version),
                status.get("vaultPath") or NONE, status.get("configMapName") or NONE]
    return row


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them (no trailing spaces)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def table(objects: Sequence[Mapping[str, Any]], now: datetime.datetime, *, wide: bool = False,
          with_namespace: bool = False) -> str:
    """The list view: one line per ServiceKey under NAME, ALGORITHM, KEY ID, READY, REASON, NEXT ROTATION, AGE
    (``wide``: also the pending key id, the Vault key version and path, the ConfigMap); a NAMESPACE column first
    when listing across namespaces."""
    header = (["NAMESPACE"] if with_namespace else []) + list(TABLE_COLUMNS) + (list(WIDE_COLUMNS) if wide else [])
    return columns([header, *(_row(obj, now, wide=wide, with_namespace=with_namespace) for obj in objects)])


def without_managed_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as ``kubectl get -o json`` shows it: without metadata.managedFields."""
    copy = dict(obj)
    if "managedFields" in (copy.get("metadata") or {}):
        copy["metadata"] = {k: v for k, v in copy["metadata"].items() if k != "managedFields"}
    return copy


def as_document(objects: Sequence[Mapping[str, Any]], single: bool) -> dict[str, Any]:
    """What ``-o json|yaml`` prints: the object itself for one named key, else a ``List`` as kubectl prints."""
    if single:
        return without_managed_fields(objects[0])
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
            "items": [without_managed_fields(obj) for obj in objects]}


def render_document(document: Mapping[str, Any], output: str) -> str:
    """``document`` as JSON (indented like kubectl) or YAML."""
    if output == "json":
        return json.dumps(document, indent=4)
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).rstrip("\n")


@dataclass(frozen=True)
class Published:
    """What the key's ConfigMap says: the kids of its jwks.json in order, or why they could not be read."""

    kids: tuple[str, ...] = ()
    problem: str | None = None
    # Legacy kid -> the kid of the key it repeats (an imported key's kids of before).
    aliases: Mapping[str, str] = field(default_factory=dict)


def published_kids(configmap: Mapping[str, Any] | None, problem: str | None = None) -> Published:
    """The kids in a ConfigMap's jwks.json (current first, then pending and retained ones)."""
    if problem:
        return Published(problem=problem)
    if configmap is None:
        return Published(problem="the ConfigMap does not exist")
    text = (configmap.get("data") or {}).get("jwks.json")
    if text is None:
        return Published(problem="the ConfigMap has no jwks.json")
    try:
        keys = json.loads(text).get("keys") or []
    except (ValueError, AttributeError):
        return Published(problem="its jwks.json is not a JWK Set")
    jwks = [key for key in keys if isinstance(key, Mapping)]
    first_of: dict[str, str] = {}
    aliases = {}
    for jwk in jwks:
        parameters = json.dumps({name: value for name, value in jwk.items() if name != "kid"}, sort_keys=True)
        kid = str(jwk.get("kid"))
        if parameters in first_of and jwk.get("kty"):
            aliases[kid] = first_of[parameters]
        else:
            first_of[parameters] = kid
    return Published(kids=tuple(str(jwk.get("kid")) for jwk in jwks), aliases=aliases)


def _event_time(event: Mapping[str, Any]) -> str | None:
    series = event.get("series") or {}
    return (series.get("lastObservedTime") or event.get("lastTimestamp") or event.get("eventTime")
            or event.get("firstTimestamp") or _meta(event).get("creationTimestamp"))


def sorted_events(events: Sequence[Mapping[str, Any]], limit: int = EVENT_LIMIT) -> list[Mapping[str, Any]]:
    """The newest ``limit`` events, oldest first (as ``kubectl describe`` lists them)."""
    far_past = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    ordered = sorted(events, key=lambda event: parse_time(_event_time(event)) or far_past)
    return ordered[-limit:] if limit else ordered


def _event_age(event: Mapping[str, Any], now: datetime.datetime) -> str:
    last = age(_event_time(event), now)
    count = int(event.get("count") or (event.get("series") or {}).get("count") or 1)
    if count > 1:
        first = event.get("firstTimestamp") or event.get("eventTime") or _meta(event).get("creationTimestamp")
        return f"{last} (x{count} over {age(first, now)})"
    return last


_LABEL_WIDTH = 16


def _field_lines(fields: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{(label + ':').ljust(_LABEL_WIDTH)}{value}".rstrip() for label, value in fields]


def _when(value: str | None, now: datetime.datetime) -> str:
    return f"{value} ({relative(value, now)})" if value else NONE


def _rotation_settings(spec: Mapping[str, Any]) -> str:
    rotation = spec.get("rotation") or {}
    period = rotation.get("period") or "<none> (rotates on request only)"
    ahead = rotation.get("publishAhead") or "<default> (3m, or half the period)"
    return f"period {period}, publishAhead {ahead}, retainPrevious {rotation.get('retainPrevious', 1)}"


def key_rows(status: Mapping[str, Any], published: Published, now: datetime.datetime) -> list[list[str]]:
    """The keys of a ServiceKey, in the order of its jwks.json (current, pending, retained): kid, state, when.
    A current or pending key that the ConfigMap does not list (yet) comes first, marked so."""
    current, pending = status.get("keyId"), status.get("pendingKeyId")
    activation = pending_activation(status)
    since = status.get("lastRotationTime")

    def row(kid: str) -> list[str]:
        listed = published.problem is not None or kid in published.kids
        unlisted = "" if listed else ", not in jwks.json"
        if kid == current:
            return [kid, f"signing{unlisted}", f"since {_when(since, now)}" if since else ""]
        if kid == pending:
            return [kid, f"pending{unlisted}", f"signs from {_when(activation, now)}" if activation else
                    "does not sign yet"]
        if kid in published.aliases:
            return [kid, "legacy kid", f"of {published.aliases[kid]}"]
        return [kid, "retained", ""]

    kids = [kid for kid in (current, pending) if kid and kid not in published.kids]
    kids += [kid for kid in published.kids if kid not in kids]
    return [row(kid) for kid in kids]


def detail(obj: Mapping[str, Any], published: Published, events: Sequence[Mapping[str, Any]],
           now: datetime.datetime, events_problem: str | None = None) -> str:
    """The detailed view of one ServiceKey: its Ready condition, its keys (current, pending with the time it
    starts signing, retained: from status and the ConfigMap's jwks.json), the next rotation, where it is in Vault,
    its copies and refusals, and its latest events."""
    meta, status, spec, condition = _meta(obj), _status(obj), obj.get("spec") or {}, ready_condition(obj)
    ready = condition.get("status") or "Unknown"
    if condition.get("reason"):
        ready += f" ({condition['reason']})"
    fields: list[tuple[str, str]] = [("Name", meta.get("name") or ""), ("Namespace", meta.get("namespace") or ""),
                                     ("Ready", ready)]
    if condition.get("message"):
        fields.append(("Message", condition["message"]))
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        fields.append(("Observed", f"generation {observed}; the spec is at generation {generation} (the operator "
                                   f"has not answered the last change yet)"))
    if meta.get("deletionTimestamp"):
        fields.append(("Deleting", f"since {_when(meta['deletionTimestamp'], now)}"))
    fields.append(("Algorithm", status.get("algorithm") or spec.get("algorithm") or NONE))
    configmap = status.get("configMapName")
    rows = key_rows(status, published, now)
    if not rows:
        keys = NONE
    elif published.problem:
        keys = f"<jwks.json unknown: {published.problem}>"
    else:
        keys = f"as published in ConfigMap {configmap} (jwks.json)"
    fields.append(("Keys", keys))
    lines = _field_lines(fields)
    if rows:
        lines += ["  " + line for line in columns([["KEY ID", "STATE", "WHEN"], *rows]).splitlines()]
    version = status.get("keyVersion")
    fields = [("Next rotation", _when(status.get("nextRotationTime"), now)),
              ("Rotation", _rotation_settings(spec)),
              ("Vault path", status.get("vaultPath") or NONE),
              ("Key version", NONE if version is None else str(version)),
              ("Copies", ", ".join(status.get("publishedNamespaces") or []) or NONE)]
    refused = status.get("refusedNamespaces") or []
    fields.append(("Refused", NONE if not refused else ""))
    lines += _field_lines(fields)
    if refused:
        lines += ["  " + line for line in columns(
            [["NAMESPACE", "REASON", "MESSAGE"],
             *([r.get("namespace") or "", r.get("reason") or "", r.get("message") or ""] for r in refused)]
        ).splitlines()]
    if events_problem:
        lines += _field_lines([("Events", f"<unknown: {events_problem}>")])
    elif not events:
        lines += _field_lines([("Events", NONE)])
    else:
        lines.append("Events:")
        event_rows = [["LAST SEEN", "TYPE", "REASON", "MESSAGE"]]
        event_rows += [[_event_age(event, now), event.get("type") or "", event.get("reason") or "",
                        " ".join((event.get("message") or event.get("note") or "").split())]
                       for event in sorted_events(events)]
        lines += ["  " + line for line in columns(event_rows).splitlines()]
    return "\n".join(lines)
