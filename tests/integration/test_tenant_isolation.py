"""Tenants are hostile (DESIGN.md invariant 7): no namespace can replace, destroy, share or inherit another
namespace's keys, nor learn about namespaces that did not let it in.

Each test is one of issue #13's failing inputs, against the real API server and OpenBao. Nothing is ours
unless its record proves it: a ConfigMap by its labels and owner (source namespace, name, uid), a Vault
secret or pending key by the owner it carries (namespace, name, namespace uid), a Transit key by the claim
in its ServiceKey's record.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable

import hvac
import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from devcluster.environment import DevEnvironment
from devcluster.operator_process import OperatorProcess
from tests.support import MakeNamespace, ServiceKeys, metric_samples, metric_value, ready_condition, wait_for

pytestmark = pytest.mark.integration
ADOPT = "servicekey.io/adopt-namespace-uid"


def _in(namespace: str, kube_client: kubernetes.client.ApiClient, dev_env: DevEnvironment) -> ServiceKeys:
    return ServiceKeys(kube_client, namespace, dev_env)


def _transit_latest(vault: hvac.Client, vault_path: str) -> int:
    mount, name = vault_path.split("/keys/")
    return int(vault.secrets.transit.read_key(name=name, mount_point=mount)["data"]["latest_version"])


def _settled(servicekeys: ServiceKeys, name: str) -> dict:
    """The ServiceKey once its current generation has a Ready condition, True or False."""
    def probe() -> dict | None:
        obj = servicekeys.get(name)
        condition = ready_condition(obj or {})
        return obj if obj and condition.get("observedGeneration") == obj["metadata"]["generation"] else None
    return wait_for(probe, 30, f"{name} to report a Ready condition")


# --- 1. A copy never replaces the target namespace's own ConfigMap -------------------------------------


def test_a_copy_never_replaces_the_target_namespaces_own_key(operator: OperatorProcess, make_namespace: MakeNamespace,
                                                             kube_client: kubernetes.client.ApiClient,
                                                             dev_env: DevEnvironment):
    payments = make_namespace()
    orders = make_namespace(accept_from=payments)
    in_orders, in_payments = _in(orders, kube_client, dev_env), _in(payments, kube_client, dev_env)
    in_orders.create("signing", {"algorithm": "ES256"})
    orders_kid = in_orders.wait_ready("signing")["status"]["keyId"]
    before = in_orders.configmap("signing-public")

    in_payments.create("signing", {"algorithm": "ES256", "publicKey": {"namespaces": [orders]}})
    status = in_payments.wait_ready("signing")["status"]

    assert status["refusedNamespaces"] == [{"namespace": orders, "reason": "ConfigMapConflict"}]
    assert not status.get("publishedNamespaces")
    after = in_orders.configmap("signing-public")
    assert after.metadata.resource_version == before.metadata.resource_version, "orders' own ConfigMap was written"
    assert [ref.uid for ref in after.metadata.owner_references] == [in_orders.get("signing")["metadata"]["uid"]]
    wait_for(lambda: [e for e in in_payments.events("signing") if e[:2] == ("Warning", "PublishRefused")], 10,
             "a PublishRefused Warning")
    assert not in_orders.verifies("signing-public", in_payments.sign("signing")), \
        "orders' verifiers accept a token signed by payments"
    assert in_orders.verifies("signing-public", in_orders.sign("signing"))
    assert in_orders.wait_ready("signing")["status"]["keyId"] == orders_kid


def test_a_namespaces_own_key_takes_its_name_back_from_a_copy_it_had_accepted(
        operator: OperatorProcess, make_namespace: MakeNamespace, kube_client: kubernetes.client.ApiClient,
        dev_env: DevEnvironment):
    payments = make_namespace()
    orders = make_namespace(accept_from=payments)
    in_orders, in_payments = _in(orders, kube_client, dev_env), _in(payments, kube_client, dev_env)
    in_payments.create("signing", {"algorithm": "ES256", "publicKey": {"namespaces": [orders]}})
    assert in_payments.wait_ready("signing")["status"]["publishedNamespaces"] == [orders]

    in_orders.create("signing", {"algorithm": "ES256"})
    own = in_orders.wait_ready("signing")["status"]

    assert in_orders.configmap("signing-public").data["kid"] == own["keyId"]
    assert not in_orders.configmap("signing-public").metadata.labels.get("servicekey.io/source-namespace")
    wait_for(lambda: (in_payments.get("signing")["status"].get("refusedNamespaces") or []) == [
        {"namespace": orders, "reason": "ConfigMapConflict"}], 20, "payments to report the refusal")
    assert in_orders.verifies("signing-public", in_orders.sign("signing"))
    assert not in_orders.verifies("signing-public", in_payments.sign("signing"))


def test_a_copy_never_takes_the_name_of_a_key_that_has_no_configmap_yet(
        operator: OperatorProcess, make_namespace: MakeNamespace, kube_client: kubernetes.client.ApiClient,
        dev_env: DevEnvironment, vault_client: hvac.Client):
    payments = make_namespace()
    orders = make_namespace(accept_from=payments)
    in_orders, in_payments = _in(orders, kube_client, dev_env), _in(payments, kube_client, dev_env)
    # orders' own key cannot publish yet (its Vault path is taken), so its ConfigMap does not exist.
    vault_client.secrets.kv.v2.create_or_update_secret(path=f"servicekeys/{orders}/signing", mount_point="secret",
                                                       secret={"someone": "else"})
    in_orders.create("signing", {"algorithm": "ES256"})
    in_orders.wait_condition("signing", "False", "VaultPathConflict")

    in_payments.create("signing", {"algorithm": "ES256", "publicKey": {"namespaces": [orders]}})
    status = in_payments.wait_ready("signing")["status"]

    assert status["refusedNamespaces"] == [{"namespace": orders, "reason": "ConfigMapConflict"}]
    assert in_orders.configmap("signing-public") is None


# --- 2. A deletion removes only what the record proves is this ServiceKey's own ------------------------


def test_deleting_a_key_never_deletes_the_secret_of_the_key_at_its_pending_path(operator: OperatorProcess,
                                                                                servicekeys: ServiceKeys):
    folder = f"servicekeys/{servicekeys.namespace}/shared"
    servicekeys.create("inner", {"algorithm": "ES256", "vault": {"path": f"{folder}/pending"}})
    inner_kid = servicekeys.wait_ready("inner")["status"]["keyId"]
    servicekeys.create("outer", {"algorithm": "ES256", "deletionPolicy": "Delete", "vault": {"path": folder}})
    servicekeys.wait_condition("outer", "False", "VaultPathConflict")

    servicekeys.delete("outer")
    servicekeys.wait_gone("outer")

    assert servicekeys.vault_versions("secret", f"{folder}/pending") == 1, "inner's secret was deleted"
    assert servicekeys.vault_secret("secret", f"{folder}/pending")["kid"] == inner_kid
    assert servicekeys.verifies("inner-public", servicekeys.sign("inner"))


def test_deleting_a_key_never_deletes_a_foreign_secret_at_its_path(operator: OperatorProcess,
                                                                   servicekeys: ServiceKeys, vault_client: hvac.Client):
    path = f"servicekeys/{servicekeys.namespace}/foreign"
    vault_client.secrets.kv.v2.create_or_update_secret(path=path, mount_point="secret", secret={"mine": "yes"})
    vault_client.secrets.kv.v2.create_or_update_secret(path=f"{path}/pending", mount_point="secret",
                                                       secret={"mine": "too"})
    servicekeys.create("squatter", {"algorithm": "ES256", "deletionPolicy": "Delete", "vault": {"path": path}})
    servicekeys.wait_condition("squatter", "False", "VaultPathConflict")

    servicekeys.delete("squatter")
    servicekeys.wait_gone("squatter")

    assert servicekeys.vault_secret("secret", path) == {"mine": "yes"}
    assert servicekeys.vault_secret("secret", f"{path}/pending") == {"mine": "too"}


# --- 3. Two ServiceKeys never share a Transit key, nor a KV path --------------------------------------


def test_two_servicekeys_never_share_a_transit_key(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                   vault_client: hvac.Client):
    namespace = servicekeys.namespace
    servicekeys.create("x.y", {"algorithm": "ES256", "vault": {"engine": "transit"}})
    first = servicekeys.wait_ready("x.y")["status"]
    servicekeys.create("other", {"algorithm": "ES256", "deletionPolicy": "Delete",
                                 "vault": {"path": f"servicekeys/{namespace}/x/y"}})
    kv_kid = servicekeys.wait_ready("other")["status"]["keyId"]

    servicekeys.patch("other", {"spec": {"vault": {"engine": "transit"}}})
    other = servicekeys.wait_new_kid("other", kv_kid)["status"]

    assert other["vaultPath"] != first["vaultPath"], "both ServiceKeys sign with one Transit key"
    assert _transit_latest(vault_client, first["vaultPath"]) == 1, "x.y's Transit key was rotated by another key"
    servicekeys.delete("other")
    servicekeys.wait_gone("other")
    assert _transit_latest(vault_client, first["vaultPath"]) == 1, "x.y's Transit key went with the other key"
    assert servicekeys.verifies("x.y-public", servicekeys.sign_with_transit("x.y"))


@pytest.mark.parametrize("engine", ["kv", "transit"])
def test_two_servicekeys_racing_for_one_path_never_both_own_it(operator: OperatorProcess, servicekeys: ServiceKeys,
                                                               engine: str):
    rounds = 4
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(rounds):
            spec = {"algorithm": "ES256",
                    "vault": {"engine": engine, "path": f"servicekeys/{servicekeys.namespace}/race-{round_}"}}
            list(pool.map(servicekeys.create, [f"a-{round_}", f"b-{round_}"], [spec, spec]))

    for round_ in range(rounds):
        contenders = {name: _settled(servicekeys, name) for name in (f"a-{round_}", f"b-{round_}")}
        reasons = sorted(ready_condition(obj)["reason"] for obj in contenders.values())
        assert reasons == ["KeyReady", "VaultPathConflict"], f"round {round_}: {reasons}"
        winner = next(obj for obj in contenders.values() if ready_condition(obj)["reason"] == "KeyReady")
        record = servicekeys.vault_secret("secret", f"servicekeys/{servicekeys.namespace}/race-{round_}")
        assert record["owner"] == f"{servicekeys.namespace}/{winner['metadata']['name']}"
        assert record["kid"] == winner["status"]["keyId"]


# --- 4. A re-created namespace does not inherit the old tenant's keys ---------------------------------


def test_a_recreated_namespace_does_not_inherit_the_old_tenants_key(operator: OperatorProcess,
                                                                    make_namespace: MakeNamespace,
                                                                    core_api: kubernetes.client.CoreV1Api,
                                                                    kube_client: kubernetes.client.ApiClient,
                                                                    dev_env: DevEnvironment):
    name = f"t-{uuid.uuid4().hex[:10]}"
    make_namespace(name=name)
    old_uid = core_api.read_namespace(name).metadata.uid
    servicekeys = _in(name, kube_client, dev_env)
    servicekeys.create("signing", {"algorithm": "ES256"})
    old_kid = servicekeys.wait_ready("signing")["status"]["keyId"]
    mount, path = servicekeys.vault_path("signing")
    core_api.delete_namespace(name)

    def gone() -> bool:
        try:
            core_api.read_namespace(name)
        except ApiException as missing:
            return missing.status == 404
        return False
    wait_for(gone, 120, f"namespace {name} to be deleted")
    make_namespace(name=name)
    servicekeys.create("signing", {"algorithm": "ES256"})
    obj = servicekeys.wait_condition("signing", "False", "VaultPathConflict")

    message = ready_condition(obj)["message"]
    assert ADOPT in message and old_uid in message, message
    assert servicekeys.vault_versions(mount, path) == 1
    assert servicekeys.configmap("signing-public") is None, "the old tenant's public key was published"

    servicekeys.patch("signing", {"metadata": {"annotations": {ADOPT: old_uid}}})
    assert servicekeys.wait_ready("signing")["status"]["keyId"] == old_kid
    servicekeys.patch("signing", {"metadata": {"annotations": {ADOPT: None}}})
    servicekeys.patch("signing", {"metadata": {"annotations": {"servicekey.io/rotate": "after-adoption"}}})
    assert servicekeys.wait_new_kid("signing", old_kid)["status"]["keyVersion"] == 2


# --- 5. vault.mount is one mount name; every location is below this namespace's folder ------------------


@pytest.mark.parametrize("mount", ["secret/servicekeys/{other}", "cubbyhole/x", "sys/raw", "secret/data",
                                   "cubbyhole", "sys", "identity", "auth"])
def test_a_mount_that_reaches_elsewhere_is_rejected_at_admission(servicekeys: ServiceKeys,
                                                                 make_namespace: MakeNamespace, mount: str):
    other = make_namespace()
    with pytest.raises(ApiException) as rejected:
        servicekeys.create("reach", {"algorithm": "ES256", "vault": {
            "mount": mount.format(other=other), "path": f"servicekeys/{servicekeys.namespace}/reach"}})

    assert rejected.value.status == 422
    assert "vault.mount" in rejected.value.body


# --- 7. Status and Events name only namespaces the author chose or that accepted ----------------------


def test_status_names_only_namespaces_listed_by_the_author_or_that_accepted(operator: OperatorProcess,
                                                                           servicekeys: ServiceKeys,
                                                                           make_namespace: MakeNamespace):
    team = {"team": f"t{uuid.uuid4().hex[:6]}"}
    accepting = make_namespace(labels=team, accept_from=servicekeys.namespace)
    silent = make_namespace(labels=team)
    listed_refusing = make_namespace()
    servicekeys.create("shared", {"algorithm": "ES256", "publicKey": {
        "namespaceSelector": {"matchLabels": team}, "namespaces": [listed_refusing, "no-such-namespace"]}})
    status = servicekeys.wait_ready("shared")["status"]

    assert status["publishedNamespaces"] == [accepting]
    assert status["refusedNamespaces"] == sorted(
        [{"namespace": listed_refusing, "reason": "NotAccepted"},
         {"namespace": "no-such-namespace", "reason": "NotAccepted"}], key=lambda refusal: refusal["namespace"])
    told = " ".join(message for _, _, message in servicekeys.events("shared"))
    assert silent not in told and silent not in str(status)


# --- 6. One tenant cannot make another's keys cost passes ----------------------------------------------


def test_a_forged_copy_in_a_tenants_own_namespace_costs_the_named_key_no_pass(
        start_operator: Callable[..., OperatorProcess], make_namespace: MakeNamespace,
        kube_client: kubernetes.client.ApiClient, dev_env: DevEnvironment, core_api: kubernetes.client.CoreV1Api):
    victim, attacker = make_namespace(), make_namespace()
    operator = start_operator(SERVICEKEY_WATCH_NAMESPACES=f"{victim},{attacker}")
    in_victim = _in(victim, kube_client, dev_env)
    in_victim.create("signing", {"algorithm": "ES256"})
    in_victim.wait_ready("signing")
    passes = metric_value(metric_samples(operator), "servicekey_reconcile_duration_seconds_count")
    forged = {"app.kubernetes.io/managed-by": "servicekey-operator", "servicekey.io/name": "signing",
              "servicekey.io/source-namespace": victim, "servicekey.io/owner-uid": "not-the-victims"}

    core_api.create_namespaced_config_map(attacker, {"metadata": {"name": "bait", "labels": forged}})
    for round_ in range(5):
        core_api.patch_namespaced_config_map("bait", attacker, {"data": {"round": str(round_)}})
    core_api.delete_namespaced_config_map("bait", attacker)
    time.sleep(3)  # an absence: long enough for the passes those events used to start

    assert metric_value(metric_samples(operator), "servicekey_reconcile_duration_seconds_count") == passes
