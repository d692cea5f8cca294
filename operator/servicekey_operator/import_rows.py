"""Rows of a coordinator's key store (the ``service_keys`` table, or a dump of its in-memory map) checked and turned
into the keys to import: pure, no Vault and no Kubernetes (``import_run`` writes them).

A row is imported only as it is: the private key must parse, the public key must be its public half, and the
algorithm and size must be ones the operator signs with and agree with the key. Anything else is an error of that
row, with its reason, and the other rows go on. Names are mapped from ``service_id`` to ServiceKey names, and two
rows that would share one name are both refused: never merged, never one silently winning.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from servicekey_operator.keys import (
    ALGORITHMS,
    KeySpecError,
    check_matches_algorithm,
    effective_key_size,
    is_rsa,
    kid_for,
    public_pem_from_private,
    rsa_modulus_bits,
)

# A ServiceKey name is a DNS-1123 label here (its ConfigMap adds "-public", Transit key names embed it): at most
# 63 characters, lower-case letters, digits and '-', starting and ending alphanumeric.
NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# What the in-memory dump calls the table's columns (``{serviceId, serviceName, publicKey, ...}``).
DUMP_FIELDS = {"serviceId": "service_id", "serviceName": "service_name", "publicKey": "public_key",
               "privateKey": "private_key", "algorithm": "algorithm", "keySize": "key_size",
               "createdAt": "created_at", "updatedAt": "updated_at"}
COLUMNS = ("service_id", "service_name", "public_key", "private_key", "algorithm", "key_size")


@dataclass(frozen=True)
class CoordinatorRow:
    """One service's keypair as the coordinator keeps it (the table's columns; ``private_key`` never in a repr)."""

    service_id: str
    service_name: str | None
    public_key: str | None
    private_key: str | None = field(repr=False)
    algorithm: str | None
    key_size: int | None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> CoordinatorRow:
        """From a table row (column names) or a dump entry (``serviceId``...): missing fields are None."""
        named = {DUMP_FIELDS.get(key, key): value for key, value in row.items()}
        return cls(service_id=_text(named.get("service_id")) or "", service_name=_text(named.get("service_name")),
                   public_key=_text(named.get("public_key")), private_key=_text(named.get("private_key")),
                   algorithm=_text(named.get("algorithm")), key_size=_size(named.get("key_size")))


def _text(value: Any) -> str | None:
    # Bytes that are no UTF-8 cannot be a PEM anyway: the row is then refused for its key, not the run for its text.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (str(value) if value is not None else None)


def _size(value: Any) -> int | None:
    """A key size as a table or a dump may hold it (2048, "2048", 2048.0, Decimal); None when it says none."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() and number > 0 else None


@dataclass(frozen=True)
class ImportedKey:
    """A row that passed: the ServiceKey to create and the key to write as version 1 of its Vault secret.

    ``legacy_kid`` is the kid the coordinator's tokens may carry (its service id), published as an alias of the
    key until it leaves the JWKS.
    """

    service_id: str
    namespace: str
    name: str
    service_name: str
    algorithm: str
    key_size: int | None
    public_pem: str
    private_pem: str = field(repr=False)
    kid: str
    legacy_kid: str | None


@dataclass(frozen=True)
class RowError:
    """A row that is not imported, and why (``reason`` is a word to filter on, ``message`` says what is wrong)."""

    service_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class ImportPlan:
    """What an import would do: the keys to import, and the rows refused."""

    keys: list[ImportedKey]
    errors: list[RowError]


def servicekey_name(service_id: str) -> str | None:
    """The ServiceKey name for ``service_id``: lower-cased, '_' and '.' as '-'; None when that is no valid name."""
    name = service_id.strip().lower().replace("_", "-").replace(".", "-")
    return name if NAME.fullmatch(name) else None


