"""Install the project's Helm chart into the local cluster and act as its ServiceAccount (demo and e2e tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devcluster.environment import REPO_ROOT, DevEnvironment
from devcluster.kube import write_kubeconfig
from devcluster.node import wait_for_deployment

CHART_DIR = REPO_ROOT / "charts" / "servicekey-operator"
OPERATOR_POLICY = REPO_ROOT / "deploy" / "vault" / "servicekey-operator-policy.hcl"
VAULT_ROLE = "servicekey-operator"
RELEASE = "servicekey-operator"
RELEASE_NAMESPACE = "servicekey-system"
# The release's operator objects (its JWKS server has the component jwks-server).
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
# The CRDs the chart installs as templates (templates/crds/), which a release must own before it installs.
CHART_CRDS = ("servicekeys.servicekey.io",)


def helm(env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the cached helm against the local cluster; raise with helm's message on failure."""
    result = subprocess.run([str(env.binaries.helm), f"--kubeconfig={env.kube.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed:\n{result.stderr}")
    return result


def _set_flags(*values: str) -> list[str]:
    return [flag for value in values for flag in ("--set", value)]


def adopt_crds(env: DevEnvironment, release: str = RELEASE, namespace: str = RELEASE_NAMESPACE) -> None:
    """Hand the CRDs that already exist to the release, as the chart README tells users upgrading from a chart
    that installed them from its crds/ folder: Helm installs a template over an existing object only when the
    object carries the release's ownership label and annotations. The environment installs the ServiceKey CRD
    itself (``install_crds``) before any chart, so every ``helm install`` here adopts it, and ``helm uninstall``
    leaves it (``crds.keep``)."""
    for crd in CHART_CRDS:
        if env.kube.kubectl("get", "crd", crd, check=False).returncode != 0:
            continue  # the release creates it
        env.kube.kubectl("label", "crd", crd, "--overwrite", "app.kubernetes.io/managed-by=Helm")
        env.kube.kubectl("annotate", "crd", crd, "--overwrite", f"meta.helm.sh/release-name={release}",
                         f"meta.helm.sh/release-namespace={namespace}")


def chart_service_account(env: DevEnvironment) -> str:
    """The name of the release's operator ServiceAccount."""
    accounts = env.kube.kubectl("get", "serviceaccounts", "-n", RELEASE_NAMESPACE, "-l", OPERATOR_SELECTOR,
                                "-o", "name").stdout.split()
    if len(accounts) != 1:
        raise RuntimeError(f"expected one ServiceAccount from the chart, found {accounts}")
    return accounts[0].split("/", 1)[1]


def local_values(env: DevEnvironment) -> list[str]:
    """The values of a release whose operator runs as a local process: token auth against the local OpenBao."""
    return [f"vault.address={env.vault.addr}", "vault.auth.method=token",
            "vault.auth.token.secretName=servicekey-operator-vault-token"]


def install_chart(env: DevEnvironment, *set_values: str, chart: Path = CHART_DIR, adopt: bool = True) -> str:
    """``helm install`` the chart (token auth against the local OpenBao); return its ServiceAccount's name.

    For the tests without the node: the Deployment never runs, and the operator runs as a local process with
    the ServiceAccount's identity instead (see ``service_account_kubeconfig``; ``install_operator_pod`` is the
    chart on the node). ``chart`` may name another version of the chart (an upgrade's starting point), and
    ``adopt=False`` leaves the CRDs as they are (for a chart that ships them in crds/, which never adopts).
    """
    if adopt:
        adopt_crds(env)
    helm(env, "install", RELEASE, str(chart), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         *_set_flags(*local_values(env), *set_values))
    return chart_service_account(env)


def upgrade_chart(env: DevEnvironment, *set_values: str, chart: Path = CHART_DIR) -> str:
    """``helm upgrade`` the release to ``chart`` with the values of ``install_chart`` (and ``set_values``, not
    reusing the old ones, as a user passes their values file again); return its ServiceAccount's name."""
    helm(env, "upgrade", RELEASE, str(chart), "--namespace", RELEASE_NAMESPACE,
         *_set_flags(*local_values(env), *set_values))
    return chart_service_account(env)


def uninstall_chart(env: DevEnvironment) -> None:
    """``helm uninstall`` the release."""
    helm(env, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE)


def service_account_kubeconfig(env: DevEnvironment, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token, not as admin."""
    token = env.kube.kubectl("create", "token", service_account, "-n", RELEASE_NAMESPACE, "--duration=2h").stdout
    return write_kubeconfig(path, env.kube.server, env.kube.ca.cert_path, token=token.strip(), user=service_account)


def prepare_vault_for_the_chart(env: DevEnvironment) -> None:
    """What the chart README tells an administrator to do in Vault: the shipped policy, kubernetes auth, and a
    role for the chart's ServiceAccount that accepts only tokens projected for the audience ``vault``."""
    env.vault.create_policy(VAULT_ROLE, OPERATOR_POLICY.read_text())
    env.vault.enable_kubernetes_auth(env.kube)
    env.vault.create_kubernetes_role(VAULT_ROLE, service_accounts=[RELEASE], namespaces=[RELEASE_NAMESPACE],
                                     policies=[VAULT_ROLE], audience="vault", token_ttl="1h", token_max_ttl="4h")


def install_operator_pod(env: DevEnvironment, *set_values: str, timeout: float = 180) -> None:
    """``helm install`` the chart as a user would on the node: the image built from the Dockerfile
    (``imagePullPolicy: Never``), kubernetes auth with the projected token, Vault at the node's address; wait
    until the Deployment is available."""
    image = env.node_images["operator"].ref
    repository, tag = image.rsplit(":", 1)
    prepare_vault_for_the_chart(env)
    adopt_crds(env)
    helm(env, "install", RELEASE, str(CHART_DIR), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         *_set_flags(f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never",
                     f"vault.address={env.vault.pod_addr}", *set_values))
    wait_for_deployment(env.kube, RELEASE_NAMESPACE, RELEASE, timeout)
