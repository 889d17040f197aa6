"""Memory by call count: what the B2BUA keeps after N calls, and what it gives back.

The B2BUA runs the shipped ``config.toml`` (``bench/load.py``'s set-up). ``--rounds`` times,
``--calls`` calls are offered at ``--rate``; after each round the control method
``core.memory`` is read at once and again when answered transactions have ended (the 5 s
linger, ``b2bua.endpoint.TSX_WAIT_MS``). RSS that still grows round after round, with no
transaction and no call leg left, is kept per call; what ``--settle`` seconds of idle give
back shows the heap trim (``b2bua/heap.py``). Machine load changes the timing, not the counts.

    .venv/bin/python bench/memory.py                        # 5 rounds of 4000 calls at 200 calls/s
    .venv/bin/python bench/memory.py --rounds 3 --calls 1000 --rate 100
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from load import B2BUA_IP, free_port, run_caller, shipped_config, start_b2bua, start_gateways, stop  # noqa: E402

from b2bua.control import ControlClient  # noqa: E402


def memory(sock: Path) -> dict[str, Any]:
    result: dict[str, Any] = ControlClient.unix(sock).call("core.memory")
    return result


def row(label: str, m: dict[str, Any]) -> str:
    return (f"{label:<28} {m['rss_mb']:>8.1f} {m.get('heap_in_use_mb', 0):>8.1f} {m.get('heap_free_mb', 0):>8.1f} "
            f"{m['transactions']:>6} {m['legs_in_use']:>5} {m['legs_made']:>8} {m['heap_trims']:>5}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--linger", type=float, default=7.0, help="seconds after a round before the second reading")
    ap.add_argument("--settle", type=float, default=15.0, help="idle seconds at the end (the trim comes after 10)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-memory-"))
    gateways, addrs = start_gateways(workdir)
    port = free_port(B2BUA_IP)
    proc = start_b2bua(workdir, shipped_config(workdir, B2BUA_IP, port, addrs, max_calls=1000))
    sock = workdir / "b2bua.sock"
    try:
        time.sleep(2)
        print(f"{'':<28} {'RSS MB':>8} {'heap use':>8} {'heap free':>8} {'tsx':>6} {'legs':>5} "
              f"{'made':>8} {'trims':>5}")
        print(row("idle", memory(sock)), flush=True)
        for n in range(1, args.rounds + 1):
            res = run_caller(workdir, [f"{B2BUA_IP}:{port}"], args.rate, args.calls)
            print(row(f"round {n}: {res.ok}/{res.calls} ok, at once", memory(sock)), flush=True)
            time.sleep(args.linger)
            print(row(f"round {n}: {args.linger:g} s later", memory(sock)), flush=True)
        time.sleep(args.settle)
        print(row(f"{args.settle:g} s more idle", memory(sock)), flush=True)
    finally:
        stop(proc)
        for gw in gateways:
            stop(gw, signal.SIGINT)
    print(f"logs: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
