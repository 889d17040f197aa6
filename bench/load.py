"""Call-rate benchmark: a sipp caller -> the B2BUA -> two sipp gateways, on loopback.

By default every step is what docs/performance.md's capacity numbers are: **60 s of offered
load through the shipped ``config.toml``** (dispatcher round robin over two gateways in its
SQLite table, failover, OPTIONS probing every 10 s, INFO logging; only ``listen`` and
``max_calls`` changed), and the caller behaves as an upstream proxy does (``bench/uac_proxy.xml``:
RFC 3261 retransmissions, a 503 ACKed at once and counted apart). Per offered rate it prints:

* completed calls/s (200 answered and hung up, over the time the offer took), failed %, 503s;
* p50/p99 setup time (INVITE to 200 at the caller);
* the B2BUA's CPU (cores, averaged over the step) and per completed call (ms/call: what a call
  costs in that hour; the VM's speed drifts, so compare it within one run), RSS before, at the end, and ``--settle``
  seconds (60) after the load ended, with the process idle;
* RTP/RTCP ports pjsua found still held by calls up (its "RTP socket bind() ... Address already
  in use") and skipped during the step;
* steal %: the share of the machine's CPU time the hypervisor took during the step (/proc/stat),
  one reason the same load lands differently from one hour to the next on a VM.

    .venv/bin/python bench/load.py                          # 200 400 600 calls/s, 60 s each
    .venv/bin/python bench/load.py --rates 1000 --seconds 60
    .venv/bin/python bench/load.py --rates 400 --seconds 5 --settle 5     # a quick check
    .venv/bin/python bench/load.py --no-plugins             # [routing] default_target, no plugins
    .venv/bin/python bench/load.py --caller sipp            # sipp's built-in uac scenario
    .venv/bin/python bench/load.py --workers 2              # two B2BUA processes (b2bua.workers)
    .venv/bin/python bench/load.py --direct                 # and sipp calling a gateway directly
    .venv/bin/python bench/load.py --concurrent 1000        # hold 1000 bridged calls
    .venv/bin/python bench/load.py --recovery 800           # overload, then 100 calls/s probes
    .venv/bin/python bench/load.py --pin --rates 1000       # the B2BUA on a CPU of its own

``--pin`` gives the system under test the last CPU (``--pin N``: the last N) and the caller and
gateways the others, as a server in front of real gateways has its peers on other machines
(unpinned on loopback, a ``sendto`` may wake the receiving sipp on the sender's CPU). For this
B2BUA it made no difference beyond the noise; Kamailio and Sippy B2BUA fail fewer calls pinned
(docs/performance.md).

Every run is bounded in calls and time. Needs sipp (scripts/setup.sh --test installs it).
Capacity numbers come from a quiet machine only (``uptime`` load under 1 before the run).
``bench/compare.py`` runs Kamailio and Sippy B2BUA under the same caller with these helpers.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
SHIPPED_CONFIG = ROOT / "config.toml"
UAC_PROXY = BENCH / "uac_proxy.xml"
# addresses of their own: ports on 127.0.0.1 are often taken by other runs on a shared machine
CALLER_IP, B2BUA_IP = "127.0.0.72", "127.0.0.71"
GATEWAY_IPS = ("127.0.0.73", "127.0.0.74")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: the B2BUA's summary of RTP/RTCP ports pjsua found busy and skipped (pjsua_media.c
#: create_rtp_rtcp_sock logs each at ERROR: "RTP socket bind() at ... Address already in use")
BUSY_PORTS = re.compile(r"(\d+) RTP/RTCP port\(s\) were still held")
#: the CPUs of the system under test (``--pin``); None: the scheduler places every process
SYSTEM_CPUS: set[int] | None = None


def pin(system_cpus: int) -> str:
    """Give the system under test the last ``system_cpus`` CPUs of this process's set and this
    process (so the sipp caller and gateways it starts) the others; returns a line saying so."""
    global SYSTEM_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    if not 0 < system_cpus < len(cpus):
        raise SystemExit(f"--pin {system_cpus}: {len(cpus)} CPU(s) here, the caller and gateways need one")
    SYSTEM_CPUS = set(cpus[-system_cpus:])
    os.sched_setaffinity(0, cpus[:-system_cpus])
    return f"pinned: system under test on CPU {sorted(SYSTEM_CPUS)}, caller and gateways on {cpus[:-system_cpus]}"


def pin_system() -> None:
    """``preexec_fn`` of a system under test: its CPUs (``--pin``); every thread and child inherits them."""
    if SYSTEM_CPUS:
        os.sched_setaffinity(0, SYSTEM_CPUS)


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (Kamailio's shared memory) counted once over a tree."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1e3
    return 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (Kamailio forks its workers)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


class System(Protocol):
    """A SIP server under test: started on (ip, port), routing to the gateways."""

    name: str

    def start(self, workdir: Path, ip: str, port: int, gateways: Sequence[str]) -> None: ...

    def cpu(self) -> float:
        """CPU seconds used so far by all its processes."""
        ...

    def memory(self) -> float:
        """MB resident (RSS; PSS summed over a multi-process tree)."""
        ...

    def busy_ports(self) -> int:
        """RTP/RTCP ports found busy so far (0 for a server without media)."""
        ...

    def stop(self) -> int:
        """Stop it; the exit code (non-zero: something went wrong at shutdown)."""
        ...


@dataclass
class Step:
    """One offered rate's numbers."""

    system: str
    offered: int
    calls: int = 0  #: calls the caller placed
    ok: int = 0  #: answered 200 and hung up
    refused: int = 0  #: answered 503
    window: float = float("nan")  #: seconds from the first INVITE to the last call placed and done
    p50: float = float("nan")
    p99: float = float("nan")
    cpu: float = 0.0  #: cores, averaged over the step
    rss_before: float = 0.0
    rss_after: float = 0.0
    rss_settled: float = float("nan")
    busy_ports: int = 0
    steal: float = float("nan")  #: % of the machine's CPU time the hypervisor took over the step
    notes: list[str] = field(default_factory=list)

    @property
    def completed_cps(self) -> float:
        return self.ok / self.window if self.window > 0 else 0.0

    @property
    def cpu_ms_per_call(self) -> float:
        """The system's CPU per completed call (refused and failed calls' share included): what a
        call costs in the hour measured, comparable across rates below saturation."""
        return 1000.0 * self.cpu / self.completed_cps if self.completed_cps > 0 else float("nan")

    @property
    def failed_pct(self) -> float:
        return 100.0 * (self.calls - self.ok) / max(1, self.calls)


