"""What the CLIs show of hashtune's log records: INFO on stdout (what a command is doing), warnings on stderr.

Library code logs to `logging.getLogger(__name__)` and never prints; a CLI calls `show_logs()` first.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["show_logs"]


def show_logs() -> None:
    """Send the `hashtune` loggers' records to this process's stdout (INFO) and stderr (WARNING and up), as plain
    lines; called again (a test calling a CLI twice), it replaces its own handlers."""
    logger = logging.getLogger("hashtune")
    for handler in [handler for handler in logger.handlers if getattr(handler, "hashtune_console", False)]:
        logger.removeHandler(handler)
    info = logging.StreamHandler(sys.stdout)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    for handler in (info, warnings):
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.hashtune_console = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
