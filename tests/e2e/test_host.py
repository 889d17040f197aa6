"""The host over real SIP, without the dispatcher: calls, CANCEL, failures, timers, forking,
admission, load, plugins and bad input (issue 2)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .configs import received_responses
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, B2buaProcess, Caller, Gateway, free_port, wait_until

DEFAULT_SIP = "shutdown_grace = 2.0\nmax_calls = 300"


def host_config(b2b_ip: str, port: int, *, target: str = "", extra: str = "", sip: str = "",
                plugins: str = "[]", transport: str = "udp") -> str:
    """No overload shedding: a SIP message 100 ms late on a loaded test host must not turn these
    tests' calls into 503s (overload has its own test in test_ops.py)."""
    return f"""
[sip]
listen = ["{transport}:{b2b_ip}:{port}"]
attempt_timeout = 1.0
answer_timeout = 5.0
overload_delay = 0
{sip or DEFAULT_SIP}
[log]
level = "DEBUG"
[control]
socket = "b2bua.sock"
[routing]
default_target = "{target}"
[plugins]
enabled = {plugins}
{extra}
"""


class Host:
    """A B2BUA on its own address routing to ``target``."""

    def __init__(self, factory: B2buaFactory, addresses: AddressAllocator, target: str = "",
                 subdir: str | None = None, **kw: str) -> None:
        self.ip = addresses.next()
        self.port = free_port(self.ip, "both")
        self.proc: B2buaProcess = factory(host_config(self.ip, self.port, target=target, **kw), subdir=subdir)


def test_basic_call_caller_hangs_up(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                    gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    result = caller.run_calls(b2b.ip, b2b.port, n=3, rate=10, call_duration_ms=300, service="4930123")
    assert result.final_codes == [200, 200, 200], result.describe()
    assert all(180 in call.codes for call in result.calls), "the gateway's 180 was relayed"
    assert gw.count("INVITE") == 3 and gw.count("ACK") == 3 and gw.count("BYE") == 3
    # the B leg carries the caller's number in its Request-URI
    assert gw.requests("INVITE")[0].first_line.startswith(f"INVITE sip:4930123@{gw.ip}:{gw.port}")
    assert "answered" in b2b.proc.log_text()


def test_callee_hangs_up(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                         gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("hangup:300")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=5, behaviour="hangup-by-callee")
    assert result.ok, result.describe()
    assert result.final_codes == [200, 200]
    assert gw.count("BYE") == 0  # the gateway sent the BYEs; it received none
    assert "callee-hangup" in b2b.proc.log_text()


def test_caller_cancel_reaches_the_gateway(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                           gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("ring")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=5, behaviour="cancel", cancel_after_ms=300)
    assert result.final_codes == [487, 487], result.describe()
    assert gw.count("CANCEL") == 2
    assert gw.count("ACK") == 2  # for the gateway's 487s


def test_gateway_failures_reach_the_caller(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                           gateway_factory: GatewayFactory, caller: Caller) -> None:
    # a gateway's 503 reaches the caller as 500: a 503 from us would tell the caller's side to
    # send this B2BUA nothing at all for a while (RFC 3261 21.5.4, 16.7; Kamailio's tm does the same)
    for code, relayed in ((404, 404), (486, 486), (503, 500)):
        gw = gateway_factory(f"reject:{code}")
        b2b = Host(b2bua_factory, addresses, gw.uri, subdir=str(code))
        result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour=f"expect:{relayed}")
        assert result.final_codes == [relayed], result.describe()
        assert gw.count("ACK") == 1  # the B2BUA acknowledged the gateway's failure


def test_silent_gateway_ends_at_the_attempt_timeout(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                    gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("silent")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    started = time.monotonic()
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="expect:408")
    assert result.final_codes == [408], result.describe()
    assert time.monotonic() - started < 8, "ended by the 1 s attempt timeout, not Timer B (32 s)"
    assert result.calls[0].setup_time is None or result.calls[0].setup_time < 3


def test_parallel_dial_first_answer_wins(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                         gateway_factory: GatewayFactory, caller: Caller) -> None:
    answering = gateway_factory("ring-then-answer:0.3")
    ringing = [gateway_factory("ring"), gateway_factory("ring")]
    targets = ", ".join(f'"{g.uri}"' for g in (answering, *ringing))
    b2b = Host(b2bua_factory, addresses, plugins='["tests.e2e.host_plugins:ParallelRouter"]',
               extra=f"[plugins.parallel]\ntargets = [{targets}]\n")
    result = caller.run_calls(b2b.ip, b2b.port, n=1, call_duration_ms=500)
    assert result.final_codes == [200], result.describe()
    assert answering.count("INVITE") == 1 and answering.count("BYE") == 1
    for gw in ringing:
        assert gw.count("INVITE") == 1
        assert gw.count("CANCEL") == 1, "the losing forks are cancelled"
        assert gw.count("BYE") == 0


