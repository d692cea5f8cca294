"""The harness is real: a kube-apiserver that serves our CRD, a garbage collector that acts, an OpenBao that signs."""

from __future__ import annotations

import base64

import hvac
import kubernetes.client
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from devcluster.binaries import KUBERNETES_VERSION
from devcluster.environment import DevEnvironment
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.integration


def test_apiserver_reports_the_pinned_release(dev_env: DevEnvironment):
    assert dev_env.kube.version() == KUBERNETES_VERSION


def test_servicekey_crd_is_served_and_round_trips(servicekeys: ServiceKeys):
    servicekeys.create("round-trip", {"algorithm": "ES256", "rotation": {"period": "720h"}})

    stored = servicekeys.get("round-trip")

    assert stored is not None
    assert stored["spec"]["algorithm"] == "ES256"
    assert stored["spec"]["rotation"]["period"] == "720h"
    assert stored["spec"]["rotation"]["retainPrevious"] == 1, "schema default applied by the apiserver"


def test_kubectl_lists_servicekeys_by_short_name(dev_env: DevEnvironment, servicekeys: ServiceKeys):
    servicekeys.create("listed", {"algorithm": "EdDSA"})

    listing = dev_env.kube.kubectl("get", "sk", "-n", servicekeys.namespace).stdout

    assert "listed" in listing
    assert "ALGORITHM" in listing and "KEY ID" in listing


def test_garbage_collector_deletes_a_configmap_whose_owner_is_gone(core_api: kubernetes.client.CoreV1Api,
                                                                   namespace: str):
    owner = core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "dependent",
                                                                   "ownerReferences": [reference]}})

    core_api.delete_namespaced_config_map("owner", namespace)

    names = lambda: {cm.metadata.name for cm in core_api.list_namespaced_config_map(namespace).items}  # noqa: E731
    wait_for(lambda: "dependent" not in names(), 60, "the garbage collector to delete the dependent ConfigMap")


def test_openbao_kv_v2_keeps_versions(vault_client: hvac.Client):
    kv = vault_client.secrets.kv.v2
    kv.create_or_update_secret(path="harness/kv", secret={"value": "one"}, mount_point="secret")
    kv.create_or_update_secret(path="harness/kv", secret={"value": "two"}, mount_point="secret")

    latest = kv.read_secret_version(path="harness/kv", mount_point="secret", raise_on_deleted_version=True)
    first = kv.read_secret_version(path="harness/kv", version=1, mount_point="secret",
                                   raise_on_deleted_version=True)

    assert (latest["data"]["data"]["value"], latest["data"]["metadata"]["version"]) == ("two", 2)
    assert first["data"]["data"]["value"] == "one"


def test_openbao_transit_signs_with_a_key_that_verifies_outside(vault_client: hvac.Client):
    transit = vault_client.secrets.transit
    transit.create_key(name="harness-es256", key_type="ecdsa-p256", mount_point="transit")
    message = b"signed inside OpenBao"

    public_pem = transit.read_key(name="harness-es256", mount_point="transit")["data"]["keys"]["1"]["public_key"]
    signed = transit.sign_data(name="harness-es256", hash_input=base64.b64encode(message).decode(),
                               hash_algorithm="sha2-256", marshaling_algorithm="asn1", mount_point="transit")
    signature = base64.b64decode(signed["data"]["signature"].split(":")[-1])

    public_key = load_pem_public_key(public_pem.encode())
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))  # raises if the signature is wrong
