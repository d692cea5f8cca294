"""Test helpers shared by the integration and e2e suites: waiting, and ServiceKey/ConfigMap/Vault access."""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import hvac
import jwt
import kubernetes.client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from devcluster.environment import DevEnvironment
from devcluster.openbao import OpenBaoServer
from devcluster.operator_process import OperatorProcess
from servicekey_operator.config import VaultSettings
from servicekey_operator.keys import generate_keypair
from servicekey_operator.vault.connection import VaultConnection
from servicekey_operator.vault.kv import KvKeyStore
from servicekey_operator.vault.ownership import Owner

T = TypeVar("T")
GROUP, VERSION, PLURAL = "servicekey.io", "v1alpha1", "servicekeys"
ACCEPT_FROM = "servicekey.io/accept-from"
# make_namespace(labels=None, accept_from=None, name=None) -> the new namespace's name
MakeNamespace = Callable[..., str]


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


MetricSamples = dict[tuple[str, frozenset], float]


def metric_samples(operator: OperatorProcess) -> MetricSamples:
    """The operator's /metrics, parsed with prometheus_client's own parser."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(operator.metrics_text()) for sample in family.samples}


def metric_value(samples: MetricSamples, metric: str, **labels: str) -> float:
    """The sample of ``metric`` with exactly ``labels`` (0 when absent)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    """The Ready condition of a ServiceKey, or an empty dict."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


_TRANSIT_SIGNING = {  # JWS alg -> (hash_algorithm, signature_algorithm); see the README's Transit example
    "RS256": ("sha2-256", "pkcs1v15"), "RS384": ("sha2-384", "pkcs1v15"), "RS512": ("sha2-512", "pkcs1v15"),
    "PS256": ("sha2-256", "pss"), "PS384": ("sha2-384", "pss"), "PS512": ("sha2-512", "pss"),
    "ES256": ("sha2-256", None), "ES384": ("sha2-384", None), "ES512": ("sha2-512", None), "EdDSA": (None, None),
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def transit_jws(vault: hvac.Client, mount: str, key_name: str, algorithm: str, kid: str,
                claims: dict[str, Any], key_version: int | None = None) -> str:
    """Sign a JWT with a Transit key: the signing input goes to transit/sign, marshaled as JWS, with
    ``key_version`` (None: Vault's latest version)."""
    header = _b64url(json.dumps({"alg": algorithm, "typ": "JWT", "kid": kid}).encode())
    payload = _b64url(json.dumps(claims).encode())
    hash_algorithm, signature_algorithm = _TRANSIT_SIGNING[algorithm]
    options: dict[str, Any] = {"marshaling_algorithm": "jws"}
    if hash_algorithm:
        options["hash_algorithm"] = hash_algorithm
    if signature_algorithm:
        options["signature_algorithm"] = signature_algorithm
    if signature_algorithm == "pss":
        options["salt_length"] = "hash"  # JWS PS* fixes the salt length to the hash length
    signed = vault.secrets.transit.sign_data(name=key_name, mount_point=mount, key_version=key_version,
                                             hash_input=base64.b64encode(f"{header}.{payload}".encode()).decode(),
                                             **options)
    return f"{header}.{payload}.{signed['data']['signature'].split(':')[-1]}"


class ServiceKeys:
    """ServiceKeys, their ConfigMaps and their Vault secrets in one test namespace."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str, env: DevEnvironment,
                 vault: Callable[[], hvac.Client] | None = None) -> None:
        """``vault`` makes root clients of the Vault the operator under test uses (default: the session's)."""
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.namespace = namespace
        self.env = env
        self._vault = vault or env.vault.client

    @property
    def vault(self) -> hvac.Client:
        """Root hvac client."""
        return self._vault()

    def create(self, name: str, spec: dict[str, Any] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """Create a ServiceKey. Unless ``spec`` sets ``rotation.publishAhead``, it is 0s: a rotation signs at once,
        which is what tests not about propagation wait for (the default, 3m, is tested on the node)."""
        spec = {} if spec is None else spec
        if isinstance(spec, dict) and isinstance(spec.get("rotation", {}), dict):
            spec = {**spec, "rotation": {"publishAhead": "0s", **(spec.get("rotation") or {})}}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceKey",
                "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any] | None:
        """The ServiceKey, or None when it does not exist."""
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as missing:
            if missing.status == 404:
                return None
            raise

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the ServiceKey."""
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, body)

    def delete(self, name: str) -> None:
        """Delete the ServiceKey (the operator's finalizer runs)."""
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def wait_gone(self, name: str, timeout: float = 30) -> None:
        """Wait until the ServiceKey no longer exists."""
        wait_for(lambda: self.get(name) is None, timeout, f"ServiceKey {name} to be deleted")

    def wait_condition(self, name: str, status: str, reason: str | None = None,
                       timeout: float = 30) -> dict[str, Any]:
        """Wait until Ready has ``status`` (and ``reason``) for the current generation; return the object."""
        def probe() -> dict[str, Any] | None:
            obj = self.get(name)
            if not obj:
                return None
            condition = ready_condition(obj)
            current = condition.get("observedGeneration") == obj["metadata"]["generation"]
            if current and condition.get("status") == status and reason in (None, condition.get("reason")):
                return obj
            return None
        return wait_for(probe, timeout, f"ServiceKey {name} Ready={status} {reason or ''}")

    def wait_ready(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until the ServiceKey is Ready=True; return it."""
        return self.wait_condition(name, "True", "KeyReady", timeout)

    def wait_new_kid(self, name: str, old_kid: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until status.keyId differs from ``old_kid`` and the key is Ready; return the object."""
        def probe() -> dict[str, Any] | None:
            obj = self.get(name)
            status = (obj or {}).get("status") or {}
            ready = ready_condition(obj or {}).get("status") == "True"
            return obj if ready and status.get("keyId") not in (None, old_kid) else None
        return wait_for(probe, timeout, f"a new key id on {name} (old {old_kid})")

    def seed_key(self, name: str, algorithm: str = "ES256", age: datetime.timedelta = datetime.timedelta(),
                 vault: OpenBaoServer | None = None) -> str:
        """Write a key into Vault (the session's, or ``vault``) at the ServiceKey's default path, as the operator
        would have written it ``age`` ago (a ServiceKey created afterwards adopts it); return its kid.

        A schedule counts from the current key's creation, so a seeded old key makes the next scheduled
        rotation come within seconds although ``rotation.period`` is at least a minute.
        """
        owner = Owner(self.namespace, name, self.core.read_namespace(self.namespace).metadata.uid, "seeded")
        server = vault or self.env.vault
        store = KvKeyStore(VaultConnection(VaultSettings(addr=server.addr, token=server.root_token)))
        written = store.write("secret", f"servicekeys/{self.namespace}/{name}", generate_keypair(algorithm),
                              owner=owner, service_name=name, rotate_annotation=None, rotation_reason="Created",
                              created_at=datetime.datetime.now(datetime.UTC) - age, expected_version=0)
        return written.kid

    def events(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of every Event about the ServiceKey ``name``."""
        events = self.core.list_namespaced_event(self.namespace,
                                                 field_selector=f"involvedObject.name={name}").items
        return [(event.type, event.reason, event.message or "") for event in events]

    def configmap(self, name: str, namespace: str | None = None) -> kubernetes.client.V1ConfigMap | None:
        """A ConfigMap, or None when it does not exist."""
        try:
            return self.core.read_namespaced_config_map(name, namespace or self.namespace)
        except ApiException as missing:
            if missing.status == 404:
                return None
            raise

    def jwks(self, configmap_name: str) -> dict[str, Any]:
        """The parsed jwks.json of a published ConfigMap."""
        configmap = self.configmap(configmap_name)
        assert configmap is not None, f"ConfigMap {configmap_name} is missing"
        return json.loads(configmap.data["jwks.json"])

    def vault_path(self, name: str) -> tuple[str, str]:
        """(mount, path) of the ServiceKey's secret as reported in its status."""
        obj = self.get(name)
        assert obj and obj.get("status", {}).get("vaultPath"), f"ServiceKey {name} reports no vaultPath"
        mount, path = obj["status"]["vaultPath"].split("/", 1)
        return mount, path

    def vault_secret(self, mount: str, path: str, version: int | None = None) -> dict[str, str]:
        """The data of one KV v2 version (the latest by default)."""
        reply = self.vault.secrets.kv.v2.read_secret_version(path=path, mount_point=mount, version=version,
                                                             raise_on_deleted_version=True)
        return reply["data"]["data"]

    def sign(self, name: str, claims: dict[str, Any] | None = None) -> str:
        """A JWT signed with the ServiceKey's current private key, read from Vault as a signer would."""
        mount, path = self.vault_path(name)
        secret = self.vault_secret(mount, path)
        return jwt.encode(claims or {"sub": name}, secret["private_key"], algorithm=secret["algorithm"],
                          headers={"kid": secret["kid"]})

    def verifies(self, configmap_name: str, token: str) -> bool:
        """Whether ``token`` verifies against the ConfigMap's jwks.json alone (PyJWT)."""
        header = jwt.get_unverified_header(token)
        jwks = jwt.PyJWKSet.from_dict(self.jwks(configmap_name))
        matching = [key for key in jwks.keys if key.key_id == header["kid"]]
        if not matching:
            return False
        try:
            jwt.decode(token, matching[0].key, algorithms=[header["alg"]])
        except jwt.InvalidTokenError:
            return False
        return True

    def sign_with_transit(self, name: str, claims: dict[str, Any] | None = None) -> str:
        """A JWT signed inside Vault by transit/sign, the way the README tells a service to do it: the key's record
        (its KV secret's latest version) names the kid and the Transit key version to sign with."""
        record = self.vault_secret("secret", f"servicekeys/{self.namespace}/{name}")
        return transit_jws(self.vault, record["transit_mount"], record["transit_key"], record["algorithm"],
                           record["kid"], claims or {"sub": name}, key_version=int(record["transit_version"]))

    def kids(self, configmap_name: str) -> list[str]:
        """The key ids of the ConfigMap's JWKS, in order."""
        return [key["kid"] for key in self.jwks(configmap_name)["keys"]]

    def vault_versions(self, mount: str, path: str) -> int:
        """How many versions the KV secret has (0 when it does not exist)."""
        try:
            metadata = self.vault.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
        except hvac.exceptions.InvalidPath:
            return 0
        return int(metadata["data"]["current_version"])
