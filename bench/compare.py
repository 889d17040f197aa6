"""The B2BUA next to Kamailio and Sippy B2BUA, back to back, under the same caller.

Each system in turn gets the same two sipp gateways (the e2e tests' "answer" scenario) and the
same caller (``bench/uac_proxy.xml``) at the same rates, with ``bench/load.py``'s steps and
columns:

* **b2bua**: this project with the shipped ``config.toml`` (dispatcher round robin, failover,
  probing every 10 s, INFO logging), media anchored;
* **kamailio**: Debian's ``kamailio`` with ``bench/kamailio.cfg`` (a transaction-stateful proxy,
  dispatcher round robin over the same gateways, failover, keepalives every 10 s; no media);
* **sippy**: Sippy B2BUA (``sippy`` from PyPI), every call to the first gateway by
  ``--static_route``; signalling only (no rtpproxy), single process.

    .venv/bin/python bench/compare.py                        # 200 400 600 calls/s, 60 s each
    .venv/bin/python bench/compare.py --rates 100 --seconds 5 --settle 2   # a quick check
    .venv/bin/python bench/compare.py --systems kamailio sippy --rates 1000 2000 3000

Needs: ``apt-get install kamailio`` and Sippy in a virtualenv of its own
(``python3 -m venv ~/.cache/b2bua/sippy-venv && ~/.cache/b2bua/sippy-venv/bin/pip install sippy``,
or ``--sippy PATH`` to its ``b2bua`` script). Capacity numbers come from a quiet machine only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from load import (  # noqa: E402 - bench/load.py, this script's neighbour
    B2bua,
    System,
    cpu_seconds,
    pin,
    pin_system,
    process_tree,
    pss_mb,
    run_systems,
    stop,
    wait_ready,
)

KAMAILIO_CFG = BENCH / "kamailio.cfg"
KAMAILIO_MODULES = ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules")
SIPPY_DEFAULT = Path.home() / ".cache" / "b2bua" / "sippy-venv" / "bin" / "b2bua"


def udp_bound(ip: str, port: int) -> bool:
    """Whether some process has bound ``ip:port`` (UDP), from /proc/net/udp."""
    want = f"{''.join(f'{int(x):02X}' for x in reversed(ip.split('.')))}:{port:04X}"
    return any(line.split()[1] == want for line in Path("/proc/net/udp").read_text().splitlines()[1:])


class Tree:
    """A server that is one process tree; CPU and PSS summed over it."""

    name = ""
    log_name = ""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path()

    def _spawn(self, workdir: Path, cmd: Sequence[str]) -> None:
        self.workdir = workdir
        with (workdir / self.log_name).open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=pin_system)

    def _wait_bound(self, ip: str, port: int) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            if udp_bound(ip, port):
                time.sleep(0.5)  # Kamailio forks its workers after binding
                return
            time.sleep(0.1)
        wait_ready(self.proc, self.workdir / self.log_name, b"\0never", self.name, 0)

    def cpu(self) -> float:
        assert self.proc is not None
        return sum(cpu_seconds(p) for p in process_tree(self.proc.pid))

    def memory(self) -> float:
        assert self.proc is not None
        return sum(pss_mb(p) for p in process_tree(self.proc.pid))

    def busy_ports(self) -> int:
        return 0  # signalling only: no media ports

    def stop(self) -> int:
        if self.proc is None:  # it never started: start() said why
            return 0
        stop(self.proc)
        return self.proc.returncode


class Kamailio(Tree):
    name = "kamailio"
    log_name = "kamailio.log"

    def __init__(self, children: int) -> None:
        super().__init__()
        self.children = children

    def start(self, workdir: Path, ip: str, port: int, gateways: Sequence[str]) -> None:
        binary = shutil.which("kamailio")
        mpath = next((p for p in KAMAILIO_MODULES if Path(p, "dispatcher.so").exists()), None)
        if binary is None or mpath is None:
            raise SystemExit("kamailio (with its dispatcher module) is missing: apt-get install kamailio")
        (workdir / "dispatcher.list").write_text("".join(f"1 sip:{gw}\n" for gw in gateways))
        text = KAMAILIO_CFG.read_text()
        for key, value in {"LISTEN": f"{ip}:{port}", "MPATH": mpath, "LIST_FILE": str(workdir / "dispatcher.list"),
                           "CHILDREN": str(self.children)}.items():
            text = text.replace(f"@{key}@", value)
        cfg = workdir / "kamailio.cfg"
        cfg.write_text(text)
        # -DD: stay in the foreground but fork the workers; -E: log to stderr; -Y: runtime dir;
        # -m 1024: 256 MB of shared memory ran out at 2000 calls/s ("tm: new_t(): out of mem", every
        # failed call a 503), its transactions of the last seconds held there
        self._spawn(workdir, [binary, "-f", str(cfg), "-DD", "-E", "-m", "1024", "-M", "16", "-Y", str(workdir)])
        self._wait_bound(ip, port)


class Sippy(Tree):
    name = "sippy"
    log_name = "sippy.log"

    def __init__(self, script: Path) -> None:
        super().__init__()
        self.script = script

    def start(self, workdir: Path, ip: str, port: int, gateways: Sequence[str]) -> None:
        if not self.script.exists():
            raise SystemExit(f"Sippy B2BUA is missing ({self.script}): python3 -m venv ~/.cache/b2bua/sippy-venv "
                             "&& ~/.cache/b2bua/sippy-venv/bin/pip install sippy (or --sippy PATH)")
        self._spawn(workdir, [str(self.script), "--foreground=on", "--auth_enable=off", "--acct_enable=off",
                              f"--sip_address={ip}", f"--sip_port={port}",
                              f"--static_route={gateways[0]}", f"--logfile={workdir / 'sippy-b2bua.log'}",
                              f"--pidfile={workdir / 'sippy.pid'}", f"--b2bua_socket={workdir / 'sippy.sock'}"])
        self._wait_bound(ip, port)

    def stop(self) -> int:
        """Sippy waits for its calls on SIGTERM and then some: killed, its exit code is no finding."""
        super().stop()
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", nargs="+", choices=("b2bua", "kamailio", "sippy"),
                    default=["b2bua", "kamailio", "sippy"])
    ap.add_argument("--rates", type=int, nargs="+", default=[200, 400, 600])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=60.0, help="idle seconds after a step before RSS is read again")
    ap.add_argument("--kamailio-children", type=int, default=4, help="Kamailio's UDP worker processes")
    ap.add_argument("--sippy", type=Path, default=SIPPY_DEFAULT, help="Sippy's b2bua script")
    ap.add_argument("--pin", type=int, nargs="?", const=1, default=0, metavar="N",
                    help="each system on the last CPU (N: the last N), the caller and gateways on the others")
    args = ap.parse_args()
    if args.pin:
        print(pin(args.pin), flush=True)
    make = {"b2bua": lambda: B2bua(), "kamailio": lambda: Kamailio(args.kamailio_children),
            "sippy": lambda: Sippy(args.sippy)}
    systems: list[System] = [make[name]() for name in args.systems]
    run_systems(systems, args.rates, args.seconds, settle=args.settle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
