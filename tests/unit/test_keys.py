"""Specification of servicekey_operator.keys: keygen, PEM, public JWK, kid and JWK Set.

Third-party verifiers (PyJWT, jwcrypto, the openssl CLI) judge what the module produces, so the
tests prove interoperability rather than re-implement the module's own logic.
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from servicekey_operator.keys import (
    ALGORITHMS,
    DEFAULT_RSA_KEY_SIZE,
    RSA_KEY_SIZES,
    KeyPair,
    KeySpecError,
    check_matches_algorithm,
    effective_key_size,
    generate_keypair,
    is_rsa,
    jwk_set,
    jwk_thumbprint,
    kid_for,
    load_public_key,
    public_jwk,
    public_pem_from_private,
)

CLAIMS = {"sub": "payments", "iss": "servicekey-operator-tests"}
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
EXPECTED_JWK_MEMBERS = {
    "RSA": {"kid", "kty", "alg", "use", "n", "e"},
    "EC": {"kid", "kty", "alg", "use", "crv", "x", "y"},
    "OKP": {"kid", "kty", "alg", "use", "crv", "x"},
}
EC_CURVES = {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_EXAMPLE_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
        "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_EXAMPLE_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def expected_vs_seen(expected: object, seen: object) -> str:
    return f"expected {expected!r}, seen {seen!r}"


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@pytest.fixture(scope="module", params=ALGORITHMS)
def keypair(request) -> KeyPair:
    """One generated keypair per algorithm (RSA at the default size), shared by the module."""
    return generate_keypair(request.param)


@pytest.fixture(scope="module")
def keypairs_by_algorithm() -> dict[str, KeyPair]:
    """Small keys of each family, for tests that need a key of the wrong kind."""
    return {algorithm: generate_keypair(algorithm) for algorithm in ("RS256", "ES256", "ES384", "EdDSA")}


@pytest.fixture
def published_jwks(keypair: KeyPair) -> dict:
    """The JWK Set a verifier would read from the ConfigMap, round-tripped through JSON."""
    return json.loads(json.dumps(jwk_set([(keypair.public_pem, keypair.algorithm)])))


@pytest.fixture
def signed_token(keypair: KeyPair) -> str:
    """A JWT signed the way a service signs: PyJWT, the PKCS#8 private PEM, kid in the header."""
    return jwt.encode(CLAIMS, keypair.private_pem, algorithm=keypair.algorithm, headers={"kid": keypair.kid})


# --- interoperability: sign with the private PEM, verify with nothing but the published JWKS ---


def test_pyjwt_verifies_token_using_only_the_published_jwks(keypair, published_jwks, signed_token):
    key_set = jwt.PyJWKSet.from_dict(published_jwks)
    kid = jwt.get_unverified_header(signed_token)["kid"]

    claims = jwt.decode(signed_token, key=key_set[kid], algorithms=[keypair.algorithm])

    assert claims == CLAIMS, expected_vs_seen(CLAIMS, claims)


def test_jwcrypto_verifies_token_using_only_the_published_jwks(keypair, published_jwks, signed_token):
    key_set = jwcrypto_jwk.JWKSet.from_json(json.dumps(published_jwks))

    verified = jwcrypto_jwt.JWT(jwt=signed_token, key=key_set, algs=[keypair.algorithm])

    claims = json.loads(verified.claims)
    assert claims == CLAIMS, expected_vs_seen(CLAIMS, claims)


def test_kid_is_the_rfc7638_sha256_thumbprint_that_jwcrypto_computes(keypair, published_jwks):
    (published,) = published_jwks["keys"]
    expected = jwcrypto_jwk.JWK(**published).thumbprint(hashes.SHA256())

    assert keypair.kid == expected, expected_vs_seen(expected, keypair.kid)
    assert published["kid"] == expected, expected_vs_seen(expected, published["kid"])
    assert kid_for(keypair.public_pem) == expected, expected_vs_seen(expected, kid_for(keypair.public_pem))


