"""`helm upgrade` on the real apiserver (issue #17, item 1): the ServiceKey CRD is upgraded with the chart, and every
ServiceKey stays Ready with the key it had.

Two starting points, each one CRD field short of this chart's (``spec.publicKey.http``, standing for whatever field a
new version adds):

- the previous chart version, taken from git (the newest commit whose Chart.yaml has another version). 0.1.0
  shipped the CRD in its crds/ folder, which Helm installs once and never upgrades, and which leaves it without
  Helm's ownership metadata: `helm upgrade` then refuses to take it over until it is handed to the release with the
  two kubectl commands of the chart README ("Upgrading");
- this chart with the field cut from its CRD template: the upgrade every later version makes.

The operator runs as a local process with the chart's ServiceAccount identity and the environment of the release's
Deployment (as in test_helm_install.py), before the upgrade under the old release, after it under the new one, as
the Deployment's new pod would.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devcluster.chart import (
    CHART_DIR,
    adopt_crds,
    helm,
    install_chart,
    service_account_kubeconfig,
    uninstall_chart,
    upgrade_chart,
)
from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.e2e.chart import NAMESPACE, RELEASE, SOURCE_CRD, release_operator_env
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.e2e

CRD = "servicekeys.servicekey.io"
CHART_PATH = CHART_DIR.relative_to(REPO_ROOT).as_posix()
CRD_FILE = "servicekey.io_servicekeys.yaml"
# The ServiceKeys made before the upgrade: both engines, RSA and EC.
KEYS = {"kv-es256": {"algorithm": "ES256"}, "kv-rs256": {"algorithm": "RS256"},
        "transit-es256": {"algorithm": "ES256", "vault": {"engine": "transit"}}}
HTTP_LABEL = "servicekey.io/http"


@dataclass(frozen=True)
class StartingPoint:
    """A chart to upgrade from: where it is, and whether its CRD is a file of crds/ (else a template)."""

    name: str
    chart: Path
    crds_folder: bool


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def chart_version(chart_yaml: str) -> str:
    return str(yaml.safe_load(chart_yaml)["version"])


def previous_chart_revision() -> str:
    """The newest commit whose chart has another version than the working tree's: HEAD while the version bump is
    not committed, else the parent of the commit that made it."""
    current = chart_version((CHART_DIR / "Chart.yaml").read_text())

    def version_at(revision: str) -> str | None:
        try:
            return chart_version(git("show", f"{revision}:{CHART_PATH}/Chart.yaml"))
        except subprocess.CalledProcessError:
            return None  # no chart there (or no such commit)

    if version_at("HEAD") not in (None, current):
        return "HEAD"
    for commit in git("rev-list", "--first-parent", "HEAD", "--", f"{CHART_PATH}/Chart.yaml").split():
        if version_at(f"{commit}^") not in (None, current):
            return git("rev-parse", f"{commit}^").strip()
    pytest.fail(f"no earlier version of {CHART_PATH} than {current} in the git history", pytrace=False)


def without_new_field(crd_text: str) -> str:
    """The CRD (a file, or the chart's template of it) without ``spec.publicKey.http``: cut by indentation, so that
    a template's text stays a template."""
    lines = crd_text.splitlines(keepends=True)

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    public_key = next(i for i, line in enumerate(lines) if line.strip() == "publicKey:")
    field = next(i for i in range(public_key + 1, len(lines)) if lines[i].strip() == "http:")
    end = next(i for i in range(field + 1, len(lines)) if lines[i].strip() and indent(lines[i]) <= indent(lines[field]))
    return "".join(lines[:field] + lines[end:])


@pytest.fixture(scope="module")
def previous_version(tmp_path_factory: pytest.TempPathFactory) -> StartingPoint:
    """The previous chart version from git, its CRD one field short."""
    revision = previous_chart_revision()
    workdir = tmp_path_factory.mktemp("previous-chart")
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", revision, CHART_PATH],
                             capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workdir, filter="data")
    chart = workdir / CHART_PATH
    crd = next(path for path in (chart / "crds" / CRD_FILE, chart / "templates" / "crds" / CRD_FILE) if path.exists())
    crd.write_text(without_new_field(crd.read_text()))
    version = chart_version((chart / "Chart.yaml").read_text())
    return StartingPoint(f"chart {version} at {revision[:12]}", chart, crds_folder=crd == chart / "crds" / CRD_FILE)


@pytest.fixture(scope="module")
def previous_template(tmp_path_factory: pytest.TempPathFactory) -> StartingPoint:
    """This chart, its CRD template one field short."""
    chart = tmp_path_factory.mktemp("template-chart") / "servicekey-operator"
    shutil.copytree(CHART_DIR, chart)
    template = chart / "templates" / "crds" / CRD_FILE
    template.write_text(without_new_field(template.read_text()))
    return StartingPoint("this chart, its CRD template one field short", chart, crds_folder=False)


def crd_object(dev_env: DevEnvironment) -> dict:
    return json.loads(dev_env.kube.kubectl("get", "crd", CRD, "-o", "json").stdout)


def replace_crd(dev_env: DevEnvironment, crd: dict) -> None:
    """Put ``crd`` in place of the cluster's, labels and annotations included (a CRD update needs the
    resourceVersion), and wait until it is served."""
    crd = dict(crd, metadata=dict(crd["metadata"], resourceVersion=crd_object(dev_env)["metadata"]["resourceVersion"]))
    dev_env.kube.kubectl("replace", "-f", "-", input_text=json.dumps(crd))
    dev_env.kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}")


