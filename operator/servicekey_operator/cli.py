"""The ``servicekey-operator`` command: run the operator, rotate a key, check the invariants, serve the keys by
URL. (The local development cluster is not part of the operator: ``python3 -m devcluster`` in a checkout.)"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time

from servicekey_operator.config import ConfigError, OperatorConfig


def _config(command: str) -> OperatorConfig | None:
    """The settings from the environment, or None after saying on stderr what is wrong with them."""
    try:
        return OperatorConfig.from_env()
    except ConfigError as bad:
        print(f"{command}: configuration error: {bad}", file=sys.stderr)
        return None


def _run(_: argparse.Namespace) -> int:
    import kopf

    from servicekey_operator import handlers  # noqa: F401 - importing registers the kopf handlers
    from servicekey_operator.peering import own_identity

    config = _config("servicekey-operator")
    if config is None:
        return 2
    identity = own_identity()
    # Replicas of equal priority all pause (kopf: "Pausing all operators, including self");
    # distinct random priorities make exactly one of them the active one.
    priority = random.randint(1, 2**31 - 1)
    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON if config.log_format == "json"
                   else kopf.LogFormat.FULL)
    kopf.run(
        clusterwide=not config.watch_namespaces,
        namespaces=config.watch_namespaces,
        standalone=config.peering is None,
        peering_name=config.peering,
        identity=identity,
        priority=priority,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
        # The pass scheduler judges from the peering object, as kopf does, whether this replica is active.
        memo=kopf.Memo(config=config, peering_identity=identity, peering_priority=priority),
    )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    import pykube

    from servicekey_operator.rotation_request import ServiceKeyObject, request_rotation

    api = pykube.HTTPClient(pykube.KubeConfig.from_env())
    servicekey = ServiceKeyObject.objects(api, namespace=args.namespace).get(name=args.name)
    old_kid = (servicekey.obj.get("status") or {}).get("keyId")
    request_rotation(servicekey, datetime.datetime.now(datetime.UTC).isoformat())
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        servicekey.reload()
        status = servicekey.obj.get("status") or {}
        if status.get("keyId") and status.get("keyId") != old_kid:
            print(status["keyId"])
            return 0
        time.sleep(0.5)
    print(f"timed out after {args.timeout}s waiting for a new key id (still {old_kid})", file=sys.stderr)
    return 1


def _check(args: argparse.Namespace) -> int:
    import hvac.exceptions
    import kubernetes.config
    import requests
    import urllib3.exceptions
    from kubernetes.client.rest import ApiException

    from servicekey_operator import invariants
    from servicekey_operator.errors import ServiceKeyError
    from servicekey_operator.kubeapi import api_client
    from servicekey_operator.vault.connection import VaultConnection

    config = _config("servicekey-operator check")
    if config is None:
        return 2
    try:
        violations = invariants.check(api_client(), VaultConnection(config.vault).client,
                                      namespaces=args.namespace or None, etcd_endpoint=args.etcd,
                                      kv_mount=config.kv_mount, path_prefix=config.path_prefix,
                                      transit_mount=config.transit_mount)
    except (ServiceKeyError, hvac.exceptions.VaultError, ApiException, kubernetes.config.ConfigException,
            requests.RequestException, urllib3.exceptions.HTTPError, OSError) as failed:
        print(f"servicekey-operator check: could not read the cluster, Vault or etcd: {type(failed).__name__}: "
              f"{failed}", file=sys.stderr)
        return 2
    for violation in violations:
        print(violation)
    print(invariants.summary(violations))
    return 1 if any(not violation.informational for violation in violations) else 0


def _jwks_server(args: argparse.Namespace) -> int:
    from servicekey_operator import jwks_server

    return jwks_server.main(args)


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    root = argparse.ArgumentParser(prog="servicekey-operator", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the operator (configured by environment variables)").set_defaults(
        func=_run)
    rotate = commands.add_parser("rotate", help="rotate a ServiceKey now and print the new key id")
    rotate.add_argument("name")
    rotate.add_argument("-n", "--namespace", default="default")
    rotate.add_argument("--timeout", type=float, default=60.0)
    rotate.set_defaults(func=_rotate)
    check = commands.add_parser(
        "check", help="report every violation of the invariants in the cluster and Vault (exit 1 if any)",
        description="Inspect ServiceKeys, their ConfigMaps, Secrets, Events (and etcd) and Vault at rest; print one "
                    "line per violation and a summary. Uses KUBECONFIG (or the in-cluster account), VAULT_ADDR/"
                    "VAULT_TOKEN and SERVICEKEY_KV_MOUNT/SERVICEKEY_PATH_PREFIX like the operator.")
    check.add_argument("-n", "--namespace", action="append", default=[],
                       help="a namespace to check (repeatable; default: all)")
    check.add_argument("--etcd", metavar="URL", help="also scan etcd's raw keyspace through its JSON gateway")
    check.set_defaults(func=_check)
    from servicekey_operator.jwks_server import add_arguments

    jwks = commands.add_parser(
        "jwks-server", help="serve the published public keys by URL (JWKS, PEM, discovery)",
        description="Serve /keys/<namespace>/<name>/jwks.json, public.pem and .well-known/openid-configuration for "
                    "ServiceKeys with spec.publicKey.http, from a watch of their ConfigMaps (KUBECONFIG or the "
                    "in-cluster account; list and watch on ConfigMaps only). Never talks to Vault.")
    add_arguments(jwks)
    jwks.set_defaults(func=_jwks_server)
    return root


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    return int(args.func(args))
