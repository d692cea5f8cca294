"""One duration grammar, the same in the CRD and in spec.py (issue #15, item 9).

Everything the API server checks is read from crds/servicekey.io_servicekeys.yaml itself: the ``pattern``,
``minLength`` and ``maxLength`` of ``rotation.period`` and ``rotation.publishAhead``, and the CEL
``x-kubernetes-validations`` of those fields and of ``rotation``. A small model evaluates them the way the API
server does:

- patterns are RE2 (Kubernetes and CEL ``matches``): ASCII classes, and ``$`` matches only at the very end
  of the text (Python's ``$`` also matches before a final newline);
- lengths count characters (runes), as Python's ``len`` does (the API server's message says "bytes", but it
  admits 32 characters that are 33 bytes with a micro sign);
- CEL ``duration(s)`` is Go's ``time.ParseDuration`` (cel-go), modelled here to the bit in integer
  nanoseconds: fractions are scaled in float64 and truncated, and anything beyond 2^63-1 ns (about 2562047h)
  is an error; a rule that errors rejects the object, like one that is false; ``||`` and ``&&`` absorb
  errors the CEL way.

The properties: ``parse_duration_seconds`` accepts a string iff it matches the CRD's pattern, and
``desired_key`` raises InvalidSpec for a rotation iff the API server would refuse it. The integration test
tests/integration/test_duration_admission.py checks this model against the real API server.

The explicit examples marked "once disagreed" are what this test found: strings the API server refused and
spec.py accepted (digits of other scripts, "", too long, 1 ns beyond a bound lost in float seconds), or the other
way round (exactly 8760h in nanoseconds). spec.py now parses in integer nanoseconds, as Go does.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.errors import InvalidSpec
from servicekey_operator.spec import desired_key, parse_duration_seconds

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "servicekey.io_servicekeys.yaml"
CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
FIELDS = ("period", "publishAhead")
MICRO_SIGN, GREEK_MU = "\u00b5", "\u03bc"
SETTINGS = settings(max_examples=150, deadline=None)


def _rotation_schema() -> Mapping[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rotation"]


ROTATION_SCHEMA = _rotation_schema()
FIELD_SCHEMAS = {name: ROTATION_SCHEMA["properties"][name] for name in FIELDS}


# --- Go: regexp (RE2) and time.ParseDuration --------------------------------------------------------------

@functools.cache
def go_regex(pattern: str) -> re.Pattern[str]:
    """An RE2 pattern as Python: ASCII classes, and ``$`` (without the m flag) only at the end of the text."""
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out), re.ASCII)


def go_matches(pattern: str, text: str) -> bool:
    """Go's ``regexp.MatchString``: an unanchored search, as both OpenAPI ``pattern`` and CEL ``matches`` use."""
    return go_regex(pattern).search(text) is not None


NANOSECOND, MICROSECOND, MILLISECOND, SECOND = 1, 10**3, 10**6, 10**9
MINUTE, HOUR = 60 * SECOND, 3600 * SECOND
_GO_UNITS = {b"ns": NANOSECOND, b"us": MICROSECOND, MICRO_SIGN.encode() + b"s": MICROSECOND,
             GREEK_MU.encode() + b"s": MICROSECOND, b"ms": MILLISECOND, b"s": SECOND, b"m": MINUTE, b"h": HOUR}
_U63 = 1 << 63
GO_MAX_DURATION = _U63 - 1  # 2562047h47m16.854775807s


