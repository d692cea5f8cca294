"""Keeps the JWKS server's KeyCache equal to the served ConfigMaps: a paged list, then a watch from the list's
resourceVersion (Kubernetes API concepts, "Efficient detection of changes"), listed again after 410 Gone or any
failure, with backoff. Only ConfigMaps matching ``publish.SERVED_SELECTOR`` ever reach this process (server-side
label selector): the server can read no other ConfigMap's data, and holds no other in memory.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import kubernetes.client
import kubernetes.watch
from kubernetes.client.rest import ApiException

from servicekey_operator.jwks_cache import KeyCache
from servicekey_operator.publish import SERVED_SELECTOR

LIST_PAGE_SIZE = 500
# A watch is renewed this often even when quiet, so a silently dropped connection costs at most this long.
WATCH_SECONDS = 240
MAX_BACKOFF_SECONDS = 30.0


class ConfigMapWatch:
    """One list-and-watch loop per namespace (or one for the whole cluster), each in a daemon thread."""

    def __init__(self, client: kubernetes.client.ApiClient, cache: KeyCache, namespaces: tuple[str, ...] = (),
                 logger: logging.Logger | None = None) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.cache = cache
        self.namespaces: tuple[str | None, ...] = namespaces or (None,)
        self.logger = logger or logging.getLogger(__name__)
        self._stopped = threading.Event()
        self._listed: set[str | None] = set()
        self._listed_lock = threading.Lock()

    def start(self) -> None:
        """Start listing and watching; ``cache.listed`` is set once every namespace has been listed in full."""
        for namespace in self.namespaces:
            threading.Thread(target=self._run, args=(namespace,), name=f"watch {namespace or 'all'}",
                             daemon=True).start()

    def stop(self) -> None:
        """Stop at the end of the current watch request (at most ``WATCH_SECONDS``)."""
        self._stopped.set()

    def _run(self, namespace: str | None) -> None:
        backoff = 1.0
        while not self._stopped.is_set():
            try:
                version = self._list(namespace)
                with self._listed_lock:
                    self._listed.add(namespace)
                    if len(self._listed) == len(self.namespaces):
                        self.cache.listed.set()
                backoff = 1.0
                while not self._stopped.is_set():
                    version = self._watch(namespace, version)
            except ApiException as failure:
                if failure.status != 410:  # 410 Gone: the resourceVersion is too old, list again at once
                    backoff = self._pause(namespace, f"{failure.status} {failure.reason}", backoff)
            except Exception as failure:  # the API server going away is weather: list again after a pause
                backoff = self._pause(namespace, f"{type(failure).__name__}: {failure}", backoff)

    def _pause(self, namespace: str | None, why: str, backoff: float) -> float:
        self.logger.warning(f"watching served ConfigMaps in {namespace or 'all namespaces'} failed ({why}); "
                            f"listing again in {backoff:.0f}s")
        self._stopped.wait(backoff)
        return min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _list_page(self, namespace: str | None, token: str | None) -> dict[str, Any]:
        arguments = {"label_selector": SERVED_SELECTOR, "limit": LIST_PAGE_SIZE, "_continue": token,
                     "_preload_content": False}
        reply = (self.core.list_namespaced_config_map(namespace, **arguments) if namespace
                 else self.core.list_config_map_for_all_namespaces(**arguments))
        return json.loads(reply.data)

    def _list(self, namespace: str | None) -> str:
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page = self._list_page(namespace, token)
            items += page["items"]
            token = page["metadata"].get("continue")
            if not token:
                self.cache.replace_all(items, namespace)
                return str(page["metadata"]["resourceVersion"])

    def _watch(self, namespace: str | None, version: str) -> str:
        """Apply watch events until the request ends; return the resourceVersion to go on from."""
        watch = kubernetes.watch.Watch()
        arguments = {"label_selector": SERVED_SELECTOR, "resource_version": version,
                     "timeout_seconds": WATCH_SECONDS, "allow_watch_bookmarks": True}
        events = (watch.stream(self.core.list_namespaced_config_map, namespace, **arguments) if namespace
                  else watch.stream(self.core.list_config_map_for_all_namespaces, **arguments))
        for event in events:
            raw = event["raw_object"]
            if event["type"] == "ERROR":
                raise ApiException(status=int(raw.get("code") or 500), reason=str(raw.get("reason") or ""))
            version = str((raw.get("metadata") or {}).get("resourceVersion") or version)
            if event["type"] == "BOOKMARK":
                self.cache.touch()
            else:
                self.cache.apply(event["type"], raw)
            if self._stopped.is_set():
                watch.stop()
        self.cache.touch()
        return version
