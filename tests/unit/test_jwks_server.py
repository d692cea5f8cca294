"""The JWKS server's HTTP contract, against its aiohttp application with an in-memory cache: documents, caching
headers, bad input (and a fuzz test over paths and headers), readiness and metrics."""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from servicekey_operator import keys
from servicekey_operator.jwks_cache import KeyCache
from servicekey_operator.jwks_server import JwksApp

ES256 = keys.generate_keypair("ES256")
JWKS = json.dumps(keys.jwk_set([(ES256.public_pem, "ES256")]), indent=2) + "\n"


def configmap(namespace: str = "payments", name: str = "signing", issuer: str = "", jwks: str = JWKS,
              configmap_name: str | None = None) -> dict[str, Any]:
    """A source ConfigMap as the operator writes it for a ServiceKey with spec.publicKey.http."""
    return {"metadata": {"namespace": namespace, "name": configmap_name or f"{name}-public",
                         "labels": {"servicekey.io/name": name, "servicekey.io/http": "true"},
                         "annotations": {"servicekey.io/issuer": issuer}},
            "data": {"jwks.json": jwks, "jwks": jwks, "public.pem": ES256.public_pem, "kid": ES256.kid}}


Scenario = Callable[[TestClient], Awaitable[None]]


def run(scenario: Scenario, *configmaps: dict[str, Any], listed: bool = True, **options: Any) -> None:
    cache = KeyCache()
    cache.replace_all(configmaps)
    if listed:
        cache.listed.set()

    async def main() -> None:
        async with TestClient(TestServer(JwksApp(cache, **options).application())) as client:
            await scenario(client)
    asyncio.run(main())


async def _error(response: ClientResponse) -> str:
    return (await response.json())["error"]


