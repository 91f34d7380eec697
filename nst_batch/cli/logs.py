"""Logging: readable lines on stderr (with journald priorities under systemd), an optional
rotated JSON-lines file, the job id on every job line, and stdlib logging routed here too."""

import logging
import os
import sys
from pathlib import Path

from loguru import logger

# syslog priorities that journald reads from a "<N>" line prefix
_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _under_journald() -> bool:
    return "JOURNAL_STREAM" in os.environ


def _line_format(record) -> str:
    job = " [{extra[job]}]" if "job" in record["extra"] else ""
    if _under_journald():  # journald adds its own timestamps
        # the backslash keeps loguru from reading "<6>" as a colour tag
        return f"\\<{_PRIORITY.get(record['level'].name, 6)}>{{level}}{job} {{message}}\n{{exception}}"
    return "{time:YYYY-MM-DD HH:mm:ss} {level: <7}" + job + " {message}\n{exception}"


class _InterceptHandler(logging.Handler):
    """Send stdlib logging records (watchdog, PIL, ...) through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(
    level: str = "INFO", json_file: Path | None = None, rotation: str = "10 MB", retention: int = 5
) -> None:
    logger.remove()
    # backtrace/diagnose off: a traceback must never dump variables (paths, parameters, tensors)
    logger.add(sys.stderr, level=level, format=_line_format, backtrace=False, diagnose=False, colorize=False)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            json_file, level=level, serialize=True, rotation=rotation, retention=retention,
            backtrace=False, diagnose=False, enqueue=True,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
