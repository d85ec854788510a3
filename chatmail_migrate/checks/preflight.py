"""Checks run before anything is changed: can this migration work, and is it safe?

Every check yields one line: PASS, WARN or FAIL with the reason and the fix.
Each host is asked everything in one command; nothing is changed anywhere.
"""

from __future__ import annotations

from chatmail_migrate.checks.check import Check
from chatmail_migrate.checks.dns_checks import check_dns
from chatmail_migrate.checks.host_checks import (
    check_agent,
    check_cmdeploy_runs,
    check_copy_path,
    check_domain_login,
    check_new_records,
    check_relay_files,
    check_relay_kind,
    describe_version,
    host_facts,
)
from chatmail_migrate.checks.live_relay import live_relay_reason
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts.host_keys import fingerprint
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings

FREE_MARGIN = 1.1  # plus a fixed 100 MiB: logs, indexes and Postfix grow meanwhile


FREE_EXTRA = 100 * 2**20


def _size(text: list[str]) -> int:
    try:
        return int(text[0])
    except (IndexError, ValueError):
        return 0


def run_checks(
    settings: Settings,
    runner: Runner,
    *,
    force: bool,
    journal: Journal | None,
    copying: list[str],
):
    """Yield the checks one by one, so each line appears as soon as it is known.

    ``copying``: the steps still to write onto new (none: new is not asked whether it
    serves, e.g. a resumed move whose copies are done and whose new host may serve).
    """
    yield check_cmdeploy_runs(settings)
    relay_check = check_relay_kind(settings.relay)
    if relay_check:
        yield relay_check
    agent = check_agent(settings)
    yield agent
    domain = settings.mail_domain or ""
    facts: dict[str, dict[str, list[str]]] = {}
    keys: dict[str, str] = {}
    for role in ("old", "new"):
        host = runner.host(role)
        try:
            runner.connection(role)
        except MigrateError as e:
            yield Check("FAIL", f"ssh to {role}", str(e).removeprefix(f"{role} host: "))
            continue
        keys[role] = fingerprint(runner.server_key(role))
        facts[role] = host_facts(runner, role, settings.relay)
        yield Check("PASS", f"ssh to {role}", f"{runner.settings.user}@{host} ({keys[role]})")
    if len(facts) < 2:
        return
    old, new = facts["old"], facts["new"]
    if old.get("machine-id") == new.get("machine-id") or keys["old"] == keys["new"]:
        yield Check(
            "FAIL",
            "distinct hosts",
            "old and new are the same machine (same "
            "machine-id or host key): check --old-host and --new-host",
        )
    else:
        yield Check("PASS", "distinct hosts", "different machine-ids and host keys")

    mailbox_info = old.get("mailboxes", [])
    docker = old.get("docker", [])
    if docker:
        yield Check(
            "FAIL",
            "old is a relay",
            f"{settings.old_host} runs chatmail in Docker ({docker[0]}): its state lives in "
            "Docker volumes, not in the host paths this tool moves; move it with "
            "chatmail/docker's volumes instead",
        )
    elif mailbox_info[:1] != ["dir"]:
        mailbox_dir = settings.relay.mailbox_dir if settings.relay else domain
        yield Check(
            "FAIL",
            "old is a relay",
            f"no {mailbox_dir} on {settings.old_host}: is it the relay of this chatmail.ini?",
        )
    else:
        version = (old.get("chatmail-version") or ["unknown"])[0]
        yield Check(
            "PASS",
            "old is a relay",
            f"{mailbox_info[1]} accounts for {domain}, relay {describe_version(settings, version)}",
        )

    os_id, _, os_version = (new.get("os") or ["unknown ?"])[0].partition(" ")
    if os_id == "debian" and os_version == "12":
        yield Check("PASS", "new runs Debian 12", f"{os_id} {os_version}")
    elif os_id == "debian":
        yield Check("WARN", "new runs Debian 12", f"Debian {os_version}: the relay is made for 12")
    else:
        yield Check("FAIL", "new runs Debian 12", f"{os_id} {os_version}: chatmail needs Debian")

    rsync = (
        ("rsync",) if settings.presync or (journal and journal.presynced(settings.new_host)) else ()
    )
    for role, need in (("old", ("tar", "ssh", *rsync)), ("new", ("tar", *rsync))):
        have = facts[role].get("programs", [])
        missing = [p for p in need if p not in have]
        if missing:
            yield Check(
                "FAIL", f"programs on {role}", f"missing {', '.join(missing)}: apt-get install"
            )
        else:
            yield Check("PASS", f"programs on {role}", ", ".join(need) + " present")
    if "getfacl" not in old.get("programs", []):
        yield Check("WARN", "ACLs", "no getfacl on old: ACLs (echobot's password) are not carried")
    if settings.compress and not all("zstd" in facts[r].get("programs", []) for r in facts):
        yield Check("WARN", "zstd", "not on both hosts: --compress falls back to ssh -C (zlib)")
    if "python3" not in new.get("programs", []):
        yield Check("WARN", "python3 on new", "fix-ownership needs it; the install step brings it")

    if settings.relay:
        yield from check_relay_files(settings.relay, old, new)
    # A resumed move whose copies are done writes nothing more to new (enable-mail may
    # have started mail there already); each copy step checks the host itself anyway.
    live = live_relay_reason(settings, runner, journal) if copying else None
    if live:
        yield Check("FAIL", "new is no live relay", f"{live}; check --new-host")
    elif copying:
        yield Check(
            "PASS", "new is no live relay", "no mail service there, DNS elsewhere (or ours)"
        )
    else:
        yield Check("PASS", "new is no live relay", "not asked: nothing is left to copy there")
    yield from check_dns(settings, old.get("addresses", []))
    records = check_new_records(settings, runner)
    if records:
        yield records

    domain_login = check_domain_login(settings, runner)
    if domain_login:
        yield domain_login
    if agent.status == "PASS":
        yield check_copy_path(settings, runner)
    else:
        yield Check("FAIL", "old reaches new", "not tried: the copy needs the ssh-agent (above)")

    need = _size(old.get("size", []))
    # What this migration already put on new (a pre-sync, an earlier attempt; --force:
    # whatever is there) is updated or replaced in place: only the rest needs room.
    present = _size(new.get("size", []))
    ours = force or bool(
        journal
        and (journal.presynced(settings.new_host) or journal.copy_attempted(settings.new_host))
    )
    already = f", {present / 1e9:.2f} GB of it already there" if ours and present else ""
    if ours:
        need = max(0, need - present)
    for line in new.get("free", []):
        target, _, avail = line.rpartition(" ")
        if _size([avail]) < need * FREE_MARGIN + FREE_EXTRA:
            yield Check(
                "FAIL",
                "free space on new",
                f"{target.strip()} has {int(avail) / 1e9:.2f} GB "
                f"free, the copy needs {need / 1e9:.2f} GB plus margin{already}",
            )
            break
    else:
        yield Check(
            "PASS", "free space on new", f"copy needs {need / 1e9:.2f} GB{already}; enough free"
        )

    held = new.get("mailboxes", [])
    count = held[1] if len(held) > 1 else "0"
    if held[:1] == ["dir"] and count != "0":
        if journal and journal.done("copy-data"):
            yield Check("PASS", "new holds no mailboxes", "copied by this migration (journal)")
        elif journal and journal.presynced(settings.new_host):
            yield Check(
                "PASS",
                "new holds no mailboxes",
                f"{count} pre-synced by this migration (journal): the final sync mirrors old",
            )
        elif journal and journal.copy_attempted(settings.new_host):
            yield Check(
                "WARN",
                "new holds no mailboxes",
                f"{count} from an earlier attempt of this "
                "migration (journal): copy-data replaces them",
            )
        elif force:
            yield Check(
                "WARN", "new holds no mailboxes", f"{count} there; --force: copy-data replaces them"
            )
        else:
            yield Check(
                "FAIL",
                "new holds no mailboxes",
                f"{settings.new_host} already holds {count} "
                f"mailboxes for {domain}; a copy would merge into them: check the host, "
                "or give --force to replace them",
            )
    else:
        yield Check("PASS", "new holds no mailboxes", f"none for {domain}")
