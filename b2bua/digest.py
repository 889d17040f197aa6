"""Digest challenges (401/407) on legs we send requests on: answer once per realm, or give up.

pjsip answers a challenge from the account's credentials by itself. It would answer again
when the server changes its nonce (most servers do on every challenge, so a wrong password
costs up to four INVITEs), and sends nothing when no credential fits. The B2BUA decides
first (:func:`decide`): a challenge is answered **once per realm per request**; a second
challenge for a realm already answered means the credentials were refused, and the request
is given up at once (a second challenge marked ``stale=true`` too: within one request's retry
that means a server with a nonce lifetime shorter than a round trip, and answering it is how
pjsip loops). Either way the failure says why in words an operator can act on
(:class:`AuthProblem`), and :class:`ProblemLog` puts it in the log as one WARNING per
problem and minute, summed up, however many calls hit it.

Pure: the challenge is read from the response's headers (:func:`b2bua.sip.parse_message`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from loguru import logger

from b2bua.sip import printable

#: ``realm="..."`` (or a token) inside a challenge
_REALM = re.compile(r'(?:^|[\s,])realm\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', re.IGNORECASE)
#: seconds between two warnings about one problem
WARN_EVERY = 60.0


@dataclass(frozen=True)
class AuthProblem:
    """Why a challenge was not answered (again).

    :param code: 401 or 407, the challenge's status.
    :param detail: one sentence for the log (no password, ever).
    :param key: what the problem is about, for :class:`ProblemLog` (credential and realm).
    """

    code: int
    detail: str
    key: str


def challenge_realms(code: int, headers: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The realms a 401 (``WWW-Authenticate``) or 407 (``Proxy-Authenticate``) challenges with
    (Digest challenges only; escapes removed, as written otherwise)."""
    name = "proxy-authenticate" if code == 407 else "www-authenticate"
    realms = []
    for value in headers.get(name, ()):
        scheme, _, params = value.strip().partition(" ")
        if scheme.lower() != "digest":
            continue
        m = _REALM.search(params)
        if m:
            realm = m.group(1) if m.group(1) is not None else m.group(2)
            realms.append(re.sub(r"\\(.)", r"\1", realm))
    return realms


def decide(code: int, realms: Iterable[str], answered: set[str], ours: Iterable[str],
           credential: str = "") -> AuthProblem | None:
    """Whether to answer a challenge: None to let pjsip answer it (and ``answered`` gets its
    realms, lower-case), else the problem to fail the request with.

    :param realms: the challenge's realms (:func:`challenge_realms`).
    :param answered: the realms already answered for this request (updated in place).
    :param ours: the realms the leg's credentials answer (``*``: any).
    :param credential: the credential's name (``""``: the per-realm ones), for messages.
    """
    realms = list(realms)
    shown = ", ".join(repr(printable(r, 80)) for r in realms) or "(none given)"
    which = f"credentials {credential!r}" if credential else "the credentials"
    if not realms:
        return AuthProblem(code, f"{code} challenge without a Digest realm: not answered", f"{credential}|")
    again = [r for r in realms if r.lower() in answered]
    if again:
        return AuthProblem(
            code, f"{which} for realm {shown} were refused (wrong username or password?)",
            f"{credential}|{again[0].lower()}")
    mine = {r.lower() for r in ours}
    fitting = [r for r in realms if r.lower() in mine or "*" in mine]
    if not fitting:
        names = ", ".join(repr(r) for r in sorted(mine)) or "none"
        if credential:
            detail = f"challenged for realm {shown}, but credentials {credential!r} are for realm {names}"
        else:
            detail = (f"challenged for realm {shown}: no [[sip.credentials]] without a name has that realm "
                      f"(realms: {names}); add one, or name a credential with the destination's auth=")
        return AuthProblem(code, detail, f"{credential}|{realms[0].lower()}")
    answered.update(r.lower() for r in fitting)
    return None


class ProblemLog:
    """One WARNING per problem key and :data:`WARN_EVERY` seconds, with how many calls it hit
    meanwhile: a flood of calls to a misconfigured trunk costs one log line a minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, every: float = WARN_EVERY) -> None:
        self._clock = clock
        self._every = every
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last warning, count since)

    def report(self, problem: AuthProblem, where: str) -> bool:
        """Count ``problem`` (at ``where``, e.g. the target URI); True when it was logged now."""
        now = self._clock()
        last, count = self._seen.get(problem.key, (float("-inf"), 0))
        count += 1
        if now - last < self._every:
            self._seen[problem.key] = (last, count)
            return False
        if len(self._seen) > 1000:  # bounded, whatever the realms a gateway makes up
            self._seen.clear()
        self._seen[problem.key] = (now, 0)
        more = f" ({count} attempts since the last warning)" if count > 1 else ""
        logger.warning("authentication towards {} failed: {}{}", where, problem.detail, more)
        return True
