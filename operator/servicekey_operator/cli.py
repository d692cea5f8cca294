"""The ``servicekey-operator`` command: run the operator, rotate a key and show the state of keys, check the
invariants, serve the keys by URL. Installed also as ``kubectl-servicekey``, so ``kubectl servicekey status``
works. (The local development cluster is not part of the operator: ``python3 -m devcluster`` in a checkout.)"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from servicekey_operator.config import ConfigError, OperatorConfig
from servicekey_operator.version import package_version

# How long ``rotate`` waits for the operator to answer a request, unless --timeout says otherwise; with --wait
# also how long past the announced start of the staged key.
DEFAULT_ROTATE_TIMEOUT = 60.0
POLL_SECONDS = 0.5
PLUGIN_PROGRAM = "kubectl-servicekey"
DESCRIPTION = ("Run the ServiceKey operator, rotate keys and show their state (also as the kubectl plugin: kubectl "
               "servicekey status), check the invariants, serve the public keys by URL.")


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


class _KubeError(Exception):
    """The cluster could not be reached or refused what was asked; the message says what for the user."""


def _kube(args: argparse.Namespace) -> tuple[Any, str]:
    """A pykube client from ``--kubeconfig`` (else the in-cluster account, KUBECONFIG or ~/.kube/config) and
    ``--context``, and the namespace to use: ``-n``, else the context's (``default`` when it names none)."""
    import pykube
    import yaml

    try:
        if args.kubeconfig:
            config = pykube.KubeConfig.from_file(args.kubeconfig)
        else:
            first = next((p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p and os.path.exists(p)),
                         None)
            config = pykube.KubeConfig.from_file(first) if first else pykube.KubeConfig.from_env()
        if args.context:
            if args.context not in config.contexts:
                raise _KubeError(f"context {args.context!r} not found in the kubeconfig")
            config.set_current_context(args.context)
        namespace = getattr(args, "namespace", None) or config.namespace
        return pykube.HTTPClient(config), namespace
    except (pykube.PyKubeError, OSError, KeyError, yaml.YAMLError) as bad:
        raise _KubeError(f"cannot load the kubeconfig: {bad}") from bad