HEADER = (f"{'system':<12} {'offered':>7} {'completed/s':>11} {'failed%':>8} {'503':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'CPU':>5} {'ms/call':>7} {'RSS MB before/after/settled':>28} {'busy RTP':>8} {'steal%':>6}")


def format_step(s: Step) -> str:
    rss = f"{s.rss_before:.0f} / {s.rss_after:.0f} / {s.rss_settled:.0f}"
    return (f"{s.system:<12} {s.offered:>7} {s.completed_cps:>11.1f} {s.failed_pct:>8.3f} {s.refused:>6} "
            f"{s.p50:>7.1f} {s.p99:>7.1f} {s.cpu:>5.2f} {s.cpu_ms_per_call:>7.2f} {rss:>28} {s.busy_ports:>8} "
            f"{s.steal:>6.1f}")


def machine_ticks() -> tuple[int, int]:
    """The machine's CPU time so far, all of it and the part the hypervisor took (``steal``), in
    clock ticks (/proc/stat's first line). On a VM whose speed drifts, steal is one cause seen."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


# -- the peers ----------------------------------------------------------------------------------


def start_gateway(workdir: Path, ip: str, port: int) -> subprocess.Popen[bytes]:
    """The e2e tests' "answer" gateway: 100, 180, 200; keepalive OPTIONS get 200 (sipp's
    built-in uas ignores them, and the dispatcher would mark both gateways down)."""
    scenario = workdir / "uas_gateway.xml"
    if not scenario.exists():
        sys.path.insert(0, str(ROOT))
        from tests.e2e.harness import gateway_scenario, render_scenario

        scenario.write_text(render_scenario(*gateway_scenario("answer")))
    return subprocess.Popen(
        ["sipp", "-sf", str(scenario), "-i", ip, "-p", str(port), "-nostdin", "-max_socket", "10000",
         "-trace_err", "-error_file", str(workdir / f"uas_{ip}_err.log")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def start_gateways(workdir: Path, ips: Sequence[str] = GATEWAY_IPS) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, addrs = [], []
    for ip in ips:
        port = free_port(ip)
        procs.append(start_gateway(workdir, ip, port))
        addrs.append(f"{ip}:{port}")
    time.sleep(0.3)
    for proc in procs:
        if proc.poll() is not None:
            raise SystemExit(f"a sipp gateway did not start: see {workdir}")
    return procs, addrs


@dataclass
class CallerResult:
    calls: int
    ok: int
    refused: int
    window: float
    p50: float
    p99: float


def _last_row(path: Path) -> dict[str, str]:
    rows = list(csv.reader(path.read_text().splitlines(), delimiter=";")) if path.exists() else []
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def run_caller(workdir: Path, targets: Sequence[str], rate: float, calls: int, *, hold_ms: int = 0,
               caller: str = "proxy", ip: str = CALLER_IP) -> CallerResult:
    """Offer ``calls`` calls at ``rate`` per second, spread over ``targets`` (one sipp each, the
    rate split evenly); blocks until they are done (bounded: the offer's time x 3 + 60 s)."""
    tag = f"c{time.monotonic_ns()}"
    share_rate, share_calls = rate / len(targets), calls // len(targets)
    seconds = calls / max(rate, 1e-9)
    timeout = seconds * 3 + hold_ms / 1000 + 60
    procs = []
    for n, target in enumerate(targets):
        port = free_port(ip)
        scen = ["-sf", str(UAC_PROXY)] if caller == "proxy" else ["-sn", "uac"]
        cmd = ["sipp", *scen, "-i", ip, "-p", str(port), "-r", f"{share_rate:g}", "-rp", "1000",
               "-m", str(share_calls), "-l", str(int(max(share_rate * 4, 100) + share_rate * hold_ms / 1000)),
               "-d", str(hold_ms), "-s", "1000", "-nostdin", "-max_socket", "10000",
               "-max_invite_retrans", "6", "-max_non_invite_retrans", "10",
               "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-stf", f"{tag}_{n}_stat.csv", "-fd", "1",
               "-trace_counts", "-timeout", f"{int(timeout)}s", "-timeout_error", target]
        procs.append(subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # sipp names its trace files <scenario>_<pid>_...: remember each pid
    started = time.monotonic()
    for proc in procs:
        try:
            proc.wait(timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    window = time.monotonic() - started - hold_ms / 1000
    total = ok = refused = 0
    samples: list[float] = []
    prefix = "uac_proxy" if caller == "proxy" else "uac"
    for n, proc in enumerate(procs):
        stat = _last_row(workdir / f"{tag}_{n}_stat.csv")
        total += int(stat.get("TotalCallCreated", 0))
        successful = int(stat.get("SuccessfulCall(C)", 0))
        counts = _last_row(next(iter(workdir.glob(f"{prefix}_{proc.pid}_counts.csv")), workdir / "-"))
        n503 = sum(int(v) for k, v in counts.items() if re.fullmatch(r"\d+_503_Recv", k))
        refused += n503
        ok += successful - (n503 if caller == "proxy" else 0)  # the scenario ends a 503 call "successfully"
        for path in workdir.glob(f"{prefix}_{proc.pid}_rtt.csv"):
            for row in csv.reader(path.read_text().splitlines()[1:], delimiter=";"):
                if len(row) >= 2:
                    samples.append(float(row[1]))
    samples.sort()
    p50 = statistics.median(samples) if samples else float("nan")
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else float("nan")
    # sipp ends when the last call is done: the window is how long the offer took to be served
    return CallerResult(max(total, calls), ok, refused, window, p50, p99)


def run_step(workdir: Path, system: System, targets: Sequence[str], rate: int, seconds: float, *,
             hold_ms: int = 0, caller: str = "proxy", settle: float = 60.0) -> Step:
    """One offered rate against ``system``, sampled before, after, and ``settle`` s after."""
    step = Step(system.name, rate)
    step.rss_before = system.memory()
    busy0 = system.busy_ports()
    cpu0, t0 = system.cpu(), time.monotonic()
    total0, steal0 = machine_ticks()
    res = run_caller(workdir, targets, rate, int(rate * seconds), hold_ms=hold_ms, caller=caller)
    step.cpu = (system.cpu() - cpu0) / (time.monotonic() - t0)
    total1, steal1 = machine_ticks()
    step.steal = 100.0 * (steal1 - steal0) / max(1, total1 - total0)
    step.rss_after = system.memory()
    step.calls, step.ok, step.refused, step.window = res.calls, res.ok, res.refused, res.window
    step.p50, step.p99 = res.p50, res.p99
    if settle > 0:
        time.sleep(settle)
        step.rss_settled = system.memory()
    step.busy_ports = system.busy_ports() - busy0
    return step


# -- the B2BUA ----------------------------------------------------------------------------------


def _replace_line(text: str, pattern: str, new: str) -> str:
    out, n = re.subn(pattern, new, text, count=1, flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"config.toml has no line matching {pattern!r}: update bench/load.py")
    return out


def _header(table: str) -> re.Pattern[str]:
    """A table's header line (``[sip]``, a comment after it allowed), not the line break."""
    return re.compile(rf"^{re.escape(table)}[ \t]*(#.*)?$", re.MULTILINE)


def merge_toml(text: str, extra: str) -> str:
    """``text`` (a config file) with ``extra``'s settings in it: a key of a table ``text`` has
    replaces that key's line there or joins the table after its header, a table ``text`` lacks
    is appended, keys before any table header go to the top. Both must be TOML as line-based
    as the shipped config (``key = value`` on one line); the result is checked with tomllib.
    So ``--extra '[sip]\noverload_lag = 0.0001'`` sets one key of the shipped ``[sip]``."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the project's floor is 3.10, with tomli
        import tomli as tomllib

    table = ""
    for line in extra.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            table = stripped
            if not _header(table).search(text):
                text = text.rstrip("\n") + f"\n\n{table}\n"
            continue
        key = stripped.split("=", 1)[0].strip()
        start = 0
        if table:
            header = _header(table).search(text)
            assert header is not None  # added above
            start = header.end()
        nxt = re.compile(r"^\[", re.MULTILINE).search(text, start)
        end = nxt.start() if nxt else len(text)
        same = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE).search(text, start, end)
        if same:
            text = text[:same.start()] + stripped + text[same.end():]
        else:
            text = text[:start] + ("\n" if table else "") + stripped + ("" if table else "\n") + text[start:]
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"the config with --extra merged is not valid TOML: {exc}") from None
    return text


def shipped_config(workdir: Path, ip: str, port: int, gateways: Sequence[str], *, max_calls: int = 0,
                   extra: str = "") -> Path:
    """The repository's config.toml with only ``listen`` (and ``max_calls``) changed, in
    ``workdir`` beside its SQLite destinations table (set 1: the gateways)."""
    sys.path.insert(0, str(ROOT))
    from loguru import logger

    from plugins.dispatcher.sqlstore import SqlStore

    logger.disable("plugins")  # its "created table" line would cut into the table printed

    text = _replace_line(SHIPPED_CONFIG.read_text(), r"^listen = .*$", f'listen = ["udp:{ip}:{port}"]')
    if max_calls:
        text = _replace_line(text, r"^max_calls = \d+", f"max_calls = {max_calls}")
    db = workdir / "dispatcher.db"
    if not db.exists():
        store = SqlStore(f"sqlite:///{db}")
        store.ensure_schema()
        for gw in gateways:
            store.add(1, f"sip:{gw}")
        store.close()
    path = workdir / "config.toml"
    path.write_text(merge_toml(text, extra) if extra else text)
    return path


def plain_config(workdir: Path, ip: str, port: int, gateway: str, max_calls: int) -> Path:
    """No plugins: every call to one gateway by ``[routing] default_target`` (the old bench)."""
    path = workdir / "config.toml"
    path.write_text(
        f'[sip]\nlisten = ["udp:{ip}:{port}"]\nmax_calls = {max_calls}\nmax_forks = 1\n'
        f'[log]\nlevel = "INFO"\n[control]\nsocket = ""\n'
        f'[routing]\ndefault_target = "sip:{gateway}"\n'
    )
    return path


def wait_ready(proc: subprocess.Popen[bytes], log: Path, text: bytes, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_bytes():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop(proc)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise SystemExit(f"{what} did not start:\n{tail}")


def start_b2bua(workdir: Path, config: Path, log_name: str = "b2bua.log",
                args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    log = workdir / log_name
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "b2bua", "run", "-c", str(config), *args], cwd=workdir,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin_system)
    wait_ready(proc, log, b"b2bua ready", "the B2BUA")
    return proc


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class B2bua:
    """This project's B2BUA: one process, or ``workers`` of them (``b2bua.workers``)."""

    def __init__(self, *, plugins: bool = True, max_calls: int = 1000, workers: int = 0) -> None:
        self.name = "b2bua" if not workers else f"b2bua x{workers}"
        self.plugins, self.max_calls, self.workers = plugins, max_calls, workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path()
        self.ports: list[int] = []

    def start(self, workdir: Path, ip: str, port: int, gateways: Sequence[str]) -> None:
        self.workdir = workdir
        if self.plugins:
            config = shipped_config(workdir, ip, port, gateways, max_calls=self.max_calls)
        else:
            config = plain_config(workdir, ip, port, gateways[0], self.max_calls)
        if self.workers:
            log = workdir / "b2bua.log"
            with log.open("wb") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "b2bua.workers", "-c", str(config), "-n", str(self.workers)],
                    cwd=workdir, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin_system)
            wait_ready(self.proc, log, b"workers ready", "the B2BUA workers", 60)
            self.ports = [port + i for i in range(self.workers)]
        else:
            self.proc = start_b2bua(workdir, config)
            self.ports = [port]

    def _pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid) if self.workers else [self.proc.pid]

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self._pids())

    def memory(self) -> float:
        return sum(rss_mb(p) for p in self._pids())

    def busy_ports(self) -> int:
        return sum(int(n) for path in self.workdir.glob("b2bua*.log")
                   for n in BUSY_PORTS.findall(path.read_text(errors="replace")))

    def stop(self) -> int:
        assert self.proc is not None
        stop(self.proc)
        return self.proc.returncode


