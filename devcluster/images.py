"""Container images for the node, built on this machine without a daemon or a registry, cached by content.

- The base: a Debian rootfs made by mmdebstrap (python3, venv, pip, ca-certificates), the stand-in for
  ``python:3.11-slim`` that the project's Dockerfile takes as ``PYTHON_IMAGE``.
- The operator: ``buildah bud`` of the project's own Dockerfile on that base. pip in the build stage reaches
  PyPI as pip on this machine does: the machine's CA bundle is mounted into every RUN (never into a layer).
- The example apps (``deploy/examples/apps``): the signer and verifier that the examples run.
- The pause image: Kubernetes' own ``build/pause/linux/pause.c``, compiled static, in an image of one file.

Each is tagged with a hash of what goes into it and kept as a docker-archive tarball in the cache, which
``ctr images import`` takes. Names are fully qualified (``localhost/...``) so that the CRI finds them as
written in a pod spec, with ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devcluster.binaries import KUBERNETES_VERSION, BuildError, cache_dir
from devcluster.paths import REPO_ROOT

BASE_PACKAGES = ("ca-certificates", "netbase", "tzdata", "python3", "python3-venv", "python3-pip",
                 "python-is-python3")
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = ("deb http://deb.debian.org/debian bookworm main",
                  "deb http://deb.debian.org/debian bookworm-updates main",
                  "deb http://deb.debian.org/debian-security bookworm-security main")
PAUSE_IMAGE = "localhost/pause:3.10-local"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the operator image is built from (the rest of the repository is kept out by .dockerignore).
OPERATOR_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
EXAMPLE_APPS_DIR = REPO_ROOT / "deploy" / "examples" / "apps"


@dataclass(frozen=True)
class Image:
    """A built image: its fully qualified reference and the docker-archive tarball that holds it."""

    ref: str
    archive: Path


def _log(message: str) -> None:
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str, **kwargs: object) -> str:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-30:])
        raise BuildError(f"{what} failed ({' '.join(argv[:3])} ...):\n{tail}")
    _log(f"{what}: done in {time.monotonic() - started:.0f}s")
    return result.stdout


def _images_dir() -> Path:
    directory = cache_dir() / "images"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _digest(*parts: str | bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


def _tree_digest(root: Path, files: list[Path]) -> list[str | bytes]:
    return [part for path in sorted(files) for part in (str(path.relative_to(root)), path.read_bytes())]


def _buildah_has(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def _archive(ref: str, name: str) -> Image:
    archive = _images_dir() / f"{name}.tar"
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _run(["buildah", "push", "--quiet", ref, f"docker-archive:{partial}:{ref}"], f"export of {ref}")
        partial.rename(archive)
    return Image(ref, archive)


def base_image() -> str:
    """The Debian base (buildah image ``localhost/servicekey-base:<hash of the recipe>``)."""
    recipe = json.dumps({"suite": DEBIAN_SUITE, "packages": BASE_PACKAGES, "sources": DEBIAN_SOURCES})
    ref = f"localhost/servicekey-base:{_digest(recipe)}"
    if _buildah_has(ref):
        return ref
    tarball = _images_dir() / f"base-{_digest(recipe)}.tar"
    if not tarball.exists():
        raw = tarball.with_suffix(".raw")
        _log(f"building the Debian base rootfs with mmdebstrap ({', '.join(BASE_PACKAGES)})")
        _run(["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
              f"--include={','.join(BASE_PACKAGES)}", "--aptopt=Acquire::Languages \"none\"",
              "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
              "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
              "--customize-hook=echo localhost > \"$1/etc/hostname\"",
              "--customize-hook=: > \"$1/etc/resolv.conf\"",
              DEBIAN_SUITE, str(raw), *DEBIAN_SOURCES], "mmdebstrap of the base rootfs")
        with raw.open("rb") as source, tarball.open("wb") as target:  # device nodes stay out of an image
            subprocess.run(["mmtarfilter", "--path-exclude=/dev/*"], stdin=source, stdout=target, check=True)
        raw.unlink()
    container = _run(["buildah", "from", "scratch"], "buildah from scratch").strip()
    _run(["buildah", "add", "--quiet", container, str(tarball), "/"], "unpacking the base rootfs")
    _run(["buildah", "config", "--os", "linux", "--arch", "amd64",
          "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--env", "LANG=C.UTF-8",
          "--cmd", '["python3"]', container], "configuring the base image")
    _run(["buildah", "commit", "--quiet", "--rm", container, ref], f"commit of {ref}")
    return ref


def _bud(context: Path, containerfile: Path, name: str, key: str, base: str) -> Image:
    ref = f"localhost/{name}:{key}"
    if not _buildah_has(ref):
        _log(f"building {ref} from {containerfile.relative_to(REPO_ROOT)} (buildah, on {base})")
        _run(["buildah", "bud", "--quiet", "-f", str(containerfile), "--build-arg", f"PYTHON_IMAGE={base}",
              "--pull=never", "--isolation", "chroot", "--network", "host", "--layers", "--format", "docker",
              # pip reaches PyPI through this machine's trust store; mounted for each RUN, never in a layer.
              "-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", "-t", ref, str(context)], f"buildah bud of {ref}")
    return _archive(ref, f"{name}-{key}")


def operator_image() -> Image:
    """The operator's image, from the project's Dockerfile (what ``docker build .`` builds for users)."""
    base = base_image()
    sources = [path for path in (REPO_ROOT / "operator").rglob("*") if path.is_file()
               and "__pycache__" not in path.parts and ".egg-info" not in str(path) and path.suffix != ".pyc"]
    key = _digest(base, *_tree_digest(REPO_ROOT, [REPO_ROOT / name for name in OPERATOR_INPUTS] + sources))
    return _bud(REPO_ROOT, REPO_ROOT / "Dockerfile", "servicekey-operator", key, base)


def example_apps_image() -> Image:
    """The signer and verifier of ``deploy/examples`` (a Python image with hvac and PyJWT)."""
    base = base_image()
    files = [path for path in EXAMPLE_APPS_DIR.iterdir() if path.is_file()]
    key = _digest(base, *_tree_digest(EXAMPLE_APPS_DIR, files))
    return _bud(EXAMPLE_APPS_DIR, EXAMPLE_APPS_DIR / "Containerfile", "servicekey-examples", key, base)


def pause_image() -> Image:
    """The pod sandbox image, compiled from Kubernetes' own pause.c (static, one file)."""
    module = json.loads(_run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
                             "locating k8s.io/kubernetes", cwd=cache_dir()))
    source = Path(module["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    key = _digest(source.read_bytes())
    if not _buildah_has(PAUSE_IMAGE) or not (_images_dir() / f"pause-{key}.tar").exists():
        binary = _images_dir() / f"pause-{key}"
        _run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION={KUBERNETES_VERSION}-local", "-o",
              str(binary), str(source)], "compiling pause.c")
        _run(["strip", str(binary)], "stripping pause")
        container = _run(["buildah", "from", "scratch"], "buildah from scratch").strip()
        _run(["buildah", "copy", "--quiet", "--chmod", "0755", container, str(binary), "/pause"], "copying pause")
        _run(["buildah", "config", "--os", "linux", "--arch", "amd64", "--entrypoint", '["/pause"]',
              "--user", "65535:65535", container], "configuring the pause image")
        _run(["buildah", "commit", "--quiet", "--rm", container, PAUSE_IMAGE], f"commit of {PAUSE_IMAGE}")
        (_images_dir() / f"pause-{key}.tar").unlink(missing_ok=True)
    return _archive(PAUSE_IMAGE, f"pause-{key}")
