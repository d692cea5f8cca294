"""Fixtures of the e2e suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster.binaries import HELM_VERSION, cache_dir
from devcluster.environment import DevEnvironment
from devcluster.node import KubernetesNode


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The real helm binary: $HELM, else the devcluster build cache. Missing helm is a failure."""
    configured = os.environ.get("HELM")
    candidate = Path(configured) if configured else cache_dir() / "bin" / f"helm-{HELM_VERSION}" / "helm"
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        pytest.fail(f"helm binary not found at {candidate}: set HELM, or build it with the devcluster "
                    f"binaries (helm {HELM_VERSION} into the cache)", pytrace=False)
    return candidate


@pytest.fixture(scope="module")
def node(dev_env: DevEnvironment) -> Iterator[KubernetesNode]:
    """The real node of the session's cluster (its images built or taken from the cache), for one module: the
    suites after it run without a kubelet, as they always have."""
    yield dev_env.start_node()
    dev_env.stop_node()