def served_public_key_fields(dev_env: DevEnvironment) -> set[str]:
    (version,) = crd_object(dev_env)["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return set(spec["properties"]["publicKey"]["properties"])


@pytest.fixture
def session_crd_restored(dev_env: DevEnvironment) -> Iterator[None]:
    """Whatever happens, the session's CRD is the repository's again afterwards, as install_crds left it."""
    yield
    replace_crd(dev_env, yaml.safe_load(SOURCE_CRD.read_text()))


def start_release_operator(dev_env: DevEnvironment, start_operator: Callable[..., OperatorProcess],
                           service_account: str, workdir: Path) -> OperatorProcess:
    """The operator as the release's Deployment runs it: its ServiceAccount, its environment."""
    manifest = helm(dev_env, "get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
    kubeconfig = service_account_kubeconfig(dev_env, service_account, workdir / f"{service_account}.kubeconfig")
    return start_operator(**release_operator_env(manifest), KUBECONFIG=str(kubeconfig))


def http_label(servicekeys: ServiceKeys, name: str) -> str | None:
    configmap = servicekeys.configmap(f"{name}-public")
    return (configmap.metadata.labels or {}).get(HTTP_LABEL) if configmap else None


@pytest.mark.parametrize("starting_point", ["previous_version", "previous_template"])
def test_helm_upgrade_serves_the_new_crd_and_keeps_every_key(
        request: pytest.FixtureRequest, dev_env: DevEnvironment, session_crd_restored: None, starting_point: str,
        start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys, tmp_path: Path):
    start: StartingPoint = request.getfixturevalue(starting_point)
    kubectl = dev_env.kube.kubectl
    if start.crds_folder:
        # What the previous version's `helm install` leaves: its CRD from crds/, without Helm's ownership metadata
        # (Helm skips crds/ when the CRD exists, as the session's does).
        old_crd = yaml.safe_load((start.chart / "crds" / CRD_FILE).read_text())
        replace_crd(dev_env, old_crd)
    service_account = install_chart(dev_env, chart=start.chart, adopt=not start.crds_folder)
    try:
        assert "http" not in served_public_key_fields(dev_env), f"{start.name}: the CRD is not the old one"
        operator = start_release_operator(dev_env, start_operator, service_account, tmp_path)
        for name, spec in KEYS.items():
            servicekeys.create(name, spec)
        kids = {name: servicekeys.wait_ready(name)["status"]["keyId"] for name in KEYS}
        old_schema = kubectl("patch", "sk", "kv-es256", "-n", servicekeys.namespace, "--type=merge",
                             "-p", '{"spec": {"publicKey": {"http": true}}}', check=False)
        assert 'unknown field "spec.publicKey.http"' in old_schema.stderr, (old_schema.stdout, old_schema.stderr)
        assert "http" not in servicekeys.get("kv-es256")["spec"].get("publicKey", {}), "the old CRD keeps it"
        assert http_label(servicekeys, "kv-es256") == "false"

        if start.crds_folder:
            with pytest.raises(RuntimeError, match="invalid ownership metadata"):
                upgrade_chart(dev_env)
            adopt_crds(dev_env)  # the chart README's "Upgrading" step
        upgrade_chart(dev_env)

        assert "http" in served_public_key_fields(dev_env), "helm upgrade left the CRD as it was"
        metadata = crd_object(dev_env)["metadata"]
        assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
        assert metadata["labels"]["helm.sh/chart"] == "servicekey-operator-" + chart_version(
            (CHART_DIR / "Chart.yaml").read_text())
        # Every key kept its kid while the operator was replaced, as a Recreate rollout replaces the pod.
        operator.stop()
        for name in KEYS:
            assert servicekeys.get(name)["status"]["keyId"] == kids[name], name
        operator = start_release_operator(dev_env, start_operator, service_account, tmp_path)
        assert "SERVICEKEY_LOG_LEVEL" in release_operator_env(
            helm(dev_env, "get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout)

        # The new field is stored and acted on: the JWKS server's label on the key's ConfigMap.
        kubectl("patch", "sk", "kv-es256", "-n", servicekeys.namespace, "--type=merge",
                "-p", '{"spec": {"publicKey": {"http": true}}}')
        assert servicekeys.get("kv-es256")["spec"]["publicKey"]["http"] is True
        wait_for(lambda: http_label(servicekeys, "kv-es256") == "true", 30, "the new operator to serve the key by URL")
        for name in KEYS:
            assert servicekeys.wait_ready(name)["status"]["keyId"] == kids[name], f"{name} changed key in the upgrade"
            assert servicekeys.kids(f"{name}-public")[0] == kids[name], name
        assert "Forbidden" not in operator.log_text()

        for name in KEYS:  # while the operator runs: its finalizer goes with them
            servicekeys.delete(name)
        for name in KEYS:
            servicekeys.wait_gone(name)
    finally:
        uninstall_chart(dev_env)
        # Keys a failure left behind keep the operator's finalizer, with no operator to remove it.
        for left in kubectl("get", "servicekeys", "-n", servicekeys.namespace, "-o", "name").stdout.split():
            kubectl("patch", left, "-n", servicekeys.namespace, "--type=merge", "-p",
                    '{"metadata":{"finalizers":null}}', check=False)
    assert kubectl("get", "crd", CRD, check=False).returncode == 0, "helm uninstall deleted the CRD (crds.keep)"
