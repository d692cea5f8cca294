"""Properties of the pure decision layer, driven the way ``Reconciler._carry_out`` drives it.

A model world holds Vault (the KV versions of one secret and the pending key beside it), the ConfigMap (the
key ids of its JWKS, current first) and the status field the next pass reads (``pendingKeyId``). A pass
reads them like ``Reconciler.reconcile``, asks ``reconcile.decide_key``, and plans the same effects in the
same order as ``_carry_out`` (then the ConfigMap from ``publish.published_keys``, then the status). A crash
applies only a prefix of those effects. Requests (a rotate annotation value, an algorithm change, a schedule
tick) arrive one or two per step, among passes, crashes, clock ticks and changes that must not rotate; each
step ends with the operator left alone until it keeps (``KEEP``), promoting pending keys as their time
comes. Then:

- every request yielded exactly one new key version (two requests in one step: one or two, never more);
- Vault's latest version answers the spec and the annotation, and the schedule is not due;
- the ConfigMap's current key is Vault's latest, and its JWKS holds the ``retainPrevious`` previous keys;
- with ``publishAhead``, every key after the first was in the ConfigMap before Vault's latest became it (and,
  in the second property, for the whole ``publishAhead``: a known bug for late scheduled stages, see below).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from servicekey_operator import publish
from servicekey_operator.config import OperatorConfig, VaultSettings
from servicekey_operator.keys import ALGORITHMS
from servicekey_operator.reconcile import KeyAction, KeyDecision, decide_key, scheduled_time
from servicekey_operator.spec import ROTATE_ANNOTATION, DesiredKey, desired_key
from servicekey_operator.vault.records import KeyHistory, StoredKey

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CONFIG = OperatorConfig(vault=VaultSettings(addr="http://127.0.0.1:8200", token="t"))
OWNER = "ns/sk"
PERIODS = (None, "6h", "24h")  # long enough that the clock noise of a step never reaches a tick
PUBLISH_AHEAD = ("0s", "1m", "5m")
MAX_PASSES_TO_SETTLE = 30


class ModelConflict(Exception):
    """A check-and-set write the model's Vault refused (the real pass would re-read and decide again)."""


@dataclass
class World:
    """Vault, the ConfigMap, the status and the clock of one ServiceKey."""

    spec: dict[str, Any]
    annotation: str | None = None
    now: datetime.datetime = T0
    versions: list[StoredKey] = field(default_factory=list)   # KV version n is versions[n - 1]
    pending: StoredKey | None = None                          # its pending_revision: the KV version at <path>/pending
    configmap: list[str] | None = None                        # the JWKS key ids, current first
    published_at: dict[str, datetime.datetime] = field(default_factory=dict)   # when the ConfigMap first listed a kid
    # Also require that a key was listed for the whole publishAhead before it signs (see the BUG below).
    full_publish_ahead: bool = False
    status_pending: str | None = None
    generated: int = 0
    trace: list[str] = field(default_factory=list)

    def desired(self) -> DesiredKey:
        annotations = {} if self.annotation is None else {ROTATE_ANNOTATION: self.annotation}
        return desired_key("ns", "sk", "uid-1", self.spec, annotations, CONFIG)

    def read(self, retain_previous: int, with_pending: bool) -> KeyHistory:
        """What ``KvKeyStore.read`` returns: the latest version, ``retain_previous`` older ones, the pending key."""
        if not self.versions:
            return KeyHistory(None, 0, None, pending=self.pending if with_pending else None)
        previous = tuple(reversed(self.versions[:-1]))[:retain_previous]
        return KeyHistory(OWNER, len(self.versions), self.versions[-1], previous,
                          self.pending if with_pending else None)

    @property
    def latest(self) -> StoredKey:
        return self.versions[-1]

    def new_kid(self) -> str:
        self.generated += 1
        return f"kid-{self.generated}"


def _with_new_current(history: KeyHistory, written: StoredKey) -> KeyHistory:
    previous = (history.current, *history.previous) if history.current else history.previous
    return KeyHistory(OWNER, written.version, written, previous)


