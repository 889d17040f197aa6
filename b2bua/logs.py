"""Logging set-up: loguru only, one format, the Call-ID on every line about a call."""

from __future__ import annotations

import sys

from loguru import logger

from b2bua.config import LogConfig

FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[call_id]}</cyan> {message}"
)


def setup_logging(config: LogConfig, verbosity: int = 0, *, base_dir: str | None = None) -> None:
    """Send logs to stderr (and a file, if configured); ``-v`` lowers the level one step each."""
    levels = ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    level = config.level.upper()
    if level == "SUCCESS":
        level = "INFO"
    if verbosity:
        level = levels[max(0, levels.index(level) - verbosity)]
    logger.remove()
    logger.configure(extra={"call_id": "-"})
    logger.add(sys.stderr, level=level, format=FORMAT, serialize=config.json, colorize=None,
               backtrace=False, diagnose=False)
    if config.file:
        path = config.file if base_dir is None or config.file.startswith("/") else f"{base_dir}/{config.file}"
        logger.add(path, level=level, format=FORMAT, serialize=config.json, rotation="50 MB",
                   retention=5, enqueue=True, backtrace=False, diagnose=False)
    _route_stdlib_logging()


def _route_stdlib_logging() -> None:
    """SQLAlchemy and friends log through the stdlib: forward it into loguru."""
    import logging

    class Intercept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                level: str | int = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())

    logging.basicConfig(handlers=[Intercept()], level=logging.WARNING, force=True)
