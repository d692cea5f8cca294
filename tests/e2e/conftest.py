"""Fixtures of the e2e suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from servicekey_operator.devcluster.binaries import HELM_VERSION, cache_dir


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The real helm binary: $HELM, else the devcluster build cache. Missing helm is a failure."""
    configured = os.environ.get("HELM")
    candidate = Path(configured) if configured else cache_dir() / "bin" / f"helm-{HELM_VERSION}" / "helm"
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        pytest.fail(f"helm binary not found at {candidate}: set HELM, or build it with the devcluster "
                    f"binaries (helm {HELM_VERSION} into the cache)", pytrace=False)
    return candidate