def _plan(world: World, desired: DesiredKey, history: KeyHistory,
          decision: KeyDecision) -> tuple[list[tuple[str, Callable[[], None]]], KeyHistory]:
    """The Vault effects of ``_carry_out`` for ``decision``, in its order, and the history it publishes."""
    now, effects = world.now, []

    def write_version(key: StoredKey) -> tuple[str, Callable[[], None]]:
        def effect() -> None:
            if len(world.versions) != history.current_version:
                raise ModelConflict(f"cas {history.current_version} but at version {len(world.versions)}")
            if desired.rotation.publish_ahead_seconds > 0 and world.versions:
                assert key.kid in (world.configmap or []), (
                    f"{key.kid} became Vault's latest before the ConfigMap listed it ({world.configmap})")
                published_for = now - world.published_at[key.kid]
                assert not world.full_publish_ahead or published_for >= datetime.timedelta(
                    seconds=desired.rotation.publish_ahead_seconds), (
                    f"{key.kid} signs after being published for only {published_for}")
            world.versions.append(key)
        return f"write v{key.version} {key.kid}", effect

    def delete_pending() -> tuple[str, Callable[[], None]]:
        return "delete pending", lambda: setattr(world, "pending", None)

    def write_pending(key: StoredKey, expected_revision: int) -> tuple[str, Callable[[], None]]:
        def effect() -> None:
            # KV check-and-set on <path>/pending: 0 means "only if there is none"; deleting it resets versions.
            revision = world.pending.pending_revision if world.pending else 0
            if expected_revision != revision:
                raise ModelConflict(f"pending cas {expected_revision} but at revision {revision}")
            world.pending = replace(key, pending_revision=revision + 1)
        return f"pending {key.kid} from {key.activate_at:%H:%M:%S}", effect

    if decision.action is KeyAction.KEEP:
        return effects, history
    if decision.action is KeyAction.CLEAR_PENDING:
        return [delete_pending()], KeyHistory(history.owner, history.current_version, history.current,
                                              history.previous)
    if decision.action is KeyAction.RESCHEDULE:
        pending = history.pending
        assert pending is not None
        rescheduled = replace(pending, activate_at=now + datetime.timedelta(
            seconds=desired.rotation.publish_ahead_seconds))
        return [write_pending(rescheduled, pending.pending_revision)], KeyHistory(
            history.owner, history.current_version, history.current, history.previous,
            replace(rescheduled, pending_revision=pending.pending_revision + 1))
    if decision.action is KeyAction.PROMOTE:
        pending = history.pending
        assert pending is not None
        written = replace(pending, version=history.current_version + 1, activate_at=None,
                          rotation_reason=decision.reason,
                          created_at=max(pending.activate_at or now, now))
        return [write_version(written), delete_pending()], _with_new_current(history, written)
    kid = world.new_kid()
    if history.pending is not None:
        effects.append(delete_pending())
    if decision.action is KeyAction.STAGE:
        activate_at = now + datetime.timedelta(seconds=desired.rotation.publish_ahead_seconds)
        if decision.reason == "Scheduled":
            activate_at = max(activate_at, scheduled_time(desired, history.current) or activate_at)
        pending = StoredKey(version=0, kid=kid, algorithm=desired.algorithm, key_size=desired.key_size,
                            public_pem="", service_name="sk", created_at=now, rotate_annotation=desired.rotate_request,
                            rotation_reason=decision.reason, activate_at=activate_at)
        effects.append(write_pending(pending, 0))
        return effects, KeyHistory(history.owner, history.current_version, history.current, history.previous,
                                   replace(pending, pending_revision=1))
    written = StoredKey(version=history.current_version + 1, kid=kid, algorithm=desired.algorithm,
                        key_size=desired.key_size, public_pem="", service_name="sk", created_at=now,
                        rotate_annotation=desired.rotate_request, rotation_reason=decision.reason)
    effects.append(write_version(written))
    return effects, _with_new_current(history, written)


def run_pass(world: World, crash_after: int | None = None) -> KeyDecision:
    """One ``reconcile`` pass plus the status write; a crash keeps only the first ``crash_after`` effects."""
    desired = world.desired()
    published = frozenset(world.configmap or ())
    history = world.read(desired.rotation.retain_previous, with_pending=True)
    decision = decide_key(desired, history, published, world.now)
    effects, outcome = _plan(world, desired, history, decision)

    def write_configmap() -> None:
        world.configmap = list(dict.fromkeys(
            key.kid for key in publish.published_keys(outcome, desired.rotation.retain_previous)))
        for kid in world.configmap:
            world.published_at.setdefault(kid, world.now)

    def write_status() -> None:
        world.status_pending = outcome.pending.kid if outcome.pending else None

    effects += [("configmap", write_configmap), ("status", write_status)]
    done = effects if crash_after is None else effects[:crash_after]
    world.trace.append(f"{world.now:%H:%M:%S} {decision.action.value}/{decision.reason}: "
                       f"{[name for name, _ in done]}{' CRASH' if crash_after is not None else ''}")
    try:
        for _name, effect in done:
            effect()
    except ModelConflict as conflict:
        world.trace.append(f"  conflict: {conflict}")
    return decision


