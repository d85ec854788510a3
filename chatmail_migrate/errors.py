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