def test_200_concurrent_calls(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                              gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    run = caller.start_calls(b2b.ip, b2b.port, n=200, rate=100, call_duration_ms=4000)
    time.sleep(3.0)
    calls = b2b.proc.rpc("core.calls")
    result = run.wait(60)
    assert result.successful == 200 and result.failed == 0, result.describe()
    assert len(calls) >= 150, f"only {len(calls)} calls were up at once"
    assert gw.count("BYE") == 200


def test_admission_answers_503_at_the_cap(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                          gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, sip="max_calls = 5\nretry_after = 7\nshutdown_grace = 2.0\n")
    held = caller.start_calls(b2b.ip, b2b.port, n=5, rate=50, call_duration_ms=3000)
    time.sleep(1.0)
    extra = Caller(addresses.next(), caller.workdir).run_calls(b2b.ip, b2b.port, n=3, rate=10,
                                                              behaviour="expect:503")
    assert extra.final_codes == [503, 503, 503], extra.describe()
    refusals = received_responses(extra, 503)
    assert refusals and all(m.header("Retry-After") == "7" for m in refusals), "Retry-After on every refusal"
    assert held.wait(30).successful == 5
    assert gw.count("INVITE") == 5
    assert "refused: 503 Too Many Calls" in b2b.proc.log_text()


def test_tcp_transport(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                       gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer", transport="tcp")
    b2b = Host(b2bua_factory, addresses, f"{gw.uri};transport=tcp", transport="tcp")
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=5, transport="tcp")
    assert result.final_codes == [200, 200], result.describe()
    assert gw.count("BYE") == 2


def test_a_raising_hook_costs_one_call(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                       gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, plugins='["tests.e2e.host_plugins:RaisingRouter"]')
    failed = caller.run_calls(b2b.ip, b2b.port, n=1, service="boom", behaviour="expect:500")
    assert failed.final_codes == [500], failed.describe()
    assert caller.run_calls(b2b.ip, b2b.port, n=2, rate=5).final_codes == [200, 200]
    log = b2b.proc.log_text()
    call_id = failed.calls[0].call_id
    assert any("a plugin failed while routing the call" in line and call_id in line for line in log.splitlines())
    assert "this plugin is broken on purpose" in log


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "b2bua", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=60, check=False)


def test_malformed_config_is_refused_with_its_path(workdir: Path) -> None:
    (workdir / "config.toml").write_text('[sip]\nlisten = ["udp:127.0.0.1:5060"]\nmax_calls = "lots"\n')
    for command in ("run", "check-config"):
        done = run_cli(workdir, command, "-c", "config.toml")
        assert done.returncode == 2
        assert "config.toml: [sip] max_calls: expected an integer, got 'lots'" in done.stderr + done.stdout


def test_plugin_that_fails_to_import_stops_start_up(workdir: Path) -> None:
    (workdir / "config.toml").write_text('[plugins]\nenabled = ["no_such_module_here:Plugin"]\n')
    done = run_cli(workdir, "run", "-c", "config.toml")
    assert done.returncode == 2
    assert "no_such_module_here" in done.stderr


def test_sigterm_hangs_up_calls_and_exits_0(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                            gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, sip="shutdown_grace = 0.5\nmax_calls = 50\n")
    run = caller.start_calls(b2b.ip, b2b.port, n=5, rate=50, call_duration_ms=20000)
    time.sleep(1.0)
    assert b2b.proc.stop() == 0
    result = run.wait(30)
    assert result.successful + result.failed == 5
    assert gw.count("BYE") == 5, "every B leg was hung up"
    assert "hanging up 5 calls" in b2b.proc.log_text()