def settle(world: World) -> None:
    """Leave the operator alone until it keeps; the clock runs on to a pending key's activation."""
    for _ in range(MAX_PASSES_TO_SETTLE):
        decision = run_pass(world)
        if decision.action is not KeyAction.KEEP:
            continue
        if decision.reason == "Rotating" and world.pending is not None:
            world.now = max(world.now, world.pending.activate_at or world.now)
            continue
        return
    raise AssertionError("the operator never settled:\n" + "\n".join(world.trace[-20:]))


def assert_at_rest(world: World) -> None:
    """Invariants 2 and 3, and that every request is answered."""
    desired, latest = world.desired(), world.latest
    why = "\n".join(world.trace[-30:])
    assert world.pending is None and world.status_pending is None, f"a pending key was left behind\n{why}"
    assert (latest.algorithm, latest.key_size) == (desired.algorithm, desired.key_size), why
    if desired.rotate_request is not None:
        assert latest.rotate_annotation == desired.rotate_request, why
    if desired.rotation.period_seconds is not None:
        stage_at = latest.created_at + datetime.timedelta(
            seconds=desired.rotation.period_seconds - desired.rotation.publish_ahead_seconds)
        assert world.now < stage_at, f"a scheduled rotation is due and was not made\n{why}"
    retained = [key.kid for key in reversed(world.versions[:-1])][:desired.rotation.retain_previous]
    assert world.configmap == [latest.kid, *retained], f"ConfigMap {world.configmap}\n{why}"
    kids = [key.kid for key in world.versions]
    assert len(set(kids)) == len(kids), f"a key was written twice: {kids}"


# --- Hypothesis: what happens in a step ------------------------------------------------------------------

# Crashes and clock ticks twice as often as the rest: they are what makes interleavings interesting.
NOISE = ("pass", "crash", "crash", "clock", "clock", "retain", "annotation-off")


def _request(world: World, kind: str, data: st.DataObject, serial: int) -> str:
    """Apply one rotation request to the world; return its description."""
    if kind == "annotation":
        world.annotation = f"{data.draw(st.text(min_size=1, max_size=12), label='value')}#{serial}"
        return f"annotation {world.annotation!r}"
    if kind == "algorithm":
        current = world.spec.get("algorithm", "RS256")
        world.spec["algorithm"] = data.draw(st.sampled_from([a for a in ALGORITHMS if a != current]),
                                            label="algorithm")
        return f"algorithm {world.spec['algorithm']}"
    desired = world.desired()
    assert desired.rotation.period_seconds is not None
    stage_at = world.latest.created_at + datetime.timedelta(
        seconds=desired.rotation.period_seconds - desired.rotation.publish_ahead_seconds)
    late = data.draw(st.integers(0, int(2 * desired.rotation.period_seconds)), label="seconds late")
    world.now = max(world.now, stage_at) + datetime.timedelta(seconds=late)
    return f"tick +{late}s"


def _noise(world: World, kind: str, data: st.DataObject) -> None:
    """Something that is not a rotation request."""
    if kind == "pass":
        run_pass(world)
    elif kind == "crash":
        run_pass(world, crash_after=data.draw(st.integers(0, 4), label="effects before the crash"))
    elif kind == "clock":
        # Up to a little more than the longest publishAhead, so staged keys come due among crashes.
        world.now += datetime.timedelta(seconds=data.draw(st.integers(1, 360), label="seconds"))
    elif kind == "retain":
        world.spec["rotation"] = dict(world.spec["rotation"], retainPrevious=data.draw(st.integers(0, 3)))
    elif kind == "annotation-off":
        # Taking an answered annotation away (or blanking it) asks for nothing; an unanswered one stays.
        answered = world.versions and world.annotation == world.latest.rotate_annotation and (
            world.pending is None or world.pending.rotate_annotation == world.annotation)
        if world.annotation in (None, "") or answered:
            world.annotation = data.draw(st.sampled_from([None, ""]), label="annotation")


