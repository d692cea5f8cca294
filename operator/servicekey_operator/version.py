"""What build of the package runs."""

from __future__ import annotations

import importlib.metadata


def package_version() -> str:
    """The installed package's version (``unknown`` when run from a checkout that is not installed)."""
    try:
        return importlib.metadata.version("servicekey-operator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
