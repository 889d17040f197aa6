"""b2bua.heap: the heap is trimmed once per lull after calls, never while a call is up."""

from __future__ import annotations

from b2bua.heap import HeapTrimmer, malloc_trim


def make() -> tuple[HeapTrimmer, list[int]]:
    trims: list[int] = []
    return HeapTrimmer(lambda: trims.append(1) or 0, idle_for=10.0), trims


def test_trims_once_after_a_lull_that_follows_calls() -> None:
    heap, trims = make()
    assert not heap.check(0.0, legs_in_use=3, legs_made=10)
    assert not heap.check(1.0, legs_in_use=0, legs_made=10)  # idle from now on
    assert not heap.check(10.9, legs_in_use=0, legs_made=10)
    assert heap.check(11.0, legs_in_use=0, legs_made=10)
    assert not heap.check(30.0, legs_in_use=0, legs_made=10)  # nothing happened since
    assert trims == [1]


def test_a_call_restarts_the_lull_and_new_calls_allow_another_trim() -> None:
    heap, trims = make()
    heap.check(0.0, 0, 4)
    heap.check(5.0, 1, 6)  # a call is up: the lull starts again when it ends
    assert not heap.check(6.0, 0, 6)
    assert not heap.check(15.0, 0, 6)
    assert heap.check(16.0, 0, 6)
    assert heap.trims == 1 and trims == [1]


def test_no_calls_no_trim_and_no_malloc_trim_no_trim() -> None:
    heap, trims = make()
    assert not heap.check(100.0, 0, 0) and not heap.check(200.0, 0, 0)
    assert trims == []
    blind = HeapTrimmer(None, idle_for=0.0)
    assert not blind.check(1.0, 0, 5)


def test_glibc_malloc_trim_is_found_and_runs() -> None:
    trim = malloc_trim()
    assert trim is not None  # the project runs on Debian (glibc)
    assert trim() in (0, 1)
