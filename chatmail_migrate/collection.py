"""The migration tasks as one Invoke collection, shared by fab, invoke and the console script."""

from invoke import Collection

from . import steps
from .settings import DEFAULTS


def migration_collection() -> Collection:
    """A fresh collection (callers may add their own tasks to it)."""
    ns = Collection(
        steps.presync,
        steps.disable_mail,
        steps.copy_data,
        steps.install,
        steps.fix_ownership,
        steps.verify,
        steps.switch_dns,
        steps.enable_mail,
        steps.check_relay,
        steps.preflight,
        steps.rollback,
        steps.migrate,
        steps.status,
    )
    ns.configure(DEFAULTS)
    return ns
