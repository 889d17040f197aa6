"""[plugins.dispatcher] parsing and validation."""

from __future__ import annotations

from typing import Any

import pytest
import tomllib

from b2bua.config import ConfigError, parse_config
from plugins.dispatcher.config import DEFAULT_ROUTE, DispatcherConfig, Route, parse_dispatcher_config
from plugins.dispatcher.selection import Policy


def parse(text: str) -> DispatcherConfig:
    config = parse_config(tomllib.loads(text), "config.toml")
    return parse_dispatcher_config(config.plugin_section("dispatcher"), config.path)


def test_defaults_follow_kamailio_and_the_brief() -> None:
    cfg = parse_dispatcher_config({}, "config.toml")
    assert (cfg.list_file, cfg.db_url, cfg.table_name) == ("", "sqlite:///dispatcher.db", "dispatcher")
    assert (cfg.ping_interval, cfg.ping_method, cfg.ping_from) == (10.0, "OPTIONS", "sip:dispatcher@localhost")
    assert (cfg.probing_threshold, cfg.inactive_threshold, cfg.probing_mode) == (1, 1, 1)
    assert (cfg.no_destination_code, cfg.retry_after, cfg.latency_estimator_alpha) == (503, 5, 100)
    assert cfg.keep_state_on_reload and cfg.ping_active and not cfg.rehash
    assert cfg.routes == ()
    assert cfg.effective_routes == (DEFAULT_ROUTE,)
    assert (DEFAULT_ROUTE.set, DEFAULT_ROUTE.alg, DEFAULT_ROUTE.limit) == (1, 4, 0)


def test_full_section_with_routes() -> None:
    cfg = parse(
        """
        [plugins.dispatcher]
        list_file = "dispatcher.list"
        flags = 1
        use_default = true
        hash_size = 8
        hash_template = "{from_user}@{call_id}"
        rehash = true
        ping_reply_codes = "code=403;class=4"

        [[plugins.dispatcher.routes]]
        ruri_user_prefix = "49"
        source = ["10.0.0.0/8", "192.0.2.1"]
        set = 2
        algorithm = "weight"
        limit = 2

        [[plugins.dispatcher.routes]]
        header = "X-Tenant"
        header_regex = "^gold$"
        set = 3
        algorithm = 10

        [[plugins.dispatcher.routes]]
        algorithm = "hash-template"
        """
    )
    assert [(r.set, r.alg, r.limit) for r in cfg.routes] == [(2, 9, 2), (3, 10, 0), (1, 7, 0)]
    assert cfg.routes[0].source == ("10.0.0.0/8", "192.0.2.1")
    assert cfg.effective_routes == cfg.routes
    assert cfg.selection_policy() == Policy(
        use_default=True, user_only=True, hash_template="{from_user}@{call_id}", rehash=True
    )


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"algorithm": "fastest"}, r"\[\[plugins.dispatcher.routes\]\]\[1\] algorithm: unknown algorithm 'fastest'"),
        ({"algorithm": 64}, r"\[1\] algorithm: unknown algorithm 64 \(known: 0 hash-callid"),
        ({"ruri_regex": "(49"}, r"\[1\] ruri_regex: '\(49' is not a valid regular expression"),
        ({"header": "X-A", "header_regex": "[a"}, r"\[1\] header_regex: "),
        ({"source": ["10.0.0.0/33"]}, r"\[1\] source\[0\]: '10.0.0.0/33' is not an IP address or network"),
        ({"source": ["10.0.0.1", "gw.example"]}, r"\[1\] source\[1\]: 'gw.example'"),
        ({"header_value": "x"}, r"\[1\] header_regex/header_value need header"),
        ({"header": "X", "header_value": "a", "header_regex": "a"}, r"\[1\] give header_regex or header_value"),
        ({"set": -1}, r"\[1\] set: -1 is negative"),
        ({"limit": -2}, r"\[1\] limit: -2 is negative"),
        ({"method": "IN VITE"}, r"\[1\] method: "),
        ({"sett": 2}, r"\[1\]: unknown key 'sett'"),
        ({"set": "one"}, r"\[1\] set: expected an integer"),
        ({"algorithm": 10}, r"\[1\] algorithm: 10 \(call-load\) needs hash_size > 0"),
        ({"algorithm": 7}, r"\[1\] algorithm: 7 \(hash-template\) needs hash_template"),
    ],
)
def test_bad_route_names_the_rule_index(route: dict[str, Any], message: str) -> None:
    data = {"routes": [{"set": 1}, route]}
    with pytest.raises(ConfigError, match=r"^config.toml: \[\[plugins.dispatcher.routes\]\]\[1\]") as exc:
        parse_dispatcher_config(data, "config.toml")
    assert exc.match(message)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"probing_mode": 4}, "probing_mode: must be 0-3, got 4"),
        ({"ping_reply_codes": "code=99"}, "ping_reply_codes: 'code=99': code must be 100-699"),
        ({"ping_reply_codes": "class=7"}, "class must be 1-6"),
        ({"ping_reply_codes": "403"}, "expected code=NNN or class=N"),
        ({"hash_template": "{from_usr}"}, r"hash_template: unknown field \{from_usr\}"),
        ({"hash_template": "{call_id"}, "hash_template: "),
        ({"no_destination_code": 200}, "no_destination_code: must be 300-699, got 200"),
        ({"latency_estimator_alpha": 1000}, "latency_estimator_alpha: must be 1-999, got 1000"),
        ({"probing_threshold": 0}, "probing_threshold: must be 1 or more, got 0"),
        ({"ping_from": "dispatcher@localhost"}, "ping_from: dispatcher@localhost: no URI scheme"),
        ({"ping_from": "sip:ping@b2bua.example?X-Injected=yes"},
         r"ping_from=sip:ping@b2bua.example\?X-Injected=yes: URI headers \(\?X-Injected=yes\) are not allowed"),
        ({"ping_from": "sip:ping@b2bua.example\r\nX-Injected: yes"}, "one line of text, without control characters"),
        ({"ping_method": "options"}, "ping_method: 'options'"),
        # pjsip's transaction layer asserts on an ACK of its own: the first keepalive aborted the process
        ({"ping_method": "ACK"}, "ping_method: 'ACK': an ACK is sent only for an INVITE's answer"),
        ({"db_url": ""}, "list_file or db_url"),
        ({"ping_intervall": 3}, "unknown key 'ping_intervall'"),
        ({"routes": {"set": 1}}, r"routes: write rules as \[\[plugins.dispatcher.routes\]\]"),
    ],
)
def test_bad_setting_says_where_and_why(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"config.toml: \[plugins.dispatcher\]") as exc:
        parse_dispatcher_config(section, "config.toml")
    assert exc.match(message)


