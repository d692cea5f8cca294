"""The Kubernetes calls the reconciler makes, behind one small class; API errors become ours here."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3
import urllib3.exceptions
from kubernetes.client.rest import ApiException

from servicekey_operator.errors import KubernetesRefused, KubernetesUnavailable, ServiceKeyError
from servicekey_operator.metrics import KUBERNETES_REQUEST_DURATION
from servicekey_operator.publish import API_GROUP, API_VERSION


class ConfigMapRaced(ServiceKeyError):
    """The ConfigMap changed between our read and our write; the next pass re-reads it."""

    reason = "Rotating"


class NamespaceUnavailable(ServiceKeyError):
    """The target namespace does not exist or is being deleted."""

    reason = "NamespaceTerminating"
    retryable = False

# Objects per page when listing many: a page of ConfigMaps or ServiceKeys is a few MiB decoded.
LIST_PAGE_SIZE = 500


@contextlib.contextmanager
def kube_call(operation: str, what: str) -> Iterator[None]:
    """Time one API request as ``operation``; turn transport failures and 5xx answers into
    KubernetesUnavailable, 409 into ConfigMapRaced, a missing or terminating namespace into
    NamespaceUnavailable, any other refusal (4xx) into KubernetesRefused with the API's reason and message."""
    try:
        with KUBERNETES_REQUEST_DURATION.labels(operation).time():
            yield
    except ApiException as failed:
        if (failed.status == 404 and operation == "create_configmap") or \
                (failed.status == 403 and "being terminated" in str(failed.body)):
            raise NamespaceUnavailable(f"{what}: the namespace is gone or terminating") from failed
        if failed.status in (404, 409):  # changed or deleted since we read it: re-read on the next pass
            raise ConfigMapRaced(f"{what}: changed concurrently, will retry") from failed
        if failed.status is not None and (failed.status >= 500 or failed.status == 429):
            raise KubernetesUnavailable(f"{what}: API server answered {failed.status}") from failed
        if failed.status is not None and 400 <= failed.status < 500:
            api_reason, message = _refusal(failed)
            raise KubernetesRefused(f"{what}: refused by the API server ({failed.status} {api_reason}): {message}",
                                    api_reason) from failed
        raise
    except (urllib3.exceptions.HTTPError, OSError) as unreachable:
        raise KubernetesUnavailable(f"{what}: API server unreachable ({type(unreachable).__name__})") \
            from unreachable


