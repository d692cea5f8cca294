"""The JWKS server: the published public keys by URL, for verifiers that fetch keys (Istio ``jwksUri``, Envoy
``remote_jwks``, oauth2-proxy, gateways, services outside the cluster).

Stateless and separate from the operator (its own Deployment and ServiceAccount): it serves from its watch cache
of the source ConfigMaps whose ServiceKey set ``spec.publicKey.http`` (``jwks_watch``), so it keeps serving while
the operator is down, and it never talks to Vault. Endpoints, on one port (aiohttp):

- ``GET|HEAD /keys/<namespace>/<name>/jwks.json``: the RFC 7517 JWK Set, byte-identical to the ConfigMap's;
- ``.../public.pem``: the current key's SPKI PEM;
- ``.../.well-known/openid-configuration``: ``issuer``, ``jwks_uri`` (OpenID Connect Discovery 1.0);
- ``/healthz``, ``/readyz`` (ready once every namespace has been listed in full), ``/metrics`` (Prometheus).

Every document has a strong ETag; ``If-None-Match`` gets 304 (RFC 9110 section 13.1.2), and ``Cache-Control:
public, max-age`` lets clients cache it for ``--max-age`` seconds, which must stay well below the shortest
``rotation.publishAhead`` (a client may use a cached set that long after a new key was published). Unknown keys
get a 404 JSON error, malformed paths 400, other methods 405, request bodies and oversized headers 413/431.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from servicekey_operator.jwks_cache import Document, KeyCache, KeyRef
from servicekey_operator.jwks_watch import ConfigMapWatch

DEFAULT_PORT = 8080
# Well below the shortest publishAhead a user is told to choose (the default is 3m): a client that honours it
# has a new key 60 s after the ConfigMap got it, at the latest.
DEFAULT_MAX_AGE_SECONDS = 60
# A namespace is a DNS label, a ServiceKey name a DNS subdomain of at most 63 characters (it is a label value).
_KEY_PATH = re.compile(r"/keys/(?P<namespace>[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)"
                       r"/(?P<name>[a-z0-9](?:[-a-z0-9.]{0,61}[a-z0-9])?)"
                       r"/(?P<document>jwks\.json|public\.pem|\.well-known/openid-configuration)")
# A verifier's request line and headers are small: anything larger is refused before it is read.
MAX_HEADER_BYTES = 8190
TLS_RELOAD_SECONDS = 60.0
# After SIGTERM the pod stays in the Service's endpoints until the endpoints controller and kube-proxy notice: keep
# serving (and say not ready) that long before closing the listener.
DRAIN_SECONDS = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """The server's own registry (the process serves nothing else)."""

    def __init__(self, cache: KeyCache) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("servicekey_jwks_requests", "HTTP requests, by status code.", ["code"],
                                registry=self.registry)
        cache_age = Gauge("servicekey_jwks_cache_age_seconds",
                          "Seconds since the watch last confirmed the served keys.", registry=self.registry)
        cache_age.set_function(lambda: time.monotonic() - cache.updated_at)
        served = Gauge("servicekey_jwks_served_keys", "ServiceKeys served.", registry=self.registry)
        served.set_function(lambda: float(len(cache)))


def _error(status: int, error: str, description: str, **headers: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status,
                             headers={"Cache-Control": "no-store", **headers})


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 section 13.1.2: weak comparison of each listed entity tag, or ``*``."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _respond(request: web.Request, document: Document, max_age: int) -> web.Response:
    headers = {"ETag": document.etag, "Cache-Control": f"public, max-age={max_age}"}
    if _matches(request.headers.get("If-None-Match", ""), document.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=document.body, headers={**headers, "Content-Type": document.content_type})


