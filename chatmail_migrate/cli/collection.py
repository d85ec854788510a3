"""The migration tasks as one Invoke collection, shared by fab, invoke and the console script."""

from invoke import Collection

from chatmail_migrate.cli import tasks
from chatmail_migrate.settings import DEFAULTS


def migration_collection() -> Collection:
    """A fresh collection (callers may add their own tasks to it)."""
    ns = Collection(
        tasks.presync,
        tasks.disable_mail,
        tasks.copy_data,
        tasks.install,
        tasks.fix_ownership,
        tasks.verify,
        tasks.switch_dns,
        tasks.enable_mail,
        tasks.check_relay,
        tasks.preflight,
        tasks.rollback,
        tasks.migrate,
        tasks.status,
    )
    ns.configure(DEFAULTS)
    return ns