def _is_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def go_parse_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` (src/time/format.go, go1.26) in nanoseconds; None where Go returns an error.

    Go works on the UTF-8 bytes, with uint64 arithmetic, and scales a fraction in float64 (Python's float)."""
    s = text.encode("utf-8")
    negative = s[:1] == b"-"
    if s[:1] in (b"-", b"+"):
        s = s[1:]
    if s == b"0":
        return 0
    if not s:
        return None
    total = 0
    while s:
        if not (s[0] == 0x2E or _is_digit(s[0])):
            return None
        i, whole = 0, 0  # leadingInt
        while i < len(s) and _is_digit(s[i]):
            if whole > _U63 // 10:
                return None
            whole = whole * 10 + s[i] - 0x30
            if whole > _U63:
                return None
            i += 1
        before, s = i > 0, s[i:]
        fraction, scale, after = 0, 1.0, False
        if s[:1] == b".":  # leadingFraction: stops accumulating precision at overflow
            s, i, overflow = s[1:], 0, False
            while i < len(s) and _is_digit(s[i]):
                if not overflow:
                    if fraction > (_U63 - 1) // 10 or fraction * 10 + s[i] - 0x30 > _U63:
                        overflow = True
                    else:
                        fraction, scale = fraction * 10 + s[i] - 0x30, scale * 10
                i += 1
            after, s = i > 0, s[i:]
        if not before and not after:
            return None
        i = 0
        while i < len(s) and not (s[i] == 0x2E or _is_digit(s[i])):
            i += 1
        unit = _GO_UNITS.get(s[:i]) if i else None
        s = s[i:]
        if unit is None or whole > _U63 // unit:
            return None
        value = whole * unit
        if fraction > 0:
            value += int(float(fraction) * (float(unit) / scale))
            if value > _U63:
                return None
        total = (total + value) % (1 << 64)
        if total > _U63:
            return None
    if negative:
        return -total
    return total if total <= GO_MAX_DURATION else None


# --- CEL, the subset the rotation rules use ---------------------------------------------------------------

class CelError:
    """A CEL error value (no such key, a failed conversion): a rule that evaluates to it rejects the object."""

    def __repr__(self) -> str:
        return "<CEL error>"


ERROR = CelError()


@dataclass(frozen=True, order=True)
class Duration:
    """A CEL duration (cel-go: a Go time.Duration)."""

    nanoseconds: int


class UnsupportedCel(Exception):
    """The CRD uses CEL this model does not know: extend the model rather than skip the rule."""


_CEL_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<op>\|\||&&|<=|>=|==|!=|[<>!().,])"
                        r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*))")
_CEL_ESCAPES = {"\\\\": "\\", "\\'": "'", '\\"': '"'}
Node = tuple[Any, ...]


def _cel_tokens(source: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while source[position:].strip():
        match = _CEL_TOKEN.match(source, position)
        if not match:
            raise UnsupportedCel(f"cannot read {source[position:]!r} in {source!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _CelParser:
    """Recursive descent: or := and ('||' and)*; and := rel ('&&' rel)*; rel := unary (op unary)?;
    unary := '!' unary | member; member := primary ('.' ident ('(' args ')')?)*."""

    RELATIONS = ("<", "<=", ">", ">=", "==", "!=")

    def __init__(self, source: str) -> None:
        self.source, self.tokens, self.position = source, _cel_tokens(source), 0

    def parse(self) -> Node:
        node = self.disjunction()
        if self.position != len(self.tokens):
            raise UnsupportedCel(f"unexpected {self.tokens[self.position]!r} in {self.source!r}")
        return node

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position == len(self.tokens) or (expected and self.tokens[self.position][1] != expected):
            raise UnsupportedCel(f"expected {expected!r} at token {self.position} of {self.source!r}")
        self.position += 1
        return self.tokens[self.position - 1]

    def disjunction(self) -> Node:
        nodes = [self.conjunction()]
        while self.peek() == "||":
            self.take()
            nodes.append(self.conjunction())
        return nodes[0] if len(nodes) == 1 else ("or", *nodes)

    def conjunction(self) -> Node:
        nodes = [self.relation()]
        while self.peek() == "&&":
            self.take()
            nodes.append(self.relation())
        return nodes[0] if len(nodes) == 1 else ("and", *nodes)

    def relation(self) -> Node:
        left = self.unary()
        if self.peek() in self.RELATIONS:
            return ("relation", self.take()[1], left, self.unary())
        return left

    def unary(self) -> Node:
        if self.peek() == "!":
            self.take()
            return ("not", self.unary())
        return self.member()

    def arguments(self) -> list[Node]:
        self.take("(")
        args = []
        while self.peek() != ")":
            args.append(self.disjunction())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return args

    def member(self) -> Node:
        node = self.primary()
        while self.peek() == ".":
            self.take()
            kind, name = self.take()
            if kind != "ident":
                raise UnsupportedCel(f"expected a name after '.' in {self.source!r}")
            node = ("call", name, node, *self.arguments()) if self.peek() == "(" else ("select", node, name)
        return node

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "string":
            body = re.sub(r"\\.", lambda m: _CEL_ESCAPES.get(m.group(), m.group()), text[1:-1])
            if "\\" in body.replace("\\\\", ""):
                raise UnsupportedCel(f"escape in {text!r}")
            return ("literal", body)
        if text == "(":
            node = self.disjunction()
            self.take(")")
            return node
        if kind != "ident":
            raise UnsupportedCel(f"unexpected {text!r} in {self.source!r}")
        if self.peek() != "(":
            return ("ident", text)
        args = self.arguments()
        if text == "has":
            if len(args) != 1 or args[0][0] != "select":
                raise UnsupportedCel(f"has() needs a field selection in {self.source!r}")
            return ("has", args[0][1], args[0][2])
        return ("call", text, None, *args)


@functools.cache
def cel_program(source: str) -> Node:
    return _CelParser(source).parse()


def _cel_bool(value: Any) -> bool | CelError:
    return value if isinstance(value, bool) else ERROR


def cel_eval(node: Node, this: Any) -> Any:
    """Evaluate a parsed rule with ``self`` bound to ``this``."""
    kind = node[0]
    if kind == "literal":
        return node[1]
    if kind == "ident":
        return this if node[1] == "self" else ERROR
    if kind == "select":
        target = cel_eval(node[1], this)
        return target[node[2]] if isinstance(target, Mapping) and node[2] in target else ERROR
    if kind == "has":
        target = cel_eval(node[1], this)
        return node[2] in target if isinstance(target, Mapping) else ERROR
    if kind == "not":
        value = _cel_bool(cel_eval(node[1], this))
        return ERROR if value is ERROR else not value
    if kind in ("or", "and"):  # commutative: a true (or) / false (and) operand wins over an error
        values = [_cel_bool(cel_eval(operand, this)) for operand in node[1:]]
        decisive = kind == "or"
        if decisive in values:
            return decisive
        return ERROR if ERROR in values else not decisive
    if kind == "relation":
        left, right = cel_eval(node[2], this), cel_eval(node[3], this)
        if type(left) is not type(right) or isinstance(left, CelError):
            return ERROR
        return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right,
                "==": left == right, "!=": left != right}[node[1]]
    if kind == "call":
        name, target = node[1], None if node[2] is None else cel_eval(node[2], this)
        args = [cel_eval(arg, this) for arg in node[3:]]
        if name == "duration" and target is None and len(args) == 1 and isinstance(args[0], str):
            nanoseconds = go_parse_duration(args[0])
            return ERROR if nanoseconds is None else Duration(nanoseconds)
        if name == "matches" and isinstance(target, str) and len(args) == 1 and isinstance(args[0], str):
            return go_matches(args[0], target)
        if any(isinstance(value, CelError) for value in [target, *args]):
            return ERROR
        raise UnsupportedCel(f"function {name} on {target!r}{tuple(args)!r}")
    raise UnsupportedCel(f"node {kind}")


# --- the two verdicts --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """Admitted or not, and why not."""

    admitted: bool
    why: str


def _rules_refuse(schema: Mapping[str, Any], this: Any, where: str) -> str | None:
    for rule in schema.get("x-kubernetes-validations", ()):
        result = cel_eval(cel_program(rule["rule"]), this)
        if result is not True:
            return f"{where}: {'error evaluating' if result is ERROR else 'false:'} {rule['rule']!r}"
    return None


def crd_verdict(rotation: Mapping[str, str]) -> Verdict:
    """What the API server decides for ``spec.rotation`` (only the CRD's schema for the duration fields)."""
    for name, value in rotation.items():
        schema = FIELD_SCHEMAS[name]
        assert schema["type"] == "string" and isinstance(value, str)
        if len(value) < schema.get("minLength", 0):
            return Verdict(False, f"{name}: shorter than minLength {schema['minLength']}")
        if len(value) > schema.get("maxLength", math.inf):
            return Verdict(False, f"{name}: longer than maxLength {schema['maxLength']}")
        if "pattern" in schema and not go_matches(schema["pattern"], value):
            return Verdict(False, f"{name}: does not match the pattern")
        if refused := _rules_refuse(schema, value, name):
            return Verdict(False, refused)
    if refused := _rules_refuse(ROTATION_SCHEMA, rotation, "rotation"):
        return Verdict(False, refused)
    return Verdict(True, "admitted")


def operator_verdict(rotation: Mapping[str, str]) -> Verdict:
    """What spec.py decides for the same spec (engine kv, every other field defaulted)."""
    try:
        desired_key("ns", "sk", "uid-1", {"rotation": dict(rotation)}, {}, CONFIG)
    except InvalidSpec as invalid:
        return Verdict(False, str(invalid))
    return Verdict(True, "admitted")


def parser_accepts(text: str) -> bool:
    try:
        parse_duration_seconds(text)
    except InvalidSpec:
        return False
    return True


# --- what the CRD says, in numbers ---------------------------------------------------------------------------

PATTERNS = {name: schema["pattern"] for name, schema in FIELD_SCHEMAS.items()}
_RULE_SOURCES = [rule["rule"] for schema in (ROTATION_SCHEMA, *FIELD_SCHEMAS.values())
                 for rule in schema.get("x-kubernetes-validations", ())]
# Every duration literal in the rules (1m, 87600h, 8760h), and where Go's durations end.
BOUNDS = sorted({go_parse_duration(text) for source in _RULE_SOURCES
                 for text in re.findall(r"duration\('([^']*)'\)", source)} | {0, GO_MAX_DURATION})
# The regular expressions the rules guard duration() with.
GUARD_PATTERNS = sorted({text for source in _RULE_SOURCES for text in re.findall(r"matches\('([^']*)'\)", source)})


# --- strategies ---------------------------------------------------------------------------------------------

MICROS = ("us", MICRO_SIGN + "s", GREEK_MU + "s")
UNITS = (("h", HOUR), ("m", MINUTE), ("s", SECOND), ("ms", MILLISECOND), ("us", MICROSECOND), ("ns", NANOSECOND))
# Near misses are built from these: the duration alphabet, what Go alone admits (signs, '.5s', '1.s', '0'),
# what neither does (days, spaces, exponents, '_'), and what Python's \d or float() would read as a number.
TOKENS = ("0", "1", "5", "9", ".", "ns", "us", MICRO_SIGN, GREEK_MU, "ms", "s", "m", "h", "+", "-", " ", "\n",
          "\t", "d", "w", "e", "_", "M", "H", "\u0663", "\uff11", "\u00b2", "\u00bd")


def from_pattern(field: str) -> st.SearchStrategy[str]:
    return st.from_regex(PATTERNS[field], fullmatch=True)


@st.composite
def spelled(draw: st.DrawFn, nanoseconds: int) -> str:
    """A duration of exactly (or, with a decimal fraction, about) ``nanoseconds``, spelled in one of many ways."""
    if draw(st.booleans()):  # whole parts: 1h30m0.5s is also 1h29m60s500ms, in any order
        parts, remaining = [], nanoseconds
        for name, size in UNITS[:-1]:
            count = draw(st.one_of(st.just(remaining // size), st.integers(0, remaining // size)))
            if count:
                parts.append(f"{count}{draw(st.sampled_from(MICROS)) if name == 'us' else name}")
                remaining -= count * size
        if remaining or not parts:
            parts.append(f"{remaining}ns")
        return "".join(draw(st.permutations(parts)))
    name, size = draw(st.sampled_from(UNITS))
    whole, rest = divmod(nanoseconds, size)
    digits = draw(st.integers(1, 20))
    fraction = int(Fraction(rest, size) * 10**digits) + draw(st.sampled_from((0, 0, 1, -1)))
    if fraction >= 10**digits:
        whole, fraction = whole + 1, 0
    text = str(max(fraction, 0)).zfill(digits) + draw(st.sampled_from(("", "", "9" * 9, "0" * 9, "5")))
    unit = draw(st.sampled_from(MICROS)) if name == "us" else name
    if not rest and not fraction and draw(st.booleans()):
        return f"{whole}{unit}"
    return f"{whole}.{text}{unit}"


def near(bound: int) -> st.SearchStrategy[int]:
    offsets = st.one_of(st.integers(-2, 2), st.integers(-10**9, 10**9), st.integers(-HOUR, HOUR))
    return offsets.map(lambda offset: max(bound + offset, 0))


def near_bounds() -> st.SearchStrategy[str]:
    return st.sampled_from(BOUNDS).flatmap(near).flatmap(spelled)


@st.composite
def near_misses(draw: st.DrawFn, field: str) -> str:
    """A string of the pattern with one token inserted, dropped or replaced, or a string of tokens."""
    if draw(st.booleans()):
        return "".join(draw(st.lists(st.sampled_from(TOKENS), max_size=8)))
    text = draw(st.one_of(from_pattern(field), near_bounds()))
    i = draw(st.integers(0, len(text)))
    j = draw(st.integers(i, min(len(text), i + 2)))
    return text[:i] + draw(st.sampled_from(("", *TOKENS))) + text[j:]


def durations(field: str) -> st.SearchStrategy[str]:
    return st.one_of(from_pattern(field), near_bounds(), near_misses(field))


@st.composite
def rotations(draw: st.DrawFn) -> dict[str, str]:
    """A ``spec.rotation`` with a period, a publishAhead, or both (often a publishAhead close to the period)."""
    rotation = {}
    if draw(st.booleans()):
        rotation["period"] = draw(durations("period"))
    period = go_parse_duration(rotation.get("period", "x"))
    if period is not None and draw(st.booleans()):
        rotation["publishAhead"] = draw(near(period).flatmap(spelled))
    elif not rotation or draw(st.booleans()):
        rotation["publishAhead"] = draw(durations("publishAhead"))
    return rotation


# --- the model is Go, and the CRD is one grammar -------------------------------------------------------------

@pytest.mark.parametrize(("text", "nanoseconds"), [
    ("1h30m", 90 * MINUTE), ("1.5h", 90 * MINUTE), ("7" + MICRO_SIGN + "s", 7000), ("7" + GREEK_MU + "s", 7000),
    ("0.5ns", 0), ("1.9999999999ns", 1), ("59.999999999999999s", MINUTE - 1), ("59.99999999999999999s", MINUTE),
    ("0.000000000000000000000000000001h", 0), ("2562047h47m16.854775807s", GO_MAX_DURATION),
    ("9223372036854775807ns", GO_MAX_DURATION), ("0", 0), ("-1h", -HOUR), ("+.5s", SECOND // 2), ("1.s", SECOND),
    ("2562047h47m16.854775808s", None), ("2562048h", None), ("9223372036854775808ns", None), ("", None),
    ("1", None), ("1d", None), ("1h ", None), ("\u0663h", None), ("1e3s", None), (".s", None),
])
def test_the_model_is_go_parse_duration(text, nanoseconds):
    """Values printed by Go 1.26's time.ParseDuration for the same strings."""
    assert go_parse_duration(text) == nanoseconds


def test_the_crd_has_what_this_test_reads():
    assert set(PATTERNS) == set(FIELDS) and GUARD_PATTERNS
    assert {MINUTE, 8760 * HOUR, 87600 * HOUR} <= set(BOUNDS)  # the contract's bounds, read from the rules
    for source in _RULE_SOURCES:
        cel_program(source)  # every rule is CEL this model evaluates


@SETTINGS
@given(st.sampled_from(FIELDS).flatmap(lambda field: st.tuples(st.just(field), durations(field))))
def test_cel_guards_are_the_schema_pattern(case):
    """The rules guard duration() with a regex: the same language as the field's pattern."""
    field, text = case
    for guard in GUARD_PATTERNS:
        assert go_matches(guard, text) == go_matches(PATTERNS[field], text), (guard, text)


@SETTINGS
@given(st.sampled_from(FIELDS).flatmap(lambda field: st.tuples(st.just(field), durations(field))))
@example(("period", "1h\n"))                  # RE2's '$' is the end of the text; Python's '$' allows a newline
@example(("period", "1" + GREEK_MU + "s"))
@example(("period", "1.5h30m"))
@example(("period", "1.h"))                   # Go admits these four, the pattern does not
@example(("period", ".5h"))
@example(("period", "+1h"))
@example(("period", "0"))
@example(("period", "\u0663h"))               # once disagreed: ARABIC-INDIC DIGIT THREE is \d and float() in Python
@example(("publishAhead", "\uff11m"))         # once disagreed: FULLWIDTH DIGIT ONE
def test_parser_accepts_exactly_the_crd_pattern(case):
    """``parse_duration_seconds`` accepts a string iff the field's pattern matches it; then it computes Go's
    value (to float precision)."""
    field, text = case
    matches = go_matches(PATTERNS[field], text)
    assert parser_accepts(text) == matches, f"pattern {'matches' if matches else 'refuses'} {text!r}"
    nanoseconds = go_parse_duration(text)
    if matches and nanoseconds is not None:
        parts = len(re.findall(r"[a-z\u00b5\u03bc]+", text))
        assert math.isclose(parse_duration_seconds(text), nanoseconds / SECOND, rel_tol=1e-12, abs_tol=parts * 1e-9)


def _assert_same_verdict(rotation: Mapping[str, str]) -> None:
    crd, operator = crd_verdict(rotation), operator_verdict(rotation)
    assert operator.admitted == crd.admitted, f"{rotation!r}: API server: {crd.why}; spec.py: {operator.why}"


@SETTINGS
@given(durations("period"))
@example("1m")
@example("87600h")
@example("2562048h")                          # beyond Go's durations: duration() errors, the rule rejects
@example("60000000" + MICRO_SIGN + "s")
@example("59999999" + GREEK_MU + "s")
@example("87600h1ns")                         # once disagreed: 315360000 + 1e-9 rounds to 315360000.0 in float
@example("315360000000000001ns")              # once disagreed: the same, 1 ns beyond 87600h in one part
@example("59.999999999999999s")               # once disagreed: Go truncates to 59.999999999s, float() says 60.0
@example("0.016666666666666666h")             # once disagreed: Go 59.999999999s, spec.py 60.0
@example("0" * 30 + "1h")                     # 32 characters: maxLength
@example("0" * 31 + "1h")                     # once disagreed: longer than maxLength 32, spec.py has no bound
@example("")                                  # once disagreed: minLength 2; spec.py reads "" as no period
def test_period_admitted_iff_spec_py_accepts(period):
    _assert_same_verdict({"period": period})


@SETTINGS
@given(durations("publishAhead"))
@example("0s")
@example("8760h")
@example("8761h")
@example("1500" + GREEK_MU + "s")
@example("8760h1ns")                          # once disagreed: 31536000 + 1e-9 rounds to 31536000.0 in float
@example("31536000000000000ns")               # once disagreed: exactly 8760h; 3.1536e16 * 1e-9 is 31536000.000000004
@example("31536000000000001ns")               # 1 ns beyond, in one part (float rounds up here: refused)
@example("")                                  # once disagreed: minLength 2; spec.py reads "" as the default 3m
def test_publish_ahead_admitted_iff_spec_py_accepts(publish_ahead):
    _assert_same_verdict({"publishAhead": publish_ahead})


@SETTINGS
@given(rotations())
@example({"period": "1h", "publishAhead": "59m59.999999999s"})
@example({"period": "1h", "publishAhead": "3600s"})
@example({"period": "30s", "publishAhead": "10s"})
@example({"period": "2562048h", "publishAhead": "1h"})      # period's duration() errors in both rules
@example({"period": "2h", "publishAhead": "2562048h"})
@example({"period": "8760h1ns", "publishAhead": "8760h"})  # once disagreed: admitted, spec.py: not shorter
@example({"period": "1m", "publishAhead": "59.999999999999999s"})  # once disagreed: admitted, spec.py: 60 >= 60
@example({"period": "1.1h", "publishAhead": "66m"})  # once disagreed: equal, refused; spec.py: 3960.0000000000005
def test_rotation_admitted_iff_spec_py_accepts(rotation):
    _assert_same_verdict(rotation)