@pytest.mark.parametrize("key_size", RSA_KEY_SIZES)
def test_rsa_key_size_sets_the_modulus_size(key_size):
    keypair = generate_keypair("RS256", key_size)

    seen = load_public_key(keypair.public_pem).key_size
    modulus_bits = len(b64url_decode(public_jwk(keypair.public_pem, "RS256")["n"])) * 8

    assert keypair.key_size == key_size, expected_vs_seen(key_size, keypair.key_size)
    assert seen == key_size, expected_vs_seen(key_size, seen)
    assert modulus_bits == key_size, expected_vs_seen(key_size, modulus_bits)


def test_rsa_keys_use_public_exponent_65537():
    keypair = generate_keypair("PS256")

    exponent = public_jwk(keypair.public_pem, "PS256")["e"]

    assert exponent == "AQAB", expected_vs_seen("AQAB", exponent)


def test_keypair_reports_the_effective_key_size(keypair):
    expected = DEFAULT_RSA_KEY_SIZE if is_rsa(keypair.algorithm) else None

    assert keypair.key_size == expected, expected_vs_seen(expected, keypair.key_size)


# --- JWK shape ---


def test_rfc7638_example_key_has_the_rfc_thumbprint():
    seen = jwk_thumbprint(RFC7638_EXAMPLE_JWK)

    assert seen == RFC7638_EXAMPLE_THUMBPRINT, expected_vs_seen(RFC7638_EXAMPLE_THUMBPRINT, seen)


def test_public_jwk_has_kid_kty_alg_use_and_public_parameters_only(keypair, published_jwks):
    (published,) = published_jwks["keys"]
    expected_members = EXPECTED_JWK_MEMBERS[published["kty"]]

    assert set(published) == expected_members, expected_vs_seen(sorted(expected_members), sorted(published))
    assert not set(published) & PRIVATE_JWK_MEMBERS, expected_vs_seen(
        set(), set(published) & PRIVATE_JWK_MEMBERS
    )
    assert (published["alg"], published["use"]) == (keypair.algorithm, "sig"), expected_vs_seen(
        (keypair.algorithm, "sig"), (published["alg"], published["use"])
    )


def test_jwk_values_are_base64url_without_padding(published_jwks):
    (published,) = published_jwks["keys"]
    bad = {name: value for name, value in published.items() if "=" in value or "+" in value or "/" in value}

    assert not bad, expected_vs_seen({}, bad)


@pytest.mark.parametrize("algorithm", sorted(EC_CURVES))
def test_ec_jwk_names_the_curve_and_pads_coordinates_to_the_curve_size(algorithm):
    crv, octets = EC_CURVES[algorithm]
    published = public_jwk(generate_keypair(algorithm).public_pem, algorithm)

    lengths = (len(b64url_decode(published["x"])), len(b64url_decode(published["y"])))

    assert published["crv"] == crv, expected_vs_seen(crv, published["crv"])
    assert lengths == (octets, octets), expected_vs_seen((octets, octets), lengths)


def test_ec_coordinate_with_leading_zero_byte_keeps_it():
    # Deterministic private scalars, so the test does not depend on luck to hit a short x.
    public_key = next(
        key
        for key in (ec.derive_private_key(scalar, ec.SECP256R1()).public_key() for scalar in range(1, 10_000))
        if key.public_numbers().x.bit_length() <= 248
    )
    public_pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    published = public_jwk(public_pem, "ES256")
    x = b64url_decode(published["x"])
    reference_kid = jwcrypto_jwk.JWK.from_pem(public_pem.encode()).thumbprint(hashes.SHA256())

    assert (len(x), x[0]) == (32, 0), expected_vs_seen((32, 0), (len(x), x[0]))
    assert published["kid"] == reference_kid, expected_vs_seen(reference_kid, published["kid"])


def test_eddsa_jwk_is_okp_ed25519():
    published = public_jwk(generate_keypair("EdDSA").public_pem, "EdDSA")

    seen = (published["kty"], published["crv"], len(b64url_decode(published["x"])))

    assert seen == ("OKP", "Ed25519", 32), expected_vs_seen(("OKP", "Ed25519", 32), seen)


# --- JWK Set ---


def test_jwk_set_keeps_the_given_order_and_drops_repeated_keys(keypairs_by_algorithm):
    current, previous = keypairs_by_algorithm["ES256"], keypairs_by_algorithm["RS256"]
    entries = [
        (current.public_pem, current.algorithm),
        (previous.public_pem, previous.algorithm),
        (current.public_pem, current.algorithm),
    ]

    kids = [key["kid"] for key in jwk_set(entries)["keys"]]

    assert kids == [current.kid, previous.kid], expected_vs_seen([current.kid, previous.kid], kids)


