"""The ``servicekey-operator`` command: run the operator, rotate a key, and drive the local dev cluster."""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time

from servicekey_operator.config import ConfigError, OperatorConfig


def _run(_: argparse.Namespace) -> int:
    import kopf

    from servicekey_operator import handlers  # noqa: F401 - importing registers the kopf handlers

    try:
        config = OperatorConfig.from_env()
    except ConfigError as bad:
        print(f"servicekey-operator: configuration error: {bad}", file=sys.stderr)
        return 2
    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON if config.log_format == "json"
                   else kopf.LogFormat.FULL)
    kopf.run(
        clusterwide=not config.watch_namespaces,
        namespaces=config.watch_namespaces,
        standalone=config.peering is None,
        peering_name=config.peering,
        # Replicas of equal priority all stay active (kopf only warns); distinct random priorities
        # make exactly one of them the active one.
        priority=random.randint(1, 2**31 - 1),
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
        memo=kopf.Memo(config=config),
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


def _dev(args: argparse.Namespace) -> int:
    from servicekey_operator.devcluster import commands

    return commands.run(args.dev_command, args)


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
    dev = commands.add_parser("dev", help="local cluster + OpenBao for development and the demo")
    dev.add_argument("dev_command", choices=["build", "up", "demo"],
                     help="build: compile and cache the binaries; up: start and wait; demo: the full demo")
    dev.set_defaults(func=_dev)
    return root


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    return int(args.func(args))
