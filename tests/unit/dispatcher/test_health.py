"""Kamailio's destination state machine (plugins.dispatcher.health), case by case."""

from __future__ import annotations

import pytest

from plugins.dispatcher.health import (
    apply_probe,
    is_down,
    should_probe,
    transition_kind,
    update_state,
)
from plugins.dispatcher.model import DestFlags, state_letters

INACT, T, D, P = DestFlags.INACTIVE, DestFlags.TRYING, DestFlags.DISABLED, DestFlags.PROBING
NODNS, NOPING = DestFlags.NODNS, DestFlags.NOPING
AX, AP, TX, TP, IX, IP, DX, DP = 0, int(P), int(T), int(T | P), int(INACT), int(INACT | P), int(D), int(D | P)


# -- should_probe ---------------------------------------------------------------------------------

PROBE_TABLE = [
    # flags, {mode: probed?}
    (AX, {0: False, 1: True, 2: False, 3: False}),
    (AP, {0: True, 1: True, 2: False, 3: True}),
    (TX, {0: False, 1: True, 2: False, 3: False}),
    (TP, {0: True, 1: True, 2: False, 3: True}),
    (IX, {0: False, 1: True, 2: False, 3: False}),
    (IP, {0: True, 1: True, 2: True, 3: True}),
    (DX, {0: False, 1: False, 2: False, 3: False}),
    (DP, {0: False, 1: False, 2: False, 3: False}),
    (int(NOPING), {0: False, 1: False, 2: False, 3: False}),
    (int(INACT | P | NOPING), {0: False, 1: False, 2: False, 3: False}),
    (int(AP | NODNS), {0: False, 1: False, 2: False, 3: False}),
]


@pytest.mark.parametrize(("flags", "by_mode"), PROBE_TABLE, ids=lambda v: str(v))
def test_should_probe(flags: int, by_mode: dict[int, bool]) -> None:
    assert {mode: should_probe(flags, mode) for mode in by_mode} == by_mode


@pytest.mark.parametrize("mode", [-1, 4, 8])
def test_should_probe_rejects_unknown_mode(mode: int) -> None:
    with pytest.raises(ValueError, match="probing mode must be one of 0, 1, 2, 3"):
        should_probe(AP, mode)


# -- apply_probe: single steps --------------------------------------------------------------------

# (mode, probing_threshold, inactive_threshold, flags, count, ok) -> (letters, count)
STEP_TABLE = [
    # mode 1: P always set
    (1, 2, 2, AX, 0, False, "TP", 1),
    (1, 2, 2, TP, 1, False, "IP", 0),
    (1, 1, 1, AX, 0, False, "IP", 0),
    (1, 3, 1, TP, 1, False, "TP", 2),
    (1, 2, 2, TP, 1, True, "AP", 0),  # a success while T: straight back to A
    (1, 2, 2, IP, 0, True, "IP", 1),  # below inactive_threshold: stays I
    (1, 2, 2, IP, 1, True, "AP", 0),
    (1, 2, 3, IP, 2, False, "IP", 0),  # a failure during recovery restarts it
    (1, 2, 1, IX, 0, True, "AP", 0),
    (1, 2, 2, AX, 0, True, "AP", 0),
    # mode 0: P cleared by any completed probe (kept while still recovering)
    (0, 2, 1, AP, 0, True, "AX", 0),
    (0, 2, 1, AP, 0, False, "TX", 1),
    (0, 1, 1, AP, 0, False, "IX", 0),
    (0, 1, 2, IP, 0, True, "IP", 1),
    (0, 1, 2, IP, 1, True, "AX", 0),
    (0, 1, 2, IP, 1, False, "IX", 0),
    # mode 2: only I+P entries are probed; P kept on failure, cleared on recovery
    (2, 1, 1, IP, 0, False, "IP", 0),
    (2, 1, 1, IP, 0, True, "AX", 0),
    (2, 1, 2, IP, 0, True, "IP", 1),
    # mode 3: P kept
    (3, 2, 1, AP, 0, True, "AP", 0),
    (3, 2, 1, AP, 0, False, "TP", 1),
    (3, 1, 1, AP, 0, False, "IP", 0),
    (3, 1, 2, IP, 0, True, "IP", 1),
]


@pytest.mark.parametrize(
    ("mode", "pt", "it", "flags", "count", "ok", "letters", "new_count"),
    STEP_TABLE,
    ids=[f"m{m}-{state_letters(f)}c{c}-{'ok' if ok else 'fail'}" for m, _, _, f, c, ok, _, _ in STEP_TABLE],
)
def test_apply_probe_step(
    mode: int, pt: int, it: int, flags: int, count: int, ok: bool, letters: str, new_count: int
) -> None:
    new_flags, got_count = apply_probe(flags, count, ok, mode=mode, probing_threshold=pt, inactive_threshold=it)
    assert (state_letters(new_flags), got_count) == (letters, new_count)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("ok", [True, False])
