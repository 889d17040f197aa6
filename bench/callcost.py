"""Where a call's cost goes, counted instead of timed (machine load does not change the counts).

The B2BUA runs the shipped ``config.toml`` (``bench/load.py``'s set-up: dispatcher round robin
over two sipp gateways, failover, probing, INFO logging). It is measured over an idle window
and over a window of ``--calls`` calls of the same length; the per-call numbers are
``(calls window - idle window) / calls``, so the loop's own ticks, keepalives and pjmedia's
clock thread drop out. Three tools, each in a run of its own:

* ``callgrind``: instructions per call (valgrind; kernel time is not counted), by shared object
  (self) and, inclusive, per pjsua2 callback into Python, per pjsua2 call from Python and per
  pjsip phase (transaction, dialog, INVITE session, SDP, media transport, stream, conference
  bridge), with how many times each ran per call;
* ``cprofile``: Python function calls per call (cProfile switched on by SIGUSR1 for the window);
* ``strace``: system calls per call (``strace -c -f``).

    .venv/bin/python bench/callcost.py                       # all three, 100 calls at 2 calls/s
    .venv/bin/python bench/callcost.py --tool callgrind --calls 200
    .venv/bin/python bench/callcost.py --tool cprofile --top 40

Bounded: each window lasts calls / rate seconds; valgrind makes the B2BUA ~50x slower, so keep
the rate at 2-3 calls/s under callgrind.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from load import (  # noqa: E402 - bench/load.py, this script's neighbour
    B2BUA_IP,
    free_port,
    run_caller,
    shipped_config,
    start_gateways,
    stop,
    wait_ready,
)

#: pjsua2 -> Python callbacks (SWIG directors) and Python -> pjsua2 calls worth a line
CALLBACKS = r"^SwigDirector_\w+::on\w+|^SwigDirector_LogWriter::write"
PY_TO_PJ = r"^_wrap_(Call|Account|Endpoint|AudioMedia|CallOpParam|new_|delete_)\w*"
#: pjsip/pjmedia functions that mark a phase of a call, with what they stand for
PHASES = {
    "pjsip_endpt_process_rx_data": "SIP in: parse done, modules (tsx, dialog, pjsua) handle a message",
    "pjsip_parse_rdata": "SIP parsing",
    "pjsip_tsx_create_uac2": "transaction (client) created",
    "pjsip_tsx_create_uas2": "transaction (server) created",
    "tsx_shutdown": "transaction destroyed",
    "pjsip_dlg_create_uac": "dialog (B leg) created",
    "create_uas_dialog": "dialog (A leg) created",
    "pjsip_inv_create_uac": "INVITE session (B leg)",
    "pjsip_inv_create_uas": "INVITE session (A leg)",
    "pjsip_transport_send": "SIP out: a message printed and sent",
    "pjsip_msg_print": "SIP printing",
    "pjmedia_sdp_neg_negotiate": "SDP offer/answer negotiation",
    "pjsua_media_channel_create_sdp": "SDP of our own built",
    "pjsua_media_channel_init": "media channel init (transports)",
    "create_rtp_rtcp_sock": "RTP+RTCP sockets: socket(), bind()",
    "pjmedia_transport_udp_attach": "UDP media transport on the sockets (ioqueue)",
    "pjmedia_transport_close": "media transport closed",
    "pjsua_media_channel_update": "media update (stream start)",
    "pjmedia_stream_create": "RTP stream created (codec, jitter buffer, RTCP)",
    "pjmedia_stream_destroy": "RTP stream destroyed",
    "pjmedia_conf_add_port": "conference bridge: port added",
    "pjmedia_conf_remove_port": "conference bridge: port removed",
    "pjmedia_conf_connect_port": "conference bridge: ports connected",
    "pjsua_media_channel_deinit": "media torn down",
    "pj_timer_heap_poll": "timers (pjsip's)",
    "pj_ioqueue_poll": "socket poll (epoll)",
    "pj_pool_create": "memory pools created",
    "pj_pool_release": "memory pools released",
    "malloc": "malloc",
    "free": "free",
}


# -- callgrind's output format -------------------------------------------------------------------


@dataclass
class Profile:
    total: int = 0
    self_by_fn: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    self_by_obj: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    incl_by_fn: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls_by_fn: dict[str, int] = field(default_factory=lambda: defaultdict(int))


_NAMED = re.compile(r"^(ob|fl|fi|fe|fn|cob|cfi|cfl|cfn)=(?:\((\d+)\))?\s*(.*)$")


def parse_callgrind(path: Path) -> Profile:
    """Self cost per function and object, and inclusive cost and call count per callee
    (summed over call sites; a recursive function counts its recursion more than once)."""
    prof = Profile()
    names: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}
    space = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl",
             "fn": "fn", "cfn": "fn"}
    fn = ob = cfn = ""
    pending_call: int | None = None
    for line in path.read_text(errors="replace").splitlines():
        if not line:
            continue
        m = _NAMED.match(line)
        if m:
            kind, ident, name = m.groups()
            table = names[space[kind]]
            if ident is not None:
                if name:
                    table[ident] = name
                name = table.get(ident, name)
            if kind == "fn":
                fn = name
            elif kind == "ob":
                ob = name
            elif kind == "cfn":
                cfn = name
            continue
        if line.startswith("calls="):
            pending_call = int(line[6:].split()[0])
            continue
        c0 = line[0]
        if c0.isdigit() or c0 in "+-*":
            parts = line.split()
            cost = int(parts[1]) if len(parts) > 1 else 0
            if pending_call is not None:
                prof.incl_by_fn[cfn] += cost
                prof.calls_by_fn[cfn] += pending_call
                pending_call = None
            else:
                prof.self_by_fn[fn] += cost
                prof.self_by_obj[Path(ob).name] += cost
            continue
        if line.startswith(("summary:", "totals:")):
            prof.total = int(line.split()[1])
    if not prof.total:
        prof.total = sum(prof.self_by_obj.values())
    return prof


def per_call(calls: Profile, idle: Profile, n: int) -> Profile:
    out = Profile()
    out.total = (calls.total - idle.total) // n
    for attr in ("self_by_fn", "self_by_obj", "incl_by_fn", "calls_by_fn"):
        a, b, o = getattr(calls, attr), getattr(idle, attr), getattr(out, attr)
        for key in set(a) | set(b):
            o[key] = (a.get(key, 0) - b.get(key, 0)) / n
    return out


def short(name: str) -> str:
    return re.sub(r"\(.*\)$", "", name)


def report_callgrind(p: Profile, top: int) -> None:
    total = p.total
    print(f"\ninstructions per call: {total:,.0f} (callgrind; kernel time not included)")
    print("\nby object (self):")
    for obj, cost in sorted(p.self_by_obj.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {cost:>12,.0f}  {100 * cost / total:5.1f} %  {obj}")
    for title, pattern in (("pjsua2 -> Python callbacks (inclusive)", CALLBACKS),
                           ("Python -> pjsua2 calls (inclusive)", PY_TO_PJ)):
        print(f"\n{title}:")
        rows = [(short(k), v, p.calls_by_fn.get(k, 0)) for k, v in p.incl_by_fn.items()
                if re.search(pattern, short(k)) and v > total * 0.002]
        for name, cost, calls in sorted(rows, key=lambda r: -r[1]):
            print(f"  {cost:>12,.0f}  {100 * cost / total:5.1f} %  {calls:5.1f} x  {name}")
    print("\npjsip/pjmedia phases (inclusive; nested phases are also inside their parents):")
    for fn_name, what in PHASES.items():
        keys = [k for k in p.incl_by_fn if short(k) == fn_name]
        cost = sum(p.incl_by_fn[k] for k in keys)
        calls = sum(p.calls_by_fn.get(k, 0) for k in keys)
        if not keys:
            continue
        print(f"  {cost:>12,.0f}  {100 * cost / total:5.1f} %  {calls:5.1f} x  {fn_name}: {what}")
    print(f"\ntop {top} functions by self cost:")
    for name, cost in sorted(p.self_by_fn.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {cost:>12,.0f}  {100 * cost / total:5.1f} %  {short(name)[:110]}")


# -- the runs -------------------------------------------------------------------------------------


class Rig:
    """Two gateways and the B2BUA (shipped config) started by ``prefix + [python -m ...]``."""

    #: TOML merged into the shipped config (``--extra``: an A/B of a setting; see ``load.merge_toml``)
    extra = ""

    def __init__(self, workdir: Path, prefix: Sequence[str], wrapper: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.gateways, addrs = start_gateways(workdir)
        port = free_port(B2BUA_IP)
        config = shipped_config(workdir, B2BUA_IP, port, addrs, extra=self.extra)
        self.target = [f"{B2BUA_IP}:{port}"]
        log = workdir / "b2bua.log"
        cmd = [*prefix, sys.executable, *(wrapper or ["-m", "b2bua"]), "run", "-c", str(config)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(self.proc, log, b"b2bua ready", "the B2BUA", 300)
        time.sleep(2)  # the first keepalives' answers

    def calls(self, n: int, rate: float) -> None:
        res = run_caller(self.workdir, self.target, rate, n)
        if res.ok != n:
            print(f"warning: {n - res.ok} of {n} calls failed (see {self.workdir})", file=sys.stderr)

    def close(self) -> None:
        stop(self.proc)
        for gw in self.gateways:
            stop(gw, signal.SIGINT)


def callgrind(n: int, rate: float, top: int) -> None:
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-callgrind-"))
    out = workdir / "callgrind.out"
    rig = Rig(workdir, ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"])
    pid = str(rig.proc.pid)
    try:
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", pid], check=True, stdout=subprocess.DEVNULL)
        rig.calls(max(4, n // 10), rate)  # warm-up: first-call work (imports, caches) stays out
        window = n / rate
        subprocess.run([*control, "-z", pid], check=True, stdout=subprocess.DEVNULL)
        time.sleep(window)
        subprocess.run([*control, "-d", "idle", pid], check=True, stdout=subprocess.DEVNULL)
        rig.calls(n, rate)
        time.sleep(2)  # the last calls' transactions and legs end
        subprocess.run([*control, "-d", "calls", pid], check=True, stdout=subprocess.DEVNULL)
        time.sleep(1)
    finally:
        rig.close()
    dumps = sorted(workdir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    if len(dumps) < 2:
        raise SystemExit(f"callgrind wrote {len(dumps)} dumps: see {workdir}")
    idle, calls = parse_callgrind(dumps[0]), parse_callgrind(dumps[1])
    # the calls window lasted longer (calls / rate + 2 s): scale the idle window to it
    scale = (n / rate + 2) / (n / rate)
    idle_scaled = Profile()
    idle_scaled.total = int(idle.total * scale)
    for attr in ("self_by_fn", "self_by_obj", "incl_by_fn", "calls_by_fn"):
        getattr(idle_scaled, attr).update({k: v * scale for k, v in getattr(idle, attr).items()})
    print(f"callgrind: {n} calls at {rate:g} calls/s; idle window {n / rate:.0f} s: "
          f"{idle.total / (n / rate):,.0f} instructions/s idle (loop, keepalives, media clock)")
    report_callgrind(per_call(calls, idle_scaled, n), top)
    print(f"\n{tick_corrected(calls, idle, n):,.0f} instructions per call, tick-corrected: the calls window "
          "less its loop ticks at the idle window's cost per tick")
    print(f"\nfiles: {workdir}")


def loop_ticks(p: Profile) -> float:
    """How often the loop polled pjsip (``libHandleEvents`` from Python) in a window."""
    return sum(v for k, v in p.calls_by_fn.items() if short(k).startswith("_wrap_Endpoint_libHandleEvents"))


def tick_corrected(calls: Profile, idle: Profile, n: int) -> float:
    """Instructions per call with the background taken out per loop tick instead of per second.

    Under valgrind the loop's pace varies from run to run (4 to 13 ticks more or fewer per call
    in one window than in the other), which moves the time-scaled figure above by +-70,000
    instructions a call; each tick costs about what an idle one does, so this figure does not
    move with the pace (an assumption: a busy tick's own background is an idle tick's).
    """
    ticks = loop_ticks(idle)
    if not ticks:
        return float("nan")
    return (calls.total - loop_ticks(calls) * idle.total / ticks) / n


PROFILED = """
import cProfile, os, runpy, signal, sys
prof = cProfile.Profile()
dumps = 0
def on(*_):
    prof.enable()
