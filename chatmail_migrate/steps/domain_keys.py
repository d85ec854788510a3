"""The mail domain's keys in the operator's known_hosts while the relay moves.

During the move the mail domain may lead to either host (resolver caches, and
relays up to 1.7 whose ``cmdeploy run`` logs in to the domain itself). OpenSSH
accepts a host when any line naming it holds the key it sees, so once DNS is being
changed the domain gets the new host's verified keys beside the old one's; when the
authoritative servers answer the new address the move has ended and only the new
host's keys stay; a rollback ends with the old host's alone. Always every key type the
host serves: OpenSSH negotiates a type known_hosts holds for the name, and a key of
that type no line holds is a changed key to it, whatever the other types say. Files
are backed up before the first change; nothing unverified is ever written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import known_hosts
from chatmail_migrate.hosts.connect import connect
from chatmail_migrate.hosts.host_keys import (
    fingerprint,
    hashes_known_hosts,
    key_fingerprint,
    known_hosts_files,
)
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.nameservers import points_at_new
from chatmail_migrate.settings import Settings


def _hashed(settings: Settings) -> bool:
    """Whether the ssh config hashes the names it records (HashKnownHosts yes)."""
    return hashes_known_hosts(connect(settings, settings.mail_domain or ""))


def _domain_known_hosts(settings: Settings) -> list[Path]:
    """The user known_hosts files OpenSSH reads for the mail domain (ssh config honoured)."""
    files, _ = known_hosts_files(connect(settings, settings.mail_domain or ""))
    return files


def accept_both(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """While DNS changes, the mail domain may lead to either host: let ssh accept both.

    The new host's key was checked by the tool's own connection against known_hosts
    (or accepted there with --accept-new-host-keys); its keys of other types come from
    the host over that connection. Files that name the domain get them beside the old
    host's keys (backed up first); with no such file, the first user file gets them,
    as ssh would after a confirmed first login.
    """
    domain = settings.mail_domain or ""
    key = runner.server_key("new")
    keys = runner.host_keys("new")
    files = _domain_known_hosts(settings)
    naming = [f for f in files if known_hosts.names_domain(f, domain)] or files[:1]
    changed, backups = [], []
    for path in naming:
        if known_hosts.names_keys(path, domain, keys):
            continue
        if path.is_file():
            backups.append(str(known_hosts.backup(path)))
        known_hosts.add_keys(path, domain, keys, _hashed(settings))
        changed.append(str(path))
    if changed:
        print(
            f"  known_hosts: {domain} is accepted with the old and the new host's keys "
            f"({_described(keys)}) until enable-mail ends; backup: {', '.join(backups) or 'none'}"
        )
    if journal and not settings.dry:
        journal.note(
            "known-hosts-both",
            host=settings.new_host,
            files=[str(p) for p in naming],
            key_type=key.get_name(),
            key=key.get_base64(),
            backups=backups,
            keys=[f"{t} {k}" for t, k in keys],
        )


def _described(keys: list[known_hosts.Key]) -> str:
    """The checked key's fingerprint, and the other types the host serves."""
    first, *others = keys
    return key_fingerprint(*first) + "".join(f", {t}" for t, _ in others)


def _known_hosts_move(journal: Journal | None) -> dict | None:
    """The "known-hosts-both" note of this migration (since its last restart), if any:
    which files the tool edited for the mail domain, and the new host's key."""
    for event in reversed(journal.events if journal else []):
        if event.get("event") in ("restart", "rollback"):
            return None
        if event.get("event") == "known-hosts-both":
            return event
    return None


def keep_only_new(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """The move has ended: the mail domain names only the new host's key, once DNS
    was seen to point at it (until then the old host may still answer to the name)."""
    move = _known_hosts_move(journal)
    if not move or settings.dry:
        return
    domain, key = settings.mail_domain or "", runner.server_key("new")
    if key.get_base64() != move["key"]:
        raise MigrateError(
            f"the new host {settings.new_host} shows another host key ({fingerprint(key)}) "
            "than the one switch-dns accepted for the mail domain: check the host"
        )
    if points_at_new(settings, journal) is not True:
        print(
            f"  known_hosts: {domain} keeps both hosts' keys: not every authoritative "
            "nameserver answers the new address yet; once they do, run switch-dns "
            "--update-known-hosts to keep only the new host's key"
        )
        return
    keys = runner.host_keys("new")
    for path in map(Path, move["files"]):
        known_hosts.replace_keys(path, domain, keys, _hashed(settings))
    print(f"  known_hosts: {domain} now names only the new host's keys ({_described(keys)})")


def old_key_during_rollback(
    settings: Settings, runner: Runner, journal: Journal | None, *, done: bool
) -> None:
    """A rollback after switch-dns edited known_hosts: the domain accepts the old host's
    (verified) key again while cmdeploy may log in to it, and only that key once mail
    runs on old again. A rollback before switch-dns leaves known_hosts alone."""
    move = _known_hosts_move(journal)
    if not move or settings.dry:
        return
    domain = settings.mail_domain or ""
    keys = runner.host_keys("old")
    if not done:
        for path in map(Path, move["files"]):
            known_hosts.add_keys(path, domain, keys, _hashed(settings))
    elif points_at_new(settings, journal) is False:
        for path in map(Path, move["files"]):
            known_hosts.replace_keys(path, domain, keys, _hashed(settings))
        print(f"  known_hosts: {domain} names only the old host's keys again ({_described(keys)})")
    else:
        print(
            f"  known_hosts: {domain} keeps both hosts' keys until DNS points at the old "
            "host again (rerun rollback then to keep only the old host's key)"
        )


def offer_new_key_only(settings: Settings, runner: Runner) -> None:
    """Offer to end the transition now: only the new key for the mail domain."""
    domain = settings.mail_domain or ""
    keys = runner.host_keys("new")
    stale = [
        f
        for f in _domain_known_hosts(settings)
        if f.is_file() and known_hosts.names_other_key(f, domain, keys)
    ]
    if not stale:
        return
    where = ", ".join(str(f) for f in stale)
    update = settings.update_known_hosts
    if not update and sys.stdin.isatty() and not settings.yes:
        answer = input(
            f"  {where} still holds the old host's key for {domain}; keep only the "
            f"new host's ({_described(keys)}) now? [y/N] "
        )
        update = answer.strip().lower() in ("y", "yes")
    if update:
        for path in stale:
            known_hosts.replace_keys(path, domain, keys, _hashed(settings))
        print(f"  known_hosts: {domain} now names only the new host's keys ({_described(keys)})")
    else:
        print(
            f"  known_hosts: {where} still holds the old host's key for {domain} beside the "
            f"new one's; enable-mail keeps only the new host's keys ({_described(keys)}) "
            "when it ends, or rerun switch-dns with --update-known-hosts"
        )