def _servicekeys(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """The pykube client, the namespace (``_kube``) and the query for ServiceKeys there, or everywhere with
    ``-A``."""
    import pykube

    from servicekey_operator.rotation_request import ServiceKeyObject

    api, namespace = _kube(args)
    return api, namespace, ServiceKeyObject.objects(api, namespace=pykube.all if args.all_namespaces else namespace)


def _kube_failure(error: Exception) -> str:
    import pykube

    if isinstance(error, pykube.exceptions.HTTPError):
        return f"Error from server ({error.code}): {error}"
    return f"{type(error).__name__}: {error}"


def _not_found(name: str) -> str:
    return f'Error from server (NotFound): servicekeys.servicekey.io "{name}" not found'


def _api_errors() -> tuple[type[BaseException], ...]:
    import pykube
    import requests

    return pykube.PyKubeError, requests.RequestException, OSError


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


Command = Callable[[argparse.Namespace], int]


def _cluster_command(name: str) -> Callable[[Command], Command]:
    """A command that talks to the cluster: a kubeconfig it cannot load, or an API server that cannot be reached
    or refuses, ends it with a one-line error and exit code 2."""
    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except _KubeError as bad:
                print(f"{name}: {bad}", file=sys.stderr)
            except _api_errors() as failed:
                print(f"{name}: {_kube_failure(failed)}", file=sys.stderr)
            return 2
        return run
    return wrap


@_cluster_command("rotate")
def _rotate(args: argparse.Namespace) -> int:
    import pykube

    from servicekey_operator.rotation_request import (
        ServiceKeyObject,
        request_rotation,
        rotated_line,
        rotation_outcome,
    )
    from servicekey_operator.spec import EMERGENCY_PREFIX, rotate_request_digest
    from servicekey_operator.status_view import parse_time, pending_activation, ready_condition

    api, namespace = _kube(args)
    where = f"ServiceKey {namespace}/{args.name}"
    try:
        servicekey = ServiceKeyObject.objects(api, namespace=namespace).get(name=args.name)
    except pykube.ObjectDoesNotExist:
        print(_not_found(args.name), file=sys.stderr)
        return 2
    before = dict(servicekey.obj.get("status") or {})
    if before.get("pendingKeyId") and not args.emergency:
        # The operator answers a request only once the staged key signs; the user would wait for nothing.
        print(f"rotate: {where} already has a staged key, {before['pendingKeyId']}, which signs from "
              f"{pending_activation(before) or 'an unknown time'}: request another rotation once it signs, "
              f"or use --emergency to replace the signing key (and the staged one) now", file=sys.stderr)
        return 1
    request = (EMERGENCY_PREFIX if args.emergency else "") + _now().isoformat()
    request_rotation(servicekey, request)
    digest = rotate_request_digest(request)
    started = time.monotonic()
    answer_deadline = started + (args.timeout if args.timeout is not None else DEFAULT_ROTATE_TIMEOUT)
    outcome = None
    while outcome is None:
        servicekey.reload()
        status = servicekey.obj.get("status") or {}
        outcome = rotation_outcome(before, status, digest)
        if outcome is None:
            if time.monotonic() >= answer_deadline:
                condition = ready_condition(servicekey.obj)
                print(f"rotate: timed out after {time.monotonic() - started:.0f}s: the operator has not "
                      f"answered the rotate request on {where} (key {status.get('keyId') or '<none>'} "
                      f"still signs; Ready={condition.get('status', 'Unknown')} "
                      f"{condition.get('reason', '')}: {condition.get('message', '')})".rstrip(": "),
                      file=sys.stderr)
                return 1
            time.sleep(POLL_SECONDS)
    print(outcome.describe(), flush=True)
    if not (args.wait and outcome.staged):
        return 0
    # Until the staged key signs: --timeout counts from the start; by default its announced start + a minute.
    activation = parse_time(outcome.signs_from)
    if args.timeout is not None:
        deadline = started + args.timeout
    else:
        wait = (activation - _now()).total_seconds() if activation else 0.0
        deadline = time.monotonic() + max(wait, 0.0) + DEFAULT_ROTATE_TIMEOUT
    while True:
        servicekey.reload()
        status = servicekey.obj.get("status") or {}
        if status.get("keyId") == outcome.new_kid:
            print(rotated_line(outcome.old_kid, outcome.new_kid), flush=True)
            return 0
        if status.get("pendingKeyId") != outcome.new_kid:
            print(f"rotate: the staged key {outcome.new_kid} was withdrawn before it signed (now key "
                  f"{status.get('keyId') or '<none>'} signs, pending {status.get('pendingKeyId') or '<none>'}; "
                  f"see: servicekey-operator status {args.name} -n {namespace})", file=sys.stderr)
            return 1
        if time.monotonic() >= deadline:
            print(f"rotate: timed out after {time.monotonic() - started:.0f}s waiting for {outcome.new_kid} to "
                  f"sign on {where} (staged, signs from {outcome.signs_from or 'an unknown time'}; key "
                  f"{status.get('keyId')} still signs)", file=sys.stderr)
            return 1
        time.sleep(POLL_SECONDS)


def _read_detail(api: Any, namespace: str, obj: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], str | None]:
    """The ConfigMap's published kids and the key's Events; what cannot be read is said, not raised."""
    import pykube

    from servicekey_operator.status_view import published_kids

    configmap_name = (obj.get("status") or {}).get("configMapName")
    if not configmap_name:
        published = published_kids(None, "the operator has not published it yet")
    else:
        try:
            configmap = pykube.ConfigMap.objects(api, namespace=namespace).get_or_none(name=configmap_name)
            published = published_kids(configmap.obj if configmap else None)
        except _api_errors() as failed:
            published = published_kids(None, f"cannot read ConfigMap {configmap_name}: {_kube_failure(failed)}")
    uid = (obj.get("metadata") or {}).get("uid")
    try:
        events = [event.obj for event in pykube.Event.objects(api, namespace=namespace).filter(
            field_selector=f"involvedObject.uid={uid}")]
        return published, events, None
    except _api_errors() as failed:
        return published, [], f"cannot list Events: {_kube_failure(failed)}"


