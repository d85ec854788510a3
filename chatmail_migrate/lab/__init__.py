"""The lab: Debian 12 hosts on this machine to test and rehearse migrations on."""

from . import nameserver
from .lab import Lab, LabError
from .seed import SeedParams, seed_relay

__all__ = ["Lab", "LabError", "SeedParams", "nameserver", "seed_relay"]
