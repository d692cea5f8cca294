"""Fixtures of the e2e suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster.binaries import HELM_VERSION, PROMETHEUS_VERSION, cache_dir
from devcluster.environment import DevEnvironment
from devcluster.node import KubernetesNode


def cached_tool(variable: str, name: str, version: str) -> Path:
    """A Go-built tool: $<variable>, else the devcluster build cache (``python3 -m devcluster build``). A missing
    tool is a failure, never a skip."""
    configured = os.environ.get(variable)
    candidate = Path(configured) if configured else cache_dir() / "bin" / f"{name}-{version}" / name
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        pytest.fail(f"{name} not found at {candidate}: set {variable}, or build it with `python3 -m devcluster build` "
                    f"({name} {version} into the cache)", pytrace=False)
    return candidate


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The real helm binary."""
    return cached_tool("HELM", "helm", HELM_VERSION)


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    """The real promtool."""
    return cached_tool("PROMTOOL", "promtool", PROMETHEUS_VERSION)


@pytest.fixture(scope="module")
def node(dev_env: DevEnvironment) -> Iterator[KubernetesNode]:
    """The real node of the session's cluster (its images built or taken from the cache), for one module: the
    suites after it run without a kubelet, as they always have."""
    yield dev_env.start_node()
    dev_env.stop_node()
