"""Does a host serve mail, or did it since this tool let mail in?

Decided from the host itself (its units, marks in the state directory and folder
ctimes) and from DNS, never from the journal alone: a copy never writes over a live relay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from chatmail_migrate import nameservers
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import commands
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings, mailbox_tree


@dataclass(frozen=True)
class MailFacts:
    """What a host says about the mail it serves or served (live_relay_facts_command)."""

    active: list[str]
    # When this tool's enable-mail started mail there, and when a rollback last carried
    # its mail back to old (unix times).
    served_since: float | None
    carried_back: float | None
    # A carry back into this host began at this time and was not verified.
    carrying: float | None
    # "UNIT START PATH": folders changed while a mail unit ran (after the last carry back).
    changed: list[str]
    addresses: list[str]
    # When this tool's last install on the host began: a migration's new host has one.
    installed: float | None = None

    @property
    def carry_due(self) -> bool:
        """This tool's enable-mail let mail in there, and nothing carried it to the
        other host since: a rollback carries it back (the one case it mirrors)."""
        return self.served_since is not None and (
            self.carried_back is None or self.carried_back < self.served_since
        )

    @property
    def took_mail(self) -> bool:
        """Whether mail taken there may be on no other host: ``carry_due``, or folders
        changed while its mail units ran (weaker evidence: never mirrored, only
        refused)."""
        return self.carry_due or bool(self.changed)

    def took_mail_reason(self) -> str:
        if self.changed:
            unit, start, path = (self.changed[0].split(" ", 2) + ["", ""])[:3]
            return f"{path} changed while {unit} ran (since {clock(start)})"
        return f"enable-mail started mail there at {clock(self.served_since)}"


def clock(stamp) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp)))
    except (TypeError, ValueError):
        return "?"


def parse_stamp(lines: list[str]) -> float | None:
    try:
        return float(lines[0]) if lines else None
    except ValueError:
        return None


def mail_facts(settings: Settings, runner: Runner, role: str) -> MailFacts | None:
    """The ``role`` host's MailFacts (None under --dry)."""
    command = commands.live_relay_facts_command(mailbox_tree(settings))
    result = runner.run_script(role, command, hide=True, quiet=True)
    if settings.dry:
        return None
    facts = commands.parse_sections(result.stdout)
    return MailFacts(
        active=facts.get("active", []),
        served_since=parse_stamp(facts.get("served", [])),
        carried_back=parse_stamp(facts.get("carried", [])),
        carrying=parse_stamp(facts.get("carrying", [])),
        changed=facts.get("changed", []),
        addresses=facts.get("addresses", []),
        installed=parse_stamp(facts.get("installed", [])),
    )


def live_relay_reason(settings: Settings, runner: Runner, journal: Journal | None) -> str | None:
    """Why a copy must not write to the new host, or None.

    Steps that write to the new host never write to a host that serves mail, or took
    mail no other host has: rerun after a finished move (shell history, ``--restart``,
    a rollback that left it serving), or with the hosts swapped, they would wipe mail
    received since, or the old relay's keys. Decided from the host, never from the
    journal alone: its mail units run; this tool's enable-mail started mail there and
    no rollback carried that mail back since; files in its mailbox tree or queue
    changed while its mail units ran; or DNS points the mail domain at it (asked of
    the authoritative servers). One exception: mail units that this migration's own
    install started (Debian's packages start them), on a host that never took mail.
    """
    host = settings.new_host
    facts = mail_facts(settings, runner, "new")
    if facts is None:
        return None
    # Units this migration's install started are expected; a host that took mail is not.
    ours = bool(journal and journal.new_host == host and journal.started_on(host))
    if facts.active and not (ours and not facts.took_mail):
        services = " and ".join(unit.split("@")[0] for unit in facts.active)
        return f"{host} runs {services}, so it serves mail"
    if facts.took_mail:
        return (
            f"{host} took mail that may be on no other host ({facts.took_mail_reason()}); "
            "`rollback` carries it back to the old host first"
        )
    addresses = nameservers.canonical(facts.addresses)
    if not (settings.mail_domain and addresses):
        return None
    domain = settings.mail_domain
    try:
        published = nameservers.published_addresses(domain, settings.nameservers)
    except MigrateError:
        return None  # DNS cannot be asked: the host's facts above stand
    live = sorted(addresses & published)
    if live:
        return (
            f"DNS points {domain} at {', '.join(live)}, an address of {host}: it is the live relay"
        )
    return None


def refuse_to_overwrite_a_live_relay(
    settings: Settings, runner: Runner, step: str, journal: Journal | None
) -> None:
    """Refuse (``--force`` does not override it) when the new host is a live relay."""
    reason = live_relay_reason(settings, runner, journal)
    if reason:
        raise MigrateError(
            f"{step} refused: {reason}, and {step} would overwrite what it holds; check "
            "--new-host (is it the old relay, or a finished move?)"
        )