def test_every_value_out_of_range_is_reported_at_once_with_the_rules_problems() -> None:
    # the section's range checks stopped at the first one (and a bad rule hid them all): an
    # operator fixed one, ran check-config again, and met the next
    section = {"ping_interval": -5, "probing_mode": 7, "latency_estimator_alpha": 5000, "no_destination_code": 200,
               "inactive_threshold": 0, "routes": [{"set": 1}, {"algorithm": "fastest"}]}
    with pytest.raises(ConfigError) as exc:
        parse_dispatcher_config(section, "config.toml")
    first, *rest = exc.value.errors
    assert first.startswith("config.toml: [[plugins.dispatcher.routes]][1] algorithm: unknown algorithm 'fastest'")
    assert rest == [
        "config.toml: [plugins.dispatcher] ping_interval: must be 0 or more, got -5.0",
        "config.toml: [plugins.dispatcher] probing_mode: must be 0-3, got 7",
        "config.toml: [plugins.dispatcher] latency_estimator_alpha: must be 1-999, got 5000",
        "config.toml: [plugins.dispatcher] no_destination_code: must be 300-699, got 200",
        "config.toml: [plugins.dispatcher] inactive_threshold: must be 1 or more, got 0",
    ]


def test_list_file_wins_and_db_url_may_then_be_empty() -> None:
    cfg = parse_dispatcher_config({"list_file": "d.list", "db_url": ""}, "config.toml")
    assert cfg.list_file == "d.list"


def test_route_defaults_and_algorithm_names() -> None:
    assert Route(algorithm="Relative-Weight").alg == 11
    assert Route().alg == 4
