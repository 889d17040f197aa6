"""The ``b2bua`` command: ``run``, ``check-config``, ``rpc`` and the plugins' own subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from b2bua import __version__
from b2bua.config import Config, ConfigError, LogConfig, load_config

DEFAULT_CONFIG = "config.toml"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--config FILE`` as every subcommand spells it."""
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"configuration file (default: ./{DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="b2bua", description="SIP B2BUA with Kamailio-style dispatching")
    parser.add_argument("--version", action="version", version=f"b2bua {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the B2BUA")
    add_config_option(run)
    run.add_argument("-v", "--verbose", action="count", default=0, help="more log (-vv for TRACE)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="parse the configuration and load its plugins, then exit")
    add_config_option(check)
    check.set_defaults(func=cmd_check_config)

    from b2bua.control_cli import add_rpc_command

    add_rpc_command(sub)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Every installed plugin (entry-point group ``b2bua``) may add subcommands."""
    import pluggy

    from b2bua import PROJECT, hookspecs
    from b2bua.plugins import PluginError, entry_points, load_plugin_object

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in sorted(entry_points()):
        try:
            pm.register(load_plugin_object(name), name=name)
        except (PluginError, ValueError) as exc:
            print(f"warning: {exc}", file=sys.stderr)
    pm.hook.b2bua_cli_commands(subparsers=sub)


def _load(path: str) -> Config:
    return load_config(Path(path))


def cmd_run(args: argparse.Namespace) -> int:
    from b2bua.logs import setup_logging

    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log, args.verbose, base_dir=str(config.base_dir))
    try:
        from b2bua.app import App
    except ImportError as exc:  # pjsua2 missing
        logger.error("cannot import the SIP stack ({}): run scripts/setup.sh to build pjsua2", exc)
        return 2
    from b2bua.app import StartupError
    from b2bua.control import ControlError
    from b2bua.endpoint import BuildError

    try:
        app = App(config)
        return app.run()
    except (ConfigError, BuildError, ControlError, StartupError, OSError) as exc:
        logger.error("{}", exc)
        return 2


def cmd_check_config(args: argparse.Namespace) -> int:
    from b2bua.logs import setup_logging
    from b2bua.plugins import make_manager

    setup_logging(LogConfig(level="WARNING"))
    try:
        config = _load(args.config)
        pm = make_manager(config.plugins.enabled)
        pm.hook.b2bua_configure.call_historic(kwargs={"config": config, "app": _NoHost(config)})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{config.path}: OK (plugins: {', '.join(config.plugins.enabled) or 'none'})")
    return 0


class _NoHost:
    """Stands in for the running app while only checking the configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hook = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
