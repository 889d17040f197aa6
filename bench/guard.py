"""What the gate costs per request, in process: the screen of each kind of request, and the part
that asks pjsip whether a request claiming a dialog belongs to one of ours.

    .venv/bin/python bench/guard.py              # 20,000 rounds of each
    .venv/bin/python bench/guard.py --rounds 100000

The dialog look-up runs against a real pjsip (an endpoint is initialised in this process, no
transport, no call): ``pjsip_ua_find_dialog`` through ctypes, missing as a flooder's made-up
tags do. Prints microseconds per request (the best of five runs); CPU time only, no network.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pjsua2 as pj  # noqa: E402
from loguru import logger  # noqa: E402

from b2bua.admission import Decision, Load, Verdict  # noqa: E402
from b2bua.config import SecurityConfig, SipConfig  # noqa: E402
from b2bua.guard import NO_DIALOGS, Dialogs, Gate  # noqa: E402
from b2bua.rxfilter import RxFilter  # noqa: E402
from b2bua.wire import peek, peek_dialog  # noqa: E402
from tests.e2e.sipfuzz import Peer, request  # noqa: E402

TRUSTED, STRANGER = "10.0.0.5", "192.0.2.66"
ROOM = Load(calls=0, max_calls=10, free_slots=10)


class OurCall:
    """A dialog table holding one call (the in-dialog requests of a live call find it)."""

    def has_dialog(self, call_id: bytes, local_tag: bytes, remote_tag: bytes) -> bool:
        return call_id == b"call-1@pbx"

    def has_invite(self) -> bool:
        return True


def best(fn: Callable[[], object], rounds: int) -> float:
    """Microseconds per call, best of five runs."""
    return min(timeit.repeat(fn, number=rounds, repeat=5)) / rounds * 1e6


def pjsip_filter() -> tuple[pj.Endpoint, RxFilter]:
    lib = ctypes.CDLL(pj._pjsua2.__file__)
    lib.pj_log_set_level(0)  # before libCreate: its banner is not for this bench's output
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    ep.libInit(cfg)
    return ep, RxFilter(lib, pj.SipRxData(), lambda raw, source, dialogs: Decision(Verdict.ACCEPT),
                        lambda raw, source: True, lambda reason: None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20000, help="requests per measurement")
    rounds = ap.parse_args().rounds
    logger.remove()
    ep, rx = pjsip_filter()
    try:
        to_us = Peer("10.0.0.1", 5060, TRUSTED, 5062)
        live_bye = request("BYE", to_us, call_id="call-1@pbx", to_tag="ours", from_tag="theirs")
        stray_bye = request("BYE", Peer("10.0.0.1", 5060, STRANGER, 5062), call_id="x9f3@h", to_tag="a1b2c3")
        options = request("OPTIONS", to_us)
        invite = request("INVITE", to_us, call_id="call-2@pbx")
        call_id, from_tag = peek_dialog(stray_bye)
        parts = {
            "peek (method, To tag; every request)": lambda: peek(stray_bye),
            "peek_dialog (Call-ID, From tag; To tag only)": lambda: peek_dialog(stray_bye),
            "pjsip_ua_find_dialog via ctypes (a miss)": lambda: rx.has_dialog(call_id, b"a1b2c3", from_tag),
        }
        for name, fn in parts.items():
            print(f"{name:58s} {best(fn, rounds):6.2f} µs")

        def screen(raw: bytes, source: str, dialogs: Dialogs, blocked: bool = False,
                   **security: object) -> Callable[[], object]:
            gate = Gate(SecurityConfig(trusted=("10.0.0.0/24",), **security), SipConfig(),  # type: ignore[arg-type]
                        debug=False)
            if blocked:
                gate.limiter.block(source.rsplit(":", 1)[0], 1e12)
            return lambda: gate.screen(raw, source, ROOM, 1.0, dialogs=dialogs)

        src_t, src_s = f"{TRUSTED}:5062", f"{STRANGER}:5062"
        cases = {
            "trusted OPTIONS (no claim: no look-up)": screen(options, src_t, rx, request_rate=0.0),
            "trusted INVITE (a new call: parsed whole)": screen(invite, src_t, rx, trusted_invite_rate=0.0),
            "BYE of a live call (look-up: found)": screen(live_bye, src_t, OurCall()),
            "stray BYE, real pjsip look-up, under the rate (481 next)": screen(stray_bye, src_s, rx, request_rate=0.0),
            "stray BYE, real pjsip look-up, source blocked (dropped)": screen(stray_bye, src_s, rx, blocked=True),
            "stray BYE, no look-up (NO_DIALOGS), source blocked": screen(stray_bye, src_s, NO_DIALOGS, blocked=True),
        }
        for name, fn in cases.items():
            print(f"Gate.screen: {name:45s} {best(fn, rounds):6.2f} µs")
    finally:
        ep.libDestroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
