"""Carry out an import plan (``import_rows``): each key as version 1 of its ServiceKey's Vault secret, then the
ServiceKey, which the operator adopts with that very key (same kid, nothing rotated).

Idempotent: a secret that already holds the same key, and a ServiceKey that already exists for it, are left as
they are; a different key at the path, or a secret or ServiceKey someone else owns, is a conflict, never
overwritten. The Vault write is a check-and-set on "no secret yet", so a concurrent writer (an operator that saw
the ServiceKey first) cannot be overwritten either. The private key goes from the source to Vault only: never
into a Kubernetes object, never into the report.
"""

from __future__ import annotations

import dataclasses
import datetime
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pykube
import requests

from servicekey_operator.errors import ServiceKeyError, VaultPathConflict, VaultWriteConflict
from servicekey_operator.import_rows import NAME, ImportedKey, ImportPlan, RowError
from servicekey_operator.keys import KeyPair
from servicekey_operator.rotation_request import API_GROUP, API_VERSION, ServiceKeyObject
from servicekey_operator.vault.kv import KV_MAX_VERSIONS, KvKeyStore
from servicekey_operator.vault.ownership import Owner
from servicekey_operator.vault.records import record_metadata

# The reason recorded with the imported version (``rotation_reason``), next to the operator's own.
IMPORTED = "Imported"
IMPORT_THREADS = 8


@dataclass(frozen=True)
class KeyOutcome:
    """What the import did for one key: ``imported`` (written and created), ``unchanged`` (already there),
    ``planned`` (a dry run), or ``conflict``/``failed`` with a message."""

    service_id: str
    namespace: str
    name: str
    kid: str
    outcome: str
    message: str = ""


@dataclass
class ImportReport:
    """The whole run, as ``-o json`` prints it."""

    rows: int
    dry_run: bool
    keys: list[KeyOutcome] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def as_document(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for key in self.keys:
            counts[key.outcome] = counts.get(key.outcome, 0) + 1
        return {"rows": self.rows, "dryRun": self.dry_run, "counts": {**counts, "refused": len(self.errors)},
                "keys": [dataclasses.asdict(key) for key in self.keys],
                "refused": [dataclasses.asdict(error) for error in self.errors]}

    @property
    def clean(self) -> bool:
        """Every row imported or already there."""
        return not self.errors and all(key.outcome in ("imported", "unchanged", "planned") for key in self.keys)


def servicekey_body(key: ImportedKey) -> dict[str, Any]:
    """The ServiceKey that adopts ``key``: its algorithm and size, ``deletionPolicy: Retain`` (an import never
    makes a deletion destroy a key that lived elsewhere before)."""
    spec: dict[str, Any] = {"algorithm": key.algorithm, "deletionPolicy": "Retain"}
    if NAME.fullmatch(key.service_name):  # else the ServiceKey's name; the record keeps the coordinator's
        spec["serviceName"] = key.service_name
    if key.key_size:
        spec["keySize"] = key.key_size
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "ServiceKey",
            "metadata": {"name": key.name, "namespace": key.namespace,
                         "annotations": {"servicekey.io/imported-from": key.service_id}},
            "spec": spec}