def _requests_among_noise(data: st.DataObject, *, full_publish_ahead: bool = False) -> None:
    rotation: dict[str, Any] = {"retainPrevious": data.draw(st.integers(0, 3), label="retainPrevious"),
                                "publishAhead": data.draw(st.sampled_from(PUBLISH_AHEAD), label="publishAhead")}
    period = data.draw(st.sampled_from(PERIODS), label="period")
    if period:
        rotation["period"] = period
    world = World(spec={"algorithm": data.draw(st.sampled_from(ALGORITHMS), label="algorithm"),
                        "rotation": rotation}, full_publish_ahead=full_publish_ahead)
    if data.draw(st.booleans(), label="annotated at creation"):
        world.annotation = "at-creation"

    # Creation is the first request.
    for kind in data.draw(st.lists(st.sampled_from(NOISE), max_size=4), label="noise before the first key"):
        _noise(world, kind, data)
    settle(world)
    assert len(world.versions) == 1, "\n".join(world.trace)
    assert_at_rest(world)

    kinds = ["annotation", "algorithm", *(["tick"] if period else [])]
    for step in range(data.draw(st.integers(1, 5), label="steps")):
        requests = data.draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=2, unique=True), label="requests")
        noise = data.draw(st.lists(st.sampled_from(NOISE), max_size=10), label="noise")
        # Each request arrives at its own point among the noise.
        arrivals = sorted(data.draw(st.integers(0, len(noise)), label="arrival") for _ in requests)
        before = len(world.versions)
        world.trace.append(f"-- step {step}: {requests} among {noise}")
        for position in range(len(noise) + 1):
            for request, arrival in zip(requests, arrivals, strict=True):
                if arrival == position:
                    world.trace.append(f"   request: {_request(world, request, data, step)}")
            if position < len(noise):
                _noise(world, noise[position], data)
        settle(world)

        new_keys = len(world.versions) - before
        why = "\n".join(world.trace[-40:])
        assert 1 <= new_keys <= len(requests), f"{len(requests)} request(s) made {new_keys} key(s)\n{why}"
        assert_at_rest(world)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_request_yields_exactly_one_key_and_the_configmap_follows_vault(data: st.DataObject):
    _requests_among_noise(data)




@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_key_is_published_for_the_whole_publish_ahead_before_it_signs(data: st.DataObject):
    _requests_among_noise(data, full_publish_ahead=True)


# --- Found by the model ---------------------------------------------------------------------------------


def test_a_staged_key_is_never_forgotten_when_publish_ahead_is_switched_off_after_a_crash():
    world = World(spec={"algorithm": "ES256", "rotation": {"publishAhead": "5m"}})
    settle(world)
    world.annotation = "rotate-once"
    decision = run_pass(world, crash_after=1)            # the key is staged; ConfigMap and status are not written
    assert decision.action is KeyAction.STAGE and world.pending is not None and world.status_pending is None
    world.spec["rotation"] = {"publishAhead": "0s"}      # the user gives up on publishAhead meanwhile
    settle(world)
    world.spec["rotation"] = {"publishAhead": "5m"}      # ... and later turns it on again
    settle(world)

    assert len(world.versions) == 2, f"one request, {len(world.versions) - 1} new keys:\n" + "\n".join(world.trace)
    assert world.pending is None


def test_a_scheduled_key_staged_late_is_still_published_for_publish_ahead_before_it_signs():
    world = World(spec={"algorithm": "ES256", "rotation": {"period": "6h", "publishAhead": "5m"}},
                  full_publish_ahead=True)
    settle(world)
    world.now = T0 + datetime.timedelta(hours=6, minutes=-1)   # the operator was down at tick - 5m
    assert run_pass(world).action is KeyAction.STAGE           # staged and published 1 minute before the tick
    settle(world)                                              # promoted at the tick

    assert len(world.versions) == 2, "\n".join(world.trace)


def test_a_staged_key_whose_publication_a_crash_lost_is_published_for_publish_ahead_before_it_signs():
    """Found by the property above (fixed by rescheduling the pending key); kept as a readable example."""
    world = World(spec={"algorithm": "ES256", "rotation": {"publishAhead": "5m"}})
    settle(world)
    world.annotation = "rotate-once"
    run_pass(world, crash_after=1)                       # staged in Vault, not yet in the ConfigMap
    world.now += datetime.timedelta(minutes=10)          # the operator comes back after the activation time
    assert run_pass(world).action is KeyAction.RESCHEDULE   # publishes the pending key, to sign 5 minutes later
    published_at = world.now
    assert run_pass(world).action is KeyAction.KEEP         # not promoted at once
    settle(world)

    assert world.latest.kid == "kid-2"
    assert world.latest.created_at - published_at >= datetime.timedelta(minutes=5), "\n".join(world.trace)
