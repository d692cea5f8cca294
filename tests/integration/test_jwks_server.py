"""The JWKS server against the real API server: it serves exactly what the operator published for keys that opted
in, follows every change through its watch, serves no copy and no other key, and keeps serving while the operator
is down. Tokens signed with the Vault key verify through PyJWT's PyJWKClient, a third-party consumer of the URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import jwt
import pytest

from devcluster.environment import DevEnvironment
from devcluster.jwks_server_process import JwksServerProcess
from devcluster.operator_process import OperatorProcess
from tests.support import MakeNamespace, ServiceKeys, wait_for

pytestmark = pytest.mark.integration
# Each test starts its own operator: the last one stops it, and two operators must not serve one cluster at once.
StartOperator = Callable[..., OperatorProcess]


@pytest.fixture(scope="module")
def jwks_server(dev_env: DevEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwksServerProcess]:
    """One JWKS server for the module, as the chart runs it (all namespaces, plain HTTP)."""
    server = JwksServerProcess({"KUBECONFIG": str(dev_env.kube.kubeconfig)},
                               tmp_path_factory.mktemp("jwks") / "jwks-server.log").start()
    yield server
    server.stop()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def _key_url(server: JwksServerProcess, servicekeys: ServiceKeys, name: str) -> str:
    return f"{server.url}/keys/{servicekeys.namespace}/{name}"


def test_a_key_that_opts_in_is_served_as_published_and_verifies_tokens_through_pyjwks_client(
        start_operator: StartOperator, jwks_server: JwksServerProcess, servicekeys: ServiceKeys):
    start_operator()
    servicekeys.create("served", {"algorithm": "ES256",
                                  "publicKey": {"http": True, "issuer": "https://issuer.example.test/served"}})
    kid = servicekeys.wait_ready("served")["status"]["keyId"]
    url = _key_url(jwks_server, servicekeys, "served")
    published = servicekeys.configmap("served-public").data

    _, headers, body = wait_for(lambda: (reply := fetch(f"{url}/jwks.json"))[0] == 200 and reply, 10,
                                     "the set to be served")
    assert body.decode() == published["jwks.json"] == published["jwks"]
    assert headers["Content-Type"] == "application/jwk-set+json"
    assert headers["Cache-Control"] == "public, max-age=60"
    assert fetch(f"{url}/jwks.json", {"If-None-Match": headers["ETag"]})[0] == 304
    assert fetch(f"{url}/public.pem")[2].decode() == published["public.pem"] == published[f"{kid}.pem"]
    discovery = json.loads(fetch(f"{url}/.well-known/openid-configuration")[2])
    assert discovery["issuer"] == "https://issuer.example.test/served"
    assert discovery["jwks_uri"] == f"{url}/jwks.json"

    token = servicekeys.sign("served", {"sub": "payments", "iss": discovery["issuer"]})
    signing_key = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=True).get_signing_key_from_jwt(token)
    assert jwt.decode(token, signing_key.key, algorithms=["ES256"], issuer=discovery["issuer"])["sub"] == "payments"


def test_a_key_is_served_only_while_it_opts_in_and_every_rotation_reaches_the_url(
        start_operator: StartOperator, jwks_server: JwksServerProcess, servicekeys: ServiceKeys):
    start_operator()
    servicekeys.create("private", {"algorithm": "ES256"})
    first = servicekeys.wait_ready("private")["status"]["keyId"]
    url = f"{_key_url(jwks_server, servicekeys, 'private')}/jwks.json"
    assert fetch(url)[0] == 404, "a key is not served unless it opts in"

    servicekeys.patch("private", {"spec": {"publicKey": {"http": True}}})
    wait_for(lambda: fetch(url)[0] == 200, 10, "the key to be served once it opts in")
    etag = fetch(url)[1]["ETag"]
    servicekeys.patch("private", {"metadata": {"annotations": {"servicekey.io/rotate": "1"}}})
    second = servicekeys.wait_new_kid("private", first)["status"]["keyId"]

    wait_for(lambda: [key["kid"] for key in json.loads(fetch(url)[2])["keys"]] == [second, first], 10,
             "the rotated set at the URL")
    assert fetch(url, {"If-None-Match": etag})[0] == 200, "a client with the old set gets the new one"
    servicekeys.patch("private", {"spec": {"publicKey": {"http": False}}})
    wait_for(lambda: fetch(url)[0] == 404, 10, "the key to be withdrawn once it opts out")


def test_copies_in_other_namespaces_are_not_served_and_the_server_outlives_the_operator(
        start_operator: StartOperator, jwks_server: JwksServerProcess, servicekeys: ServiceKeys,
        make_namespace: MakeNamespace):
    operator = start_operator()
    target = make_namespace(accept_from=servicekeys.namespace)
    servicekeys.create("shared", {"algorithm": "EdDSA", "publicKey": {"http": True, "namespaces": [target]}})
    servicekeys.wait_ready("shared")
    wait_for(lambda: servicekeys.configmap("shared-public", target), 10, "the copy")
    source = f"{_key_url(jwks_server, servicekeys, 'shared')}/jwks.json"
    wait_for(lambda: fetch(source)[0] == 200, 10, "the source to be served")

    assert fetch(f"{jwks_server.url}/keys/{target}/shared/jwks.json")[0] == 404, "a copy is not a second key"
    assert fetch(source, {"X-Padding": "x" * 20000})[0] in (400, 431), "oversized headers are refused"
    assert "aiohttp.access" not in jwks_server.log_text(), "no log line per request"
    assert "custom kwargs" not in jwks_server.log_text()
    operator.stop()
    assert fetch(source)[0] == 200, "serving does not depend on the operator"
    assert "Traceback" not in jwks_server.log_text()
