"""``[plugins.failover]``: what to do after a failed attempt.

Example::

    [plugins.failover]
    failover_codes = ["5xx", "408"]   # try the next gateway on these
    hunt_stop_codes = [486, 600, 603, 604, 606]  # the callee's own answer: relay at once
    max_attempts = 3
    attempt_timeout = 2.0             # no provisional within 2 s: next gateway
    total_timeout = 10.0
    mark = "ip"                       # a dead gateway goes inactive until a probe succeeds

Status codes are written as numbers (``404``), strings (``"404"``) or classes (``"5xx"``).

``mark`` follows Kamailio 6.1's ``ds_mark_dst``: the state is set at once, without the
probing thresholds, so ``t`` acts as ``i``. Without ``p`` a marked destination comes back
only by an operator's ``set_state`` or, with ``probing_mode = 1``, by the next good probe;
``ip`` lets probing bring it back in every mode (in mode 0 only if its first probe
succeeds: a failed probe clears P there). A destination is marked when it did
not answer at all, or answered with one of ``mark_codes`` (default 500 and 503: what a
gateway says about itself; 502/504 describe the network behind it). A target that rang
and was not answered, a cancelled attempt and a local send error never mark.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from b2bua.config import opt

#: ``final`` values: our own answer, the last gateway's, or the best of all (RFC 3261 §16.7)
FINAL_MODES = ("fixed", "last", "best")
#: ``mark`` values: ds_mark_dst letters that make sense after a failed call
MARK_STATES = ("", "i", "ip", "t", "tp")


@dataclass(frozen=True)
class CodeSet:
    """A set of SIP status codes: exact codes and whole classes (``5`` for ``5xx``)."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and (code in self.codes or code // 100 in self.classes)

    def __str__(self) -> str:
        return ", ".join([f"{c}xx" for c in sorted(self.classes)] + [str(c) for c in sorted(self.codes)])


def parse_codes(items: Iterable[int | str], key: str) -> CodeSet:
    """Parse a list of status codes (``404``, ``"404"``) and classes (``"5xx"``), 300-699.

    :param key: the setting's name, for messages (``failover_codes``).
    :raises ValueError: naming ``key[index]`` and the bad item.
    """
    codes: set[int] = set()
    classes: set[int] = set()
    for i, item in enumerate(items):
        text = str(item).strip().lower()
        if len(text) == 3 and text[0] in "3456" and text[1:] == "xx":
            classes.add(int(text[0]))
        elif text.isascii() and text.isdigit() and 300 <= int(text) <= 699:
            codes.add(int(text))
        else:
            raise ValueError(
                f"{key}[{i}]: {item!r} is not a final failure status: expected a code 300-699 "
                '(404 or "404") or a class ("3xx" to "6xx")'
            )
    return CodeSet(frozenset(codes), frozenset(classes))


def _check_phrase(key: str, value: str) -> None:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{key}: must be one line (no CR, LF or NUL)")


@dataclass(frozen=True)
class FailoverConfig:
    """The failover plugin's settings (``[plugins.failover]``)."""

    failover_codes: tuple[int | str, ...] = opt(
        ["5xx", "408"], 'failures that move on to the next target: codes (404, "404") or classes ("5xx")'
    )
    hunt_stop_codes: tuple[int | str, ...] = opt(
        [486, 600, 603, 604, 606],
        "failures relayed to the caller at once, never retried (they win over failover_codes)",
    )
    failover_on_no_answer: bool = opt(
        False, "also try the next target when one rang but was not answered in answer_timeout"
    )
    max_attempts: int = opt(0, "most attempts (B legs) per call; 0: as many as the route plan has", bounds=(0, None))
    attempt_timeout: float = opt(
        0.0, "seconds a target may take to send a provisional response (0: [sip] attempt_timeout)",
        bounds=(0, None)
    )
    answer_timeout: float = opt(
        0.0,
        "seconds a target may ring before it is given up (Kamailio fr_inv_timer; 0: [sip] answer_timeout)",
        bounds=(0, None),
    )
    total_timeout: float = opt(
        0.0, "seconds after the call arrived when no new attempt starts; a late one gets what is left (0: none)",
        bounds=(0, None)
    )
    mark: str = opt(
        "",
        "mark the dispatcher destination of a target that failed (ds_mark_dst): '' off, 'ip' inactive "
        "until a probe answers, 'i' inactive ('t'/'tp' act as 'i'/'ip', Kamailio 6.1)",
    )
    mark_codes: tuple[int | str, ...] = opt(
        [500, 503], "failure responses that mark the destination (no response at all always marks)"
    )
    final: str = opt(
        "fixed",
        "answer when every attempt failed: 'fixed' (final_code), 'last' (the last failure), "
        "'best' (the best failure, RFC 3261 16.7)",
    )
    final_code: int = opt(503, "status of the 'fixed' final answer", bounds=(300, 699))
    final_reason: str = opt("Service Unavailable", "reason phrase of the 'fixed' final answer")
    retry_after: int = opt(5, "Retry-After seconds on the 'fixed' final answer (0: none)", bounds=(0, 86400))
    reason_header: bool = opt(True, "add an RFC 3326 Reason header naming the last failure to the 'fixed' final answer")

    def validate(self) -> None:
        """Check every setting; a :class:`ValueError` names the key."""
        self.failover_set  # noqa: B018 - parsing is the check
        self.hunt_stop_set  # noqa: B018
        self.mark_set  # noqa: B018
        if self.mark.lower() not in MARK_STATES:
            raise ValueError(f"mark: {self.mark!r} is not one of '', 'i', 'ip', 't', 'tp'")
        if self.final not in FINAL_MODES:
            raise ValueError(f"final: {self.final!r} is not one of {', '.join(FINAL_MODES)}")
        _check_phrase("final_reason", self.final_reason)

    @functools.cached_property
    def failover_set(self) -> CodeSet:
        """``failover_codes`` parsed."""
        return parse_codes(self.failover_codes, "failover_codes")

    @functools.cached_property
    def hunt_stop_set(self) -> CodeSet:
        """``hunt_stop_codes`` parsed."""
        return parse_codes(self.hunt_stop_codes, "hunt_stop_codes")

    @functools.cached_property
    def mark_set(self) -> CodeSet:
        """``mark_codes`` parsed."""
        return parse_codes(self.mark_codes, "mark_codes")
