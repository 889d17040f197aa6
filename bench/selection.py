"""Selection benchmark: the cost of one ``DispatcherState.select`` per algorithm and set size.

Pure Python, no SIP: a set of N destinations (weights, relative weights, priorities and seeded
latencies filled in so every algorithm has work to do) and a pool of distinct calls (Call-ID,
From, To, R-URI and a digest user differ per call, so the hash algorithms spread). Prints µs
per call for each algorithm 0-13 and N = 2, 10, 100, 1000, with the failover list built in
full (``limit = 0``, the plugin's default) and cut to 2, and whether the target is met:
at most 10 µs per selection for sets of up to 10 destinations.

    .venv/bin/python bench/selection.py                  # ~1 minute
    .venv/bin/python bench/selection.py --sizes 2 10 --time 0.1
    .venv/bin/python bench/selection.py --down 0.3       # 30 % of each set inactive (skip loops)

Each cell is timed over ``--repeats`` batches of about ``--time`` seconds (the best batch is
reported: the least disturbed by the rest of the machine). Bounded: at most
``MAX_CALLS_PER_BATCH`` selections per batch.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2bua.api import CallInfo
from plugins.dispatcher.algorithms import ALGORITHMS
from plugins.dispatcher.latency import seeded
from plugins.dispatcher.model import Attrs, DestFlags, Destination, build_snapshot
from plugins.dispatcher.runtime import DispatcherState
from plugins.dispatcher.selection import Policy

TARGET_US = 10.0
TARGET_MAX_SIZE = 10
MAX_CALLS_PER_BATCH = 2_000_000
CALL_POOL = 1024
HASH_TEMPLATE = "{from_user}@{call_id}"


@dataclass(frozen=True)
class Cell:
    """One measurement: algorithm, set size, failover limit, µs per selection."""

    alg: int
    size: int
    limit: int
    us: float


def make_destinations(size: int) -> list[Destination]:
    """``size`` entries of set 1 with every attribute some algorithm reads."""
    weight = max(1, 100 // size)
    return [
        Destination(
            setid=1,
            uri=f"sip:10.{i // 65536}.{i // 256 % 256}.{i % 256}:5060",
            priority=i % 5,
            attrs=Attrs(body=f"duid=gw{i}", duid=f"gw{i}", weight=weight, rweight=1 + i % 3,
                        latency=5 + i % 40),
            row_id=i + 1,
        )
        for i in range(size)
    ]


def make_calls(n: int) -> list[CallInfo]:
    """``n`` distinct INVITEs, each with digest credentials (algorithm 5 hashes their user)."""
    calls = []
    for i in range(n):
        user = f"49301234{i:04d}"
        auth = f'Digest username="u{i}", realm="example.net", nonce="abc", uri="sip:{user}@b2bua", response="x"'
        calls.append(CallInfo(
            id=i, call_id=f"{i:08x}-bench@127.0.0.2", request_uri=f"sip:{user}@127.0.0.1:5060",
            from_uri=f"sip:caller{i}@127.0.0.2:5062", to_uri=f"sip:{user}@127.0.0.1:5060",
            source_ip="127.0.0.2", source_port=5062, headers={"authorization": (auth,)},
        ))
    return calls


def make_state(size: int, down: float, rng: random.Random) -> DispatcherState:
    """A state holding one set of ``size``; a ``down`` fraction of it inactive (spread evenly)."""
    state = DispatcherState(policy=Policy(hash_template=HASH_TEMPLATE), rng=rng,
                            latency_factory=lambda d: seeded(float(d.attrs.latency)))
    dests = make_destinations(size)
    state.swap(build_snapshot(dests, "bench"), keep_state=False, reason="bench")
    if down > 0:
        step = 1 / down
        # never all of them: at least one survivor, or there is nothing to select
        for k in range(min(size - 1, int(size * down))):
            state.set_flags(dests[int(k * step)].key, int(DestFlags.INACTIVE | DestFlags.PROBING), "bench")
    return state


def time_cell(state: DispatcherState, alg: int, calls: Sequence[CallInfo], limit: int, *, seconds: float,
              repeats: int, rng: random.Random) -> float:
    """µs per ``state.select`` (best of ``repeats`` batches of about ``seconds`` each)."""
    select = state.select
    pool = len(calls)
    # calibrate: how many selections fill one batch
    n, elapsed = 64, 0.0
    while n < MAX_CALLS_PER_BATCH:
        t0 = time.perf_counter()
        for i in range(n):
            select(1, alg, calls[i % pool], limit, rng)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds / 10:
            break
        n *= 4
    batch = min(MAX_CALLS_PER_BATCH, max(n, int(n * seconds / max(elapsed, 1e-9))))
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        for i in range(batch):
            select(1, alg, calls[i % pool], limit, rng)
        best = min(best, (time.perf_counter() - t0) / batch)
    return best * 1e6


def run(sizes: Sequence[int], limits: Sequence[int], down: float, seconds: float, repeats: int) -> list[Cell]:
    """Every algorithm at every size and limit."""
    calls = make_calls(CALL_POOL)
    rng = random.Random(1)
    cells = []
    for size in sizes:
        for limit in limits:
            for alg in sorted(ALGORITHMS):
                state = make_state(size, down, rng)  # fresh cursors and loads per cell
                assert state.select(1, alg, calls[0], limit, rng), f"alg {alg} selected nothing at N={size}"
                us = time_cell(state, alg, calls, limit, seconds=seconds, repeats=repeats, rng=rng)
                cells.append(Cell(alg, size, limit, us))
    return cells


def print_table(cells: Sequence[Cell], sizes: Sequence[int], limit: int) -> None:
    """One table: algorithms down, set sizes across, µs per selection."""
    by_key = {(c.alg, c.size): c.us for c in cells if c.limit == limit}
    label = "whole failover list (limit 0)" if limit == 0 else f"limit {limit}"
    print(f"\nµs per selection, {label}")
    print(f"{'algorithm':<20}" + "".join(f"{'N=' + str(s):>10}" for s in sizes) + f"{'N=max/N=min':>13}")
    for alg in sorted(ALGORITHMS):
        row = [by_key[(alg, s)] for s in sizes]
        name = f"{alg:>2} {ALGORITHMS[alg].name}"
        print(f"{name:<20}" + "".join(f"{v:>10.2f}" for v in row) + f"{row[-1] / row[0]:>12.1f}x")


def print_verdict(cells: Sequence[Cell]) -> bool:
    """Whether every selection on a set of up to TARGET_MAX_SIZE took at most TARGET_US."""
    small = [c for c in cells if c.size <= TARGET_MAX_SIZE]
    if not small:
        print(f"\ntarget: no set of {TARGET_MAX_SIZE} or fewer destinations measured")
        return False
    worst = max(small, key=lambda c: c.us)
    met = worst.us <= TARGET_US
    print(f"\ntarget <= {TARGET_US:g} µs per selection for sets up to {TARGET_MAX_SIZE}: "
          f"{'MET' if met else 'NOT MET'} (worst: algorithm {worst.alg} {ALGORITHMS[worst.alg].name}, "
          f"N={worst.size}, limit {worst.limit}: {worst.us:.2f} µs)")
    return met


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 10, 100, 1000], help="set sizes")
    ap.add_argument("--limits", type=int, nargs="+", default=[0, 2], help="failover limits (0: all)")
    ap.add_argument("--down", type=float, default=0.0, help="fraction of each set inactive, 0..0.9")
    ap.add_argument("--time", type=float, default=0.1, help="seconds per batch")
    ap.add_argument("--repeats", type=int, default=3, help="batches per cell (the best counts)")
    args = ap.parse_args(argv)
    logger.remove()  # the state logs every load; only problems matter here
    logger.add(sys.stderr, level="WARNING")
    if any(s < 1 or s > 100_000 for s in args.sizes):
        ap.error("--sizes: each must be 1..100000")
    if not 0 <= args.down <= 0.9:
        ap.error("--down: must be 0..0.9")
    if not 0 < args.time <= 10 or not 1 <= args.repeats <= 20 or any(lim < 0 for lim in args.limits):
        ap.error("--time must be in (0, 10], --repeats 1..20, --limits >= 0")
    print(f"python {sys.version.split()[0]}, {len(ALGORITHMS)} algorithms, sizes {args.sizes}, "
          f"{args.down:.0%} of each set inactive")
    cells = run(args.sizes, args.limits, args.down, args.time, args.repeats)
    for limit in args.limits:
        print_table(cells, args.sizes, limit)
    print_verdict(cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
