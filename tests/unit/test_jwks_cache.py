"""The JWKS server's cache of served keys: what a list and each watch event leave in it."""

from __future__ import annotations

from servicekey_operator.jwks_cache import KeyCache
from tests.unit.test_jwks_server import JWKS, configmap


def test_a_key_whose_configmap_was_renamed_is_served_from_the_new_one_and_stays_when_the_old_one_goes():
    cache = KeyCache()
    cache.replace_all([configmap()])

    cache.apply("ADDED", configmap(configmap_name="renamed"))
    cache.apply("DELETED", configmap())

    assert cache.get(("payments", "signing")) is not None
    cache.apply("DELETED", configmap(configmap_name="renamed"))
    assert cache.get(("payments", "signing")) is None


def test_a_list_of_one_namespace_replaces_that_namespace_only():
    cache = KeyCache()
    cache.replace_all([configmap(), configmap(namespace="orders")])

    cache.replace_all([], namespace="payments")

    assert cache.get(("payments", "signing")) is None
    assert cache.get(("orders", "signing")) is not None
    assert len(cache) == 1


def test_a_configmap_without_a_readable_jwk_set_serves_nothing():
    cache = KeyCache()
    cache.replace_all([configmap(jwks="{not json"), configmap(name="other", jwks="")])

    assert len(cache) == 0
    cache.apply("MODIFIED", configmap(jwks=JWKS))
    assert cache.get(("payments", "signing")).jwks.body == JWKS.encode()
