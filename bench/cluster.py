"""The benchmark's own access to the local cluster: a Kubernetes client sized for a thread pool,
raw (fast) list calls, a watch that timestamps state changes, and the Vault and API-server counters."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import hvac
import kubernetes.client
import kubernetes.config
import kubernetes.watch
from kubernetes.client.rest import ApiException

from bench.probes import Samples, by_label, metric, parse_prometheus
from devcluster.environment import DevEnvironment

GROUP, VERSION, PLURAL = "servicekey.io", "v1alpha1", "servicekeys"
ROTATE_ANNOTATION = "servicekey.io/rotate"
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=servicekey-operator"
CREATE_WORKERS = 32


def ready_kid(obj: dict[str, Any]) -> str | None:
    """The status keyId when the ServiceKey's Ready condition is True, else None."""
    status = obj.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return status.get("keyId") or None
    return None


def configmap_kid(obj: dict[str, Any]) -> str | None:
    """The ``kid`` a published ConfigMap announces."""
    return (obj.get("data") or {}).get("kid") or None


def servicekey_body(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A ServiceKey manifest."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceKey",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


class Cluster:
    """Admin access to the DevEnvironment's API server and OpenBao for the benchmark driver."""

    def __init__(self, env: DevEnvironment) -> None:
        self.env = env
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(env.kube.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = CREATE_WORKERS + 8
        self.api = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self._local = threading.local()
        # The benchmark's own API calls, named as apiserver_request_total names them, to subtract.
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    def _count(self, call: str) -> None:
        with self._calls_lock:
            self.calls[call] += 1

    # -- Vault
    @property
    def vault(self) -> hvac.Client:
        """A root hvac client for the calling thread (requests sessions are not shared across threads)."""
        client = getattr(self._local, "vault", None)
        if client is None:
            client = self._local.vault = self.env.vault.client()
        return client

    def kv_versions(self, vault_paths: Iterable[str], workers: int = 16) -> dict[str, int]:
        """``current_version`` of each ``mount/path`` KV v2 secret (0 when absent), read in parallel."""

        def read(full_path: str) -> tuple[str, int]:
            mount, _, path = full_path.partition("/")
            try:
                reply = self.vault.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
            except hvac.exceptions.InvalidPath:
                return full_path, 0
            return full_path, int(reply["data"].get("current_version") or 0)

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return dict(pool.map(read, list(vault_paths)))

    # -- Kubernetes
    def create_namespace(self, name: str) -> None:
        """Create a namespace (fine if it exists)."""
        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except ApiException as exists:
            if exists.status != 409:
                raise

    def create_servicekey(self, namespace: str, name: str, spec: dict[str, Any],
                          annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """Create one ServiceKey."""
        self._count("POST servicekeys")
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                           servicekey_body(name, spec, annotations))

    def create_many(self, namespace: str, names: list[str], spec: dict[str, Any],
                    workers: int = CREATE_WORKERS) -> tuple[float, dict[str, float], dict[str, Any]]:
        """Create ServiceKeys as fast as a thread pool can; return (seconds taken, per-name create time,
        per-name object as created)."""
        started = time.monotonic()
        created_at: dict[str, float] = {}
        objects: dict[str, Any] = {}

        def create(name: str) -> None:
            before = time.monotonic()
            objects[name] = self.create_servicekey(namespace, name, spec)
            created_at[name] = before

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(create, name) for name in names]:
                future.result()
        return time.monotonic() - started, created_at, objects

    def rotate(self, namespace: str, name: str, value: str) -> None:
        """Request a rotation by annotation."""
        self._count("PATCH servicekeys")
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   {"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})

    def list_servicekeys(self, namespace: str | None = None, *, from_cache: bool = False) -> list[dict[str, Any]]:
        """ServiceKeys as plain dicts, parsed with json (the client's model layer is too slow at 10k).

        ``from_cache`` lists with resourceVersion=0: served from the API server's watch cache without
        waiting for it to catch up with etcd (may be milliseconds stale), the cheapest list there is, for
        polling under load."""
        self._count("LIST servicekeys")
        extra = {"resource_version": "0"} if from_cache else {}
        if namespace:
            reply = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **extra,
                                                              _preload_content=False, _request_timeout=60)
        else:
            reply = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **extra, _preload_content=False,
                                                           _request_timeout=60)
        return json.loads(reply.data)["items"]

    def list_configmaps(self, label_selector: str = MANAGED_SELECTOR) -> list[dict[str, Any]]:
        """ConfigMaps in all namespaces matching ``label_selector``, as plain dicts."""
        self._count("LIST configmaps")
        reply = self.core.list_config_map_for_all_namespaces(label_selector=label_selector,
                                                             _preload_content=False, _request_timeout=60)
        return json.loads(reply.data)["items"]

    def apiserver_requests(self) -> dict[str, float]:
        """``apiserver_request_total`` by "VERB resource[/subresource]" since the API server started; answers
        other than 2xx are also counted apart as "VERB resource[/subresource] -> CODE"."""
        _, body = self.env.kube.get("/metrics")
        samples: Samples = parse_prometheus(body.decode(), ("apiserver_request_total",))
        grouped: dict[str, float] = {}
        for key, value in by_label(samples, "apiserver_request_total", "verb", "code", "resource",
                                   "subresource").items():
            verb, code, *resource = key.split()
            name = f"{verb} {'/'.join(resource)}"
            grouped[name] = grouped.get(name, 0.0) + value
            if not code.startswith("2"):
                grouped[f"{name} -> {code}"] = grouped.get(f"{name} -> {code}", 0.0) + value
        return grouped

    def etcd_counters(self) -> dict[str, float]:
        """etcd's WAL fsync and backend commit counters (count and seconds), to tell disk-bound from CPU-bound."""
        import urllib.request

        with urllib.request.urlopen(self.env.kube.etcd_endpoint + "/metrics", timeout=5) as reply:
            samples = parse_prometheus(reply.read().decode(), ("etcd_disk_",))
        return {f"{name}_{part}": metric(samples, f"{name}_{part}")
                for name in ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds")
                for part in ("count", "sum")}

    def event_reasons(self, namespace: str) -> dict[str, int]:
        """Kubernetes Events in ``namespace`` by "type/reason" (summing their counts)."""
        reply = json.loads(self.core.list_namespaced_event(namespace, _preload_content=False,
                                                           _request_timeout=60).data)
        reasons: Counter[str] = Counter()
        for event in reply["items"]:
            reasons[f"{event.get('type')}/{event.get('reason')}"] += int(event.get("count") or 1)
        return dict(reasons.most_common())


