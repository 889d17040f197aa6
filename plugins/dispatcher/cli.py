"""``b2bua dispatcher ...`` subcommands.

:func:`add_dispatcher_commands` creates the ``dispatcher`` command with ``simulate`` and the
administration verbs of :mod:`plugins.dispatcher.admin` (``add``, ``rm``, ``show``, ``list``,
``reload``, ``set-state``), and returns *its* subparsers, so other modules can add their own::

    sub = add_dispatcher_commands(subparsers)
    add_my_commands(sub)

Handlers follow the host's convention: ``func(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from loguru import logger

from b2bua.config import CONFIG_ENV, ConfigError, load_config
from plugins.dispatcher.admin import DEFAULT_CONFIG, add_admin_commands
from plugins.dispatcher.algorithms import resolve_algorithm
from plugins.dispatcher.checks import review
from plugins.dispatcher.config import DispatcherConfig, parse_dispatcher_config, resolve_sqlite_url
from plugins.dispatcher.model import Snapshot
from plugins.dispatcher.simulate import format_result, simulate
from plugins.dispatcher.sqlstore import SqlStore, TableNames
from plugins.dispatcher.storage import load_snapshot

EXIT_ERROR = 1


def add_dispatcher_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``dispatcher`` to the ``b2bua`` command line; returns its subcommand parsers."""
    parser = subparsers.add_parser(
        "dispatcher",
        help="dispatcher destinations: add, rm, show, list, reload, set-state, simulate",
        description="Manage the dispatcher's destinations (like kamctl/kamcli dispatcher) and try its algorithms.",
    )
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="dispatcher_command", metavar="SUBCOMMAND", required=True
    )
    add_simulate_command(sub)
    add_admin_commands(sub)
    return sub


def add_simulate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dispatcher simulate``: route synthetic calls and print each destination's share."""
    p = sub.add_parser(
        "simulate",
        help="route synthetic calls through a set and print each destination's share",
        description="Check a distribution (e.g. a 75/25 weight split) without sending a call. "
        "Destinations come from the config's list_file or db_url, or --list-file. Nothing is written: "
        "a missing SQLite database is an error, not created.",
    )
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"config.toml to read [plugins.dispatcher] from (default: ${CONFIG_ENV}, else "
                   f"./{DEFAULT_CONFIG}; without one, --list-file is needed)")
    p.add_argument("--list-file", help="read destinations from this Kamailio list file instead")
    p.add_argument("--set", type=int, required=True, dest="setid", help="destination set id")
    p.add_argument("--alg", required=True, help="algorithm number or name (e.g. 9 or weight)")
    p.add_argument("--backup-sets", default="", metavar="RULES",
                   help="sets tried after --set, as a route's backup_sets: 'SET=ALG;...' (e.g. '2=8')")
    p.add_argument("--calls", type=int, default=10000, help="number of calls (default 10000)")
    p.add_argument(
        "--down", action="append", default=[], metavar="URI", help="treat this destination as inactive (repeatable)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--concurrent", type=int, default=100, help="calls kept up at once, for call load (10); default 100")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``dispatcher simulate``; prints the table, returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    # the state's own load/up/down log lines would drown the table
    logger.disable("plugins.dispatcher")
    try:
        alg = resolve_algorithm(args.alg)
        cfg, list_file = _dispatcher_config(args.config, args.list_file is not None)
        if args.list_file:
            list_file = Path(args.list_file)
        snapshot = _load(cfg, list_file)
        for warning in review(snapshot, cfg, list_file):
            print(f"warning: {warning}", file=err)
        result = simulate(
            snapshot,
            args.setid,
            alg,
            calls=args.calls,
            down=args.down,
            seed=args.seed,
            policy=cfg.selection_policy(),
            concurrent=args.concurrent,
            backup_sets=args.backup_sets,
        )
    except Exception as exc:  # config, load and argument errors all end here with their message
        print(f"b2bua dispatcher simulate: {exc}", file=err)
        return EXIT_ERROR
    finally:
        logger.enable("plugins.dispatcher")
    print(format_result(result), file=out)
    return 0


def _dispatcher_config(path: str | None, have_list_file: bool) -> tuple[DispatcherConfig, Path | None]:
    """The dispatcher settings of ``path`` (default ``./config.toml``) and its list file; the
    built-in settings when there is no config and ``--list-file`` names the destinations.
    A relative SQLite URL is made relative to the config's folder, as the B2BUA does."""
    if path is None:
        if not Path(DEFAULT_CONFIG).is_file():
            if have_list_file:
                return DispatcherConfig(), None
            raise ConfigError(f"no ./{DEFAULT_CONFIG} here: give -c FILE or --list-file FILE")
        path = DEFAULT_CONFIG
    config = load_config(path)
    cfg = parse_dispatcher_config(config.plugin_section("dispatcher"), config.path)
    cfg = replace(cfg, db_url=resolve_sqlite_url(cfg.db_url, config.base_dir))
    return cfg, (config.resolve_path(cfg.list_file) if cfg.list_file else None)


def _load(cfg: DispatcherConfig, list_file: Path | None) -> Snapshot:
    """Read the destinations without writing anything (no SQLite file or table is created) and
    without DNS (a simulation needs names, not addresses)."""
    if list_file is not None:
        return load_snapshot(list_file=list_file, db_url=None, resolve=False)
    with SqlStore(cfg.db_url, TableNames.from_config(cfg), read_only=True) as store:
        return load_snapshot(list_file=None, db_url=cfg.db_url, resolve=False, create_schema=False, store=store)