def _refusal(failed: ApiException) -> tuple[str, str]:
    """The reason and (shortened) message of the Status object an API error carries (Kubernetes API
    conventions, "Response Status Kind")."""
    try:
        status = json.loads(failed.body or "{}")
    except (TypeError, ValueError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    return str(status.get("reason") or failed.reason or "Refused"), str(status.get("message") or "")[:300]


def _json(reply: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    # Plain dicts straight from the wire: building the client's model objects and serialising them
    # back costs more CPU than the request itself.
    return json.loads(reply.data)


def api_client() -> kubernetes.client.ApiClient:
    """An API client from the in-cluster ServiceAccount, or from KUBECONFIG outside a cluster."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    # Many keys reconcile at once from the thread pool; the default pool of 4 would serialise them.
    configuration.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(configuration)


class KubeGateway:
    """ConfigMaps, ServiceKey status and namespaces: the only Kubernetes objects the reconciler touches."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.apiextensions = kubernetes.client.ApiextensionsV1Api(client)
        self.client = client
        # The resourceVersion of each ConfigMap as we last wrote it, so the drift watch can tell our own
        # writes coming back from someone else's edits.
        self._written: dict[tuple[str, str], str] = {}
        # ServiceKey uid -> the uid of its namespace: see ``namespace_uid``.
        self._namespace_uids: dict[str, str] = {}

    def wrote(self, namespace: str, name: str, resource_version: str) -> bool:
        """Whether this ConfigMap version is the one our last write produced."""
        return self._written.get((namespace, name)) == resource_version

    def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap as a plain dict, or None when it does not exist."""
        with kube_call("read_configmap", f"reading ConfigMap {namespace}/{name}"):
            try:
                reply = self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
            except ApiException as missing:
                if missing.status == 404:
                    return None
                raise
        return _json(reply)

    def list_configmaps(self, label_selector: str, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """ConfigMaps that match ``label_selector`` in ``namespaces`` (all when empty: one cluster-wide list), as
        plain dicts."""
        items: list[dict[str, Any]] = []
        with kube_call("list_configmaps", f"listing ConfigMaps {label_selector}"):
            for namespace in namespaces:
                items += _json(self.core.list_namespaced_config_map(namespace, label_selector=label_selector,
                                                                    _preload_content=False))["items"]
            if not namespaces:
                items = _json(self.core.list_config_map_for_all_namespaces(label_selector=label_selector,
                                                                           _preload_content=False))["items"]
        return items

    def configmap_versions(self, label_selector: str, namespaces: tuple[str, ...] = (),
                           page_size: int = LIST_PAGE_SIZE) -> dict[tuple[str, str], str]:
        """The resourceVersion of every ConfigMap matching ``label_selector``, by (namespace, name), in
        ``namespaces`` (all when empty); listed in pages so 10,000 ConfigMaps never sit in memory at once."""
        versions: dict[tuple[str, str], str] = {}
        listings = ([functools.partial(self.core.list_namespaced_config_map, namespace) for namespace in namespaces]
                    or [self.core.list_config_map_for_all_namespaces])
        for list_page in listings:
            token = None
            while True:
                with kube_call("list_configmaps", f"listing ConfigMaps {label_selector}"):
                    reply = list_page(label_selector=label_selector, limit=page_size, _continue=token,
                                      _preload_content=False)
                page = _json(reply)
                for item in page["items"]:
                    metadata = item["metadata"]
                    versions[(metadata["namespace"], metadata["name"])] = metadata["resourceVersion"]
                token = page["metadata"].get("continue")
                if not token:
                    break
        return versions

    def create_configmap(self, body: dict[str, Any]) -> str:
        """Create a ConfigMap; return its resourceVersion."""
        metadata = body["metadata"]
        with kube_call("create_configmap", f"creating ConfigMap {metadata['namespace']}/{metadata['name']}"):
            reply = self.core.create_namespaced_config_map(metadata["namespace"], body, _preload_content=False)
        return self._remember(metadata["namespace"], metadata["name"], _json(reply)["metadata"]["resourceVersion"])

    def replace_configmap(self, body: dict[str, Any], resource_version: str) -> str:
        """Replace a ConfigMap if it is still at ``resource_version`` (optimistic concurrency)."""
        metadata = dict(body["metadata"], resourceVersion=resource_version)
        with kube_call("replace_configmap", f"updating ConfigMap {metadata['namespace']}/{metadata['name']}"):
            reply = self.core.replace_namespaced_config_map(metadata["name"], metadata["namespace"],
                                                            dict(body, metadata=metadata), _preload_content=False)
        return self._remember(metadata["namespace"], metadata["name"], _json(reply)["metadata"]["resourceVersion"])

    def _remember(self, namespace: str, name: str, resource_version: str) -> str:
        self._written[(namespace, name)] = resource_version
        return resource_version

    def delete_configmap(self, namespace: str, name: str, resource_version: str) -> None:
        """Delete a ConfigMap only if it is still the version we inspected."""
        self._written.pop((namespace, name), None)
        with kube_call("delete_configmap", f"deleting ConfigMap {namespace}/{name}"):
            try:
                self.core.delete_namespaced_config_map(
                    name, namespace,
                    body=kubernetes.client.V1DeleteOptions(
                        preconditions=kubernetes.client.V1Preconditions(resource_version=resource_version)))
            except ApiException as missing:
                if missing.status != 404:
                    raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the ServiceKey's status subresource."""
        with kube_call("patch_status", f"patching status of ServiceKey {namespace}/{name}"):
            try:
                self.custom.patch_namespaced_custom_object_status(
                    API_GROUP, API_VERSION, namespace, "servicekeys", name, {"status": status})
            except ApiException as missing:
                if missing.status != 404:  # deleted meanwhile: nothing to report on
                    raise

    def servicekeys_being_deleted(self, finalizer: str, namespaces: tuple[str, ...] = (),
                                  page_size: int = LIST_PAGE_SIZE) -> list[dict[str, Any]] | None:
        """The ServiceKeys (in ``namespaces``, all when empty) that are being deleted and still carry
        ``finalizer``; None when the API no longer serves ServiceKeys (their CRD is gone)."""
        found: list[dict[str, Any]] = []
        listings = ([functools.partial(self.custom.list_namespaced_custom_object, API_GROUP, API_VERSION, namespace,
                                       "servicekeys") for namespace in namespaces]
                    or [functools.partial(self.custom.list_cluster_custom_object, API_GROUP, API_VERSION,
                                          "servicekeys")])
        for list_page in listings:
            token = None
            while True:
                with kube_call("list_servicekeys", "listing ServiceKeys"):
                    try:
                        page = list_page(limit=page_size, _continue=token)
                    except ApiException as missing:
                        if missing.status == 404:
                            return None
                        raise
                found += [item for item in page["items"] if item["metadata"].get("deletionTimestamp")
                          and finalizer in (item["metadata"].get("finalizers") or [])]
                token = page["metadata"].get("continue")
                if not token:
                    break
        return found

    def crd_uid(self, name: str) -> str | None:
        """The uid of the CustomResourceDefinition ``name``, None when there is none (a list by field selector:
        the operator may list CRDs, not get them)."""
        with kube_call("list_crds", f"listing CustomResourceDefinition {name}"):
            reply = self.apiextensions.list_custom_resource_definition(field_selector=f"metadata.name={name}",
                                                                       _preload_content=False)
        items = _json(reply)["items"]
        return items[0]["metadata"]["uid"] if items else None

    def remove_finalizer(self, servicekey: dict[str, Any], finalizer: str) -> None:
        """Take ``finalizer`` off the ServiceKey, if it is still this object with these finalizers (else the
        next listing shows what changed)."""
        metadata = servicekey["metadata"]
        finalizers = metadata.get("finalizers") or []
        patch = [{"op": "test", "path": "/metadata/uid", "value": metadata["uid"]},
                 {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                 {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != finalizer]}]
        what = f"removing the finalizer of ServiceKey {metadata['namespace']}/{metadata['name']}"
        with kube_call("patch_servicekey", what):
            try:
                self.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, metadata["namespace"], "servicekeys",
                                                           metadata["name"], patch,
                                                           _content_type="application/json-patch+json")
            except ApiException as changed:
                if changed.status not in (404, 422):  # gone, or another object or finalizers by now
                    raise

    def peering_keepalives(self, name: str, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The keep-alives (status) of kopf's peering object ``name``: the ClusterKopfPeering, or the
        KopfPeering in each of ``namespaces`` for a namespaced operator."""
        # Listed by name rather than read: kopf lists and watches these objects anyway, so the operator needs
        # no further right on them.
        selector = f"metadata.name={name}"
        with kube_call("read_peering", f"reading the kopf peering {name}"):
            if not namespaces:
                found = self.custom.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                               field_selector=selector)["items"]
            else:
                found = [item for namespace in namespaces for item in self.custom.list_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", field_selector=selector)["items"]]
        if len(found) < max(1, len(namespaces)):
            raise KubernetesUnavailable(f"the kopf peering object {name} is missing")
        return [item.get("status") or {} for item in found]

    def list_namespaces(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Namespaces (optionally by label selector, filtered by the API server) as plain dicts."""
        with kube_call("list_namespaces", "listing namespaces"):
            reply = self.core.list_namespace(label_selector=label_selector or None, _preload_content=False)
        return _json(reply)["items"]

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        """The namespace as a plain dict, or None when it does not exist."""
        with kube_call("read_namespace", f"reading namespace {name}"):
            try:
                reply = self.core.read_namespace(name, _preload_content=False)
            except ApiException as missing:
                if missing.status == 404:
                    return None
                raise
        return _json(reply)

    def namespace_uid(self, namespace: str, servicekey_uid: str) -> str:
        """The uid of the namespace the ServiceKey ``servicekey_uid`` lives in, which tells the namespace's
        incarnations apart (a namespace deleted and created again is another tenant's); raises
        NamespaceUnavailable when it does not exist.

        Read once per ServiceKey and kept by its uid: a ServiceKey never moves to another incarnation of its
        namespace, so no later event, clock or cache age can make the answer wrong.
        """
        cached = self._namespace_uids.get(servicekey_uid)
        if cached is not None:
            return cached
        found = self.read_namespace(namespace)
        if found is None:
            raise NamespaceUnavailable(f"namespace {namespace} does not exist")
        self._namespace_uids[servicekey_uid] = uid = found["metadata"]["uid"]
        return uid

    def forget_servicekey(self, servicekey_uid: str) -> None:
        """Drop what is kept for a ServiceKey that is gone."""
        self._namespace_uids.pop(servicekey_uid, None)
