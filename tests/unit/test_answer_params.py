"""The CallOpParams answer and hangup reuse (b2bua.legs._AnswerParams): each use as a new one."""

from __future__ import annotations

from b2bua.legs import _AnswerParams, op


def fields(prm: object) -> tuple[int, str, list[tuple[str, str]], int, int]:
    headers = [(h.hName, h.hValue) for h in prm.txOption.headers]  # type: ignore[attr-defined]
    opt = prm.opt  # type: ignore[attr-defined]
    return prm.statusCode, prm.reason, headers, opt.videoCount, opt.textCount  # type: ignore[attr-defined]


def test_a_reused_parameter_is_set_as_a_new_one() -> None:
    params = _AnswerParams()
    uses = [(486, "Busy Here", (("X-A", "1"), ("X-B", "2"))), (200, "", ()), (0, "", ()), (180, "Ringing", ()),
            (503, "Overloaded", (("Retry-After", "5"),)), (603, "Decline", ())]
    first, marked = params.take(*uses[0])
    params.give(first, marked)
    for code, reason, headers in uses:
        prm, marked = params.take(code, reason, headers)
        assert prm is first  # reused
        assert fields(prm) == fields(op(code, reason, headers))
        params.give(prm, marked)


def test_an_operation_inside_another_gets_its_own_parameter() -> None:
    params = _AnswerParams()
    outer, outer_marked = params.take(200, "OK", ())
    inner, inner_marked = params.take(487, "Request Terminated", ())  # a callback's hang-up, inside the answer
    assert inner is not outer and fields(outer)[:2] == (200, "OK")
    params.give(inner, inner_marked)
    params.give(outer, outer_marked)
    for _ in range(3 * params.KEEP):
        params.give(*params.take(200, "", ()))
    assert len(params._free) == 2  # both kept, and no more than were given back
