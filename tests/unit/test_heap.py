"""b2bua.heap: the heap is trimmed once per lull after calls, never while calls keep coming."""

from __future__ import annotations

from b2bua.heap import HeapTrimmer, heap_report, malloc_trim


def make() -> tuple[HeapTrimmer, list[int]]:
    trims: list[int] = []
    return HeapTrimmer(lambda: trims.append(1) or 0, idle_for=10.0), trims


def test_trims_once_after_a_lull_that_follows_calls() -> None:
    heap, trims = make()
    assert not heap.check(0.0, legs_made=10)  # calls came: the lull starts now
    assert not heap.check(9.9, legs_made=10)
    assert heap.check(10.0, legs_made=10)
    assert not heap.check(30.0, legs_made=10)  # nothing happened since
    assert trims == [1]


def test_new_calls_restart_the_lull_and_allow_another_trim() -> None:
    heap, trims = make()
    heap.check(0.0, 4)
    assert not heap.check(8.0, 6)  # a new call: the lull starts again
    assert not heap.check(17.0, 6)
    assert heap.check(18.0, 6)
    heap.check(20.0, 7)
    assert heap.check(30.0, 7)
    assert heap.trims == 2 and trims == [1, 1]


def test_no_calls_no_trim_and_no_malloc_trim_no_trim() -> None:
    heap, trims = make()
    assert not heap.check(100.0, 0) and not heap.check(200.0, 0)
    assert trims == []
    blind = HeapTrimmer(None, idle_for=0.0)
    blind.check(0.0, 5)
    assert not blind.check(1.0, 5)


def test_glibc_malloc_trim_is_found_and_runs() -> None:
    trim = malloc_trim()
    assert trim is not None  # the project runs on Debian (glibc)
    assert trim() in (0, 1)


def test_heap_report_reads_rss_and_the_heap() -> None:
    report = heap_report()
    assert report["rss_mb"] > 1
    assert report["heap_in_use_mb"] > 0 and report["heap_free_mb"] >= 0
