"""The ``b2bua`` command: ``run``, ``check-config``, ``rpc``, ``completion`` and the plugins' own
subcommands.

Every ``-c/--config FILE`` option, the plugins' included, defaults to ``$B2BUA_CONFIG`` when it is
set, else ``./config.toml`` (:func:`finish_subcommands` applies it after the plugins added theirs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from b2bua import __version__
from b2bua.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    LogConfig,
    default_config_path,
    load_config,
    parse_config_all,
    read_toml,
    secrets_warning,
)

#: shells ``b2bua completion`` writes a script for (what shtab supports)
SHELLS = ("bash", "zsh", "tcsh")

EPILOG = f"""\
Every -c/--config FILE defaults to ${CONFIG_ENV} when it is set, else ./{DEFAULT_CONFIG}.
'b2bua COMMAND --help' describes each command; docs/cli.md has examples.
"""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--config FILE`` as every subcommand spells it (its default is set by :func:`finish_subcommands`)."""
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"configuration file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="b2bua", description="SIP B2BUA with Kamailio-style dispatching",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"b2bua {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run", help="run the B2BUA",
        description="Run the B2BUA in the foreground until SIGTERM or SIGINT (calls in progress get "
        "[sip] shutdown_grace seconds to finish); SIGHUP reloads the plugins' data (destinations, "
        "call-record files). Logs go to stderr, and to [log] file when set. Exits 2 when the "
        "configuration, the SIP stack, a plugin or the control API cannot be set up.",
    )
    add_config_option(run)
    run.add_argument("-v", "--verbose", action="count", default=0, help="more log (-vv for TRACE)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config", help="parse the configuration and load its plugins, then exit",
        description="Check the configuration without starting anything: parse every section, load "
        "the plugins it enables and let each check its own [plugins.NAME] section. Prints every "
        "error found, each with its TOML path, and exits 2; or prints OK and exits 0.",
    )
    add_config_option(check)
    check.set_defaults(func=cmd_check_config)

    completion = sub.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for the b2bua command (its subcommands and options, "
        "the plugins' included) for SHELL. Needs the 'completion' extra: .venv/bin/pip install -e '.[completion]'. "
        "Install it, e.g. for bash: b2bua completion bash > /etc/bash_completion.d/b2bua",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell: " + ", ".join(SHELLS))
    completion.set_defaults(func=lambda args: cmd_completion(parser, args))

    from b2bua.control_cli import add_rpc_command
    from b2bua.drain_cli import add_drain_commands

    add_rpc_command(sub)
    add_drain_commands(sub)
    _add_plugin_commands(sub)
    finish_subcommands(parser, default_config_path())
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every subcommand below ``parser``, depth first: ``(names, its parser, its help line)``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                yield (*path, name), child, helps.get(name)
                yield from subcommands(child, (*path, name))


def config_options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The ``-c/--config`` option of ``parser`` and of every subcommand below it."""
    for p in (parser, *(child for _, child, _ in subcommands(parser))):
        for action in p._actions:
            if "--config" in action.option_strings:
                yield action


def finish_subcommands(parser: argparse.ArgumentParser, config_default: str) -> None:
    """What the host does for every subcommand, the plugins' too, once all are added.

    Each ``-c/--config`` defaults to ``config_default`` (``$B2BUA_CONFIG`` or ``./config.toml``:
    one order for every command); a subcommand with a help line but no description gets that
    line as its ``--help`` description.
    """
    if config_default != DEFAULT_CONFIG:
        # without $B2BUA_CONFIG each keeps its own default: ./config.toml, or None/SUPPRESS for
        # "./config.toml when there is one" (b2bua rpc)
        for action in config_options(parser):
            action.default = config_default
    for _, child, help_line in subcommands(parser):
        if not child.description and help_line:
            child.description = help_line[0].upper() + help_line[1:] + "."


def _print_errors(exc: ConfigError | list[str] | tuple[str, ...]) -> None:
    errors = exc.errors if isinstance(exc, ConfigError) else exc
    for line in errors:
        print(f"error: {line}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_errors(exc)
        return 2
    return run_config(config, args.verbose, args.config)


def run_config(config: Config, verbose: int = 0, path: str | None = None) -> int:
    """Run the B2BUA with a parsed config until it stops (``b2bua run``; each of
    ``b2bua.workers``' processes). Returns the exit code."""
    from b2bua.logs import LogFileError, setup_logging

    try:
        setup_logging(config.log, verbose, base_dir=str(config.base_dir))
    except LogFileError as exc:
        print(f"error: {path or 'config'}: {exc}", file=sys.stderr)
        return 2
    if path is not None and (warning := secrets_warning(config, path)):
        logger.warning("{}", warning)
    from b2bua.plugins import unused_sections

    for warning in unused_sections(config):
        logger.warning("{}", warning)
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
    from b2bua.plugins import make_manager, unused_sections
    from b2bua.tls import check_tls_files

    setup_logging(LogConfig(level="WARNING"))
    path = Path(args.config)
    try:
        data = read_toml(path)
    except ConfigError as exc:
        _print_errors(exc)
        return 2
    config, host_errors = parse_config_all(data, str(path), path.resolve().parent)
    if warning := secrets_warning(config, path):
        logger.warning("{}", warning)
    for warning in unused_sections(config):
        logger.warning("{}", warning)
    errors = list(host_errors)
    if not host_errors:
        try:
            for warning in check_tls_files(config).warnings:
                logger.warning("{}", warning)
        except ConfigError as exc:
            errors.extend(exc.errors)
    try:
        pm = make_manager(config.plugins.enabled)
    except ConfigError as exc:
        errors.extend(exc.errors)
    else:
        errors.extend(configure_each(pm, config))
    if errors:
        _print_errors(errors)
        if len(errors) > 1:
            print(f"{path}: {len(errors)} errors", file=sys.stderr)
        return 2
    print(f"{config.path}: OK (plugins: {', '.join(config.plugins.enabled) or 'none'})")
    return 0


def configure_each(pm: Any, config: Config) -> list[str]:
    """Call every plugin's ``b2bua_configure`` on its own, in hook order, and collect the errors,
    so one plugin's bad section does not hide the next one's."""
    host = _NoHost(config)
    kwargs: dict[str, Any] = {"config": config, "app": host}
    errors: list[str] = []
    for impl in reversed(pm.hook.b2bua_configure.get_hookimpls()):  # pluggy calls the last registered first
        try:
            impl.function(*[kwargs[name] for name in impl.argnames])
        except ConfigError as exc:
            errors.extend(exc.errors)
        except Exception as exc:
            errors.append(f"plugin {impl.plugin_name!r}: b2bua_configure failed: {type(exc).__name__}: {exc}")
    return errors


class _NoHost:
    """Stands in for the running app while only checking the configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hook = None


def cmd_completion(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:
        from b2bua.extras import install_command

        print(f"error: shell completion needs shtab: {install_command('completion')}", file=sys.stderr)
        return 2
    for action in config_options(parser):
        action.complete = shtab.FILE  # type: ignore[attr-defined]
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a reader gone after the last print shows here, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        return EXIT_READER_GONE


#: exit code when stdout's reader went away (``b2bua dispatcher list | head -1``): 128 + SIGPIPE,
#: what the shell reports for ls, cat or git in the same place (SIGPIPE ends them)
EXIT_READER_GONE = 141


def stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reader closed it; stdout then points at /dev/null, so
    nothing more (Python's own flush at exit included) writes a traceback about it."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # stdout closed or not a file
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone
