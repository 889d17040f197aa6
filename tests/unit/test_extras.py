"""b2bua.extras: the install command every message gives for an optional extra, and what a
missing database driver says."""

from __future__ import annotations

import re
from pathlib import Path

from b2bua.extras import install_command, missing_driver

ROOT = Path(__file__).resolve().parents[2]


def test_the_install_command_is_the_editable_one_in_the_source_folder() -> None:
    assert install_command("mysql") == f".venv/bin/pip install -e '.[mysql]' in {ROOT}"


def test_a_missing_driver_names_its_package_and_the_extra() -> None:
    error = ModuleNotFoundError("No module named 'pymysql'")
    assert missing_driver("mysql+pymysql://u:***@db/x", "mysql", "pymysql", error) == (
        "mysql+pymysql://u:***@db/x: the database driver PyMySQL is not installed (No module named 'pymysql'):"
        f" .venv/bin/pip install -e '.[mysql]' in {ROOT}")
    error = ModuleNotFoundError("No module named 'psycopg'")
    assert missing_driver("postgresql+psycopg://db/x", "postgresql", "psycopg", error).endswith(
        "the database driver psycopg is not installed (No module named 'psycopg'):"
        f" .venv/bin/pip install -e '.[postgresql]' in {ROOT}")


def test_a_driver_no_extra_installs_points_at_the_one_that_does() -> None:
    error = ModuleNotFoundError("No module named 'psycopg2'")
    assert missing_driver("postgresql+psycopg2://db/x", "postgresql", "psycopg2", error) == (
        "postgresql+psycopg2://db/x: the database driver 'psycopg2' is not installed (No module named 'psycopg2');"
        f" the B2BUA installs psycopg for postgresql+psycopg:// URLs: .venv/bin/pip install -e '.[postgresql]'"
        f" in {ROOT}")
    assert missing_driver("oracle://db/x", "oracle", "cx_oracle", ImportError("x")) == (
        "oracle://db/x: the database driver 'cx_oracle' is not installed (x)")


def test_no_text_tells_to_pip_install_the_package_by_name() -> None:
    """``pip install 'b2bua[mysql]'`` looks for b2bua on PyPI: it is not there."""
    bad = re.compile(r"pip install +['\"]?b2bua\[")
    found = [f"{path.relative_to(ROOT)}:{n}" for folder in ("b2bua", "plugins", "docs", "scripts")
             for path in sorted((ROOT / folder).rglob("*")) if path.suffix in (".py", ".md", ".sh", ".toml")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if bad.search(line)]
    found += [f"README.md:{n}" for n, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1)
              if bad.search(line)]
    assert found == []
