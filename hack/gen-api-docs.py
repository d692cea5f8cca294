#!/usr/bin/env python3
"""Generate docs/api.md, the API reference, from the ServiceKey CRD.

Every field of every served version's spec and status gets an entry: its path, type, default, validation
(enum, pattern, lengths, bounds, list and map semantics, required members, CEL rules with their messages) and
description, all read from crds/servicekey.io_servicekeys.yaml. The output depends on the CRD alone (no
dates, no environment), so tests/unit/test_api_docs.py can regenerate it in memory and fail when the file in
the repository is stale.

    python3 hack/gen-api-docs.py            write docs/api.md
    python3 hack/gen-api-docs.py --check    exit 1 if docs/api.md differs from what the CRD gives

Needs PyYAML only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = Path("crds/servicekey.io_servicekeys.yaml")
OUTPUT_PATH = Path("docs/api.md")
COMMAND = "python3 hack/gen-api-docs.py"

# Characters that would otherwise be read as Markdown or HTML in prose taken from the CRD.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_\[\]<>|]")
_HTML_ENTITIES = {"<": "&lt;", ">": "&gt;"}


def escape(text: str) -> str:
    """Prose from the CRD as literal Markdown text on one line (``<name>`` stays visible, ``RS*`` is no emphasis)."""
    escaped = _MARKDOWN_SPECIAL.sub(lambda match: _HTML_ENTITIES.get(match.group(0), "\\" + match.group(0)), text)
    return one_line(escaped)


def code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    fence = "`"
    while fence in text:
        fence += "`"
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def one_line(text: str) -> str:
    """``text`` on one line, runs of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def github_slug(heading: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as '-', duplicates numbered."""
    slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return slug if count == 0 else f"{slug}-{count}"


class Field(NamedTuple):
    """One documented field: where it is and its schema."""

    path: str
    schema: Mapping[str, Any]
    required: bool


def type_name(schema: Mapping[str, Any]) -> str:
    """The field's type as a reader expects it: ``string (date-time)``, ``[]string``, ``map[string]string``."""
    kind = schema.get("type")
    if kind == "array":
        return "[]" + type_name(schema.get("items") or {})
    if kind == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return "object (any fields)"
        values = schema.get("additionalProperties")
        if isinstance(values, Mapping):
            return f"map[string]{type_name(values)}"
        return "object"
    name = str(kind or "any")
    if schema.get("format"):
        name += f" ({schema['format']})"
    return name


def render_value(value: Any) -> str:
    """A default or enum value: strings bare, everything else as JSON, in code."""
    if isinstance(value, str):
        return code(value)
    return code(json.dumps(value, sort_keys=True, ensure_ascii=False))


def _bounds(schema: Mapping[str, Any], low: str, high: str, unit: str) -> str | None:
    minimum, maximum = schema.get(low), schema.get(high)
    if minimum is not None and maximum is not None:
        return f"{minimum} to {maximum} {unit}".rstrip()
    if minimum is not None:
        return f"at least {minimum} {unit}".rstrip()
    if maximum is not None:
        return f"at most {maximum} {unit}".rstrip()
    return None


def constraints(schema: Mapping[str, Any]) -> list[str]:
    """The structural validation of one schema (not its CEL rules), as short phrases."""
    found: list[str] = []
    if "enum" in schema:
        found.append("one of " + ", ".join(render_value(value) for value in schema["enum"]))
    length = _bounds(schema, "minLength", "maxLength", "characters")
    if length:
        found.append(length)
    if "pattern" in schema:
        found.append("matches " + code(schema["pattern"]))
    value_range = _bounds(schema, "minimum", "maximum", "")
    if value_range:
        found.append(value_range)
    items = _bounds(schema, "minItems", "maxItems", "items")
    if items:
        found.append(items)
    properties = _bounds(schema, "minProperties", "maxProperties", "entries")
    if properties:
        found.append(properties)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        found.append("list type `set`: no duplicates, merged by value")
    elif list_type == "map":
        keys = ", ".join(code(key) for key in schema.get("x-kubernetes-list-map-keys") or [])
        found.append(f"list type `map`: one entry per {keys}")
    elif list_type == "atomic":
        found.append("list type `atomic`: replaced as a whole")
    if schema.get("x-kubernetes-map-type") == "atomic":
        found.append("map type `atomic`: replaced as a whole")
    if schema.get("required"):
        found.append("requires " + ", ".join(code(name) for name in schema["required"]))
    return found


def rule_lines(rules: list[Mapping[str, Any]], indent: str = "") -> list[str]:
    """One bullet per CEL rule: its message, when it applies, its reason and field, and the rule itself."""
    lines: list[str] = []
    for rule in rules:
        expression = one_line(rule["rule"])
        # What the API server says when no message is given: "failed rule: <rule>".
        message = one_line(rule.get("message") or "") or f"failed rule: {expression}"
        notes = []
        if "oldSelf" in expression:
            notes.append("on update only: compares with the stored object")
        if rule.get("messageExpression"):
            notes.append("the message returned also names the values")
        if rule.get("reason"):
            notes.append(f"reason {code(rule['reason'])}")
        if rule.get("fieldPath"):
            notes.append(f"reported at {code(rule['fieldPath'])}")
        suffix = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"{indent}- \"{escape(message)}\"{suffix}. CEL: {code(expression)}")
    return lines


