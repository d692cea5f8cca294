"""Session fixtures: one real control plane + OpenBao for the whole run, a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import hvac
import kubernetes.client
import kubernetes.config
import pytest
from kubernetes.client.rest import ApiException

from devcluster.environment import DevEnvironment
from devcluster.openbao import OpenBaoServer
from devcluster.operator_process import OperatorProcess
from tests.support import ACCEPT_FROM, MakeNamespace, ServiceKeys


@pytest.fixture(scope="session")
def dev_env() -> Iterator[DevEnvironment]:
    """The real kube-apiserver (+ etcd, controller manager) and OpenBao, with the CRD installed."""
    with DevEnvironment() as env:
        env.install_crds()
        yield env


@pytest.fixture(scope="session")
def kube_client(dev_env: DevEnvironment) -> kubernetes.client.ApiClient:
    """An admin API client for the test cluster."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(dev_env.kube.kubeconfig),
                                       client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


@pytest.fixture(scope="session")
def core_api(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    """CoreV1Api as admin."""
    return kubernetes.client.CoreV1Api(kube_client)


@pytest.fixture(scope="session")
def vault_client(dev_env: DevEnvironment) -> hvac.Client:
    """A root-token hvac client for OpenBao."""
    return dev_env.vault.client()


@pytest.fixture
def namespace(core_api: kubernetes.client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core_api.create_namespace({"metadata": {"name": name}})
    yield name
    core_api.delete_namespace(name)


@pytest.fixture
def make_namespace(core_api: kubernetes.client.CoreV1Api) -> Iterator[MakeNamespace]:
    """Create extra namespaces with labels and the copy opt-in annotation; delete them after the test."""
    created: list[str] = []

    def make(labels: dict[str, str] | None = None, accept_from: str | None = None, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        annotations = {ACCEPT_FROM: accept_from} if accept_from else {}
        core_api.create_namespace({"metadata": {"name": name, "labels": labels or {}, "annotations": annotations}})
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            core_api.delete_namespace(name)
        except ApiException as gone:
            if gone.status != 404:
                raise


@pytest.fixture
def start_operator(dev_env: DevEnvironment, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operator subprocesses (stopped after the test); keyword arguments become env vars."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        full_env = dict(dev_env.operator_env(), **env)
        process = OperatorProcess(full_env, tmp_path / f"operator-{len(started)}.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def operator(dev_env: DevEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for a whole test module (modules that crash operators use ``start_operator`` instead)."""
    process = OperatorProcess(dev_env.operator_env(), tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield process
    process.stop()


@pytest.fixture
def servicekeys(kube_client: kubernetes.client.ApiClient, namespace: str, dev_env: DevEnvironment) -> ServiceKeys:
    """Create, read and wait on ServiceKeys in the test's namespace."""
    return ServiceKeys(kube_client, namespace, dev_env)


@pytest.fixture
def persistent_vault(dev_env: DevEnvironment, tmp_path: Path) -> Iterator[OpenBaoServer]:
    """An OpenBao with raft storage, so its data survives a stop and start."""
    server = OpenBaoServer(dev_env.binaries.bao, tmp_path / "openbao", persistent=True)
    server.start()
    yield server
    server.stop()
