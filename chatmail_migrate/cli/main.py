"""The ``chatmail-migrate`` console script: ``fab`` with our collection, from any directory."""

from fabric import Config, Executor
from fabric.main import Fab

from chatmail_migrate import __version__
from chatmail_migrate.cli.collection import migration_collection

program = Fab(
    name="chatmail-migrate",
    binary="chatmail-migrate",
    version=__version__,
    namespace=migration_collection(),
    executor_class=Executor,
    config_class=Config,
)
