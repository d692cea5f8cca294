"""Where the repository is, for the parts of the harness that read its files (CRDs, chart, examples)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = REPO_ROOT / "crds" / "servicekey.io_servicekeys.yaml"