async def raw_request(client: TestClient, method: str, target: str,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send the request target exactly as given (an HTTP client would normalise '..' and percent-encoding away
    before the server could see them); return (status, headers, body)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    lines = [f"{method} {target} HTTP/1.1", "Host: keys.example.test", "Connection: close",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    reply = await reader.read()
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    received = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return int(status_line.split()[1]), received, body


def test_the_jwk_set_is_the_configmaps_bytes_with_a_strong_etag_and_a_max_age():
    async def scenario(client: TestClient) -> None:
        response = await client.get("/keys/payments/signing/jwks.json")
        assert response.status == 200
        assert await response.read() == JWKS.encode()
        assert response.headers["Content-Type"] == "application/jwk-set+json"
        assert response.headers["Cache-Control"] == "public, max-age=45"
        assert response.headers["ETag"].startswith('"') and not response.headers["ETag"].startswith('W/')

        pem = await client.get("/keys/payments/signing/public.pem")
        assert await pem.text() == ES256.public_pem
    run(scenario, configmap(), max_age=45)


def test_a_client_with_the_current_etag_gets_304_and_head_gets_the_headers_alone():
    async def scenario(client: TestClient) -> None:
        etag = (await client.get("/keys/payments/signing/jwks.json")).headers["ETag"]

        unchanged = await client.get("/keys/payments/signing/jwks.json", headers={"If-None-Match": f'"x", {etag}'})
        head = await client.head("/keys/payments/signing/jwks.json")
        stale = await client.get("/keys/payments/signing/jwks.json", headers={"If-None-Match": '"stale"'})

        assert (unchanged.status, await unchanged.read(), unchanged.headers["ETag"]) == (304, b"", etag)
        assert (head.status, await head.read(), head.headers["ETag"]) == (200, b"", etag)
        assert head.headers["Content-Length"] == str(len(JWKS.encode()))
        assert stale.status == 200
    run(scenario, configmap())


def test_the_discovery_document_names_the_issuer_and_points_back_to_the_set():
    async def scenario(client: TestClient) -> None:
        default = await (await client.get("/keys/payments/signing/.well-known/openid-configuration")).json()
        chosen = await (await client.get("/keys/payments/other/.well-known/openid-configuration")).json()

        assert default == {"issuer": "https://keys.example.test/keys/payments/signing",
                           "jwks_uri": "https://keys.example.test/keys/payments/signing/jwks.json",
                           "id_token_signing_alg_values_supported": ["ES256"]}
        assert chosen["issuer"] == "https://issuer.example.test/payments"
    run(scenario, configmap(), configmap(name="other", issuer="https://issuer.example.test/payments"),
        base_url="https://keys.example.test/")


@pytest.mark.parametrize(("method", "path", "status", "error"), [
    ("GET", "/keys/payments/unknown/jwks.json", 404, "not_found"),
    ("GET", "/keys/elsewhere/signing/jwks.json", 404, "not_found"),
    ("GET", "/", 404, "not_found"),
    ("GET", "/keys/payments/signing/private.pem", 400, "invalid_path"),
    ("GET", "/keys/payments/../payments/signing/jwks.json", 400, "invalid_path"),
    ("GET", "/keys/payments/signing/%2e%2e/jwks.json", 400, "invalid_path"),
    ("GET", "/keys/payments/sign%69ng/jwks.json", 400, "invalid_path"),
    ("GET", "/keys/Payments/signing/jwks.json", 400, "invalid_path"),
    ("GET", "/keys/payments/signing/jwks.json/", 400, "invalid_path"),
    ("GET", "/keys/" + "a" * 64 + "/signing/jwks.json", 400, "invalid_path"),
    ("POST", "/keys/payments/signing/jwks.json", 405, "method_not_allowed"),
    ("DELETE", "/keys/payments/signing/jwks.json", 405, "method_not_allowed"),
    ("PUT", "/healthz", 405, "method_not_allowed"),
], ids=["unknown-key", "unknown-namespace", "root", "other-document", "dot-dot", "encoded-dot-dot",
        "encoded-letter", "uppercase", "trailing-slash", "namespace-too-long", "post", "delete", "put"])
def test_bad_requests_get_a_json_error(method: str, path: str, status: int, error: str):
    async def scenario(client: TestClient) -> None:
        received, headers, body = await raw_request(client, method, path)
        assert (received, json.loads(body)["error"]) == (status, error)
        assert headers["Cache-Control"] == "no-store"
        if status == 405:
            assert headers["Allow"] == "GET, HEAD"
    run(scenario, configmap())


def test_request_bodies_and_oversized_headers_are_refused():
    async def scenario(client: TestClient) -> None:
        with_body = await client.get("/keys/payments/signing/jwks.json", data=b"x" * 10)
        huge_header = await client.get("/keys/payments/signing/jwks.json", headers={"X-Padding": "x" * 20000})

        assert with_body.status == 413
        assert huge_header.status in (400, 431)
    run(scenario, configmap())


def test_ready_only_after_the_first_full_list_and_metrics_count_responses():
    async def scenario(client: TestClient) -> None:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        await client.get("/keys/payments/signing/jwks.json")
        await client.get("/keys/payments/nothing/jwks.json")

        metrics = await (await client.get("/metrics")).text()

        assert 'servicekey_jwks_requests_total{code="200"} 2.0' in metrics  # /healthz and the set
        assert 'servicekey_jwks_requests_total{code="404"} 1.0' in metrics
        assert 'servicekey_jwks_requests_total{code="503"} 1.0' in metrics
        assert "servicekey_jwks_served_keys 1.0" in metrics
        assert "servicekey_jwks_cache_age_seconds" in metrics
    run(scenario, configmap(), listed=False)


_PATH_ALPHABET = string.ascii_letters + string.digits + "-._~%/?#:@!$&'()*+,;="
_SEGMENTS = st.sampled_from(["keys", "payments", "signing", "jwks.json", "public.pem", ".well-known",
                             "openid-configuration", "..", ".", "", "%2F", "%2e%2e", "Signing", "a" * 70])


@settings(max_examples=300, deadline=None)
@given(path=st.one_of(st.text(_PATH_ALPHABET, max_size=80).map(lambda text: "/" + text.lstrip("/")),
                      st.lists(_SEGMENTS, max_size=6).map(lambda segments: "/" + "/".join(segments))),
       method=st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "PATCH"]),
       headers=st.dictionaries(st.sampled_from(["If-None-Match", "Accept", "X-Forwarded-Host", "Range", "Expect"]),
                               st.text(string.ascii_letters + string.digits + ' "*,/:;=-', max_size=40),
                               max_size=3))
def test_fuzzed_paths_and_headers_never_fail_the_server_and_serve_only_exact_key_paths(path: str, method: str,
                                                                                    headers: dict[str, str]):
    exact = {"/keys/payments/signing/jwks.json", "/keys/payments/signing/public.pem",
             "/keys/payments/signing/.well-known/openid-configuration", "/healthz", "/readyz", "/metrics"}

    async def scenario(client: TestClient) -> None:
        status, _, body = await raw_request(client, method, path, headers)
        assert status < 500, (status, body)
        if status in (200, 304):
            assert method in ("GET", "HEAD") and path.split("?")[0] in exact, path
    run(scenario, configmap())
