"""docs/api.md is generated from the CRD by hack/gen-api-docs.py: it must be what the CRD gives today, and it must
document every spec and status field."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR = REPO_ROOT / "hack" / "gen-api-docs.py"
CRD = REPO_ROOT / "crds" / "servicekey.io_servicekeys.yaml"
API_DOC = REPO_ROOT / "docs" / "api.md"
REGENERATE = "python3 hack/gen-api-docs.py"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crd() -> Mapping[str, Any]:
    return yaml.safe_load(CRD.read_text(encoding="utf-8"))


def test_docs_api_md_is_what_the_crd_generates(generator: ModuleType, crd: Mapping[str, Any]):
    assert API_DOC.exists(), f"docs/api.md is missing: run `{REGENERATE}`"
    wanted = generator.render(crd)
    if API_DOC.read_text(encoding="utf-8") != wanted:
        pytest.fail(f"docs/api.md is stale: it no longer matches {CRD.relative_to(REPO_ROOT)}. "
                    f"Run `{REGENERATE}` and commit the result.", pytrace=False)


def test_the_output_is_deterministic(generator: ModuleType, crd: Mapping[str, Any]):
    assert generator.render(crd) == generator.render(yaml.safe_load(CRD.read_text(encoding="utf-8")))


def _leaf_paths(schema: Mapping[str, Any], path: str) -> Iterator[str]:
    """Every field path below ``schema``, written independently of the generator."""
    for name, child in (schema.get("properties") or {}).items():
        child_path = f"{path}.{name}"
        yield child_path
        yield from _leaf_paths(child, child_path)
        items = child.get("items") or {}
        if child.get("type") == "array" and items.get("properties"):
            yield from _leaf_paths(items, f"{child_path}[]")


def test_every_spec_and_status_field_has_an_entry(generator: ModuleType, crd: Mapping[str, Any]):
    text = generator.render(crd)
    headings = set(re.findall(r"^#### `([^`]+)`$", text, flags=re.MULTILINE))
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]["properties"]
        wanted = {*_leaf_paths(schema["spec"], "spec"), *_leaf_paths(schema["status"], "status")}
        assert wanted, "the CRD has no spec or status fields"
        assert not wanted - headings, f"fields without an entry in docs/api.md: {sorted(wanted - headings)}"


def test_entries_carry_defaults_validation_and_cel_messages(generator: ModuleType, crd: Mapping[str, Any]):
    text = generator.render(crd)
    entry = text.split("#### `spec.rotation.period`", 1)[1].split("\n#### ", 1)[0]
    assert "- **Type**: `string`" in entry
    assert "matches `^([0-9]+(\\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$`" in entry
    assert "2 to 32 characters" in entry
    assert '"rotation.period must be at least 1m and at most 87600h"' in entry
    algorithm = text.split("#### `spec.algorithm`", 1)[1].split("\n#### ", 1)[0]
    assert "- **Default**: `RS256`" in algorithm
    assert "one of `RS256`, `RS384`" in algorithm
    retain = text.split("#### `spec.rotation.retainPrevious`", 1)[1].split("\n#### ", 1)[0]
    assert "0 to 10" in retain
    # Object-level transition rules, with their reason and field.
    assert '"spec.vault.path cannot change on a live key" (on update only' in text
    assert "reported at `.spec.vault.path`" in text


def test_prose_from_the_crd_is_escaped(generator: ModuleType):
    assert generator.escape("Default \"<name>-public\" for RS*/PS* (service_name)") == \
        'Default "&lt;name&gt;-public" for RS\\*/PS\\* (service\\_name)'
    assert generator.code("a`b") == "``a`b``"


def test_check_mode_reports_a_stale_file(generator: ModuleType, crd: Mapping[str, Any], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]):
    stale = tmp_path / "api.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert generator.main(["--check", "--output", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert stale.read_text(encoding="utf-8") == "# old\n", "--check must not write"
    assert generator.main(["--output", str(stale)]) == 0
    assert generator.main(["--check", "--output", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == generator.render(crd)
