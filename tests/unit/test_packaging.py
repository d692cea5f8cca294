"""What ships: the wheel (which the image installs, from the same files the Dockerfile copies) holds the
operator package only, never the development harness or the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_operator_package_and_nothing_else(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):  # what the Dockerfile's build stage copies
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "operator", source / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--wheel-dir", str(tmp_path / "wheels"), str(source)], check=True, capture_output=True)

    [wheel] = (tmp_path / "wheels").glob("*.whl")
    top_level = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}

    assert top_level == {"servicekey_operator", "servicekey_operator-0.1.0.dist-info"}
    assert not [name for name in zipfile.ZipFile(wheel).namelist() if "devcluster" in name]
