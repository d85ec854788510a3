"""``python -m chatmail_migrate``: the console script, for when it is not on PATH."""

from chatmail_migrate.cli.main import program

program.run()