def fields(schema: Mapping[str, Any], path: str) -> Iterator[Field]:
    """Every field below an object schema, depth first in the CRD's order. Scalar list items and map values
    are described with their list or map; list items that are objects get entries ``<list>[].<field>``."""
    required = set(schema.get("required") or [])
    for name, child in (schema.get("properties") or {}).items():
        child_path = f"{path}.{name}"
        yield Field(child_path, child, name in required)
        yield from _below(child, child_path)


def _below(schema: Mapping[str, Any], path: str) -> Iterator[Field]:
    if schema.get("type") == "object" and schema.get("properties"):
        yield from fields(schema, path)
    elif schema.get("type") == "array":
        items = schema.get("items") or {}
        if items.get("type") == "object" and items.get("properties"):
            yield from fields(items, f"{path}[]")


def field_bullets(field: Field) -> list[str]:
    """Type, default, validation and CEL rules of one field, as Markdown bullets."""
    schema = field.schema
    lines = [f"- **Type**: {code(type_name(schema))}" + (" (required)" if field.required else "")]
    if "default" in schema:
        lines.append(f"- **Default**: {render_value(schema['default'])} (set by the API server)")
    checks = constraints(schema)
    items = schema.get("items") if schema.get("type") == "array" else None
    if isinstance(items, Mapping) and items.get("type") != "object" and constraints(items):
        checks.append("each item: " + ", ".join(constraints(items)))
    values = schema.get("additionalProperties")
    if isinstance(values, Mapping) and constraints(values):
        checks.append("each value: " + ", ".join(constraints(values)))
    if checks:
        lines.append("- **Validation**: " + "; ".join(checks))
    rules = list(schema.get("x-kubernetes-validations") or [])
    if isinstance(items, Mapping):
        rules += list(items.get("x-kubernetes-validations") or [])
    if rules:
        lines.append("- **Admission rules** (CEL):")
        lines += rule_lines(rules, indent="  ")
    return lines


def field_description(field: Field) -> str | None:
    """The field's description, and its list items' when they have one, as escaped Markdown."""
    description = field.schema.get("description")
    items = field.schema.get("items") if field.schema.get("type") == "array" else None
    if isinstance(items, Mapping) and items.get("description"):
        item_text = f"Each item: {one_line(items['description'])}"
        description = f"{one_line(description)} {item_text}" if description else item_text
    return escape(description) if description else None


def summary_table(entries: list[tuple[Field, str]]) -> list[str]:
    """Field, type and default of every entry, linked to its section."""
    lines = ["| field | type | default |", "| --- | --- | --- |"]
    for field, anchor in entries:
        default = render_value(field.schema["default"]) if "default" in field.schema else ""
        lines.append(f"| [{code(field.path)}](#{anchor}) | {code(type_name(field.schema))} | {default} |")
    return lines