@pytest.mark.parametrize("flags", [DX, DP])
def test_result_for_disabled_entry_is_ignored(mode: int, ok: bool, flags: int) -> None:
    assert apply_probe(flags, 3, ok, mode=mode, probing_threshold=1, inactive_threshold=1) == (flags, 3)


@pytest.mark.parametrize("ok", [True, False])
@pytest.mark.parametrize("flags", [AX, TX, IX])
def test_mode3_ignores_result_once_probing_was_removed(ok: bool, flags: int) -> None:
    assert apply_probe(flags, 1, ok, mode=3, probing_threshold=1, inactive_threshold=1) == (flags, 1)


def test_apply_probe_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="probing mode"):
        apply_probe(AP, 0, True, mode=5, probing_threshold=1, inactive_threshold=1)


# -- apply_probe: sequences ------------------------------------------------------------------------


def run(flags: int, results: str, *, mode: int, pt: int, it: int) -> list[str]:
    """Feed a string of results ('+' ok, '-' failure); return the letters after each."""
    count, seen = 0, []
    for r in results:
        flags, count = apply_probe(flags, count, r == "+", mode=mode, probing_threshold=pt, inactive_threshold=it)
        seen.append(state_letters(flags))
    return seen


def test_kamailio_live_sequence_mode1_thresholds_2_2() -> None:
    # reference §5.2, reproduced on Kamailio 5.6.3: AX -> TP -> IP, then IP -> IP -> AP
    assert run(AX, "--++", mode=1, pt=2, it=2) == ["TP", "IP", "IP", "AP"]


def test_recovery_needs_consecutive_successes() -> None:
    assert run(IP, "++-+++", mode=1, pt=1, it=3) == ["IP", "IP", "IP", "IP", "IP", "AP"]


def test_single_failure_below_threshold_is_forgiven_by_success() -> None:
    # T counts failures but a success resets it: -,+,- never reaches a threshold of 2
    assert run(AP, "-+-+-", mode=1, pt=2, it=1) == ["TP", "AP", "TP", "AP", "TP"]


def test_mode0_probes_once() -> None:
    # the entry is probed while it has P; the first completed probe clears P
    flags, _ = apply_probe(AP, 0, False, mode=0, probing_threshold=2, inactive_threshold=1)
    assert state_letters(flags) == "TX"
    assert not should_probe(flags, 0)


def test_mode2_probes_dead_entries_until_they_recover() -> None:
    flags, count = IP, 0
    for _ in range(3):
        assert should_probe(flags, 2)
        flags, count = apply_probe(flags, count, False, mode=2, probing_threshold=1, inactive_threshold=2)
    assert state_letters(flags) == "IP"
    for _ in range(2):
        assert should_probe(flags, 2)
        flags, count = apply_probe(flags, count, True, mode=2, probing_threshold=1, inactive_threshold=2)
    assert (state_letters(flags), count) == ("AX", 0)
    assert not should_probe(flags, 2)


def test_configuration_bits_survive_probing() -> None:
    # NODNS is a load-time property: a probe result (possible if set after sending) keeps it
    flags, _ = apply_probe(int(AP | NODNS), 0, False, mode=1, probing_threshold=1, inactive_threshold=1)
    assert flags == int(INACT | P | NODNS)


# -- update_state -----------------------------------------------------------------------------------


def test_update_state_disabled_wins_over_probing() -> None:
    assert update_state(AP, 0, int(D | P), set_mode=False, probing_threshold=1, inactive_threshold=1) == (DX, 0)


def test_update_state_trying_on_inactive_stays_inactive_and_resets_count() -> None:
    assert update_state(IP, 2, int(T | P), set_mode=False, probing_threshold=1, inactive_threshold=5) == (IP, 0)


# -- is_down / transition_kind -----------------------------------------------------------------------

TRANSITIONS = [
    (AX, TP, None),
    (TP, AX, None),
    (AP, IP, "down"),
    (TP, IP, "down"),
    (AX, DX, "down"),
    (IP, AP, "up"),
    (DX, AX, "up"),
    (IP, DX, None),
    (IX, IP, None),
]


@pytest.mark.parametrize(("old", "new", "kind"), TRANSITIONS)
def test_transition_kind(old: int, new: int, kind: str | None) -> None:
    assert transition_kind(old, new) == kind


def test_is_down() -> None:
    assert [is_down(f) for f in (AX, AP, TX, TP, IX, IP, DX, DP)] == [False] * 4 + [True] * 4
