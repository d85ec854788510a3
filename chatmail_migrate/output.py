"""What the command line shows: colour on a terminal only, and --debug."""

from __future__ import annotations

import logging
import os
import sys

COLOURS = {"green": "32", "yellow": "33", "red": "31", "bold": "1"}


def debugging() -> bool:
    """``invoke --debug`` / ``fab --debug`` (or CHATMAIL_MIGRATE_DEBUG=1): show tracebacks."""
    return bool(os.environ.get("CHATMAIL_MIGRATE_DEBUG")) or logging.getLogger().isEnabledFor(
        logging.DEBUG
    )


def use_colour(stream=None) -> bool:
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def paint(text: str, colour: str, stream=None) -> str:
    """``text`` in ``colour`` when writing to a terminal and NO_COLOR is not set."""
    if not use_colour(stream):
        return text
    return f"\033[{COLOURS[colour]}m{text}\033[0m"
