"""Logging: one format for master and workers, and a TRACE level below DEBUG."""

from __future__ import annotations

import logging
import sys

TRACE = 5  # per-command traces; check isEnabledFor(TRACE) before formatting
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s mailfast[%(process)d]: %(levelname)s %(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
    )
    root = logging.getLogger("mailfast")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False
