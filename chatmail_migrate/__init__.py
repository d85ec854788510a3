"""chatmail-migrate: move a chatmail relay to a new host with Fabric and Invoke."""

__version__ = "0.1.0"