class JwksApp:
    """The aiohttp application around a KeyCache."""

    def __init__(self, cache: KeyCache, *, max_age: int = DEFAULT_MAX_AGE_SECONDS, base_url: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self.cache = cache
        self.max_age = max_age
        self.base_url = base_url.rstrip("/") if base_url else None
        self.metrics = metrics or Metrics(cache)
        self.draining = False

    def application(self) -> web.Application:
        """The routes and the middleware that counts responses."""
        app = web.Application(middlewares=[self._count], client_max_size=1024)
        app.router.add_route("*", "/{path:.*}", self._route)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as refused:  # aiohttp's own refusals (e.g. 413) count too
            self.metrics.requests.labels(str(refused.status)).inc()
            raise
        self.metrics.requests.labels(str(response.status)).inc()
        return response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "only GET and HEAD", Allow="GET, HEAD")
        if request.content_length or request.headers.get("Transfer-Encoding"):
            return _error(413, "request_too_large", "requests carry no body")
        path = request.raw_path.split("?", 1)[0]
        if path == "/healthz":
            return web.Response(text="ok\n")
        if path == "/readyz":
            ready = self.cache.listed.is_set() and not self.draining
            return web.Response(status=200 if ready else 503, text="ready\n" if ready else "listing\n")
        if path == "/metrics":
            return web.Response(body=generate_latest(self.metrics.registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})
        if not path.startswith("/keys/"):
            return _error(404, "not_found", "keys are under /keys/<namespace>/<name>/")
        # The raw path: a percent-encoded '/' or '..' must not reach the pattern decoded.
        match = _KEY_PATH.fullmatch(path)
        if match is None:
            return _error(400, "invalid_path", "expected /keys/<namespace>/<name>/(jwks.json|public.pem|"
                                               ".well-known/openid-configuration)")
        ref: KeyRef = (match["namespace"], match["name"])
        key = self.cache.get(ref)
        if key is None:
            return _error(404, "not_found", f"no key {ref[0]}/{ref[1]} is served")
        document = match["document"]
        if document == "jwks.json":
            return _respond(request, key.jwks, self.max_age)
        if document == "public.pem":
            return _respond(request, key.pem, self.max_age)
        return _respond(request, key.discovery(self.base_url or f"{request.scheme}://{request.host}", ref),
                        self.max_age)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) from PEM files, e.g. a cert-manager Secret's tls.crt and tls.key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


async def _reload_tls(context: ssl.SSLContext, cert_file: str, key_file: str, logger: logging.Logger) -> None:
    """Load a renewed certificate into the running context: new connections get it, no restart needed."""
    loaded = os.stat(cert_file).st_mtime, os.stat(key_file).st_mtime
    while True:
        await asyncio.sleep(TLS_RELOAD_SECONDS)
        try:
            current = os.stat(cert_file).st_mtime, os.stat(key_file).st_mtime
            if current != loaded:
                context.load_cert_chain(cert_file, key_file)
                loaded = current
                logger.info("loaded the renewed TLS certificate")
        except (OSError, ssl.SSLError) as failure:  # mid-rotation (files swapped one by one): next round
            logger.warning(f"reloading the TLS certificate failed: {failure}")


async def serve(args: argparse.Namespace, logger: logging.Logger) -> None:
    """Watch the served ConfigMaps and serve them until SIGTERM or SIGINT."""
    from servicekey_operator.kubeapi import api_client

    cache = KeyCache()
    watch = ConfigMapWatch(api_client(), cache, tuple(args.namespace), logger)
    watch.start()
    context = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    app = JwksApp(cache, max_age=args.max_age, base_url=args.base_url)
    # The request handler's settings are keywords of the runner (``handler_args`` would belong to the Application;
    # given here, aiohttp drops them all, access_log=None included, and logs every request).
    runner = web.AppRunner(app.application(), access_log=None, max_line_size=MAX_HEADER_BYTES,
                           max_field_size=MAX_HEADER_BYTES)
    await runner.setup()
    await web.TCPSite(runner, port=args.port, ssl_context=context).start()
    logger.info(f"serving keys on port {args.port} ({'https' if context else 'http'}), max-age {args.max_age}s")
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # a rolling update: finish the requests in flight, then go
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    reloading = asyncio.create_task(_reload_tls(context, args.tls_cert, args.tls_key, logger)) if context else None
    await stopping.wait()
    app.draining = True
    await asyncio.sleep(args.drain_seconds)
    if reloading is not None:
        reloading.cancel()
    watch.stop()
    await runner.cleanup()


class MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse (oversized headers, garbage) as an error with a traceback: from
    anyone on the network, that is noise and a way to flood the log. One line at INFO says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if isinstance(refused, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = f"refused a malformed request: {refused.code} {refused.message}", ()
            record.exc_info = record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                           "message": record.getMessage()})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jwks-server`` command's flags."""
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--max-age", type=int, default=DEFAULT_MAX_AGE_SECONDS,
                        help="Cache-Control max-age in seconds; keep it well below the shortest publishAhead")
    parser.add_argument("--base-url", help="the externally visible base URL of the discovery documents (default: "
                                           "the request's scheme and Host)")
    parser.add_argument("--tls-cert", help="PEM certificate (chain) file; with --tls-key, serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key file of --tls-cert")
    parser.add_argument("--namespace", action="append", default=[],
                        help="serve keys of this namespace only (repeatable; default: all namespaces)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--drain-seconds", type=float, default=DRAIN_SECONDS,
                        help="after SIGTERM, keep serving (not ready) this long before closing")


def main(args: argparse.Namespace) -> int:
    """Run the server; 2 for bad flags."""
    if bool(args.tls_cert) != bool(args.tls_key):
        print("jwks-server: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if args.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    asyncio.run(serve(args, logging.getLogger("servicekey_operator.jwks_server")))
    return 0