def test_jwk_set_of_nothing_is_an_empty_key_list():
    assert jwk_set([]) == {"keys": []}, expected_vs_seen({"keys": []}, jwk_set([]))


# --- private material stays out of reach ---


@pytest.mark.parametrize("render", [repr, str], ids=["repr", "str"])
def test_keypair_text_form_shows_no_private_key(keypair, render):
    text = render(keypair)
    private_body = "".join(keypair.private_pem.splitlines()[1:-1])

    assert "PRIVATE KEY" not in text, expected_vs_seen("no 'PRIVATE KEY'", text)
    assert private_body not in text.replace("\\n", ""), expected_vs_seen("no private key body", text)
    assert keypair.kid in text, expected_vs_seen(f"kid {keypair.kid} shown", text)


def test_private_pem_is_unencrypted_pkcs8(keypair):
    first_line = keypair.private_pem.splitlines()[0]

    assert first_line == "-----BEGIN PRIVATE KEY-----", expected_vs_seen(
        "-----BEGIN PRIVATE KEY-----", first_line
    )
    serialization.load_pem_private_key(keypair.private_pem.encode(), password=None)


def test_public_pem_is_subject_public_key_info(keypair):
    first_line = keypair.public_pem.splitlines()[0]

    assert first_line == "-----BEGIN PUBLIC KEY-----", expected_vs_seen(
        "-----BEGIN PUBLIC KEY-----", first_line
    )


# --- keygen runs in a worker process ---


def test_keypair_survives_pickling(keypair):
    copy = pickle.loads(pickle.dumps(keypair))

    assert copy == keypair, expected_vs_seen(keypair, copy)


def test_generate_keypair_runs_in_a_process_pool():
    with ProcessPoolExecutor(max_workers=1) as pool:
        keypair = pool.submit(generate_keypair, "EdDSA").result(timeout=60)

    derived = public_pem_from_private(keypair.private_pem)
    assert derived == keypair.public_pem, expected_vs_seen(keypair.public_pem, derived)


# --- spec validation ---


@pytest.mark.parametrize(
    ("algorithm", "key_size", "expected"),
    [
        ("RS256", None, DEFAULT_RSA_KEY_SIZE),
        ("PS512", 4096, 4096),
        ("RS384", 3072, 3072),
        ("ES256", None, None),
        ("ES512", None, None),
        ("EdDSA", None, None),
    ],
)
def test_effective_key_size_defaults_rsa_to_2048_and_is_none_otherwise(algorithm, key_size, expected):
    seen = effective_key_size(algorithm, key_size)

    assert seen == expected, expected_vs_seen(expected, seen)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_is_rsa_exactly_for_rs_and_ps_algorithms(algorithm):
    expected = algorithm[:2] in ("RS", "PS")

    assert is_rsa(algorithm) is expected, expected_vs_seen(expected, is_rsa(algorithm))


@pytest.mark.parametrize(
    ("algorithm", "key_size"),
    [
        pytest.param("ES256", 2048, id="keySize-with-ES256"),
        pytest.param("EdDSA", 2048, id="keySize-with-EdDSA"),
        pytest.param("ES384", 384, id="curve-size-with-ES384"),
        pytest.param("RS256", 1024, id="rsa-1024"),
        pytest.param("PS256", 1024, id="rsa-1024-pss"),
        pytest.param("RS256", 8192, id="rsa-8192"),
        pytest.param("HS256", None, id="unknown-HS256"),
        pytest.param("none", None, id="unknown-none"),
        pytest.param("rs256", None, id="unknown-lowercase"),
        pytest.param("Ed25519", None, id="unknown-Ed25519"),
    ],
)
def test_invalid_algorithm_or_key_size_raises_key_spec_error(algorithm, key_size):
    with pytest.raises(KeySpecError):
        effective_key_size(algorithm, key_size)
    with pytest.raises(KeySpecError):
        generate_keypair(algorithm, key_size)


def test_key_spec_error_is_a_value_error():
    assert issubclass(KeySpecError, ValueError)


