"""Digest authentication towards gateways (issue 12, item 2): a sipp gateway challenges every
INVITE (401 or 407) and checks the answer with ``verifyauth``; credentials per realm and per
destination, a wrong password (one retry, never a loop), no credentials for the realm, failover
after a failed challenge, and the password kept out of every output."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from .configs import ListEntry, b2bua_config, start_b2bua, write_list_file
from .conftest import B2buaFactory, GatewayFactory, ScenarioGatewayFactory
from .harness import AddressAllocator, B2buaProcess, Caller, Gateway, free_port

PASSWORD = "s3cret-Pa55"
CHALLENGE = {401: ("Unauthorized", "WWW-Authenticate", "Authorization"),
             407: ("Proxy Authentication Required", "Proxy-Authenticate", "Proxy-Authorization")}


def auth_gateway(factory: ScenarioGatewayFactory, code: int = 401, realm: str = "carrier.example",
                 username: str = "trunk1", password: str = PASSWORD, check: str = "") -> Gateway:
    """A gateway challenging with ``code``; ``check``: ``verify`` (sipp's verifyauth, 401 only: it
    reads the Authorization header alone), ``present`` (any Proxy-Authorization: the test checks
    the digest itself), ``never`` (challenges again, always). Default: verify for 401, present for 407."""
    reason, header, _ = CHALLENGE[code]
    check = check or ("verify" if code == 401 else "present")
    action = {
        "verify": f'<action><verifyauth assign_to="authvalid" username="{username}" password="{password}"/></action>',
        "present": '<action><ereg regexp="Digest" search_in="hdr" header="Proxy-Authorization:" '
                   'assign_to="authvalid"/></action>',
        "never": '<action><ereg regexp="." search_in="hdr" header="X-Never-Sent:" assign_to="authvalid"/></action>',
    }[check]
    values = {"CODE": str(code), "REASON": reason, "CHALLENGE": header, "REALM": realm, "NONCE": "n",
              "CHECK": action}
    return factory("uas_auth.xml", values, label=f"auth{code}-{check}")


def digest_ok(value: str, method: str, password: str) -> bool:
    """Whether an Authorization value (MD5, qop=auth) answers with ``password`` (RFC 2617 3.2.2)."""
    fields = dict((k.strip(), v.strip().strip('"')) for k, _, v in
                  (item.partition("=") for item in value.removeprefix("Digest ").split(",")))

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # what digest authentication uses

    ha1 = md5(f"{fields['username']}:{fields['realm']}:{password}")
    ha2 = md5(f"{method}:{fields['uri']}")
    expected = md5(f"{ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{ha2}")
    return fields["response"] == expected


def credential(realm: str = "carrier.example", username: str = "trunk1", password: str = PASSWORD,
               **more: str) -> dict[str, Any]:
    return {"realm": realm, "username": username, "password": password, **more}


def invites(gw: Gateway) -> int:
    return gw.count("INVITE")


@pytest.mark.parametrize("code", [401, 407])
def test_challenge_is_answered_with_the_realms_credentials(
        code: int, b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory,
        addresses: AddressAllocator, caller: Caller, workdir: Path) -> None:
    gw = auth_gateway(scenario_gateway, code)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      credentials=[credential()])
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=5)
    assert result.final_codes == [200, 200], result.describe()
    assert invites(gw) == 4, "each call: one INVITE, one with credentials"
    authorized = [m for m in gw.requests("INVITE") if m.header(CHALLENGE[code][2])]
    assert len(authorized) == 2
    for m in authorized:
        value = m.header(CHALLENGE[code][2]) or ""
        assert 'username="trunk1"' in value and 'realm="carrier.example"' in value and PASSWORD not in value
        assert digest_ok(value, "INVITE", PASSWORD) and not digest_ok(value, "INVITE", "wrong")
    assert "refused" not in b2b.process.log_text()


@pytest.mark.parametrize(("code", "check"), [(401, "verify"), (407, "never")])
def test_wrong_password_is_tried_once_and_the_caller_gets_403(
        code: int, check: str, b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory,
        addresses: AddressAllocator, caller: Caller, workdir: Path) -> None:
    gw = auth_gateway(scenario_gateway, code, password="what-the-gateway-expects", check=check)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      credentials=[credential()], failover={})
    result = caller.run_calls(b2b.ip, b2b.port, n=3, rate=5, behaviour="expect:403")
    assert result.final_codes == [403] * 3, result.describe()
    assert invites(gw) == 6, "one retry with credentials per call, never more"
    log = b2b.process.log_text()
    assert log.count("credentials for realm 'carrier.example' were refused (wrong username or password?)") >= 3
    warnings = [line for line in log.splitlines() if "WARNING" in line and "authentication towards" in line]
    assert len(warnings) == 1, "one warning a minute however many calls hit it"
    assert PASSWORD not in log


def test_challenge_for_a_realm_without_credentials_fails_at_once(
        b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory, addresses: AddressAllocator,
        caller: Caller, workdir: Path) -> None:
    gw = auth_gateway(scenario_gateway, 401, realm="other.example")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      credentials=[credential()])
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="expect:403")
    assert result.final_codes == [403], result.describe()
    assert invites(gw) == 1
    assert "challenged for realm 'other.example': no [[sip.credentials]] without a name has that realm" in (
        b2b.process.log_text())


def test_named_credentials_per_destination_and_failover_after_a_failed_challenge(
        b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory, gateway_factory: GatewayFactory,
        addresses: AddressAllocator, caller: Caller, workdir: Path) -> None:
    """Two trunks of one realm with different accounts (auth=NAME); a third destination refusing
    the credentials it names (realm '*': answered for any realm) fails over (401 in failover_codes)."""
    trunk_a = auth_gateway(scenario_gateway, 401, username="trunk-a", password="pass-a")
    trunk_b = auth_gateway(scenario_gateway, 401, username="trunk-b", password="pass-b")
    stranger = auth_gateway(scenario_gateway, 401, realm="elsewhere.example")
    backup = gateway_factory("answer")
    entries = [ListEntry(1, trunk_a.uri, attrs="auth=a"), ListEntry(2, trunk_b.uri, attrs="auth=b"),
               ListEntry(3, stranger.uri, priority=10, attrs="auth=b"), ListEntry(3, backup.uri, priority=5)]
    routes = [{"set": 1, "algorithm": 0, "ruri_user_prefix": "1"}, {"set": 2, "algorithm": 0, "ruri_user_prefix": "2"},
              {"set": 3, "algorithm": "priority", "ruri_user_prefix": "3"}]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), entries, routes=routes,
                      failover={"failover_codes": ["5xx", "408", 401, 407]},
                      credentials=[credential(username="trunk-a", password="pass-a", name="a"),
                                   credential(realm="*", username="trunk-b", password="pass-b", name="b")])
    for service in ("100", "200", "300"):
        result = caller.run_calls(b2b.ip, b2b.port, n=1, service=service)
        assert result.final_codes == [200], (service, result.describe())
    assert (invites(trunk_a), invites(trunk_b), invites(stranger), backup.count("INVITE")) == (2, 2, 2, 1)
    assert "credentials 'b' for realm 'elsewhere.example' were refused" in b2b.process.log_text()


def test_passwords_stay_out_of_outputs_and_loose_config_files_are_reported(
        b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory, addresses: AddressAllocator,
        workdir: Path) -> None:
    gw = auth_gateway(scenario_gateway, 407)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri, attrs="auth=carrier")],
                      credentials=[credential(name="carrier")])
    process = b2b.process
    listing = json.dumps(process.rpc("dispatcher.list"))
    assert "auth=carrier" in listing and PASSWORD not in listing
    assert PASSWORD not in json.dumps(process.rpc("core.calls"))
    os.chmod(process.config_path, 0o644)
    check = process.cli("check-config", "-c", process.config_path.name)
    assert check.returncode == 0, check.stderr
    assert "holds passwords ([[sip.credentials]], [sip.tls]) and is readable or writable by others (mode 0644)" \
        in check.stderr
    os.chmod(process.config_path, 0o600)
    check = process.cli("check-config", "-c", process.config_path.name)
    assert check.returncode == 0 and "readable" not in check.stderr
    assert PASSWORD not in check.stdout + check.stderr
    # a password of the wrong type: the error names the key, never the value
    process.config_path.write_text(process.config_path.read_text().replace(f'"{PASSWORD}"', "123456789"))
    check = process.cli("check-config", "-c", process.config_path.name)
    assert check.returncode == 2 and "credentials[0] password: expected one line of text" in check.stderr
    assert "123456789" not in check.stderr
    assert PASSWORD not in process.log_text()


def test_unknown_credential_name_stops_start_up_naming_the_line(addresses: AddressAllocator,
                                                                workdir: Path) -> None:
    ip = addresses.next()
    write_list_file(workdir, [ListEntry(1, "sip:127.0.0.8:5998"),
                              ListEntry(1, "sip:127.0.0.9:5999", attrs="auth=nope")])
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(b2bua_config(ip, free_port(ip), credentials=[credential(name="carrier")]))
    done = b2b.cli("run", "-c", "config.toml", timeout=60)
    assert done.returncode == 2, done.stderr
    assert ("dispatcher.list line 3: set 1 sip:127.0.0.9:5999: auth=nope: no [[sip.credentials]] named 'nope' "
            "(named: carrier)") in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
