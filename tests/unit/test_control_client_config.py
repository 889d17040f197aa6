"""``ControlClient.from_config``: the client of the B2BUA that runs with a config (what the
dispatcher's admin verbs use instead of the ``b2bua rpc`` argument parser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.config import ConfigError, parse_config
from b2bua.control import ControlClient


def client(control: dict[str, object], tmp_path: Path) -> ControlClient:
    return ControlClient.from_config(parse_config({"control": control}, str(tmp_path / "config.toml"),
                                                  base_dir=tmp_path))


def test_the_socket_relative_to_the_config_first(tmp_path: Path) -> None:
    assert client({"socket": "run/b2bua.sock", "http": "127.0.0.1:8080"}, tmp_path).target == str(
        tmp_path / "run" / "b2bua.sock")


def test_http_when_there_is_no_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("B2BUA_TOKEN", raising=False)
    assert client({"socket": "", "http": "127.0.0.1:8080"}, tmp_path).target.startswith("http://127.0.0.1:8080/")
    assert client({"socket": "", "http": "[::1]:8080"}, tmp_path).target.startswith("http://[::1]:8080/")


def test_neither_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sets neither socket nor http"):
        client({"socket": ""}, tmp_path)
