"""Fabric task file: ``fab --list`` from the repository root shows the migration tasks."""

from chatmail_migrate.cli.collection import migration_collection

ns = migration_collection()
