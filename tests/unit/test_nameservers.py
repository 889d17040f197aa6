"""``[sip] nameservers`` and /etc/resolv.conf: which DNS servers pjsip and the dispatcher ask."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.config import ConfigError, parse_config
from b2bua.nameservers import (
    MAX_NAMESERVERS,
    Nameserver,
    effective_nameservers,
    parse_nameserver,
    parse_resolv_conf,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.53", Nameserver("10.0.0.53", 53)),
    (" 10.0.0.53:5353 ", Nameserver("10.0.0.53", 5353)),
    ("2001:db8::53", Nameserver("2001:db8::53", 53)),
    ("[2001:db8::53]", Nameserver("2001:db8::53", 53)),
    ("[2001:DB8::53]:1053", Nameserver("2001:db8::53", 1053)),
])
def test_parse_nameserver(text: str, expected: Nameserver) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("dns.example", "not an IP address"),
    ("10.0.0.53:0", "port '0'"),
    ("10.0.0.53:99999", "port '99999'"),
    ("10.0.0.53:x", "port 'x'"),
    ("[2001:db8::53", "expected [IPv6]"),
    ("", "not an IP address"),
])
def test_bad_nameservers(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[")):
        parse_nameserver(text)


def test_shown_as_written() -> None:
    assert [str(s) for s in (Nameserver("10.0.0.1"), Nameserver("10.0.0.1", 5353), Nameserver("::1", 5353))] == [
        "10.0.0.1", "10.0.0.1:5353", "[::1]:5353"]


def test_resolv_conf_nameserver_lines_only() -> None:
    text = ("# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver  2001:db8::1\n"
            "nameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n")
    assert parse_resolv_conf(text) == [Nameserver("10.0.0.1"), Nameserver("2001:db8::1")]


def test_configured_ones_win_over_the_system(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.9.9.9\nnameserver 10.9.9.9\n")
    assert effective_nameservers([], conf) == (Nameserver("10.9.9.9"),)  # duplicates dropped
    assert effective_nameservers(["127.0.0.9:5353"], conf) == (Nameserver("127.0.0.9", 5353),)
    assert effective_nameservers([], tmp_path / "missing") == ()


def test_config_names_the_bad_entry() -> None:
    with pytest.raises(ConfigError, match=r"\[sip\] nameservers\[1\]: 'ns1.example': not an IP address"):
        parse_config({"sip": {"nameservers": ["10.0.0.1", "ns1.example"]}}, "config.toml")
    with pytest.raises(ConfigError, match="at most 16"):
        parse_config({"sip": {"nameservers": [f"10.0.0.{i}" for i in range(MAX_NAMESERVERS + 1)]}}, "config.toml")
    assert parse_config({"sip": {"nameservers": ["10.0.0.1:5353"]}}, "config.toml").sip.nameservers == (
        "10.0.0.1:5353",)