def check_row(row: CoordinatorRow, namespace: str, name: str) -> ImportedKey | RowError:
    """The key of ``row`` as it would be imported into ``namespace``/``name``, or why it cannot be."""
    def refused(reason: str, message: str) -> RowError:
        return RowError(row.service_id, reason, message)

    algorithm = (row.algorithm or "RS256").strip()
    if algorithm not in ALGORITHMS:
        return refused("UnsupportedAlgorithm", f"algorithm {algorithm!r} is not one the operator signs with "
                                               f"({', '.join(ALGORITHMS)})")
    if not row.private_key:
        return refused("InvalidPrivateKey", "the private key is empty")
    try:
        derived = public_pem_from_private(row.private_key)
    except (ValueError, KeySpecError) as bad:  # the messages never quote key material
        return refused("InvalidPrivateKey", f"the private key: {bad}")
    try:
        stored_kid = kid_for(row.public_key or "")
    except (ValueError, KeySpecError) as bad:
        return refused("InvalidPublicKey", f"the public key: {bad}")
    kid = kid_for(derived)
    if stored_kid != kid:
        return refused("KeyMismatch", f"the public key (kid {stored_kid}) is not the private key's (kid {kid})")
    # The table's key_size defaults to 2048 for every row; only RSA keys have a size of their own choosing, and a
    # row that names none has its key's (the spec and the record then say it, so the operator does not rotate).
    key_size = (row.key_size or rsa_modulus_bits(derived)) if is_rsa(algorithm) else None
    try:
        key_size = effective_key_size(algorithm, key_size)
        check_matches_algorithm(derived, algorithm, key_size)
    except KeySpecError as bad:
        return refused("KeyAlgorithmMismatch", str(bad))
    # A comma cannot be in a legacy kid (the record lists them comma-separated); such an id is no kid anyway.
    legacy = row.service_id if row.service_id != kid and "," not in row.service_id else None
    return ImportedKey(service_id=row.service_id, namespace=namespace, name=name,
                       service_name=row.service_name or row.service_id, algorithm=algorithm, key_size=key_size,
                       public_pem=derived, private_pem=row.private_key, kid=kid, legacy_kid=legacy)


def plan(rows: Iterable[CoordinatorRow], namespace_of: Mapping[str, str] | str,
         names: Mapping[str, str] | None = None) -> ImportPlan:
    """Check every row; ``namespace_of`` is the target namespace, or service id -> namespace; ``names`` maps
    service ids to ServiceKey names where ``servicekey_name`` would not do.

    Rows whose name is invalid, or shared with another row in the same namespace, or whose service id appears
    twice, are refused; the others are checked one by one (``check_row``).
    """
    rows = list(rows)
    ids = Counter(row.service_id for row in rows)
    placed: list[tuple[CoordinatorRow, str | None, str | None]] = []
    for row in rows:
        namespace = namespace_of if isinstance(namespace_of, str) else namespace_of.get(row.service_id)
        chosen = (names or {}).get(row.service_id)
        name = (chosen if NAME.fullmatch(chosen) else None) if chosen else servicekey_name(row.service_id)
        placed.append((row, namespace, name))
    taken = Counter((namespace, name) for _, namespace, name in placed if name and namespace)
    keys: list[ImportedKey] = []
    errors: list[RowError] = []
    for row, namespace, name in placed:
        if not row.service_id:
            errors.append(RowError("", "InvalidName", "the row has no service_id"))
        elif ids[row.service_id] > 1:
            errors.append(RowError(row.service_id, "DuplicateServiceId",
                                   f"service_id {row.service_id!r} appears {ids[row.service_id]} times"))
        elif name is None:
            given = (names or {}).get(row.service_id)
            what = f"the name {given!r} given with --name" if given else f"service_id {row.service_id!r}"
            errors.append(RowError(row.service_id, "InvalidName", f"{what} is no valid ServiceKey name (lower-case "
                                   "letters, digits and '-', at most 63; choose one with --name SERVICE_ID=NAME)"))
        elif not namespace:
            errors.append(RowError(row.service_id, "NoNamespace", "no target namespace for this row"))
        elif taken[(namespace, name)] > 1:
            others = sorted(other.service_id for other, ns, n in placed
                            if (ns, n) == (namespace, name) and other is not row)
            errors.append(RowError(row.service_id, "NameCollision", f"ServiceKey {namespace}/{name} would also be made "
                                   f"from {', '.join(map(repr, others))}; name them apart with --name SERVICE_ID=NAME"))
        else:
            checked = check_row(row, namespace, name)
            if isinstance(checked, ImportedKey):
                keys.append(checked)
            else:
                errors.append(checked)
    return ImportPlan(keys, errors)
