"""The optional extras (``pyproject.toml``): how to install one, and what a missing database
driver tells the operator. One home, so every message gives the same command, and one that works.

``scripts/setup.sh`` installs the B2BUA into ``.venv`` in its own folder as an editable install,
so an extra is added with ``.venv/bin/pip install -e '.[mysql]'`` there; ``pip install
'b2bua[mysql]'`` would look for a package named b2bua on PyPI.
"""

from __future__ import annotations

from pathlib import Path

#: a SQLAlchemy driver name -> (the Python package, the extra that installs it)
DRIVER_EXTRAS = {"pymysql": ("PyMySQL", "mysql"), "psycopg": ("psycopg", "postgresql")}
#: the driver the extras install for each database (SQLAlchemy's backend name)
BACKEND_DRIVERS = {"mysql": "pymysql", "mariadb": "pymysql", "postgresql": "psycopg"}


def source_folder() -> Path | None:
    """The folder the B2BUA runs from (its ``pyproject.toml``), when it is a source checkout."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def install_command(extra: str) -> str:
    """The command that installs ``extra``, and where to run it."""
    root = source_folder()
    where = f"in {root}" if root is not None else "in the B2BUA's folder"
    return f".venv/bin/pip install -e '.[{extra}]' {where}"


def missing_driver(shown_url: str, backend: str, driver: str, error: BaseException) -> str:
    """Why a database URL cannot be used when its driver does not import, and what to do.

    :param shown_url: the URL as messages show it (password hidden).
    :param backend: SQLAlchemy's backend name (``mysql``, ``postgresql``).
    :param driver: its driver name (``pymysql``, ``psycopg``, ``psycopg2``, ...).
    :param error: the ImportError.
    """
    known = DRIVER_EXTRAS.get(driver)
    if known is not None:
        package, extra = known
        return f"{shown_url}: the database driver {package} is not installed ({error}): {install_command(extra)}"
    ours = BACKEND_DRIVERS.get(backend)
    if ours is None:
        return f"{shown_url}: the database driver {driver!r} is not installed ({error})"
    package, extra = DRIVER_EXTRAS[ours]
    return (f"{shown_url}: the database driver {driver!r} is not installed ({error}); the B2BUA installs "
            f"{package} for {backend}+{ours}:// URLs: {install_command(extra)}")