class Importer:
    """Writes planned keys to Vault (KV v2 at ``<path_prefix>/<namespace>/<name>`` of ``kv_mount``, where the
    operator looks by default) and creates their ServiceKeys."""

    def __init__(self, api: pykube.HTTPClient, store: KvKeyStore, kv_mount: str, path_prefix: str) -> None:
        self.api = api
        self.store = store
        self.kv_mount = kv_mount
        self.path_prefix = path_prefix
        self._namespace_uids: dict[str, str | None] = {}

    def run(self, plan: ImportPlan, rows: int, *, dry_run: bool, now: datetime.datetime) -> ImportReport:
        """Import every key of ``plan`` (or, with ``dry_run``, only check that it could be)."""
        report = ImportReport(rows=rows, dry_run=dry_run, errors=list(plan.errors))
        # Each key is a few round trips to Vault and the API server, independent of the others.
        with ThreadPoolExecutor(max_workers=IMPORT_THREADS) as pool:
            report.keys = list(pool.map(lambda key: self._one(key, dry_run=dry_run, now=now), plan.keys))
        return report

    def _namespace_uid(self, namespace: str) -> str | None:
        if namespace not in self._namespace_uids:
            found = pykube.Namespace.objects(self.api).get_or_none(name=namespace)
            self._namespace_uids[namespace] = found.obj["metadata"]["uid"] if found else None
        return self._namespace_uids[namespace]

    def _one(self, key: ImportedKey, *, dry_run: bool, now: datetime.datetime) -> KeyOutcome:
        def outcome(word: str, message: str = "") -> KeyOutcome:
            return KeyOutcome(key.service_id, key.namespace, key.name, key.kid, word, message)

        path = f"{self.path_prefix}/{key.namespace}/{key.name}"
        where = f"{self.kv_mount}/{path}"
        try:
            namespace_uid = self._namespace_uid(key.namespace)
            if namespace_uid is None:
                return outcome("conflict", f"namespace {key.namespace} does not exist")
            # The ServiceKey's own uid is not known before it exists; the namespace's uid and its name decide
            # ownership (``ownership``), so the operator adopts the key.
            owner = Owner(key.namespace, key.name, namespace_uid, uid="")
            history = self.store.read(self.kv_mount, path, owner, KV_MAX_VERSIONS, with_pending=False)
            existing = ServiceKeyObject.objects(self.api, namespace=key.namespace).get_or_none(name=key.name)
            if history.current is not None and history.current.kid != key.kid:
                if existing is not None and any(old.kid == key.kid for old in history.previous):
                    return outcome("unchanged", "imported before, and rotated since")
                return outcome("conflict", f"{where} already holds another key ({history.current.kid}); "
                                           "it is left untouched")
            if history.current is None and history.current_version:
                return outcome("conflict", f"{where} exists with no live version; it is left untouched")
            if existing is not None and history.current is None:
                return outcome("conflict", f"ServiceKey {key.namespace}/{key.name} exists already, with no key in "
                                           f"{where}: the operator makes it a new one")
            if dry_run:
                return outcome("planned" if history.current is None or existing is None else "unchanged")
            written = history.current is None
            if written:
                keypair = KeyPair(algorithm=key.algorithm, key_size=key.key_size, private_pem=key.private_pem,
                                  public_pem=key.public_pem, kid=key.kid)
                self.store.write(self.kv_mount, path, keypair, owner=owner, service_name=key.service_name,
                                 rotate_annotation=None, rotation_reason=IMPORTED, created_at=now,
                                 expected_version=0, legacy_kids=(key.legacy_kid,) if key.legacy_kid else ())
                # The operator's mirror of the owner (and max_versions), at once: should the ServiceKey never be
                # created, the secret still says whose it is, and the invariant checker sees it orphaned.
                self.store.write_metadata(self.kv_mount, path, record_metadata(owner, "Retain", frozenset(), None))
            if existing is None:
                ServiceKeyObject(self.api, servicekey_body(key)).create()
                return outcome("imported")
            return outcome("imported" if written else "unchanged")
        except VaultPathConflict as foreign:
            return outcome("conflict", str(foreign))
        except VaultWriteConflict:
            return outcome("conflict", f"{where} was written by someone else meanwhile; it is left untouched")
        except ServiceKeyError as failed:
            return outcome("failed", f"{failed.reason}: {failed}")
        except pykube.exceptions.HTTPError as refused:
            return outcome("failed", f"Error from server ({refused.code}): {refused}")
        except (pykube.PyKubeError, requests.RequestException) as unreachable:
            return outcome("failed", f"the API server: {type(unreachable).__name__}: {unreachable}")
