"""The tool's exceptions, in one place: every layer raises them, the CLI reports them.

Each message is one line saying what is wrong and how to fix it.
"""


class SettingsError(Exception):
    """Bad or missing input, found before any host is touched (exit code 2)."""


class MigrateError(Exception):
    """A step cannot go on; the message says what happened (exit code 1)."""


class HostKeyError(MigrateError):
    """A host key is unknown or has changed: never accepted silently."""


class RelayConfigError(SettingsError):
    """chatmail.ini cannot be read as the relay would read it."""


class Stopped(Exception):
    """A run stopped; the message is already what the operator reads (it may add where
    things stand on further lines), with the exit code to end on."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