def object_key(obj: dict[str, Any]) -> str:
    """namespace/name."""
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


class Watcher:
    """A background watch on one kind in one namespace that timestamps (monotonic) every new value of
    ``extract(object)`` per object, so a waiter learns of a change within milliseconds without polling."""

    def __init__(self, name: str, list_call: Callable[..., Any], extract: Callable[[dict[str, Any]], Any],
                 *args: Any, **kwargs: Any) -> None:
        self.name = name

        # A plain wrapper has no docstring, so kubernetes.watch keeps the events as dicts instead of
        # deserialising every one into the client's models.
        def list_raw(*call_args: Any, **call_kwargs: Any) -> Any:
            return list_call(*call_args, **call_kwargs)

        self.list_call = list_raw
        self.args = args
        self.kwargs = kwargs
        self.listed = threading.Event()
        self.events = 0
        self.last_event = 0.0
        self.extract = extract
        self.values: dict[str, Any] = {}
        self.seen: dict[tuple[str, Any], float] = {}
        self.condition = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)
        self.errors = 0

    def start(self) -> Watcher:
        """Start watching (after an initial list, so nothing is missed)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop at the next server-side timeout (a few seconds at most)."""
        self._stopped.set()

    def _record(self, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        name = obj["metadata"]["name"]
        value = self.extract(obj)
        with self.condition:
            self.values[name] = value
            self.seen.setdefault((name, value), now)
            self.condition.notify_all()

    def _list(self) -> str:
        reply = json.loads(self.list_call(*self.args, **self.kwargs, _preload_content=False,
                                          _request_timeout=60).data)
        for obj in reply["items"]:
            self._record(obj)
        self.listed.set()
        return reply["metadata"]["resourceVersion"]

    def _run(self) -> None:
        resource_version = None
        while not self._stopped.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                stream = kubernetes.watch.Watch().stream(self.list_call, *self.args, **self.kwargs,
                                                         resource_version=resource_version,
                                                         timeout_seconds=3, allow_watch_bookmarks=True)
                for event in stream:
                    raw = event["raw_object"]
                    if event["type"] == "ERROR":
                        resource_version = None  # 410 Gone: list again
                        break
                    resource_version = raw["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.events += 1
                        self.last_event = time.monotonic()
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(raw)
                    if self._stopped.is_set():
                        break
            except Exception:  # a dropped connection: list again and carry on
                self.errors += 1
                resource_version = None
                with contextlib.suppress(Exception):
                    time.sleep(0.2)

    def values_of(self, name: str) -> set[Any]:
        """Every value ``name`` has shown so far."""
        with self.condition:
            return {value for (seen_name, value) in self.seen if seen_name == name}

    def wait(self, name: str, predicate: Callable[[Any], bool], timeout: float) -> float | None:
        """The time at which ``name`` first showed a value matching ``predicate`` (waiting up to
        ``timeout``), or None on timeout."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for (seen_name, value), at in self.seen.items():
                    if seen_name == name and predicate(value):
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.condition.wait(min(remaining, 1.0))
