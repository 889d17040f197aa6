"""``[plugins.failover]`` parsing and validation (plugins.failover.config)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from b2bua.config import ConfigError, parse_section
from plugins.failover.config import CodeSet, FailoverConfig, parse_codes

WHERE = "config.toml: [plugins.failover]"


def parse(**section: Any) -> FailoverConfig:
    return parse_section(FailoverConfig, section, WHERE)


def test_defaults() -> None:
    cfg = parse()
    assert [503 in cfg.failover_set, 408 in cfg.failover_set, 404 in cfg.failover_set] == [True, True, False]
    assert all(code in cfg.hunt_stop_set for code in (486, 600, 603, 604, 606))
    assert (cfg.max_attempts, cfg.total_timeout, cfg.mark, cfg.final, cfg.final_code) == (0, 0, "", "fixed", 503)
    assert (cfg.retry_after, cfg.reason_header, cfg.failover_on_no_answer) == (5, True, False)


def test_every_field_has_help() -> None:
    assert all(f.metadata.get("help") for f in dataclasses.fields(FailoverConfig))


def test_custom_values() -> None:
    cfg = parse(
        failover_codes=["5xx", 404, "480"],
        hunt_stop_codes=["6xx"],
        max_attempts=3,
        attempt_timeout=2,
        answer_timeout=30.5,
        total_timeout=10,
        mark="ip",
        mark_codes=["5xx"],
        final="best",
    )
    assert cfg.failover_set == CodeSet(frozenset({404, 480}), frozenset({5}))
    assert cfg.hunt_stop_set == CodeSet(frozenset(), frozenset({6}))
    assert (cfg.attempt_timeout, cfg.answer_timeout, cfg.total_timeout) == (2.0, 30.5, 10.0)
    assert 502 in cfg.mark_set


@pytest.mark.parametrize(
    ("items", "contains", "missing"),
    [
        (["5xx"], [500, 503, 599], [499, 600]),
        ([404, "408"], [404, 408], [405, 400]),
        (["6XX", " 486 "], [600, 699, 486], [487]),
        ([], [], [500]),
    ],
)
def test_code_sets(items: list[int | str], contains: list[int], missing: list[int]) -> None:
    codes = parse_codes(items, "failover_codes")
    assert all(c in codes for c in contains)
    assert not any(c in codes for c in missing)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"failover_codes": ["5xy"]}, "failover_codes[0]: '5xy' is not a final failure status"),
        ({"failover_codes": ["5xx", 200]}, "failover_codes[1]: 200 is not a final failure status"),
        ({"hunt_stop_codes": ["2xx"]}, "hunt_stop_codes[0]: '2xx'"),
        ({"mark_codes": [486, 7000]}, "mark_codes[1]: 7000"),
        ({"failover_codes": [5.5]}, "failover_codes[0]: expected an integer or a string"),
        ({"max_attempts": -1}, "max_attempts: must be 0 or more, got -1"),
        ({"max_attempts": "3"}, "max_attempts: expected an integer"),
        ({"attempt_timeout": -1}, "attempt_timeout: must be 0 or more, got -1.0"),
        ({"total_timeout": -0.5}, "total_timeout: must be 0 or more, got -0.5"),
        ({"mark": "x"}, "mark: 'x' is not one of"),
        ({"final": "first"}, "final: 'first' is not one of fixed, last, best"),
        ({"final_code": 200}, "final_code: must be 300-699, got 200"),
        ({"final_reason": "Oops\r\nX-Injected: 1"}, "final_reason: must be one line"),
        ({"retry_after": -5}, "retry_after: must be 0-86400, got -5"),
        ({"failover_code": ["5xx"]}, "unknown key 'failover_code'"),
    ],
)
def test_errors_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(**section)
    text = str(info.value)
    assert text.startswith(WHERE)
    assert message in text


def test_every_value_out_of_range_is_reported_at_once() -> None:
    # they were reported one at a time (validate() stopped at the first)
    with pytest.raises(ConfigError) as info:
        parse(max_attempts=-1, attempt_timeout=-3, final_code=99, retry_after=-1)
    assert [error.removeprefix(WHERE) for error in info.value.errors] == [
        " max_attempts: must be 0 or more, got -1",
        " attempt_timeout: must be 0 or more, got -3.0",
        " final_code: must be 300-699, got 99",
        " retry_after: must be 0-86400, got -1",
    ]
