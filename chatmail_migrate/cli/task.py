"""What every task shares at the command line: one-line errors, and colour only on a terminal."""

from __future__ import annotations

import functools

import invoke
from invoke import Exit

from chatmail_migrate.errors import MigrateError, SettingsError, Stopped
from chatmail_migrate.output import debugging


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
        except Stopped as e:
            raise Exit(str(e), code=e.code) from None
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
