"""Third-party verifiers, not our code, fetch the keys over HTTP from the running JWKS server and verify tokens
signed with the Vault key: PyJWT's ``PyJWKClient`` and the ``jose`` npm package's ``createRemoteJWKSet`` (a
long-running Node process, tests/integration/jose_verifier.mjs, so that its cache lives as in a service).

Across a rotation whose ``publishAhead`` is longer than the server's ``Cache-Control: max-age``, a client that
caches the set for max-age never fails a token: tokens signed every 100 ms with Vault's current key, through the
whole rotation, all verify. The control: without publishAhead, the same kind of client fails the new key's tokens
until its cache expires.

What the clients do (and what the rotation test relies on):

- ``PyJWKClient(url, lifespan=max-age)``: the JWK Set is cached for ``lifespan`` seconds (monotonic clock) and
  fetched again by the first lookup after that. It also has a fallback: a kid missing from the cached set forces
  one refetch (in the PyJWT installed here, 2.15, at most once per ``cooldown_duration``, 30 s by default, counted
  from any fetch, so with a short lifespan it never comes; older releases refetch on every miss). The rotation
  test relies on the expiry only and asserts that the fallback was never taken.
- jose's ``createRemoteJWKSet(url, {cacheMaxAge, cooldownDuration})``: the set is fetched again by the first
  verification after ``cacheMaxAge``; a kid missing from a set younger than ``cooldownDuration`` is rejected
  without a fetch. Both are set to max-age, so jose learns new keys through its cache expiry alone.

Neither client reads ``Cache-Control`` itself (nor sends ``If-None-Match``): a deployment configures their
lifetimes, here from the header the server sends. jose is installed with npm outside the repository, into the
project's cache (``install_jose``; hack/install.sh runs it too), at the pinned version below.
"""

from __future__ import annotations

import dataclasses
import json
import re
import select
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from devcluster.environment import DevEnvironment
from devcluster.jwks_server_process import JwksServerProcess
from devcluster.npm import JOSE_VERSION, InstallError, install_jose
from devcluster.operator_process import OperatorProcess
from tests.support import ServiceKeys, wait_for

pytestmark = pytest.mark.integration
StartOperator = Callable[..., OperatorProcess]

VERIFIER_SCRIPT = Path(__file__).with_name("jose_verifier.mjs")
SERVER_MAX_AGE_SECONDS = 2
# Well above the server's max-age, as the server's documentation asks.
PUBLISH_AHEAD_SECONDS = 8
SIGN_INTERVAL_SECONDS = 0.1
# How long the signer goes on once Vault signs with the new key: beyond max-age, so that every cache the clients
# held before the switch has expired meanwhile.
AFTER_SWITCH_SECONDS = 3.0


@pytest.fixture(scope="session")
def jose_modules() -> Path:
    """The npm prefix holding the pinned jose; installed if missing. No node or npm fails the tests."""
    try:
        return install_jose()
    except InstallError as missing:
        pytest.fail(str(missing))


@pytest.fixture(scope="module")
def jwks_server(dev_env: DevEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwksServerProcess]:
    """A JWKS server whose max-age is short enough for a rotation test to outlast a few cache lifetimes."""
    server = JwksServerProcess({"KUBECONFIG": str(dev_env.kube.kubeconfig)},
                               tmp_path_factory.mktemp("jwks") / "jwks-server.log",
                               args=["--max-age", str(SERVER_MAX_AGE_SECONDS)]).start()
    yield server
    server.stop()


def served_max_age(url: str) -> int:
    """The max-age of the Cache-Control header the server sends with the set at ``url``."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        cache_control = reply.headers["Cache-Control"]
    match = re.search(r"(?:^|,)\s*max-age=(\d+)\s*(?:,|$)", cache_control or "")
    assert match, f"no max-age in Cache-Control {cache_control!r}"
    return int(match[1])


def serve(servicekeys: ServiceKeys, server: JwksServerProcess, name: str, kid: str) -> str:
    """The jwks_uri of the ServiceKey ``name``, once the server lists ``kid`` there."""
    url = f"{server.url}/keys/{servicekeys.namespace}/{name}/jwks.json"

    def listed() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return kid in [key["kid"] for key in json.load(reply)["keys"]]
        except OSError:  # 404 until the watch has the ConfigMap
            return False
    wait_for(listed, 15, f"{kid} at {url}")
    return url


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One verifier's answer for one token."""

    ok: bool
    kid: str | None
    detail: str = ""


