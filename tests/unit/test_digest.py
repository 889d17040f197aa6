"""Digest challenges on B legs (b2bua.digest): read the realm, answer once per realm, say why not."""

from __future__ import annotations

from loguru import logger

from b2bua.digest import AuthProblem, ProblemLog, challenge_realms, decide

CHALLENGE_407 = {"proxy-authenticate": ('Digest realm="carrier.example", nonce="abc", qop="auth", algorithm=MD5',)}


def test_challenge_realms() -> None:
    assert challenge_realms(407, CHALLENGE_407) == ["carrier.example"]
    assert challenge_realms(401, CHALLENGE_407) == [], "a 401's challenge is WWW-Authenticate"
    www = {"www-authenticate": ('Digest nonce="n", realm=token.example', 'Basic realm="basic"',
                                'DIGEST realm="say \\"hi\\"", nonce="m"')}
    assert challenge_realms(401, www) == ["token.example", 'say "hi"']
    assert challenge_realms(401, {"www-authenticate": ('Digest nonce="n", opaque="realm=x"',)}) == []


def test_answered_once_per_realm_then_refused() -> None:
    answered: set[str] = set()
    assert decide(407, ["Carrier.Example"], answered, ["carrier.example"]) is None
    assert answered == {"carrier.example"}
    problem = decide(407, ["carrier.example"], answered, ["carrier.example"])
    assert problem == AuthProblem(407, "the credentials for realm 'carrier.example' were refused (wrong username "
                                       "or password?)", "|carrier.example")


def test_no_credential_for_the_realm() -> None:
    problem = decide(401, ["elsewhere"], set(), ["carrier.example"])
    assert problem is not None and problem.code == 401
    assert "challenged for realm 'elsewhere': no [[sip.credentials]] without a name has that realm" in problem.detail
    named = decide(401, ["elsewhere"], set(), ["carrier.example"], "trunk")
    assert named is not None and "credentials 'trunk' are for realm 'carrier.example'" in named.detail


def test_a_wildcard_credential_answers_any_realm_once() -> None:
    answered: set[str] = set()
    assert decide(401, ["a", "b"], answered, ["*"], "any") is None and answered == {"a", "b"}
    assert decide(401, ["b"], answered, ["*"], "any") is not None


def test_a_challenge_without_a_digest_realm_is_not_answered() -> None:
    problem = decide(401, [], set(), ["*"])
    assert problem is not None and "without a Digest realm" in problem.detail


def test_a_made_up_realm_is_escaped_in_the_message() -> None:
    problem = decide(401, ["x\r\nInjected: 1"], set(), ["carrier"])
    assert problem is not None and "\r" not in problem.detail and "\n" not in problem.detail


def test_problem_log_warns_once_a_minute_per_problem_with_a_count() -> None:
    now = [0.0]
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        log = ProblemLog(clock=lambda: now[0])
        refused = AuthProblem(401, "refused", "a|x")
        other = AuthProblem(401, "no credentials", "|y")
        assert log.report(refused, "sip:gw1") and not log.report(refused, "sip:gw1")
        assert log.report(other, "sip:gw2")
        for _ in range(5):
            log.report(refused, "sip:gw1")
        now[0] = 61.0
        assert log.report(refused, "sip:gw1")
    finally:
        logger.remove(sink)
    assert lines == ["authentication towards sip:gw1 failed: refused",
                     "authentication towards sip:gw2 failed: no credentials",
                     "authentication towards sip:gw1 failed: refused (7 attempts since the last warning)"]
