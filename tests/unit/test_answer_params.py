"""The CallOpParams answer and hangup reuse (b2bua.legs._AnswerParams): each use as a new one.

Run in a child process: importing pjsua2 here would make this process look like one running
the SIP stack to the other unit tests (``b2bua.logs.pjsip_log_level``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECKS = textwrap.dedent('''
    from b2bua.legs import _AnswerParams, op

    def fields(prm):
        headers = [(h.hName, h.hValue) for h in prm.txOption.headers]
        return prm.statusCode, prm.reason, headers, prm.opt.videoCount, prm.opt.textCount

    # a reused parameter is set as a new one
    params = _AnswerParams()
    uses = [(486, "Busy Here", (("X-A", "1"), ("X-B", "2"))), (200, "", ()), (0, "", ()), (180, "Ringing", ()),
            (503, "Overloaded", (("Retry-After", "5"),)), (603, "Decline", ())]
    first, marked = params.take(*uses[0])
    params.give(first, marked)
    for code, reason, headers in uses:
        prm, marked = params.take(code, reason, headers)
        assert prm is first, "not reused"
        assert fields(prm) == fields(op(code, reason, headers)), (code, fields(prm))
        params.give(prm, marked)

    # an operation inside another (a callback's hang-up inside an answer) gets its own
    params = _AnswerParams()
    outer, outer_marked = params.take(200, "OK", ())
    inner, inner_marked = params.take(487, "Request Terminated", ())
    assert inner is not outer and fields(outer)[:2] == (200, "OK")
    params.give(inner, inner_marked)
    params.give(outer, outer_marked)
    for _ in range(3 * params.KEEP):
        params.give(*params.take(200, "", ()))
    assert len(params._free) == 2, len(params._free)
    print("ok")
''')


def test_reused_answer_parameters_are_set_as_new_ones() -> None:
    done = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