def test_public_jwk_rejects_unknown_algorithm(keypairs_by_algorithm):
    with pytest.raises(KeySpecError):
        public_jwk(keypairs_by_algorithm["RS256"].public_pem, "HS256")


def test_load_public_key_rejects_text_that_is_not_a_pem_public_key():
    with pytest.raises(ValueError):
        load_public_key("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")


# --- PEM round trip and adoption checks ---


def test_public_pem_from_private_returns_the_published_public_pem(keypair):
    derived = public_pem_from_private(keypair.private_pem)

    assert derived == keypair.public_pem, expected_vs_seen(keypair.public_pem, derived)


def test_public_pem_from_private_rejects_a_public_pem(keypair):
    with pytest.raises(ValueError):
        public_pem_from_private(keypair.public_pem)


def test_check_matches_algorithm_accepts_the_key_it_generated(keypair):
    check_matches_algorithm(keypair.public_pem, keypair.algorithm, keypair.key_size)


@pytest.mark.parametrize(
    ("key_algorithm", "algorithm", "key_size"),
    [
        pytest.param("ES256", "RS256", None, id="EC-key-for-RS256"),
        pytest.param("ES256", "ES384", None, id="P-256-key-for-ES384"),
        pytest.param("ES384", "ES256", None, id="P-384-key-for-ES256"),
        pytest.param("EdDSA", "ES256", None, id="Ed25519-key-for-ES256"),
        pytest.param("RS256", "EdDSA", None, id="RSA-key-for-EdDSA"),
        pytest.param("RS256", "RS256", 3072, id="RSA-2048-key-for-keySize-3072"),
        pytest.param("RS256", "RS256", 1024, id="invalid-keySize"),
    ],
)
def test_check_matches_algorithm_rejects_a_key_that_does_not_fit(
    keypairs_by_algorithm, key_algorithm, algorithm, key_size
):
    public_pem = keypairs_by_algorithm[key_algorithm].public_pem

    with pytest.raises(KeySpecError):
        check_matches_algorithm(public_pem, algorithm, key_size)


@pytest.mark.parametrize(
    ("key_algorithm", "algorithm"),
    [("ES256", "RS256"), ("ES256", "ES384"), ("RS256", "EdDSA")],
)
def test_public_jwk_refuses_a_key_of_the_wrong_type(keypairs_by_algorithm, key_algorithm, algorithm):
    with pytest.raises(KeySpecError):
        public_jwk(keypairs_by_algorithm[key_algorithm].public_pem, algorithm)


# --- openssl ---


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_openssl_accepts_the_public_pem(keypairs_by_algorithm, tmp_path: Path, algorithm):
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl CLI is required (.ci/run installs it)"
    pem_file = tmp_path / "public.pem"
    pem_file.write_text(keypairs_by_algorithm[algorithm].public_pem)

    result = subprocess.run(
        [openssl, "pkey", "-pubin", "-in", str(pem_file), "-noout"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, expected_vs_seen("exit 0", (result.returncode, result.stderr))


def test_jwk_set_lists_a_keys_aliases_right_after_it_each_once(keypairs_by_algorithm):
    first, second = keypairs_by_algorithm["ES256"], keypairs_by_algorithm["RS256"]
    entries = [(first.public_pem, "ES256"), (second.public_pem, "RS256")]

    listed = jwk_set(entries, {second.kid: ("svc-7", "svc-7", first.kid)})["keys"]

    assert [key["kid"] for key in listed] == [first.kid, second.kid, "svc-7"]
    assert {**listed[2], "kid": second.kid} == listed[1], "an alias is the same key under another kid"


@pytest.mark.parametrize("tampered", ["d", "dmp1", "iqmp"])
def test_a_private_key_whose_numbers_do_not_fit_together_is_refused(tampered):
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    values = {name: getattr(numbers, name) for name in ("p", "q", "d", "dmp1", "dmq1", "iqmp")}
    values[tampered] += 2  # OpenSSL signs correctly with either d or the CRT values: each must be checked
    pem = rsa.RSAPrivateNumbers(**values, public_numbers=numbers.public_numbers).private_key(
        unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

    with pytest.raises(ValueError, match="inconsistent RSA private key"):
        public_pem_from_private(pem)