def off(*_):
    global dumps
    prof.disable()
    dumps += 1
    prof.dump_stats(f"{os.environ['B2BUA_PROFILE_OUT']}.{dumps}")  # .1 the idle window, .2 the calls
    prof.clear()
signal.signal(signal.SIGUSR1, on)
signal.signal(signal.SIGUSR2, off)
sys.argv = ["b2bua", *sys.argv[1:]]
runpy.run_module("b2bua", run_name="__main__", alter_sys=True)
"""


def cprofile_run(n: int, rate: float, top: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-cprofile-"))
    wrapper = workdir / "profiled.py"
    wrapper.write_text(PROFILED)
    os.environ["B2BUA_PROFILE_OUT"] = str(workdir / "window.prof")
    rig = Rig(workdir, [], [str(wrapper)])
    try:
        rig.calls(max(4, n // 10), rate)
        window = n / rate
        rig.proc.send_signal(signal.SIGUSR1)
        time.sleep(window)
        rig.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.5)
        rig.proc.send_signal(signal.SIGUSR1)
        rig.calls(n, rate)
        rig.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.5)
    finally:
        rig.close()
    idle = pstats.Stats(str(workdir / "window.prof.1"))
    calls = pstats.Stats(str(workdir / "window.prof.2"))
    stats_idle: dict[tuple[str, int, str], tuple[int, float]] = {
        k: (v[1], v[3]) for k, v in idle.stats.items()  # type: ignore[attr-defined]
    }
    rows = []
    total_calls = 0.0
    for key, v in calls.stats.items():  # type: ignore[attr-defined]
        ncalls = v[1] - stats_idle.get(key, (0, 0.0))[0]
        total_calls += ncalls
        rows.append((ncalls / n, key))
    print(f"cProfile: {n} calls at {rate:g} calls/s: {total_calls / n:,.0f} Python function calls per call "
          f"(idle window subtracted)")
    print(f"\ntop {top} by calls per call:")
    for per, (file, line, func) in sorted(rows, key=lambda r: -r[0])[:top]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        print(f"  {per:8.2f}  {func}  ({where})")
    print(f"\nfiles: {workdir}")


def strace_run(n: int, rate: float, top: int) -> None:
    if not shutil.which("strace"):
        raise SystemExit("strace is missing: apt-get install strace")
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-strace-"))
    rig = Rig(workdir, [])
    pid = str(rig.proc.pid)
    counts: dict[str, dict[str, int]] = {}
    try:
        rig.calls(max(4, n // 10), rate)
        for window in ("idle", "calls"):
            out = workdir / f"strace-{window}.txt"
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", pid],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            if window == "idle":
                time.sleep(n / rate)
            else:
                rig.calls(n, rate)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            counts[window] = _strace_counts(out.read_text())
    finally:
        rig.close()
    rows = [(counts["calls"].get(k, 0) - counts["idle"].get(k, 0)) / n for k in counts["calls"]]
    print(f"strace: {n} calls at {rate:g} calls/s: {sum(rows):.1f} system calls per call (idle window subtracted)")
    for name, per in sorted(((k, (v - counts["idle"].get(k, 0)) / n) for k, v in counts["calls"].items()),
                            key=lambda kv: -kv[1])[:top]:
        if per >= 0.05:
            print(f"  {per:7.2f}  {name}")
    print(f"\nfiles: {workdir}")


def _strace_counts(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and not line.lstrip().startswith("100.00"):
            name = parts[-1]
            try:
                out[name] = int(parts[3])
            except ValueError:
                continue
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", choices=("callgrind", "cprofile", "strace", "all"), default="all")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--extra", default="",
                    help="TOML merged into the shipped config's tables, e.g. '[sip]\\noverload_lag = 0.0001' "
                         "(\\n: a new line)")
    args = ap.parse_args()
    Rig.extra = args.extra.replace("\\n", "\n")
    if Rig.extra and not Rig.extra.endswith("\n"):
        Rig.extra += "\n"
    tools = ("cprofile", "strace", "callgrind") if args.tool == "all" else (args.tool,)
    for tool in tools:
        {"callgrind": callgrind, "cprofile": cprofile_run, "strace": strace_run}[tool](args.calls, args.rate, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
