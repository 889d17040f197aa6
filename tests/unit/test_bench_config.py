"""``bench/load.py``'s ``merge_toml``: ``--extra`` settings land in the shipped config's tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from load import SHIPPED_CONFIG, merge_toml  # bench/ is no package: on the path above

BASE = '[sip]\nlisten = ["udp:127.0.0.1:5060"]\nmax_calls = 500  # a comment\n\n[log]  # logging\nlevel = "INFO"\n'


def test_a_key_joins_its_table_and_replaces_its_own_line() -> None:
    merged = merge_toml(BASE, "[sip]\noverload_lag = 0.0001\nmax_calls = 7\n[log]\nlevel = \"DEBUG\"\n")
    assert tomllib.loads(merged) == {
        "sip": {"listen": ["udp:127.0.0.1:5060"], "max_calls": 7, "overload_lag": 0.0001},
        "log": {"level": "DEBUG"},
    }
    assert merged.count("max_calls") == 1 and merged.count("[sip]") == 1


def test_a_new_table_is_appended_and_a_top_level_key_goes_first() -> None:
    merged = merge_toml(BASE, "top = 1\n# a comment\n[security]\nearly_filter = false\n")
    parsed = tomllib.loads(merged)
    assert parsed["top"] == 1 and parsed["security"] == {"early_filter": False}
    assert parsed["sip"]["max_calls"] == 500


def test_the_shipped_config_takes_an_extra_setting() -> None:
    parsed = tomllib.loads(merge_toml(SHIPPED_CONFIG.read_text(), "[sip]\noverload_lag = 0.0001\n"))
    assert parsed["sip"]["overload_lag"] == 0.0001


def test_what_is_not_toml_after_the_merge_is_refused_with_the_reason() -> None:
    with pytest.raises(SystemExit, match="not valid TOML"):
        merge_toml(BASE, "[sip]\nmax_calls = \n")
