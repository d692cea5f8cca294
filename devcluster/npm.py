"""npm packages the tests run under Node, pinned and installed from the npm registry into the cache outside the
repository (hack/install.sh installs them; the tests install them lazily on a machine where that has not run)."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

from devcluster.binaries import cache_dir

# The jose release the JWKS verifier test (tests/integration/test_jwks_verifiers.py) runs under Node.
JOSE_VERSION = "6.2.18"


class InstallError(RuntimeError):
    """node/npm is missing or npm could not install jose."""


def installed_jose_version(prefix: Path) -> str | None:
    """The version of jose under ``prefix``'s node_modules, or None."""
    try:
        return json.loads((prefix / "node_modules" / "jose" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def install_jose(prefix: Path | None = None) -> Path:
    """Install jose@JOSE_VERSION from the npm registry into ``prefix`` (default: ``<cache>/npm``, outside the
    repository) unless it is there already; return the prefix. Serialised by a lock: checkouts share the cache."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise InstallError("node and npm are required by the jose verifier tests (hack/install.sh installs the "
                           f"Debian packages nodejs and npm); found node={node}, npm={npm}")
    prefix = prefix or cache_dir() / "npm"
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f"{prefix.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_jose_version(prefix) != JOSE_VERSION:
            command = [npm, "install", "--prefix", str(prefix), "--save-exact", "--no-audit", "--no-fund",
                       "--loglevel=error", f"jose@{JOSE_VERSION}"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
            if result.returncode != 0:
                raise InstallError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}"
                                   f"{result.stderr}")
        installed = installed_jose_version(prefix)
        if installed != JOSE_VERSION:
            raise InstallError(f"{prefix}/node_modules/jose is {installed}, not {JOSE_VERSION}")
    return prefix