@_cluster_command("status")
def _status(args: argparse.Namespace) -> int:
    import pykube

    from servicekey_operator import status_view

    if args.name and args.all_namespaces:
        print("status: a ServiceKey cannot be retrieved by name across all namespaces", file=sys.stderr)
        return 2
    if args.name and args.selector:
        print("status: a name cannot be given together with a selector (-l)", file=sys.stderr)
        return 2
    api, namespace, query = _servicekeys(args)
    if args.name:
        try:
            objects = [query.get(name=args.name).obj]
        except pykube.ObjectDoesNotExist:
            print(_not_found(args.name), file=sys.stderr)
            return 2
    else:
        if args.selector:
            query = query.filter(selector=args.selector)
        objects = sorted((sk.obj for sk in query),
                         key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    now = _now()
    if args.output in ("json", "yaml"):
        print(status_view.render_document(status_view.as_document(objects, single=bool(args.name)),
                                          args.output))
    elif args.name and args.output is None:
        published, events, events_problem = _read_detail(api, namespace, objects[0])
        print(status_view.detail(objects[0], published, events, now, events_problem))
    elif not objects:
        where = "any namespace" if args.all_namespaces else f"{namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
    else:
        print(status_view.table(objects, now, wide=args.output == "wide", with_namespace=args.all_namespaces))
    return status_view.exit_code(objects)


@_cluster_command("recheck")
def _recheck(args: argparse.Namespace) -> int:
    import pykube

    from servicekey_operator.spec import RECHECK_ANNOTATION

    if args.names and (args.all_namespaces or args.selector):
        print("recheck: names cannot be given together with -A or a selector (-l)", file=sys.stderr)
        return 2
    _api, _namespace, query = _servicekeys(args)
    selected = []
    for name in args.names:
        try:
            selected.append(query.get(name=name))
        except pykube.ObjectDoesNotExist:
            print(_not_found(name), file=sys.stderr)
            return 2
    if not args.names:
        selected = list(query.filter(selector=args.selector) if args.selector else query)
    request = _now().isoformat()
    for servicekey in selected:
        servicekey.patch({"metadata": {"annotations": {RECHECK_ANNOTATION: request}}})
    print(f"asked the operator to check {len(selected)} ServiceKey(s) against Vault now; "
          "servicekey-operator status shows the outcome")
    return 0


DEFAULT_DRAIN_TIMEOUT = 300.0


@_cluster_command("uninstall")
def _uninstall(args: argparse.Namespace) -> int:
    from servicekey_operator import uninstall
    from servicekey_operator.status_view import ready_condition

    api, _ = _kube(args)
    namespaces = None if args.all_namespaces else args.namespace
    if not args.all_namespaces and not namespaces:
        print("uninstall: say where: -A (every namespace) or -n NAMESPACE (repeatable)", file=sys.stderr)
        return 2
    if args.strip_finalizers:
        stripped, settled = uninstall.strip_finalizers(api, namespaces, args.timeout)
        for name in stripped:
            print(f"servicekey {name}: finalizer removed (its key stays in Vault, copies elsewhere stay)")
        if not settled:
            print(f"uninstall: finalizers came back for {args.timeout:.0f}s: an operator still runs; stop it first "
                  "(the chart runs this after uninstalling it)", file=sys.stderr)
            return 1
        return 0
    left = uninstall.drain(api, namespaces, args.timeout)
    for obj in left:
        meta = obj["metadata"]
        condition = ready_condition(obj)
        print(f"uninstall: servicekey {meta['namespace']}/{meta['name']} is still there after {args.timeout:.0f}s "
              f"(finalizers {meta.get('finalizers') or []}; Ready={condition.get('status', 'Unknown')} "
              f"{condition.get('reason', '')})", file=sys.stderr)
    if left:
        print("uninstall: is the operator running? See docs/uninstall.md; --strip-finalizers releases them "
              "without the operator", file=sys.stderr)
        return 1
    print("every ServiceKey is deleted")
    return 0


@_cluster_command("import")
def _import(args: argparse.Namespace) -> int:
    import json

    from servicekey_operator.import_rows import CoordinatorRow, plan
    from servicekey_operator.import_run import Importer
    from servicekey_operator.import_sources import SourceError, read_rows
    from servicekey_operator.vault.connection import VaultConnection
    from servicekey_operator.vault.kv import KvKeyStore

    if bool(args.namespace) == bool(args.namespace_field):
        print("import: say where, once: -n NAMESPACE, or --namespace-field COLUMN", file=sys.stderr)
        return 2
    if any("=" not in entry for entry in args.name):
        print("import: --name takes SERVICE_ID=NAME", file=sys.stderr)
        return 2
    names = dict(entry.split("=", 1) for entry in args.name)
    config = _config("import")
    if config is None:
        return 2
    try:
        raw = read_rows(args.source, table=args.table, query=args.query)
    except SourceError as failed:
        print(f"import: {failed}", file=sys.stderr)
        return 2
    rows = [CoordinatorRow.from_mapping(row) for row in raw]
    namespaces = args.namespace or {row.service_id: str(source.get(args.namespace_field) or "")
                                    for row, source in zip(rows, raw, strict=True)}
    api, _ = _kube(args)
    importer = Importer(api, KvKeyStore(VaultConnection(config.vault)), config.kv_mount, config.path_prefix)
    report = importer.run(plan(rows, namespaces, names), len(rows), dry_run=args.dry_run, now=_now())
    if args.output == "json":
        print(json.dumps(report.as_document(), indent=2))
    else:
        for key in report.keys:
            print(f"{key.outcome:<10} {key.namespace}/{key.name} (service {key.service_id}, kid {key.kid})"
                  + (f": {key.message}" if key.message else ""))
        for error in report.errors:
            print(f"{'refused':<10} service {error.service_id or '<none>'}: {error.reason}: {error.message}")
        counts = report.as_document()["counts"]
        print(f"{len(rows)} rows: " + ", ".join(f"{count} {word}" for word, count in sorted(counts.items())))
    return 0 if report.clean else 1


def _version(_: argparse.Namespace) -> int:
    print(f"servicekey-operator {package_version()}")
    return 0


def _completion(args: argparse.Namespace) -> int:
    from servicekey_operator.completion import SCRIPTS

    sys.stdout.write(SCRIPTS[args.shell](parser()))
    return 0


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


def _kube_options(namespaced: bool = True) -> argparse.ArgumentParser:
    """The kubectl-like options of the commands that talk to the cluster."""
    options = argparse.ArgumentParser(add_help=False)
    if namespaced:
        options.add_argument("-n", "--namespace",
                             help="the ServiceKey's namespace (default: the kubeconfig context's namespace)")
    options.add_argument("--kubeconfig", metavar="FILE",
                         help="the kubeconfig to use (default: KUBECONFIG, ~/.kube/config, or in a pod its account)")
    options.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    return options


def _program() -> str:
    """``kubectl servicekey`` when run as the kubectl plugin, else the command's own name."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "kubectl servicekey" if invoked == PLUGIN_PROGRAM else "servicekey-operator"


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    root = argparse.ArgumentParser(prog=_program(), description=DESCRIPTION)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="run the operator (configured by environment variables)").set_defaults(
        func=_run)
    rotate = commands.add_parser(
        "rotate", parents=[_kube_options()], help="rotate a ServiceKey now and say what the operator did",
        description="Set the servicekey.io/rotate annotation to a new value and wait for the operator's answer: "
                    "'rotated: <old kid> -> <new kid>' when the new key signs at once, or 'staged <kid>, signs "
                    "from <time>' when rotation.publishAhead publishes it first. Exit 0 once answered, 1 on a "
                    "timeout, 2 when the cluster cannot be read.")
    rotate.add_argument("name", help="the ServiceKey")
    rotate.add_argument("--emergency", action="store_true",
                        help="the key is compromised: replace it at once, without publishAhead (verifiers reject "
                             "tokens of the new key until they have it)")
    rotate.add_argument("--wait", action="store_true",
                        help="when the new key is staged, also wait until it signs and print 'rotated: ...'")
    rotate.add_argument("--timeout", type=float, metavar="SECONDS",
                        help=f"give up after this long (default: {DEFAULT_ROTATE_TIMEOUT:.0f}s for the answer; with "
                             f"--wait, {DEFAULT_ROTATE_TIMEOUT:.0f}s past the staged key's announced start)")
    rotate.set_defaults(func=_rotate)
    status_help = ("Without NAME, a table of ServiceKeys; with NAME, a detailed view of one: its current, pending "
                   "and retained keys (the ConfigMap's jwks.json), when the pending key signs, the next rotation, "
                   "the Vault path and key version, copies in other namespaces and refusals, and its latest Events. "
                   "Exit 1 when any key shown is not Ready, 2 when the cluster cannot be read, else 0.")
    status = commands.add_parser("status", parents=[_kube_options()], help="show ServiceKeys and their keys",
                                 description=status_help)
    status.add_argument("name", nargs="?", help="one ServiceKey (a detailed view)")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="list ServiceKeys in all namespaces")
    status.add_argument("-l", "--selector", help="label selector, e.g. app=payments,tier!=test")
    status.add_argument("-o", "--output", choices=("wide", "json", "yaml"),
                        help="wide: a table with more columns; json or yaml: the objects")
    status.set_defaults(func=_status)
    recheck = commands.add_parser(
        "recheck", parents=[_kube_options()], help="have the operator check ServiceKeys against Vault now",
        description="Set the servicekey.io/recheck annotation to a new value: the operator runs a pass for each key at "
                    "once, as it otherwise does within its resync period. After Vault was restored from a snapshot "
                    "this finds the keys Vault went back on (Ready reason VaultRolledBack) at once. Exit 0 once "
                    "asked, 2 when the cluster cannot be read or a named key does not exist.")
    recheck.add_argument("names", nargs="*", metavar="NAME", help="ServiceKeys (default: all in the namespace)")
    recheck.add_argument("-A", "--all-namespaces", action="store_true", help="ServiceKeys in all namespaces")
    recheck.add_argument("-l", "--selector", help="label selector, e.g. app=payments,tier!=test")
    recheck.set_defaults(func=_recheck)
    inspect = commands.add_parser("inspect", parents=[_kube_options()],
                                  help="the detailed view of one ServiceKey (status NAME)", description=status_help)
    inspect.add_argument("name", help="the ServiceKey")
    inspect.add_argument("-o", "--output", choices=("wide", "json", "yaml"),
                         help="wide: a table row; json or yaml: the object")
    inspect.set_defaults(func=_status, all_namespaces=False, selector=None)
    uninstall = commands.add_parser(
        "uninstall", parents=[_kube_options(namespaced=False)],
        help="before removing the operator: delete every ServiceKey, or release them from its finalizer",
        description="What the chart's pre-delete hook runs (uninstall.serviceKeys). --drain deletes every ServiceKey "
                    "while the operator still runs and waits until each is gone (deletionPolicy honoured, copies "
                    "withdrawn); exit 1 if some are left after --timeout. --strip-finalizers, once the operator is "
                    "stopped, removes its finalizer, so that the keys, and their namespaces, can be deleted without "
                    "an operator (nothing is then done in Vault or to the copies); exit 1 if an operator keeps "
                    "putting it back. Exit 2 when the cluster cannot be read.")
    mode = uninstall.add_mutually_exclusive_group(required=True)
    mode.add_argument("--drain", action="store_true", help="delete every ServiceKey and wait until they are gone")
    mode.add_argument("--strip-finalizers", action="store_true", help="remove the operator's finalizer from each")
    uninstall.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    uninstall.add_argument("-n", "--namespace", action="append", default=[],
                           help="a namespace (repeatable)")
    uninstall.add_argument("--timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT, metavar="SECONDS",
                           help=f"how long to wait for the drain, or for the finalizers to stay off (default "
                                f"{DEFAULT_DRAIN_TIMEOUT:.0f}s)")
    uninstall.set_defaults(func=_uninstall)
    importing = commands.add_parser(
        "import", parents=[_kube_options(namespaced=False)],
        help="import the keys of a coordinator's service_keys table or dump, unchanged",
        description="Read a coordinator's keys (SOURCE: a postgresql://, mysql://, mariadb:// or mongodb:// URL, or "
                    "a .json/.ndjson dump of {serviceId, serviceName, publicKey, privateKey, algorithm, keySize}), "
                    "check each row (the private key parses, the public key is its half, algorithm and size agree), "
                    "write each valid key as version 1 of its ServiceKey's Vault secret (check-and-set: never over an "
                    "existing secret) and create the ServiceKey (deletionPolicy Retain), which the operator adopts "
                    "with the same key; the service id is published as a legacy kid of the key. Rows that fail are "
                    "reported with their reason. Running it again changes nothing. Vault settings as for the operator "
                    "(VAULT_ADDR, VAULT_TOKEN, SERVICEKEY_KV_MOUNT, SERVICEKEY_PATH_PREFIX). Exit 0 when every row "
                    "is imported or already there, 1 when some are refused or in conflict, 2 when a source, the "
                    "cluster or the settings cannot be read.")
    importing.add_argument("source",
                           help="postgresql://, mysql://, mariadb://, mongodb:// URL, or a .json / .ndjson file")
    importing.add_argument("-n", "--namespace", help="the namespace of every ServiceKey")
    importing.add_argument("--namespace-field", metavar="COLUMN",
                           help="the column (or dump field) that names each row's namespace, instead of -n")
    importing.add_argument("--name", action="append", default=[], metavar="SERVICE_ID=NAME",
                           help="the ServiceKey name for a service id (repeatable); by default the id lower-cased, "
                                "with '_' and '.' as '-'")
    importing.add_argument("--table", default="service_keys", help="the table to read (default service_keys)")
    importing.add_argument("--query", help="the SELECT to read the rows with, instead of the whole table; for "
                                          "mongodb://, a JSON filter document (Extended JSON), e.g. "
                                          "'{\"algorithm\": \"ES256\"}', instead of every document of the "
                                          "--table collection")
    importing.add_argument("--dry-run", action="store_true",
                           help="check and print the plan; write nothing to Vault or Kubernetes")
    importing.add_argument("-o", "--output", choices=("json",), help="json: the report as a JSON document")
    importing.set_defaults(func=_import)
    commands.add_parser("version", help="print the version of this command").set_defaults(func=_version)
    completion = commands.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for bash or zsh, for servicekey-operator and kubectl-servicekey. "
                    "Load it with: source <(servicekey-operator completion bash)")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(func=_completion)
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
