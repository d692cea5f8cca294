"""Signing-key crypto: key generation, PEM handling, public JWKs, key ids and JWK Sets.

Everything here is pure (no I/O, no logging, no global state) so that it can be unit-tested
in isolation and key generation can run in a worker process.

Formats (see DESIGN.md):
- private keys: PKCS#8 PEM, unencrypted (they only ever live in Vault);
- public keys: SubjectPublicKeyInfo PEM;
- public JWKs: RFC 7517, with ``kid``, ``kty``, ``alg``, ``use: "sig"`` and public parameters only;
- key id: RFC 7638 SHA-256 JWK thumbprint, base64url without padding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "ALGORITHMS",
    "DEFAULT_RSA_KEY_SIZE",
    "RSA_KEY_SIZES",
    "KeyPair",
    "KeySpecError",
    "PrivateKey",
    "PublicKey",
    "canonical_public_pem",
    "check_matches_algorithm",
    "effective_key_size",
    "generate_keypair",
    "is_rsa",
    "jwk_set",
    "jwk_thumbprint",
    "kid_for",
    "load_public_key",
    "public_jwk",
    "public_pem_from_private",
]

ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
RSA_KEY_SIZES: tuple[int, ...] = (2048, 3072, 4096)
DEFAULT_RSA_KEY_SIZE = 2048

# F4; the only public exponent every JOSE library accepts without question.
_RSA_PUBLIC_EXPONENT = 65537

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})

# Curve per ECDSA algorithm, as fixed by RFC 7518 section 3.4 (ES512 is P-521, not P-512).
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}

# cryptography curve name -> JWK "crv" (RFC 7518 section 6.2.1.1).
_JWK_CURVE_NAMES: dict[str, str] = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}

# RFC 7638 section 3.2: the members that make up the thumbprint input, per key type.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),  # RFC 8037 section 2
}

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeySpecError(ValueError):
    """The algorithm, key size or key type do not fit together (or are not supported)."""


@dataclass(frozen=True)
class KeyPair:
    """A freshly generated signing keypair.

    ``private_pem`` is excluded from ``repr()``/``str()`` so that the key never lands in a log line
    or a traceback by accident.
    """

    algorithm: str
    key_size: int | None
    private_pem: str = field(repr=False)
    public_pem: str
    kid: str


def is_rsa(algorithm: str) -> bool:
    """Return True for the RSA algorithms (RS256..RS512, PS256..PS512)."""
    return algorithm in _RSA_ALGORITHMS


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise KeySpecError(f"unsupported algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")


def effective_key_size(algorithm: str, key_size: int | None) -> int | None:
    """Return the RSA modulus size to use for ``algorithm``, or None for non-RSA algorithms.

    RSA algorithms default to ``DEFAULT_RSA_KEY_SIZE`` and accept only ``RSA_KEY_SIZES``.
    ES*/EdDSA keys have their size fixed by the algorithm, so any ``key_size`` given with them is an
    error rather than silently ignored.

    Raises:
        KeySpecError: unknown algorithm, unsupported RSA size, or a key size with a non-RSA algorithm.
    """
    _check_algorithm(algorithm)
    if is_rsa(algorithm):
        if key_size is None:
            return DEFAULT_RSA_KEY_SIZE
        if key_size not in RSA_KEY_SIZES:
            sizes = ", ".join(str(size) for size in RSA_KEY_SIZES)
            raise KeySpecError(
                f"keySize {key_size!r} is not supported for {algorithm}; expected one of {sizes}"
            )
        return key_size
    if key_size is not None:
        raise KeySpecError(
            f"keySize is only valid for RSA algorithms (RS*/PS*); {algorithm} has a fixed key size"
        )
    return None


def _generate_private_key(algorithm: str, key_size: int | None) -> PrivateKey:
    if is_rsa(algorithm):
        assert key_size is not None
        return rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=key_size)
    if algorithm in _EC_CURVES:
        return ec.generate_private_key(_EC_CURVES[algorithm]())
    return ed25519.Ed25519PrivateKey.generate()


def _public_pem(public_key: PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def generate_keypair(algorithm: str, key_size: int | None = None) -> KeyPair:
    """Generate a new keypair for ``algorithm``.

    RS*/PS*: RSA with e=65537 and ``key_size`` bits (default 2048); ES256/ES384/ES512: P-256/P-384/P-521;
    EdDSA: Ed25519. The private key is returned as unencrypted PKCS#8 PEM, the public key as
    SubjectPublicKeyInfo PEM, and ``kid`` is the RFC 7638 thumbprint of the public key.

    This is a plain synchronous function with picklable arguments and result, so callers can run it
    in a ``ProcessPoolExecutor`` (RSA-4096 takes about a second).

    Raises:
        KeySpecError: see ``effective_key_size``.
    """
    size = effective_key_size(algorithm, key_size)
    private_key = _generate_private_key(algorithm, size)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    public_key = private_key.public_key()
    return KeyPair(
        algorithm=algorithm,
        key_size=size,
        private_pem=private_pem,
        public_pem=_public_pem(public_key),
        kid=jwk_thumbprint(_public_params(public_key)),
    )


def load_public_key(public_pem: str) -> PublicKey:
    """Parse a SubjectPublicKeyInfo PEM into an RSA, EC (P-256/P-384/P-521) or Ed25519 public key.

    Raises:
        ValueError: ``public_pem`` is not a PEM public key.
        KeySpecError: the key type or curve is not one this operator signs with.
    """
    try:
        public_key = serialization.load_pem_public_key(public_pem.encode("ascii"))
    except UnsupportedAlgorithm as exc:
        raise KeySpecError(f"unsupported public key type: {exc}") from exc
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError("not a SubjectPublicKeyInfo PEM public key") from exc
    return _supported(public_key)


def canonical_public_pem(public_pem: str, algorithm: str) -> str:
    """``public_pem`` parsed and written again as exactly one SubjectPublicKeyInfo PEM block, if it is a key that
    ``algorithm`` signs with (any of the supported RSA sizes): nothing around or after the block survives.

    Raises:
        ValueError: ``public_pem`` is not a PEM public key.
        KeySpecError: the key does not fit ``algorithm``.
    """
    public_key = load_public_key(public_pem)
    size = public_key.key_size if isinstance(public_key, rsa.RSAPublicKey) else None
    check_matches_algorithm(public_pem, algorithm, size)
    return _public_pem(public_key)


def _supported(key: object) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _JWK_CURVE_NAMES:
            raise KeySpecError(f"unsupported elliptic curve {key.curve.name!r}")
        return key
    raise KeySpecError(f"unsupported public key type {type(key).__name__}")


def public_pem_from_private(private_pem: str) -> str:
    """Derive the SubjectPublicKeyInfo PEM of an unencrypted PEM private key (PKCS#8 or traditional).

    Used to check that the private key held in Vault is the one whose public half is published.
    The output is byte-identical to ``KeyPair.public_pem`` for the same key.

    Raises:
        ValueError: ``private_pem`` is not an unencrypted PEM private key.
        KeySpecError: the key type or curve is not supported.
    """
    try:
        # OpenSSL's RSA check costs 60 ms for a 2048-bit key (half a minute for an import of hundreds), nearly all
        # of it testing that p and q are prime; the arithmetic that ties the key's numbers together is checked
        # below, in microseconds. EC keys are checked on load, as before.
        private_key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None,
                                                         unsafe_skip_rsa_key_validation=True)
    except UnsupportedAlgorithm as exc:
        raise KeySpecError(f"unsupported private key type: {exc}") from exc
    # TypeError: the PEM is encrypted. Messages from cryptography never quote the key data.
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ValueError("not an unencrypted PEM private key") from exc
    if isinstance(private_key, rsa.RSAPrivateKey) and not _rsa_numbers_agree(private_key.private_numbers()):
        raise ValueError("an inconsistent RSA private key: its numbers do not fit together")
    return _public_pem(_supported(private_key.public_key()))


def _rsa_numbers_agree(numbers: rsa.RSAPrivateNumbers) -> bool:
    """n = pq, ed = 1 mod lcm(p-1, q-1), and the CRT values are d mod p-1, d mod q-1 and q^-1 mod p (RFC 8017,
    section 3.2): what any signer's arithmetic relies on, whichever of d or the CRT values it uses."""
    p, q, d = numbers.p, numbers.q, numbers.d
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    if p < 2 or q < 2:
        return False
    return (p * q == n and (e * d) % math.lcm(p - 1, q - 1) == 1 and numbers.dmp1 == d % (p - 1)
            and numbers.dmq1 == d % (q - 1) and (numbers.iqmp * q) % p == 1)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    # RFC 7518 section 6.3.1.1: minimal big-endian octets, zero encoded as a single zero octet.
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _public_params(public_key: PublicKey) -> dict[str, str]:
    """The RFC 7638 required members of a public key, i.e. exactly the thumbprint input."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        numbers = public_key.public_numbers()
        # RFC 7518 section 6.2.1.2: coordinates are full-length octet strings for the curve,
        # so a leading zero byte must be kept (P-521: 66 octets).
        length = (public_key.curve.key_size + 7) // 8
        return {
            "kty": "EC",
            "crv": _JWK_CURVE_NAMES[public_key.curve.name],
            "x": _b64url(numbers.x.to_bytes(length, "big")),
            "y": _b64url(numbers.y.to_bytes(length, "big")),
        }
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}


def _check_key_type(public_key: PublicKey, algorithm: str) -> None:
    _check_algorithm(algorithm)
    if is_rsa(algorithm):
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise KeySpecError(f"{algorithm} needs an RSA key, got {_describe(public_key)}")
    elif algorithm in _EC_CURVES:
        curve = _EC_CURVES[algorithm]
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, curve):
            raise KeySpecError(
                f"{algorithm} needs an EC {_JWK_CURVE_NAMES[curve.name]} key, got {_describe(public_key)}"
            )
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise KeySpecError(f"{algorithm} needs an Ed25519 key, got {_describe(public_key)}")


def _describe(public_key: PublicKey) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}-bit key"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {_JWK_CURVE_NAMES.get(public_key.curve.name, public_key.curve.name)} key"
    return "Ed25519 key"


def public_jwk(public_pem: str, algorithm: str) -> dict[str, str]:
    """Return the RFC 7517 public JWK of ``public_pem`` for signing with ``algorithm``.

    Members: ``kty``, ``kid`` (RFC 7638 thumbprint), ``alg``, ``use: "sig"`` and the public
    parameters only (RSA: n, e; EC: crv, x, y; OKP: crv, x), base64url without padding.
    The RSA modulus size is not checked here, so previously published keys of another size still
    produce a JWK; use ``check_matches_algorithm`` for the full check.

    Raises:
        ValueError: ``public_pem`` is not a PEM public key.
        KeySpecError: unknown algorithm, or the key type/curve does not fit ``algorithm``.
    """
    public_key = load_public_key(public_pem)
    _check_key_type(public_key, algorithm)
    params = _public_params(public_key)
    return {
        "kty": params["kty"],
        "kid": jwk_thumbprint(params),
        "alg": algorithm,
        "use": "sig",
        **{name: value for name, value in params.items() if name != "kty"},
    }


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of ``jwk``, base64url without padding.

    Only the required members of the key type are hashed (RSA: e, kty, n; EC: crv, kty, x, y;
    OKP: crv, kty, x), in lexicographic order, without whitespace; other members are ignored.

    Raises:
        KeySpecError: unsupported ``kty`` or a required member is missing.
    """
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise KeySpecError(f"unsupported JWK kty {kty!r}")
    missing = [name for name in members if name not in jwk]
    if missing:
        raise KeySpecError(f"JWK of kty {kty} lacks required member(s) {', '.join(missing)}")
    canonical = json.dumps(
        {name: jwk[name] for name in members}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def rsa_modulus_bits(public_pem: str) -> int | None:
    """The modulus size of an RSA public key in bits; None for other keys.

    Raises:
        ValueError: ``public_pem`` is not a PEM public key.
        KeySpecError: unsupported key type or curve.
    """
    public_key = load_public_key(public_pem)
    return public_key.key_size if isinstance(public_key, rsa.RSAPublicKey) else None


def kid_for(public_pem: str) -> str:
    """Return the key id of ``public_pem``: its RFC 7638 SHA-256 JWK thumbprint.

    Raises:
        ValueError: ``public_pem`` is not a PEM public key.
        KeySpecError: unsupported key type or curve.
    """
    return jwk_thumbprint(_public_params(load_public_key(public_pem)))


def jwk_set(keys: list[tuple[str, str]], aliases: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Build an RFC 7517 JWK Set from ``[(public_pem, algorithm), ...]``, keeping the given order.

    The first entry is expected to be the current key. A key that appears more than once is listed
    only at its first occurrence (by ``kid``), so verifiers never see ambiguous key ids. ``aliases`` maps a
    key's kid to other kids it is listed under too, right after it (an imported key's kids of before, which
    tokens signed then carry), each only once.

    Raises:
        ValueError, KeySpecError: see ``public_jwk``.
    """
    seen: set[str] = set()
    jwks: list[dict[str, str]] = []
    for public_pem, algorithm in keys:
        jwk = public_jwk(public_pem, algorithm)
        for kid in (jwk["kid"], *(aliases or {}).get(jwk["kid"], ())):
            if kid not in seen:
                seen.add(kid)
                jwks.append({**jwk, "kid": kid})
    return {"keys": jwks}


def check_matches_algorithm(public_pem: str, algorithm: str, key_size: int | None) -> None:
    """Raise ``KeySpecError`` unless ``public_pem`` is a key that ``algorithm``/``key_size`` would generate.

    RSA keys must have the effective modulus size (``key_size`` or the default); EC keys the
    algorithm's curve; EdDSA keys must be Ed25519. Used when adopting a key that already exists
    in Vault.

    Raises:
        ValueError: ``public_pem`` is not a PEM public key.
        KeySpecError: the spec is invalid, or the key does not fit it.
    """
    size = effective_key_size(algorithm, key_size)
    public_key = load_public_key(public_pem)
    _check_key_type(public_key, algorithm)
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size != size:
        raise KeySpecError(
            f"{algorithm} with keySize {size} needs a {size}-bit RSA key, got {_describe(public_key)}"
        )
