"""Vault over TLS, as in production: a CA bundle, a server name override, a client certificate.

OpenBao serves a certificate from a test CA; a wrong CA is a clear VaultUnavailable, never a traceback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster.environment import DevEnvironment
from devcluster.openbao import OpenBaoServer
from devcluster.operator_process import OperatorProcess
from devcluster.pki import DevCertificateAuthority
from servicekey_operator.config import VaultSettings
from servicekey_operator.errors import VaultUnavailable
from servicekey_operator.vault.connection import VaultConnection, vault_call
from tests.support import ServiceKeys, ready_condition

pytestmark = pytest.mark.integration

SERVER_NAME = "openbao.vault.svc"


def _start(server: OpenBaoServer) -> Iterator[OpenBaoServer]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_vault(dev_env: DevEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """OpenBao on https://127.0.0.1 with a certificate for 127.0.0.1 from its own test CA."""
    yield from _start(OpenBaoServer(dev_env.binaries.bao, tmp_path_factory.mktemp("tls-openbao"), tls=True))


@pytest.fixture(scope="module")
def mtls_vault(dev_env: DevEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """OpenBao whose certificate names only SERVER_NAME (not the IP it is reached at) and that
    requires a client certificate from its CA."""
    yield from _start(OpenBaoServer(dev_env.binaries.bao, tmp_path_factory.mktemp("mtls-openbao"), tls=True,
                                    tls_dns_names=(SERVER_NAME,), tls_ip_addresses=(),
                                    tls_require_client_cert=True))


def _start_on(start_operator: Callable[..., OperatorProcess], vault: OpenBaoServer, namespace: str,
              **env: str) -> OperatorProcess:
    return start_operator(VAULT_ADDR=vault.addr, VAULT_TOKEN=vault.root_token,
                          SERVICEKEY_WATCH_NAMESPACES=namespace, **env)


def _stored_kid(vault: OpenBaoServer, namespace: str, name: str) -> str:
    reply = vault.client().secrets.kv.v2.read_secret_version(path=f"servicekeys/{namespace}/{name}",
                                                             mount_point="secret", raise_on_deleted_version=True)
    return reply["data"]["data"]["kid"]


def test_the_operator_reaches_vault_over_tls_with_the_ca_bundle(
        tls_vault: OpenBaoServer, start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys,
        namespace: str):
    assert tls_vault.addr.startswith("https://")
    _start_on(start_operator, tls_vault, namespace, VAULT_CACERT=str(tls_vault.ca_cert_path))

    servicekeys.create("over-tls", {"algorithm": "ES256"})
    status = servicekeys.wait_ready("over-tls")["status"]

    assert status["keyId"] == _stored_kid(tls_vault, namespace, "over-tls")


def test_a_wrong_ca_is_vault_unavailable_with_a_message_that_names_tls_and_the_ca(
        tls_vault: OpenBaoServer, start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys,
        namespace: str, tmp_path: Path):
    wrong_ca = DevCertificateAuthority(tmp_path, "not-the-vault-ca")
    operator = _start_on(start_operator, tls_vault, namespace, VAULT_CACERT=str(wrong_ca.cert_path))

    servicekeys.create("untrusted", {"algorithm": "ES256"})
    message = ready_condition(servicekeys.wait_condition("untrusted", "False", "VaultUnavailable"))["message"]

    assert f"TLS connection to Vault at {tls_vault.addr} failed: certificate verify failed" in message
    assert f"not signed by a CA in the CA bundle VAULT_CACERT={wrong_ca.cert_path}" in message
    log = operator.log_text()
    assert "certificate verify failed" in log
    assert "Traceback" not in log
    assert operator.process.running()


def test_server_name_and_client_certificate_settings_each_matter(mtls_vault: OpenBaoServer):
    assert mtls_vault.client_cert is not None
    complete = VaultSettings(addr=mtls_vault.addr, token=mtls_vault.root_token, ca_cert=mtls_vault.ca_cert_path,
                             tls_server_name=SERVER_NAME, client_cert=mtls_vault.client_cert.cert,
                             client_key=mtls_vault.client_cert.key)

    def health(settings: VaultSettings) -> dict:
        connection = VaultConnection(settings, timeout_seconds=5)
        with vault_call("health", "reading sys/health"):
            return connection.client.sys.read_health_status(method="GET")

    assert health(complete)["initialized"] is True
    with pytest.raises(VaultUnavailable, match="does not name the host in VAULT_ADDR; set VAULT_TLS_SERVER_NAME"):
        health(dataclasses.replace(complete, tls_server_name=None))
    with pytest.raises(VaultUnavailable, match=r"TLS connection to Vault .* client certificate"):
        health(dataclasses.replace(complete, client_cert=None, client_key=None))


def test_the_operator_uses_the_server_name_and_client_certificate(
        mtls_vault: OpenBaoServer, start_operator: Callable[..., OperatorProcess], servicekeys: ServiceKeys,
        namespace: str):
    assert mtls_vault.client_cert is not None
    _start_on(start_operator, mtls_vault, namespace, VAULT_CACERT=str(mtls_vault.ca_cert_path),
              VAULT_TLS_SERVER_NAME=SERVER_NAME, VAULT_CLIENT_CERT=str(mtls_vault.client_cert.cert),
              VAULT_CLIENT_KEY=str(mtls_vault.client_cert.key))

    servicekeys.create("mutual", {"algorithm": "EdDSA"})
    status = servicekeys.wait_ready("mutual")["status"]

    assert status["keyId"] == _stored_kid(mtls_vault, namespace, "mutual")
