"""Destination health: Kamailio's state machine over the flag bits of :class:`DestFlags`.

Pure functions, no I/O, no clock: the prober owns the timers and calls these to decide.
Operator and failover marks (``set_state``, ``ds_mark_dst``) are parsed and applied by
:mod:`plugins.dispatcher.runtime` (``parse_state_letters``, ``mark_state_bits``).

The behaviour follows Kamailio 6.1's ``ds_update_state()``, ``ds_options_callback()`` and ``ds_ping_result_helper()``
(``src/modules/dispatcher/dispatch.c``), with one deliberate difference: the configuration
bits NODNS (16) and NOPING (32) survive every state change. Kamailio clears all of
``DS_STATES_ALL`` (63) on each update, so a script mark on a no-ping entry makes it start
being pinged; these bits describe the configured entry, not its health, so we keep them.

Probing modes (``probing_mode``, Kamailio's ``ds_probing_mode``):

====  ====================  ============================  =============================
mode  who is probed         on success                    on failure
====  ====================  ============================  =============================
0     entries with P        P cleared (kept below the     P cleared
                            inactive threshold)
1     every entry           P set                         P set
2     entries with P and I  P cleared (kept below the     P kept
                            inactive threshold)
3     entries with P        P kept; a result for an       P kept
                            entry whose P was removed
                            meanwhile is ignored
====  ====================  ============================  =============================

Disabled (D), NODNS and NOPING entries are never probed, and a result arriving for an entry
that became D meanwhile is ignored.
"""

from __future__ import annotations

from typing import Literal

from plugins.dispatcher.model import DestFlags

#: the probing modes Kamailio knows (``ds_probing_mode``)
PROBING_MODES = (0, 1, 2, 3)

_I = int(DestFlags.INACTIVE)
_T = int(DestFlags.TRYING)
_D = int(DestFlags.DISABLED)
_P = int(DestFlags.PROBING)
#: bits a health change rewrites: I, T, D, P (Kamailio's DS_STATES_ALL minus 16/32, see above)
HEALTH_BITS = _I | _T | _D | _P
#: configuration bits: the entry is never probed
NEVER_PROBED = int(DestFlags.NODNS | DestFlags.NOPING)


def _check_mode(mode: int) -> None:
    if mode not in PROBING_MODES:
        raise ValueError(f"probing mode must be one of 0, 1, 2, 3, not {mode!r}")


def is_down(flags: int) -> bool:
    """True when the destination is not selected: inactive (I) or disabled (D). T is still up."""
    return bool(flags & (_I | _D))


def transition_kind(old: int, new: int) -> Literal["up", "down"] | None:
    """``"down"`` when a change takes the entry out of selection, ``"up"`` for the reverse.

    Kamailio's ``dispatcher:dst-down`` / ``dst-up`` events: A <-> T changes are neither.
    """
    was, now = is_down(old), is_down(new)
    if now and not was:
        return "down"
    if was and not now:
        return "up"
    return None


def should_probe(flags: int, mode: int) -> bool:
    """Whether a keepalive pass sends a probe to an entry with ``flags`` (``ds_ping_set``).

    Never D, NODNS or NOPING entries; then mode 1 probes all, modes 0 and 3 the entries with
    P, mode 2 the entries with both P and I.
    """
    _check_mode(mode)
    if flags & (_D | NEVER_PROBED):
        return False
    if mode == 1:
        return True
    if mode == 2:
        return bool(flags & _P) and bool(flags & _I)
    return bool(flags & _P)


def update_state(
    flags: int,
    count: int,
    state: int,
    *,
    set_mode: bool,
    probing_threshold: int,
    inactive_threshold: int,
) -> tuple[int, int]:
    """Kamailio's ``ds_update_state()``: apply a requested ``state`` to an entry.

    :param flags: the entry's current flags.
    :param count: its probe counter (failures while T, successes while I).
    :param state: the requested health bits (e.g. T|P for a failed probe, 0 for a success).
    :param set_mode: True for a script/failover mark (Kamailio 6.1 ``DS_STATE_MODE_SET``):
        the thresholds are bypassed, T becomes I at once and A is reached at once.
    :return: ``(new_flags, new_count)``.

    A requested T on an I entry keeps it I (it must come back to A first) and resets the
    counter; D wins over every other bit (P is dropped).
    """
    old = flags
    requested = state
    if requested & _T and old & _I:
        state = (state & ~_T) | _I
    new = old & ~HEALTH_BITS
    new |= _D if state & _D else state & HEALTH_BITS

    if state & _T:
        count += 1
        if set_mode or count >= probing_threshold:
            new = (new & ~_T) | _I
            count = 0
    elif not requested & _T and old & _I:
        count += 1
        if not set_mode and count < inactive_threshold:
            # not enough successes yet: stay inactive, and keep probing if it was probed
            new |= _I | (old & _P)
        else:
            count = 0
    else:
        count = 0
    return new, count


def apply_probe(
    flags: int,
    count: int,
    ok: bool,
    *,
    mode: int,
    probing_threshold: int,
    inactive_threshold: int,
) -> tuple[int, int]:
    """The state after one keepalive result (``ds_options_callback()``).

    :param flags: the entry's flags when the result arrived.
    :param count: its probe counter.
    :param ok: the reply was accepted (2xx or listed in ``ping_reply_codes``); a local 408
        or a send error is a failure.
    :param mode: ``probing_mode`` 0-3.
    :return: ``(new_flags, new_count)``; unchanged for a D entry, and in mode 3 for an entry
        whose P bit was removed meanwhile.

    Success: an I entry needs ``inactive_threshold`` successes to become A; otherwise A at
    once. Failure: T, and I after ``probing_threshold`` failures; a failure while I keeps it
    I and restarts its recovery count.
    """
    _check_mode(mode)
    if flags & _D or (mode == 3 and not flags & _P):
        return flags, count
    # the bits Kamailio's callback requests: P survives a success in modes 1 and 3, a failure
    # in every mode but 0
    state = (_P if mode in (1, 3) else 0) if ok else _T | (_P if mode != 0 else 0)
    return update_state(
        flags,
        count,
        state,
        set_mode=False,
        probing_threshold=probing_threshold,
        inactive_threshold=inactive_threshold,
    )
