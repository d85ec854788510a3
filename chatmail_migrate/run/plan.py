"""The plan: every step as one record (what it does, on which hosts, what it needs),
the orders migrate runs them in, and the settings a task resolves for them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from chatmail_migrate import nameservers
from chatmail_migrate.cmdeploy import cmdeploy_host
from chatmail_migrate.errors import MigrateError, SettingsError
from chatmail_migrate.hosts.connect import connect
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings, check_cmdeploy, resolve
from chatmail_migrate.steps import copy, install, ownership, services, switch_dns, verify


@dataclass(frozen=True)
class Step:
    """One step of the plan: what it does, where, and what it may touch.

    ``run`` is a plain function of (settings, runner, journal) in steps/.
    """

    name: str
    run: Callable[[Settings, Runner, Journal | None], None]
    # The hosts it works on, for its announcement: old, new, old → new, old ↔ new, DNS.
    on: str
    # The settings it needs, checked before it touches anything or writes the journal.
    needs: tuple[str, ...]
    # The hosts it writes to: it holds their locks (run/host_lock.py) until the run ends.
    writes: tuple[str, ...] = ()
    # The hosts it runs cmdeploy against (checked for a port cmdeploy would drop).
    deploys_to: tuple[str, ...] = ()
    # Whether it writes the relay's data onto new: never onto a live relay (preflight).
    copies: bool = False

    @property
    def fab_host(self) -> str:
        """The host ``fab -H`` names when the step runs by hand: the one it starts on."""
        return "old" if self.on.startswith("old") else "new"

    def where(self, s: Settings) -> str:
        return {
            "old and new": f"on {s.old_host} and {s.new_host}",
            "old": f"on {s.old_host}",
            "new": f"on {s.new_host}",
            "old → new": f"{s.old_host} → {s.new_host}",
            "old ↔ new": f"{s.old_host} ↔ {s.new_host}",
            "DNS": f"{s.mail_domain or ''}: {s.old_host} → {s.new_host}",
        }[self.on]


OLD, NEW, BOTH = ("old_host", "relay_dir"), ("new_host", "relay_dir"), ("old_host", "new_host")

# Every step, in the seed's order (presync, optional, before it).
STEPS = (
    Step(
        "presync",
        copy.presync_old_to_new,
        on="old → new",
        needs=(*BOTH, "relay_dir"),
        writes=("old", "new"),  # the rsync runs on old
        copies=True,
    ),
    Step(
        "disable-mail",
        services.disable_mail_on_old,
        on="old",
        needs=OLD,
        writes=("old",),
        deploys_to=("old_host",),
    ),
    Step(
        "copy-data",
        copy.copy_data_old_to_new,
        on="old → new",
        needs=BOTH,
        writes=("old", "new"),
        copies=True,
    ),
    Step(
        "install",
        install.install_on_new,
        on="new",
        needs=(*BOTH, "relay_dir"),  # old: the secrets are carried from there before 1.8
        writes=("new",),
        deploys_to=("new_host",),
        copies=True,
    ),
    Step(
        "fix-ownership",
        ownership.fix_ownership_on_new,
        on="new",
        needs=("new_host",),
        writes=("new",),
        copies=True,
    ),
    Step("verify", verify.verify_trees, on="old ↔ new", needs=BOTH),
    Step("switch-dns", switch_dns.switch_dns_records, on="DNS", needs=(*BOTH, "relay_dir")),
    Step(
        "enable-mail",
        services.enable_mail_on_new,
        on="new",
        needs=NEW,
        writes=("new",),
        deploys_to=("new_host",),
    ),
)
BY_NAME = {step.name: step for step in STEPS}

# What migrate runs instead, so that only the cutover is inside the window: the mail
# units stop on old and start on new by themselves, and each host's cmdeploy run
# comes after (converge). By hand the steps stay the seed's, cmdeploy and all.
CUTOVER = (
    Step(
        "disable-mail",
        services.stop_mail_units_on_old,
        on="old",
        needs=("old_host",),
        writes=("old",),
    ),
    Step(
        "enable-mail",
        services.start_mail_units_on_new,
        on="new",
        needs=("new_host",),
        writes=("new",),
    ),
    Step(
        "converge",
        services.converge_hosts,
        on="old and new",
        needs=(*BOTH, "relay_dir"),
        writes=("old", "new"),
        deploys_to=("old_host", "new_host"),
    ),
)
IN_MIGRATE = {**BY_NAME, **{step.name: step for step in CUTOVER}}


def step(name: str, *, in_migrate: bool = False) -> Step:
    """The step called ``name``: as migrate runs it, or as a task runs it by hand."""
    return (IN_MIGRATE if in_migrate else BY_NAME)[name]


def seed_order() -> list[str]:
    """The seed's order of the steps a migration needs (presync is optional)."""
    return [s.name for s in STEPS if s.name != "presync"]


def migrate_order(*, presync: bool) -> list[str]:
    """The order of migrate's steps: the seed's, with install moved before mail goes down.

    With ``presync`` the mailboxes are copied while the relay still serves. The new
    host is installed while old still serves, for every release: a staged cmdeploy
    (relay >= 1.8) installs and configures, older ones get the relay's secrets first
    (the seed installs after the copy only so the deploy finds them) and deploy whole.
    """
    order = [name for name in seed_order() if name != "install"]
    return (["presync"] if presync else []) + ["install"] + order + ["converge"]


def order_of(journal: Journal | None) -> list[str]:
    """The order a journal's migration runs in; one line when it names unknown steps."""
    order = (journal.plan if journal else None) or seed_order()
    unknown = [name for name in order if name not in IN_MIGRATE]
    if unknown and journal:
        raise SettingsError(
            f"journal {journal.path} plans steps this tool does not know "
            f"({', '.join(unknown)}): it is not a chatmail-migrate journal; fix it, or move "
            "it away to start anew"
        )
    return order


def copies_left(journal: Journal | None) -> list[str]:
    """The steps still to write the relay's data onto new, in the journal's order."""
    order = order_of(journal) if journal else [s.name for s in STEPS]
    return [n for n in order if IN_MIGRATE[n].copies and not (journal and journal.done(n))]


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