class CountingPyJWKClient(jwt.PyJWKClient):
    """PyJWKClient as it is, counting its fetches and its forced refreshes (the unknown-kid fallback)."""

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self.fetches = 0
        self.forced_refreshes = 0

    def fetch_data(self) -> Any:
        self.fetches += 1
        return super().fetch_data()

    def get_signing_keys(self, refresh: bool = False) -> list[jwt.PyJWK]:
        self.forced_refreshes += refresh
        return super().get_signing_keys(refresh)

    def verify(self, token: str, algorithms: list[str]) -> Outcome:
        """Verify as a service does: the key for the token's kid from the set, then signature and claims."""
        kid = jwt.get_unverified_header(token).get("kid")
        try:
            signing_key = self.get_signing_key_from_jwt(token)
            jwt.decode(token, signing_key.key, algorithms=algorithms)
        except jwt.PyJWTError as rejected:
            return Outcome(False, kid, f"{type(rejected).__name__}: {rejected}")
        return Outcome(True, signing_key.key_id)


class JoseVerifier:
    """The long-running Node verifier: one createRemoteJWKSet for its whole life, one token per line."""

    def __init__(self, modules: Path, url: str, cache_max_age_seconds: float, cooldown_seconds: float,
                 algorithms: list[str], log_path: Path) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is required by the jose verifier")
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [node, str(VERIFIER_SCRIPT), "--url", url, "--modules", str(modules),
             "--cache-max-age-ms", str(int(cache_max_age_seconds * 1000)),
             "--cooldown-ms", str(int(cooldown_seconds * 1000)), "--algorithms", ",".join(algorithms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        ready = self._answer(30)
        assert ready.get("ready"), ready
        self.version: str = ready["jose"]
        self.fetches = 0

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if readable else ""
        if not line:
            self._log.flush()
            raise AssertionError(f"the jose verifier gave no answer within {timeout}s (exit code "
                                 f"{self.process.poll()}); stderr: {self.log_path.read_text(errors='replace')}")
        return json.loads(line)

    def verify(self, token: str) -> Outcome:
        """Send one token, read its verdict."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{token}\n")
        self.process.stdin.flush()
        answer = self._answer(15)
        self.fetches = answer["fetches"]
        if answer["ok"]:
            return Outcome(True, answer["kid"])
        return Outcome(False, answer["kid"], f"{answer['code']}: {answer['message']}")

    def close(self) -> None:
        """End of input: the process exits; killed if it does not."""
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._log.close()

    def __enter__(self) -> JoseVerifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class Signed:
    """One token of the signer loop: when it was signed (seconds into the run), its kid, each verifier's verdict."""

    at: float
    kid: str
    outcomes: dict[str, Outcome]


class SignerLoop:
    """A signer: every SIGN_INTERVAL_SECONDS a token signed with the key Vault holds as current (as a signer reads
    it), handed at once to every verifier."""

    def __init__(self, servicekeys: ServiceKeys, name: str, verifiers: dict[str, Callable[[str], Outcome]]) -> None:
        self.servicekeys = servicekeys
        self.name = name
        self.verifiers = verifiers
        self.records: list[Signed] = []
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the loop was made."""
        return time.monotonic() - self.started

    def first_signed_with(self, predicate: Callable[[str], bool]) -> float | None:
        """When the first token whose kid satisfies ``predicate`` was signed."""
        return next((record.at for record in self.records if predicate(record.kid)), None)

    def run(self, until: Callable[[], bool], timeout: float) -> None:
        """Sign and verify every interval until ``until()``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        tick = time.monotonic()
        while not until():
            assert time.monotonic() < deadline, f"signer loop: condition not met within {timeout}s"
            now = self.elapsed()
            token = self.servicekeys.sign(self.name, {"sub": self.name, "seq": len(self.records),
                                                      "iat": int(time.time()), "exp": int(time.time()) + 300})
            kid = jwt.get_unverified_header(token)["kid"]
            self.records.append(Signed(now, kid, {name: verify(token) for name, verify in self.verifiers.items()}))
            tick += SIGN_INTERVAL_SECONDS
            time.sleep(max(0.0, tick - time.monotonic()))

    def failures(self, verifier: str) -> list[Signed]:
        """The tokens ``verifier`` rejected."""
        return [record for record in self.records if not record.outcomes[verifier].ok]

    def verified_kids(self, verifier: str) -> set[str]:
        """The kids of the tokens ``verifier`` accepted."""
        return {record.kid for record in self.records if record.outcomes[verifier].ok}


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.utils.base64url_encode(json.dumps({**claims, "sub": "admin"}).encode()).decode()
    assert forged != payload
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_pyjwkclient_and_jose_verify_a_token_signed_with_the_vault_key(
        algorithm: str, start_operator: StartOperator, jwks_server: JwksServerProcess, servicekeys: ServiceKeys,
        jose_modules: Path, tmp_path: Path):
    start_operator()
    servicekeys.create("payments", {"algorithm": algorithm, "publicKey": {"http": True}})
    kid = servicekeys.wait_ready("payments")["status"]["keyId"]
    url = serve(servicekeys, jwks_server, "payments", kid)
    token = servicekeys.sign("payments", {"sub": "payments", "exp": int(time.time()) + 300})
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "typ": "JWT", "kid": kid}

    pyjwk = jwt.PyJWKClient(url, lifespan=served_max_age(url))
    signing_key = pyjwk.get_signing_key_from_jwt(token)
    assert signing_key.key_id == kid
    assert jwt.decode(token, signing_key.key, algorithms=[algorithm])["sub"] == "payments"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(_tamper(token), signing_key.key, algorithms=[algorithm])

    with JoseVerifier(jose_modules, url, 60, 30, [algorithm], tmp_path / "jose.log") as jose:
        assert jose.version == JOSE_VERSION
        assert jose.verify(token) == Outcome(True, kid)
        forged = jose.verify(_tamper(token))
        assert not forged.ok and forged.detail.startswith("ERR_JWS_SIGNATURE_VERIFICATION_FAILED"), forged
        # Another algorithm under the same kid (here HMAC keyed with anything) is refused by the allow-list.
        hmac = jose.verify(jwt.encode({"sub": "payments"}, "k" * 32, algorithm="HS256", headers={"kid": kid}))
        assert not hmac.ok and hmac.detail.startswith("ERR_JOSE_ALG_NOT_ALLOWED"), hmac
        assert jose.fetches == 1, "one fetch, then the cached set"


def test_through_a_rotation_with_publish_ahead_above_max_age_no_token_fails(
        start_operator: StartOperator, jwks_server: JwksServerProcess, servicekeys: ServiceKeys,
        jose_modules: Path, tmp_path: Path):
    start_operator()
    servicekeys.create("rotating", {"algorithm": "ES256", "publicKey": {"http": True},
                                    "rotation": {"publishAhead": f"{PUBLISH_AHEAD_SECONDS}s"}})
    first = servicekeys.wait_ready("rotating")["status"]["keyId"]
    url = serve(servicekeys, jwks_server, "rotating", first)
    max_age = served_max_age(url)
    assert max_age == SERVER_MAX_AGE_SECONDS
    assert max_age * 3 <= PUBLISH_AHEAD_SECONDS, "publishAhead well above max-age"

    pyjwk = CountingPyJWKClient(url, lifespan=max_age)
    with JoseVerifier(jose_modules, url, max_age, max_age, ["ES256"], tmp_path / "jose.log") as jose:
        loop = SignerLoop(servicekeys, "rotating", {"PyJWKClient": lambda token: pyjwk.verify(token, ["ES256"]),
                                                    "jose": jose.verify})
        loop.run(lambda: loop.elapsed() >= 1.0, timeout=10)
        servicekeys.patch("rotating", {"metadata": {"annotations": {"servicekey.io/rotate": "verifiers"}}})
        rotated_at = loop.elapsed()

        def done() -> bool:
            switched = loop.first_signed_with(lambda kid: kid != first)
            return switched is not None and loop.elapsed() >= switched + AFTER_SWITCH_SECONDS
        loop.run(done, timeout=PUBLISH_AHEAD_SECONDS + 40)
        jose_fetches = jose.fetches

    second = servicekeys.wait_new_kid("rotating", first)["status"]["keyId"]
    signed = [record.kid for record in loop.records]
    assert set(signed) == {first, second}, "the signer followed Vault from the first key to the second"
    switched_at = loop.first_signed_with(lambda kid: kid == second)
    assert switched_at is not None and switched_at - rotated_at >= PUBLISH_AHEAD_SECONDS - 1, \
        "the new key signed only after publishAhead"
    elapsed = loop.elapsed()
    summary = {"tokens": len(signed), first: signed.count(first), second: signed.count(second),
               "seconds": round(elapsed, 1), "rotate->switch": round(switched_at - rotated_at, 1)}
    for verifier, fetches in (("PyJWKClient", pyjwk.fetches), ("jose", jose_fetches)):
        failures = loop.failures(verifier)
        summary[verifier] = {"verified": len(signed) - len(failures), "failures": len(failures),
                             "fetches": fetches}
        assert failures == [], f"{verifier} rejected tokens: {failures[:5]}"
        assert loop.verified_kids(verifier) == {first, second}
        # It did cache: no fetch per token, at most one per max-age; and it did expire its cache.
        assert 3 <= fetches <= elapsed / max_age + 2, f"{verifier} fetched the set {fetches} times in {elapsed:.1f}s"
    assert pyjwk.forced_refreshes == 0, "PyJWKClient had the new key from its cache expiry, before it signed"
    print(f"\nrotation through the JWKS server (max-age {max_age}s, publishAhead {PUBLISH_AHEAD_SECONDS}s): "
          f"{json.dumps(summary)}")


def test_control_without_publish_ahead_a_client_that_honours_max_age_fails_the_new_key_until_its_cache_expires(
        start_operator: StartOperator, dev_env: DevEnvironment, servicekeys: ServiceKeys, jose_modules: Path,
        tmp_path: Path):
    """The rotation test's claim is not vacuous: with publishAhead 0s the new key signs at once, and a verifier
    that cached the set just before (for a longer max-age, so the outcome does not depend on the operator's speed)
    rejects the new key's tokens until its cache expires."""
    max_age = 10
    server = JwksServerProcess({"KUBECONFIG": str(dev_env.kube.kubeconfig)}, tmp_path / "jwks-server.log",
                               args=["--max-age", str(max_age)]).start()
    try:
        start_operator()
        servicekeys.create("abrupt", {"algorithm": "ES256", "publicKey": {"http": True},
                                      "rotation": {"publishAhead": "0s"}})
        first = servicekeys.wait_ready("abrupt")["status"]["keyId"]
        url = serve(servicekeys, server, "abrupt", first)
        assert served_max_age(url) == max_age
        pyjwk = CountingPyJWKClient(url, lifespan=max_age)
        with JoseVerifier(jose_modules, url, max_age, max_age, ["ES256"], tmp_path / "jose.log") as jose:
            loop = SignerLoop(servicekeys, "abrupt", {"jose": jose.verify,
                                                      "PyJWKClient": lambda token: pyjwk.verify(token, ["ES256"])})
            loop.run(lambda: len(loop.records) >= 3, timeout=10)  # both caches hold the one-key set now
            servicekeys.patch("abrupt", {"metadata": {"annotations": {"servicekey.io/rotate": "now"}}})
            loop.run(lambda: any(record.kid != first and record.outcomes["jose"].ok for record in loop.records),
                     timeout=max_age + 20)
    finally:
        server.stop()

    failures = loop.failures("jose")
    switched_at = loop.first_signed_with(lambda kid: kid != first)
    assert switched_at is not None and switched_at < max_age - 2, "the switch came well within the cache lifetime"
    assert failures, "a client holding the set from before the switch rejects the new key's tokens"
    assert all(record.kid != first and record.outcomes["jose"].detail.startswith("ERR_JWKS_NO_MATCHING_KEY")
               for record in failures)
    assert failures[-1].at <= max_age + 1, "... until its cache expires"
    pyjwk_failures = loop.failures("PyJWKClient")
    print(f"\ncontrol (max-age {max_age}s, publishAhead 0s): {len(loop.records)} tokens, switch at "
          f"{switched_at:.1f}s; jose rejected {len(failures)} (last at {failures[-1].at:.1f}s); PyJWKClient "
          f"(lifespan {max_age}s, forced refreshes {pyjwk.forced_refreshes}) rejected {len(pyjwk_failures)}")