class Direct:
    """No server: the caller calls the first gateway itself (the machine's ceiling)."""

    name = "direct"

    def start(self, workdir: Path, ip: str, port: int, gateways: Sequence[str]) -> None:
        pass

    def cpu(self) -> float:
        return 0.0

    def memory(self) -> float:
        return 0.0

    def busy_ports(self) -> int:
        return 0

    def stop(self) -> int:
        return 0


def run_systems(systems: Sequence[System], rates: Sequence[int], seconds: float, *, hold_ms: int = 0,
                caller: str = "proxy", settle: float = 60.0, pause: float = 5.0) -> list[Step]:
    """Each system in turn, every rate, against the same two gateways and caller."""
    if not shutil.which("sipp"):
        raise SystemExit("sipp is missing: scripts/setup.sh --test installs it")
    print(HEADER, flush=True)
    steps: list[Step] = []
    for system in systems:
        workdir = Path(tempfile.mkdtemp(prefix=f"b2bua-bench-{system.name.replace(' ', '')}-"))
        gateways, addrs = start_gateways(workdir)
        port = free_port(B2BUA_IP)
        try:
            system.start(workdir, B2BUA_IP, port, addrs)
            targets = ([addrs[0]] if isinstance(system, Direct)
                       else [f"{B2BUA_IP}:{p}" for p in getattr(system, "ports", [port])])
            time.sleep(pause)  # start-up work (first keepalives, imports) out of the first step
            for rate in rates:
                step = run_step(workdir, system, targets, rate, seconds, hold_ms=hold_ms, caller=caller,
                                settle=settle)
                steps.append(step)
                print(format_step(step), flush=True)
                time.sleep(pause)
        finally:
            code = system.stop()
            for gw in gateways:
                stop(gw, signal.SIGINT)  # sipp ends at once on SIGINT (it ignores SIGTERM while busy)
            if code:  # an abort at shutdown (negative: the signal) must not go unseen
                print(f"{system.name} exited with {code}: see {workdir}", flush=True)
            print(f"{system.name} logs: {workdir}", flush=True)
    return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, nargs="+", default=[200, 400, 600])
    ap.add_argument("--seconds", type=float, default=60.0, help="offered load per step (capacity: 60 or more)")
    ap.add_argument("--settle", type=float, default=60.0, help="idle seconds after a step before RSS is read again")
    ap.add_argument("--hold-ms", type=int, default=0, help="call duration at the caller")
    ap.add_argument("--caller", choices=("proxy", "sipp"), default="proxy",
                    help="proxy: bench/uac_proxy.xml (503 ACKed and counted); sipp: sipp's built-in uac")
    ap.add_argument("--no-plugins", action="store_true",
                    help="no plugins: [routing] default_target to one gateway (not the shipped config)")
    ap.add_argument("--workers", type=int, default=0, help="run N B2BUA worker processes (b2bua.workers)")
    ap.add_argument("--direct", action="store_true", help="also sipp calling a gateway directly (the ceiling)")
    ap.add_argument("--concurrent", type=int, default=0,
                    help="instead: hold this many bridged calls for 20 s (ramp 100 calls/s)")
    ap.add_argument("--recovery", type=int, default=0, metavar="RATE",
                    help="instead: overload at RATE calls/s for --seconds, then probe at 100 calls/s "
                         "2, 30 and 60 s later (does the B2BUA recover?)")
    ap.add_argument("--pin", type=int, nargs="?", const=1, default=0, metavar="N",
                    help="the B2BUA on the last CPU (N: the last N), the caller and gateways on the others")
    args = ap.parse_args()
    if args.pin:
        print(pin(args.pin), flush=True)
    if args.concurrent or args.recovery:
        return single_modes(args)
    systems: list[System] = [B2bua(plugins=not args.no_plugins, workers=args.workers)]
    if args.direct:
        systems.append(Direct())
    run_systems(systems, args.rates, args.seconds, hold_ms=args.hold_ms, caller=args.caller, settle=args.settle)
    return 0