def render_version(crd: Mapping[str, Any], version: Mapping[str, Any], slugs: dict[str, int]) -> list[str]:
    """The reference of one version: printer columns, object-level rules, then spec and status."""
    spec = crd["spec"]
    kind = spec["names"]["kind"]
    group = spec["group"]
    schema = version["schema"]["openAPIV3Schema"]
    title = f"{group}/{version['name']}"
    github_slug(title, slugs)
    served = "served" if version.get("served") else "not served"
    storage = ", the storage version" if version.get("storage") else ""
    subresources = ", ".join(code(name) for name in (version.get("subresources") or {}))
    lines = [f"## {title}", "", f"`apiVersion: {title}`, `kind: {kind}`: {served}{storage}."
             + (f" Subresources: {subresources}." if subresources else ""), ""]
    if schema.get("description"):
        lines += [escape(schema["description"]), ""]

    columns = version.get("additionalPrinterColumns") or []
    if columns:
        heading = f"Columns of `kubectl get` ({version['name']})"
        github_slug(heading, slugs)
        lines += [f"### {heading}", "", "| column | JSONPath | type | shown | description |",
                  "| --- | --- | --- | --- | --- |"]
        for column in columns:
            shown = "with `-o wide`" if column.get("priority", 0) > 0 else "always"
            lines.append(f"| {escape(column['name'])} | {code(column['jsonPath'])} | {column['type']} | {shown} | "
                         f"{escape(column.get('description') or '')} |")
        lines.append("")

    heading = f"Rules on the whole object ({version['name']})"
    github_slug(heading, slugs)
    lines += [f"### {heading}", ""]
    object_checks = constraints(schema)
    if object_checks:
        lines += [f"- {check}" for check in object_checks]
    lines += rule_lines(list(schema.get("x-kubernetes-validations") or []))
    lines.append("")

    for part in ("spec", "status"):
        part_schema = (schema.get("properties") or {}).get(part)
        if part_schema is None:
            continue
        heading = f"{part} ({version['name']})"
        github_slug(heading, slugs)
        lines += [f"### {heading}", ""]
        part_field = Field(part, part_schema, part in set(schema.get("required") or []))
        description = field_description(part_field)
        lines += [description, ""] if description else []
        lines += [*field_bullets(part_field), ""]
        entries = [(field, github_slug(code(field.path), slugs)) for field in fields(part_schema, part)]
        lines += [*summary_table(entries), ""]
        for field, _anchor in entries:
            description = field_description(field)
            lines += [f"#### {code(field.path)}", "", *field_bullets(field), ""]
            lines += [description, ""] if description else []
    return lines


def render(crd: Mapping[str, Any], source: str = str(CRD_PATH)) -> str:
    """The whole of docs/api.md for ``crd`` (a parsed CustomResourceDefinition)."""
    spec = crd["spec"]
    names = spec["names"]
    slugs: dict[str, int] = {}
    versions = [version for version in spec["versions"] if version.get("served")]
    title = f"API reference: {names['kind']} ({spec['group']})"
    github_slug(title, slugs)
    short_names = ", ".join(code(name) for name in names.get("shortNames") or [])
    categories = ", ".join(code(name) for name in names.get("categories") or [])
    lines = [
        f"# {title}",
        "",
        f"<!-- Generated by {COMMAND} from {source}; do not edit by hand. Edit the CRD, then run {COMMAND}. -->",
        "",
        f"The `{names['kind']}` resource (`{names['plural']}.{spec['group']}`, {spec['scope'].lower()}"
        + (f"; short names {short_names}" if short_names else "")
        + (f"; categories {categories}" if categories else "")
        + "), field by field,",
        f"as the API server validates it. Generated from [`{source}`](../{source}), the CRD that the chart and",
        f"the kustomize base install; `kubectl explain {names['singular']}.spec --recursive` shows the same fields",
        "without the rules.",
        "",
        "- **Default** is what the API server writes into the object when the field is absent. Fields whose default",
        "  depends on the object or on the operator's configuration have none here: the API server leaves them",
        "  absent, the operator computes them, and their descriptions say how.",
        "- **Validation** and **Admission rules** are checked by the API server on create and update: an object",
        "  that breaks one is refused with the rule's message. What the schema cannot check ends in `Ready=False`",
        "  with a reason ([troubleshooting](troubleshooting.md)).",
        "- `status` is written by the operator only.",
        "",
        "Versions and what may change between them: [compatibility](compatibility.md). What the operator does with",
        "each field: the [README](../README.md).",
        "",
    ]
    for version in versions:
        lines += render_version(crd, version, slugs)
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"
    return "\n".join(line.rstrip() for line in text.split("\n"))


def load_crd(path: Path) -> Mapping[str, Any]:
    """The CRD at ``path`` (exactly one document)."""
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(crd, Mapping) or crd.get("kind") != "CustomResourceDefinition":
        raise SystemExit(f"gen-api-docs: {path} is not a CustomResourceDefinition")
    return crd


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) docs/api.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only report whether the output is stale (exit 1)")
    parser.add_argument("--crd", type=Path, default=REPO_ROOT / CRD_PATH, help="the CRD to read")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / OUTPUT_PATH, help="the Markdown file to write")
    args = parser.parse_args(argv)
    wanted = render(load_crd(args.crd))
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current == wanted:
            print(f"gen-api-docs: {args.output} is up to date")
            return 0
        print(f"gen-api-docs: {args.output} is stale; run {COMMAND}", file=sys.stderr)
        return 1
    if current != wanted:
        args.output.write_text(wanted, encoding="utf-8")
        print(f"gen-api-docs: wrote {args.output}")
    else:
        print(f"gen-api-docs: {args.output} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
