"""``[plugins.cdr]``: settings checked at configure time, with their TOML paths; nothing is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from b2bua.config import ConfigError, parse_config
from plugins.cdr.plugin import CdrPlugin


def configure(section: dict[str, Any], tmp_path: Path) -> CdrPlugin:
    plugin = CdrPlugin()
    config = parse_config({"plugins": {"enabled": ["cdr"], "cdr": section}}, "config.toml", base_dir=tmp_path)
    plugin.b2bua_configure(config, None)  # type: ignore[arg-type]
    return plugin


def test_defaults_write_cdr_jsonl_next_to_the_config(tmp_path: Path) -> None:
    plugin = configure({}, tmp_path)
    assert plugin.file == tmp_path / "cdr.jsonl" and plugin.db_url == ""
    assert plugin.node  # the host name
    assert not plugin.file.exists()  # configuring creates nothing (check-config runs it too)


def test_database_only(tmp_path: Path) -> None:
    plugin = configure({"file": "", "db_url": "sqlite:///records/cdr.db", "node": "sbc1"}, tmp_path)
    assert (plugin.file, plugin.db_url, plugin.node) == (None, f"sqlite:///{tmp_path}/records/cdr.db", "sbc1")


@pytest.mark.parametrize(("section", "message"), [
    ({"file": "", "db_url": ""}, "[plugins.cdr] file, db_url: set at least one"),
    ({"table": "cdr; DROP TABLE x"}, "[plugins.cdr] table: 'cdr; DROP TABLE x': use letters, digits and '_'"),
    ({"attempts_table": "cdr"}, "[plugins.cdr] attempts_table: 'cdr' is the same table as table"),
    ({"queue_size": 0}, "[plugins.cdr] queue_size: must be 1-10000000, got 0"),
    ({"db_url": "mysql+nosuchdriver://cdr:pw@127.0.0.1/voip"},
     "[plugins.cdr] db_url: mysql+nosuchdriver://cdr:***@127.0.0.1/voip: Can't load plugin"),
    ({"fsync": True}, "[plugins.cdr]: unknown key 'fsync'"),
    ({"node": "n" * 65}, f"[plugins.cdr] node: {'n' * 65!r} is 65 characters, at most 64 (the records' node column)"),
])
def test_bad_settings(section: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        configure(section, tmp_path)
    assert str(err.value).startswith(f"config.toml: {message}")


def test_every_bad_key_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        configure({"queue_size": "many", "db_retry": -1, "nonsense": 1}, tmp_path)
    assert len(err.value.errors) == 3


def test_a_host_name_too_long_for_the_node_column_asks_for_a_node(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers name their records ``<host>-wI``: a 62-character host name would break every insert."""
    monkeypatch.setattr("socket.gethostname", lambda: "h" * 62 + "-w0")
    with pytest.raises(ConfigError) as err:
        configure({}, tmp_path)
    assert str(err.value).endswith("at most 64 (the records' node column) (the host name): set node")
    assert configure({"node": "sbc1-w0"}, tmp_path).node == "sbc1-w0"
