"""The generated configuration reference is up to date with the code."""

from __future__ import annotations

from pathlib import Path

from b2bua.configdoc import render

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_current() -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    assert doc == render(), "docs/config.md is stale: run `.venv/bin/python -m b2bua.configdoc > docs/config.md`"


def test_every_setting_has_help() -> None:
    text = render()
    assert "| `max_calls` |" in text and "| `ping_interval` |" in text and "| `failover_codes` |" in text
