"""What SIP over TLS costs the B2BUA: CPU per TLS handshake, and per OPTIONS over a kept connection.

A client on another loopback address opens ``--handshakes`` TLS connections to the B2BUA's
``tls:`` listener one after another (each: handshake, one OPTIONS, its 200, close), then sends
``--requests`` OPTIONS over one kept connection. Prints the B2BUA's CPU for each part (from
/proc, so the client's own CPU is not counted) per handshake and per request, next to the same
OPTIONS over UDP. The handshake runs on the B2BUA's loop thread (pjsip's ssl_sock): its cost is
what a flood of connections to a public ``tls:`` listener takes from calls (docs/security.md).

    .venv/bin/python bench/tls.py                         # 500 handshakes, 2000 requests
    .venv/bin/python bench/tls.py --handshakes 2000 --min-version 1.3

Bounded: every socket operation has a 5 s timeout and each part stops after ``--seconds``.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from tests.e2e.harness import B2buaProcess, free_port  # noqa: E402
from tests.e2e.tlscerts import make_ca, make_leaf  # noqa: E402

B2BUA_IP, CLIENT_IP = "127.0.0.1", "127.0.0.2"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def options(n: int, port: int, transport: str, src: tuple[str, int]) -> bytes:
    return (f"OPTIONS sip:{B2BUA_IP}:{port};transport={transport} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} {src[0]}:{src[1]};branch=z9hG4bK-bench{n}\r\n"
            f"From: <sip:bench@{CLIENT_IP}>;tag={n}\r\nTo: <sip:{B2BUA_IP}>\r\nCall-ID: bench-{n}@{CLIENT_IP}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def answered(sock: socket.socket) -> None:
    if not sock.recv(4096).startswith(b"SIP/2.0 200 "):
        raise SystemExit("the B2BUA did not answer 200")


def measure(pid: int, count: int, seconds: float, one: Callable[[int], None]) -> tuple[int, float, float]:
    """Run ``one(n)`` up to ``count`` times within ``seconds``: (done, elapsed s, B2BUA CPU s)."""
    cpu0, started, done = cpu_seconds(pid), time.monotonic(), 0
    while done < count and time.monotonic() - started < seconds:
        one(done)
        done += 1
    return done, time.monotonic() - started, cpu_seconds(pid) - cpu0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--handshakes", type=int, default=500)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0, help="longest each part may run")
    ap.add_argument("--min-version", default="1.2", choices=["1.2", "1.3"])
    args = ap.parse_args()
    logger.remove()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        ca = make_ca(work / "certs", "bench-ca")
        own = make_leaf(work / "certs", ca, "b2bua", B2BUA_IP)
        udp, tls = free_port(B2BUA_IP, "udp"), free_port(B2BUA_IP, "tcp")
        config = (f'[sip]\nlisten = ["udp:{B2BUA_IP}:{udp}", "tls:{B2BUA_IP}:{tls}"]\n'
                  f'[sip.tls]\ncertificate = "{own.cert}"\nprivate_key = "{own.key}"\nca_list = "{ca.cert}"\n'
                  f'min_version = "{args.min_version}"\n'
                  f'[log]\nlevel = "INFO"\n[control]\nsocket = ""\n[routing]\ndefault_target = "sip:{B2BUA_IP}:9"\n'
                  f'[security]\ntrusted = ["{CLIENT_IP}/32"]\nrequest_rate = 0.0\ntrusted_request_rate = 0.0\n')
        b2b = B2buaProcess.start(work, config)
        client = ssl.create_default_context(cafile=str(ca.cert))
        try:
            def handshake(n: int) -> None:
                raw = socket.create_connection((B2BUA_IP, tls), timeout=5, source_address=(CLIENT_IP, 0))
                with client.wrap_socket(raw, server_hostname=B2BUA_IP) as s:
                    s.sendall(options(n, tls, "tls", s.getsockname()))
                    answered(s)

            kept = client.wrap_socket(socket.create_connection((B2BUA_IP, tls), timeout=5,
                                                               source_address=(CLIENT_IP, 0)),
                                      server_hostname=B2BUA_IP)
            plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            plain.bind((CLIENT_IP, 0))
            plain.settimeout(5)
            plain.connect((B2BUA_IP, udp))

            def over_tls(n: int) -> None:
                kept.sendall(options(100_000 + n, tls, "tls", kept.getsockname()))
                answered(kept)

            def over_udp(n: int) -> None:
                plain.send(options(200_000 + n, udp, "udp", plain.getsockname()))
                answered(plain)

            print(f"TLS {args.min_version}+ (P-256 certificate), B2BUA CPU from /proc:")
            for name, count, one in (("handshake + OPTIONS, new connection", args.handshakes, handshake),
                                     ("OPTIONS over one kept TLS connection", args.requests, over_tls),
                                     ("OPTIONS over UDP", args.requests, over_udp)):
                done, elapsed, cpu = measure(b2b.pid, count, args.seconds, one)
                print(f"  {name:38} {done:6} in {elapsed:5.1f} s  {done / elapsed:7.0f}/s  "
                      f"{cpu / max(done, 1) * 1e6:8.0f} µs CPU each", flush=True)
            kept.close()
            plain.close()
        finally:
            b2b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