def single_modes(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-bench-"))
    gateways, addrs = start_gateways(workdir)
    port = free_port(B2BUA_IP)
    system = B2bua(plugins=not args.no_plugins, max_calls=args.concurrent + 20 if args.concurrent else 1000)
    system.start(workdir, B2BUA_IP, port, addrs)
    target = [f"{B2BUA_IP}:{port}"]
    try:
        if args.concurrent:
            return concurrent(workdir, system, target, args.concurrent, args.caller)
        return recovery(workdir, target, args.recovery, args.seconds, args.caller)
    finally:
        code = system.stop()
        for gw in gateways:
            stop(gw, signal.SIGINT)
        if code:
            print(f"the B2BUA exited with {code}: see {workdir / 'b2bua.log'}", flush=True)
        print(f"logs: {workdir}")


def recovery(workdir: Path, target: list[str], rate: int, seconds: float, caller: str) -> int:
    """Overload the B2BUA, then check that calls at a modest rate go through again."""
    over = run_caller(workdir, target, rate, int(rate * seconds), caller=caller)
    print(f"overload: {rate} calls/s for {seconds:g} s -> {over.ok / over.window:.0f} completed/s, "
          f"{100 * (over.calls - over.ok) / max(1, over.calls):.1f} % failed ({over.refused} answered 503)",
          flush=True)
    ended = time.monotonic()
    for after in (2, 30, 60):
        time.sleep(max(0.0, ended + after - time.monotonic()))
        probe = run_caller(workdir, target, 100, 500, caller=caller)
        print(f"{after:>3} s later: 100 calls/s x 5 s -> {100 * (probe.calls - probe.ok) / max(1, probe.calls):.1f} "
              f"% failed, p99 setup {probe.p99:.0f} ms", flush=True)
    return 0


def concurrent(workdir: Path, system: B2bua, target: list[str], n: int, caller: str) -> int:
    """Ramp to ``n`` calls held for 20 s, sample the B2BUA, then let them all hang up."""
    hold_ms = int(n / 100 * 1000) + 20000
    cpu0, t0 = system.cpu(), time.monotonic()
    result = run_caller(workdir, target, 100, n, hold_ms=hold_ms, caller=caller)
    cpu = (system.cpu() - cpu0) / (time.monotonic() - t0)
    failed = result.calls - result.ok
    print(f"concurrent calls held: {n} for {hold_ms / 1000:.0f} s | completed {result.ok} failed {failed} "
          f"({100 * failed / max(1, result.calls):.2f} %) | p99 setup {result.p99:.1f} ms | "
          f"CPU {cpu:.2f} cores avg | RSS {system.memory():.0f} MB")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
