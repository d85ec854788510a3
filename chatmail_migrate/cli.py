"""What every task shares at the command line: one-line errors, and colour only on a terminal."""

from __future__ import annotations

import functools
import logging
import os
import sys

import invoke
from invoke import Exit

from .errors import MigrateError, SettingsError

COLOURS = {"green": "32", "yellow": "33", "red": "31", "bold": "1"}


def debugging() -> bool:
    """``invoke --debug`` / ``fab --debug`` (or CHATMAIL_MIGRATE_DEBUG=1): show tracebacks."""
    return bool(os.environ.get("CHATMAIL_MIGRATE_DEBUG")) or logging.getLogger().isEnabledFor(
        logging.DEBUG
    )


def one_line_errors(body):
    """An unexpected error ends the task with one line and exit code 1, not a traceback."""

    @functools.wraps(body)
    def wrapper(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except (Exit, invoke.exceptions.ParseError, invoke.exceptions.UnexpectedExit):
            raise
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except SettingsError as e:
            raise Exit(f"error: {e}", code=2) from None
        except MigrateError as e:
            raise Exit(f"error: {e}", code=1) from None
        except Exception as e:
            if debugging():
                raise
            raise Exit(
                f"error: unexpected {type(e).__name__}: {e} (--debug shows the traceback)", code=1
            ) from None

    return wrapper


def task(*args, **kwargs):
    """``invoke.task`` whose body reports unexpected errors in one line."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return invoke.task(one_line_errors(args[0]))
    return lambda body: invoke.task(*args, **kwargs)(one_line_errors(body))


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