def test_a_call_object_kept_past_shutdown_does_not_abort_the_process(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    # a pjsua2 Call deleted after libDestroy fails an assertion in pjsua (SIGABRT, core dump), and
    # one deleted late hangs up whichever call has its slot by then: the host deletes each leg's
    # pjsua2 side right after it disconnected, whoever still holds the Python object
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, plugins='["tests.e2e.host_plugins:LegKeeper"]')
    first = caller.run_calls(b2b.ip, b2b.port, n=4, rate=10, call_duration_ms=100)
    assert first.final_codes == [200] * 4, first.describe()
    # the kept legs' slots go to new calls: none of these may be hung up by a stale leg
    again = caller.run_calls(b2b.ip, b2b.port, n=20, rate=20, call_duration_ms=300)
    assert again.final_codes == [200] * 20, again.describe()
    assert gw.count("BYE") == 24  # every call ended by the caller's BYE, relayed
    assert b2b.proc.stop() == 0
    assert "Assertion" not in b2b.proc.log_text()


def test_a_leg_pjsua_ends_without_a_callback_is_found_and_its_call_ended(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    # overload makes pjsua drop calls or give their slots away without a DISCONNECTED callback;
    # the periodic audit ends such calls on our side (B leg hung up, session gone, slot counted free)
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, plugins='["tests.e2e.host_plugins:SlotTaker"]')
    run = caller.start_calls(b2b.ip, b2b.port, n=1, call_duration_ms=8000)
    b2b.proc.wait_for_log("pjsua ended the caller's leg without a callback", timeout=10)
    assert b2b.proc.rpc("core.calls") == []
    wait_until(lambda: gw.count("BYE") == 1, timeout=5, what="the B leg hung up (BYE at the gateway)")
    log = b2b.proc.log_text()
    assert "1 call leg(s) ended inside pjsua without a callback: cleaned up" in log
    # the lost leg's slot holds the impostor's call: releasing the lost leg must not hang it up
    taken_over = run.wait(30)
    assert taken_over.ok and taken_over.final_codes == [200], taken_over.describe()
    # the B2BUA goes on serving (the impostor leg is released at shutdown)
    assert caller.run_calls(b2b.ip, b2b.port, n=2, rate=10, call_duration_ms=100).final_codes == [200, 200]
    assert b2b.proc.stop() == 0
    assert "1 call leg(s) still referenced at shutdown" in b2b.proc.log_text()


def test_gateway_uri_helper_matches(gateway_factory: GatewayFactory) -> None:
    gw: Gateway = gateway_factory("answer")
    assert gw.uri == f"sip:{gw.ip}:{gw.port}"


def test_unreachable_database_names_the_url_without_the_password(workdir: Path) -> None:
    closed = free_port("127.0.0.1", "tcp")  # nothing listens there
    (workdir / "config.toml").write_text(
        f'[sip]\nlisten = ["udp:127.0.0.1:{free_port("127.0.0.1")}"]\n[control]\nsocket = ""\n'
        f'[plugins]\nenabled = ["dispatcher"]\n[plugins.dispatcher]\n'
        f'db_url = "mysql+pymysql://kam:s3cret@127.0.0.1:{closed}/kamailio"\n'
    )
    done = run_cli(workdir, "run", "-c", "config.toml")
    assert done.returncode == 2
    assert f"start-up failed: mysql+pymysql://kam:***@127.0.0.1:{closed}/kamailio" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_a_fork_that_cannot_be_sent_does_not_end_the_call(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                          gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, plugins='["tests.e2e.host_plugins:ParallelRouter"]',
               extra=f'[plugins.parallel]\ntargets = ["sip:bad uri@", "{gw.uri}"]\n')
    result = caller.run_calls(b2b.ip, b2b.port, n=1)
    assert result.final_codes == [200], result.describe()
    assert gw.count("INVITE") == 1
    assert "cannot dial" in b2b.proc.log_text()


def test_a_plugin_sending_an_ack_of_its_own_gets_an_error_not_an_aborted_process(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    # pjsip's transaction layer asserts on an ACK outside an INVITE transaction: the process aborted
    gw = gateway_factory("answer")
    extra = f'[plugins.sender]\ntarget = "{gw.uri}"\nmethods = ["ack", "ACK", "OPTIONS"]\n'
    b2b = Host(b2bua_factory, addresses, gw.uri, plugins='["tests.e2e.host_plugins:RequestSender"]', extra=extra)
    b2b.proc.wait_for_log("sender: OPTIONS -> 200")
    log = b2b.proc.log_text()
    for method in ("ack", "ACK"):
        assert (f"sender: {method} -> 500 Not sent: {method!r}: an ACK is sent only for an INVITE's answer"
                in log), log
    result = caller.run_calls(b2b.ip, b2b.port, n=1, call_duration_ms=0)
    assert result.final_codes == [200], result.describe()
    assert gw.count("ACK") == 1  # the call's, none of the plugin's
