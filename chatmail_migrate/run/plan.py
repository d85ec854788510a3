"""The plan: what each step does, on which hosts, and what it needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from chatmail_migrate import nameservers
from chatmail_migrate.cmdeploy import cmdeploy_host
from chatmail_migrate.errors import MigrateError, SettingsError
from chatmail_migrate.hosts.connect import connect
from chatmail_migrate.settings import Settings, check_cmdeploy, resolve
from chatmail_migrate.steps import copy as steps_copy
from chatmail_migrate.steps import install, ownership, services, switch_dns
from chatmail_migrate.steps import verify as steps_verify

# What each step does: a plain function of (settings, runner, journal).
STEP_ACTIONS: dict[str, Callable[..., None]] = {
    "presync": steps_copy.presync_old_to_new,
    "disable-mail": services.disable_mail_on_old,
    "copy-data": steps_copy.copy_data_old_to_new,
    "install": install.install_on_new,
    "fix-ownership": ownership.fix_ownership_on_new,
    "verify": steps_verify.verify_trees,
    "switch-dns": switch_dns.switch_dns_records,
    "enable-mail": services.enable_mail_on_new,
}


# Which host each step works on, for its announcement.
ROLES = {
    "presync": "old → new",
    "disable-mail": "old",
    "copy-data": "old → new",
    "install": "new",
    "fix-ownership": "new",
    "verify": "old ↔ new",
    "switch-dns": "DNS",
    "enable-mail": "new",
}


# The hosts each step writes to: it holds their locks (host_lock.py) until the run ends.
WRITES = {
    "presync": ("old", "new"),  # the rsync runs on old
    "disable-mail": ("old",),
    "copy-data": ("old", "new"),
    "install": ("new",),
    "fix-ownership": ("new",),
    "verify": (),
    "switch-dns": (),
    "enable-mail": ("new",),
}


# What each step needs, checked before it touches anything or writes the journal.
NEEDS = {
    "presync": ("old_host", "new_host", "relay_dir"),
    "disable-mail": ("old_host", "relay_dir"),
    "copy-data": ("old_host", "new_host"),
    "install": ("old_host", "new_host", "relay_dir"),  # old: the secrets before 1.8
    "fix-ownership": ("new_host",),
    "verify": ("old_host", "new_host"),
    "switch-dns": ("old_host", "new_host", "relay_dir"),
    "enable-mail": ("new_host", "relay_dir"),
}


# The host each step runs cmdeploy against (checked for a port cmdeploy would drop).
DEPLOYS_TO = {"disable-mail": ("old_host",), "install": ("new_host",), "enable-mail": ("new_host",)}


# Which host ``fab -H`` names for each step run by hand: the step's own host.
FAB_HOST_ROLE = {
    name: "old" if name in ("presync", "disable-mail", "copy-data", "verify") else "new"
    for name in STEP_ACTIONS
}


def task_settings(c, role: str | None, needs=(), deploys_to=(), **flags) -> Settings:
    """Resolve and check a task's settings; bad input exits with one line, nothing touched.

    ``deploys_to``: the hosts (``old_host``/``new_host``) the task runs cmdeploy against.
    """
    settings = resolve(c, role=role, **flags)
    settings.need(*needs)
    if deploys_to:
        check_cmdeploy(settings)
        for name in deploys_to:
            cmdeploy_host(getattr(settings, name))  # refuses a port it would drop
    if "old_host" in needs:
        settings = pin_old_host(settings)
    return settings


def pin_old_host(settings: Settings) -> Settings:
    """Turn the default old host (the mail domain) into the address DNS gives now.

    Asked of the authoritative servers, once: after the switch the name points at
    the new host. A ``Host`` entry for the domain in the ssh config is kept as is.
    """
    if not settings.old_host_from_domain or settings.dry:
        return settings
    domain = settings.mail_domain or ""
    if connect(settings, domain).host != domain:
        return settings
    try:
        address = nameservers.resolve_host(
            domain, nameservers.parse_nameservers(settings.nameservers)
        )
    except MigrateError as e:
        raise SettingsError(f"cannot find the old host by DNS: {e}; give --old-host") from None
    print(f"old host: {domain} points at {address} (asked its authoritative nameservers)")
    return dataclasses.replace(settings, old_host=address, old_host_from_domain=False)


def where(name: str, s: Settings) -> str:
    return {
        "old": f"on {s.old_host}",
        "new": f"on {s.new_host}",
        "old → new": f"{s.old_host} → {s.new_host}",
        "old ↔ new": f"{s.old_host} ↔ {s.new_host}",
        "DNS": f"{s.mail_domain or ''}: {s.old_host} → {s.new_host}",
    }[ROLES[name]]
