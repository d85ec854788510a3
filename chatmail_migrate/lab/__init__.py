"""The lab: Debian 12 hosts on this machine to test and rehearse migrations on."""

from chatmail_migrate.lab import nameserver
from chatmail_migrate.lab.lab import Lab
from chatmail_migrate.lab.rootfs import LabError
from chatmail_migrate.lab.seed import SeedParams, seed_relay

__all__ = ["Lab", "LabError", "SeedParams", "nameserver", "seed_relay"]
