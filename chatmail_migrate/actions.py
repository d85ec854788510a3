"""What each step does on the hosts: plain functions of (settings, runner, journal).

The tasks in steps.py wrap these with announcements, the journal and rollback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import paramiko

from . import commands, dnscheck, known_hosts, verify
from .cmdeploy import ACTIVATE_STAGES, PREPARE_STAGES, cmdeploy_run, stages_supported
from .journal import Journal
from .progress import CopyProgress
from .relay import MAILBOX_ROOT, copy_paths
from .remote import (
    MigrateError,
    Runner,
    connect,
    existing_paths,
    fingerprint,
    have_program,
    known_hosts_files,
    path_exists,
)
from .settings import Settings


def expect_mail_services(runner: Runner, role: str, *, running: bool) -> None:
    result = runner.run(role, commands.service_state_command(), hide=True)
    if runner.dry:
        return
    problems = commands.service_problems(commands.parse_service_states(result.stdout), running)
    if problems:
        raise MigrateError(f"on the {role} host: " + "; ".join(problems))
    state = "active and enabled" if running else "stopped and disabled"
    print(f"  {role} host: postfix and dovecot are {state}")


def disable_mail_on_old(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    cmdeploy_run(settings, settings.old_host, disable_mail=True)
    expect_mail_services(runner, "old", running=False)


def _need_agent(settings: Settings, step: str) -> None:
    if not settings.dry and not os.environ.get("SSH_AUTH_SOCK"):
        raise MigrateError(
            f"{step} needs an ssh-agent (SSH_AUTH_SOCK) holding a key the new host accepts: "
            "run ssh-agent and ssh-add first"
        )


def _compression(settings: Settings, runner: Runner) -> str | None:
    """zstd when both hosts have it, else ssh's own zlib; None unless asked for."""
    if not settings.compress:
        return None
    if settings.dry or (
        have_program(runner, "old", "zstd") and have_program(runner, "new", "zstd")
    ):
        print("  compressing on the wire with zstd (--compress)")
        return "zstd"
    print("  compressing on the wire with ssh -C (--compress; zstd is missing on a host)")
    return "ssh"


def _need_rsync(settings: Settings, runner: Runner, step: str) -> None:
    if settings.dry:
        return
    for role in ("old", "new"):
        if not have_program(runner, role, "rsync"):
            raise MigrateError(
                f"{step} needs rsync on both hosts, and the {role} host {runner.host(role)} "
                "has none: apt install rsync there"
            )


def _copy_target(settings: Settings, runner: Runner) -> dict:
    """Where the old host sends to, and the key it must see there (this machine's view)."""
    host, port, user = runner.address("new")
    if settings.new_host_from_old:
        host = settings.new_host_from_old
    # Pin the keys this machine trusts for the new host.
    key_line = runner.host_key_line("new", commands.NEW_HOST_ALIAS)
    return {"host": host, "port": port, "user": user, "host_key_line": key_line}


def _run_copy(settings: Settings, runner: Runner, script: str) -> list[dict]:
    """Run a copy script on old with the agent forwarded, showing its progress.

    Invoke waits for a remote command to end even after ^C, and without a pty the
    remote side never hears of it: so on ^C, stop the copy on old ourselves.
    """
    interrupted = []

    def on_interrupt(signum, frame):
        if interrupted:
            raise KeyboardInterrupt  # a second ^C: stop waiting
        interrupted.append(signum)
        print("\n  interrupted: stopping the copy on the old host", flush=True)
        stop_copy_on_old(settings)

    progress = CopyProgress(interval=settings.progress_interval)
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        runner.stream("old", script, progress.feed, forward_agent=True)
    except MigrateError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return progress.summaries


def _mailbox_tree(settings: Settings) -> str:
    return settings.relay.mailbox_tree if settings.relay else MAILBOX_ROOT


def presync_old_to_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Mirror the mailbox tree to new while old still serves mail; repeatable."""
    _need_agent(settings, "presync")
    tree = _mailbox_tree(settings)
    if not settings.dry and not path_exists(runner, "old", tree):
        raise MigrateError(
            f"the old host {settings.old_host} has no {tree}: is it a chatmail relay?"
        )
    _need_rsync(settings, runner, "presync")
    compress = _compression(settings, runner)
    if journal and not settings.dry:
        journal.record_start("presync", settings.new_host)
    script = commands.presync_script(
        **_copy_target(settings, runner), compress=compress, mailbox_tree=tree
    )
    summaries = _run_copy(settings, runner, script)
    if journal and not settings.dry:
        journal.note("presync-done", host=settings.new_host, copies=summaries)


def copy_data_old_to_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    _need_agent(settings, "copy-data")
    tree = _mailbox_tree(settings)
    wanted = copy_paths(settings.relay)
    paths = wanted
    if not settings.dry:
        paths = existing_paths(runner, "old", wanted)
        for path in wanted:
            if path not in paths:
                print(f"  skipping {path}: not on the old host")
                if journal:
                    journal.note("skipped", path=path, reason="not on the old host")
        if tree not in paths:
            raise MigrateError(
                f"the old host {settings.old_host} has no {tree}: is it a chatmail relay?"
            )
    # After a pre-sync to this host, rsync sends only what changed since.
    sync = bool(journal and journal.presynced(settings.new_host))
    if sync:  # the pre-sync found rsync on both hosts
        print("  mailboxes were pre-synced: rsync sends what changed and mirrors deletions")
    # Data from an earlier attempt (or, with --force, any) is replaced, never merged.
    replace = settings.force or bool(journal and journal.copy_attempted(settings.new_host))
    if replace and not sync:
        print(f"  replacing what an earlier attempt left on {settings.new_host}")
    compress = _compression(settings, runner)
    target = _copy_target(settings, runner)
    if journal and not settings.dry:
        journal.record_start("copy-data", settings.new_host)
    script = commands.copy_script(
        paths, **target, replace=replace, sync_mailboxes=sync, compress=compress,
        mailbox_tree=tree,
    )  # fmt: skip
    summaries = _run_copy(settings, runner, script)
    if journal and not settings.dry:
        journal.note("copied", host=settings.new_host, copies=summaries)


def stop_copy_on_old(settings: Settings) -> None:
    """After an interrupt, stop the pipe still running on the old host (new connection)."""
    runner = Runner(settings)
    try:
        out = runner.run("old", commands.stop_copy_command(), hide=True, quiet=True, warn=True)
        if "stopped" in out.stdout:
            print("  stopped the copy still running on the old host")
    except MigrateError as e:
        print(f"  could not stop the copy on the old host: {e}")
    finally:
        runner.close()


def install_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Deploy the relay on new with mail off: only install and configure where staged."""
    staged, why = stages_supported(settings)
    if not staged:
        cmdeploy_run(settings, settings.new_host, disable_mail=True)
        expect_mail_services(runner, "new", running=False)
        return
    print(f"  cmdeploy runs in stages ({why}): install and configure now, activate last")
    if settings.relay and settings.relay.tls_external:
        carry_files_configure_reads(settings, runner, list(settings.relay.tls_external))
    cmdeploy_run(settings, settings.new_host, disable_mail=True, stages=PREPARE_STAGES)
    # Nothing on new may take mail before activate: the copied queue lands here later.
    result = runner.run("new", commands.service_state_command(), hide=True)
    if settings.dry:
        return
    states = commands.parse_service_states(result.stdout)
    running = [s for s in commands.MAIL_SERVICES if states.get(s, ("",))[0] == "active"]
    if running:
        runner.run("new", f"systemctl stop {' '.join(running)}")
        print(f"  stopped {', '.join(running)} on new until the activate stage")
    else:
        print("  new host: postfix and dovecot are not running (activate starts them)")


def carry_files_configure_reads(settings: Settings, runner: Runner, paths: list[str]) -> None:
    """Copy what configure needs on new before it runs (1.10+: tls_external_cert_and_key;
    configure fails when those files are missing). copy-data carries them again."""
    _need_agent(settings, "install")
    present = paths if settings.dry else existing_paths(runner, "old", paths)
    if present != paths:
        missing = ", ".join(p for p in paths if p not in present)
        raise MigrateError(
            f"chatmail.ini's tls_external_cert_and_key names {missing}, which the old host "
            "does not have: put the files there or fix chatmail.ini"
        )
    print(f"  carrying {', '.join(paths)} to new first: configure reads them")
    _run_copy(settings, runner, commands.copy_script(paths, **_copy_target(settings, runner)))


def fix_ownership_on_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    paths = copy_paths(settings.relay)
    if not settings.dry:
        paths = existing_paths(runner, "new", paths)
    runner.run_script("new", commands.fix_ownership_script(paths, _mailbox_tree(settings)))
    result = runner.run("new", commands.ownership_check_command(paths), hide=True)
    if settings.dry:
        return
    sections = commands.parse_sections(result.stdout)
    problems = []
    if sections.get("orphans"):
        problems.append("files owned by ids with no name: " + ", ".join(sections["orphans"][:5]))
    dkim = sections.get("dkim", [])
    if dkim and dkim[0] != "opendkim 600":
        problems.append(f"DKIM key is '{dkim[0]}' (owner mode), expected 'opendkim 600'")
    check = commands.postfix_check_problems(sections.get("postfix check", []))
    if check:
        problems.append("postfix check: " + " / ".join(check[:5]))
    if problems:
        raise MigrateError("; ".join(problems))
    print("  owners fixed: no orphaned ids, DKIM key opendkim 0600, postfix check clean")


def _global_addresses(runner: Runner, role: str) -> dict[str, list[str]]:
    out = runner.run(role, commands.global_addresses_command(), hide=True, quiet=True).stdout
    found: dict[str, list[str]] = {"A": [], "AAAA": []}
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("local"):
                found["A" if addr.get("family") == "inet" else "AAAA"].append(addr["local"])
    return found


def _status_printer():
    """One live line on a terminal; plain lines otherwise."""
    if sys.stdout.isatty():
        return lambda line: print(f"\r\033[K  {line}", end="", flush=True)
    return lambda line: print(f"  {line}", flush=True)


def switch_dns_records(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    domain = settings.mail_domain or ""
    if settings.new_addresses:
        new = {
            "A": [a for a in settings.new_addresses if ":" not in a],
            "AAAA": [a for a in settings.new_addresses if ":" in a],
        }
    elif settings.dry:
        runner.run("new", commands.global_addresses_command())
        new = {"A": ["<new IPv4>"], "AAAA": []}
    else:
        new = _global_addresses(runner, "new")
    if not new["A"] and not new["AAAA"]:
        raise MigrateError(
            f"the new host {settings.new_host} has no global address; give --new-address"
        )
    given = dnscheck.parse_nameservers(settings.nameservers)
    if settings.dry:
        print(
            f"  (would ask the nameservers of {domain} for its A/AAAA records, print the "
            "changes, wait for your 'done', then for every nameserver to answer them)"
        )
        return
    zone, servers = dnscheck.authoritative_servers(domain, given)
    current = dnscheck.address_records(domain, servers)
    old = {t: sorted({v for a in current.values() for v in a[t].values}) for t in ("A", "AAAA")}
    ttls = [a[t].ttl for a in current.values() for t in ("A", "AAAA") if a[t].ttl is not None]
    old_ttl = max(ttls, default=0)
    want = {t: sorted(new[t]) for t in ("A", "AAAA") if new[t] or old[t]}
    print(
        f"  Change these records in the zone {zone} (nameservers: "
        f"{', '.join(str(s) for s in servers)}):"
    )
    print(f"  {'name':28} {'type':5} {'old value':24} {'new value':24} TTL")
    for rtype, values in want.items():
        print(
            f"  {domain + '.':28} {rtype:5} {', '.join(old[rtype]) or '(none)':24} "
            f"{', '.join(values) or '(delete)':24} {dnscheck.SUGGESTED_TTL}"
        )
    already = all(current[s][t].values == v for s in servers for t, v in want.items())
    if already:
        print("  every nameserver already answers the new values")
    elif settings.yes:
        print("  --yes: not asking for confirmation")
    elif not sys.stdin.isatty():
        raise MigrateError(
            "switch-dns waits for you to confirm the DNS change, but there is no terminal; "
            "change the records, then rerun with --yes"
        )
    else:
        while input("  Type 'done' once the records are changed: ").strip().lower() != "done":
            pass
    if journal:
        journal.note("dns-change-confirmed", old_ttl=old_ttl)
    accept_both_host_keys(settings, runner, journal)
    if not settings.dns_wait:
        print("  --no-wait: not waiting for the nameservers")
    else:
        status = _status_printer()
        waited = dnscheck.wait_for(
            domain, servers, want, timeout=settings.dns_timeout, status=status
        )
        if sys.stdout.isatty():
            print()
        print(f"  all {len(servers)} nameservers answer the new values (waited {waited:.0f}s)")
    expiry = time.time() + old_ttl
    until = time.strftime("%H:%M:%S", time.localtime(expiry))
    print(f"  resolvers may hand out the old address until {until} (now + old TTL {old_ttl}s)")
    if journal:
        journal.note(
            "dns-switched", caches_expire=expiry, waited=settings.dns_wait,
            records=dict(want),
        )  # fmt: skip
    check_published_keys(settings, runner, servers[0])
    offer_known_hosts_update(settings, runner)
    if settings.wait_caches and old_ttl:
        print(f"  --wait-caches: waiting {old_ttl}s for resolver caches")
        time.sleep(max(0, expiry - time.time()))


DKIM_SELECTOR = "opendkim"


def _dkim_p(record: str) -> str:
    tags = dict(part.strip().split("=", 1) for part in record.split(";") if "=" in part)
    return tags.get("p", "").replace(" ", "")


def check_published_keys(settings: Settings, runner: Runner, server) -> None:
    """The DKIM TXT record and CAA accounturi must match what the NEW host has."""
    domain = settings.mail_domain or ""
    name = f"{DKIM_SELECTOR}._domainkey.{domain}"
    records = [r for r in dnscheck.lookup(server, name, "TXT").values if "p=" in r]
    facts = runner.run("new", commands.published_keys_facts_command(), hide=True, quiet=True)
    sections = commands.parse_sections(facts.stdout)
    key = "".join(sections.get("dkim", []))
    if not records:
        print(f"  WARN: no DKIM record at {name}: publish the key of /etc/dkimkeys/opendkim.txt")
    elif _dkim_p(records[0]) != key:
        raise MigrateError(
            f"DKIM: {name} publishes p={_dkim_p(records[0])} but the new host's "
            f"/etc/dkimkeys/opendkim.private has p={key or '(none)'}: the key did not come "
            "across intact; copy /etc/dkimkeys again, or publish the new host's key"
        )
    else:
        print(f"  DKIM record {name} matches the new host's key")
    uris = [
        part.split("=", 1)[1]
        for r in dnscheck.lookup(server, domain, "CAA").values
        for part in r.replace('"', "").split(";")
        if part.strip().startswith("accounturi=")
    ]
    accounts = sections.get("acme", [])
    if uris and not set(uris) & set(accounts):
        raise MigrateError(
            f"CAA: {domain} allows only accounturi {', '.join(uris)}, but the new host's "
            f"ACME account is {', '.join(accounts) or '(none)'}: copy /var/lib/acme again, "
            "or change the CAA record"
        )
    if uris:
        print("  CAA accounturi matches the new host's ACME account")


def _new_host_key(runner: Runner) -> paramiko.PKey:
    return runner.connection("new").client.get_transport().get_remote_server_key()


def _domain_known_hosts(settings: Settings) -> list[Path]:
    """The user known_hosts files OpenSSH reads for the mail domain (ssh config honoured)."""
    files, _ = known_hosts_files(connect(settings, settings.mail_domain or ""))
    return files


def accept_both_host_keys(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """While DNS changes, the mail domain may lead to either host: let ssh accept both.

    Both keys were verified by the tool's own connections. Files that name the domain
    get the new host's key beside the old one's (backed up first); with no such file,
    the first user file gets it, as ssh would after a confirmed first login.
    """
    domain = settings.mail_domain or ""
    key = _new_host_key(runner)
    files = _domain_known_hosts(settings)
    naming = [f for f in files if known_hosts.names_domain(f, domain)] or files[:1]
    changed, backups = [], []
    for path in naming:
        if known_hosts.names_key(path, domain, key):
            continue
        if path.is_file():
            backups.append(str(known_hosts.backup(path)))
        known_hosts.add_key(path, domain, key)
        changed.append(str(path))
    if changed:
        print(
            f"  known_hosts: {domain} is accepted with the old and the new host's key "
            f"({fingerprint(key)}) until enable-mail ends; backup: {', '.join(backups) or 'none'}"
        )
    if journal and not settings.dry:
        journal.note(
            "known-hosts-both", host=settings.new_host, files=[str(p) for p in naming],
            key_type=key.get_name(), key=key.get_base64(), backups=backups,
        )  # fmt: skip


def _known_hosts_move(journal: Journal | None) -> dict | None:
    """The "known-hosts-both" note of this migration (since its last restart), if any:
    which files the tool edited for the mail domain, and the new host's key."""
    for event in reversed(journal.events if journal else []):
        if event.get("event") == "restart":
            return None
        if event.get("event") == "known-hosts-both":
            return event
    return None


def dns_points_at_new(settings: Settings, journal: Journal | None) -> bool | None:
    """Asked of the authoritative servers now: True when every one answers the records
    switch-dns set, False when none answers any of them, None when mixed or unknown."""
    switched = next(
        (
            e
            for e in reversed(journal.events if journal else [])
            if e.get("event") == "dns-switched"
        ),
        None,
    )
    if not switched:
        return False
    want = switched.get("records", {})
    try:
        given = dnscheck.parse_nameservers(settings.nameservers)
        _, servers = dnscheck.authoritative_servers(settings.mail_domain or "", given)
        current = dnscheck.address_records(settings.mail_domain or "", servers)
    except MigrateError:
        return None
    answers = [sorted(a[t].values) == sorted(v) for a in current.values() for t, v in want.items()]
    if all(answers):
        return True
    new_values = {v for values in want.values() for v in values}
    if not any(set(a[t].values) & new_values for a in current.values() for t in ("A", "AAAA")):
        return False
    return None


def keep_only_new_host_key(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """The move has ended: the mail domain names only the new host's key, once DNS
    was seen to point at it (until then the old host may still answer to the name)."""
    move = _known_hosts_move(journal)
    if not move or settings.dry:
        return
    domain, key = settings.mail_domain or "", _new_host_key(runner)
    if key.get_base64() != move["key"]:
        raise MigrateError(
            f"the new host {settings.new_host} shows another host key ({fingerprint(key)}) "
            "than the one switch-dns accepted for the mail domain: check the host"
        )
    if dns_points_at_new(settings, journal) is not True:
        print(
            f"  known_hosts: {domain} keeps both hosts' keys: not every authoritative "
            "nameserver answers the new address yet; once they do, run switch-dns "
            "--update-known-hosts to keep only the new host's key"
        )
        return
    for path in map(Path, move["files"]):
        known_hosts.replace_key(path, domain, key)
    print(f"  known_hosts: {domain} now names only the new host's key ({fingerprint(key)})")


def old_host_key_during_rollback(
    settings: Settings, runner: Runner, journal: Journal | None, *, done: bool
) -> None:
    """A rollback after switch-dns edited known_hosts: the domain accepts the old host's
    (verified) key again while cmdeploy may log in to it, and only that key once mail
    runs on old again. A rollback before switch-dns leaves known_hosts alone."""
    move = _known_hosts_move(journal)
    if not move or settings.dry:
        return
    domain = settings.mail_domain or ""
    key = runner.connection("old").client.get_transport().get_remote_server_key()
    if not done:
        for path in map(Path, move["files"]):
            known_hosts.add_key(path, domain, key)
    elif dns_points_at_new(settings, journal) is False:
        for path in map(Path, move["files"]):
            known_hosts.replace_key(path, domain, key)
        print(f"  known_hosts: {domain} names only the old host's key again ({fingerprint(key)})")
    else:
        print(
            f"  known_hosts: {domain} keeps both hosts' keys until DNS points at the old "
            "host again (rerun rollback then to keep only the old host's key)"
        )


def offer_known_hosts_update(settings: Settings, runner: Runner) -> None:
    """Offer to end the transition now: only the new key for the mail domain."""
    domain = settings.mail_domain or ""
    key = _new_host_key(runner)
    stale = [
        f
        for f in _domain_known_hosts(settings)
        if f.is_file() and known_hosts.names_other_key(f, domain, key)
    ]
    if not stale:
        return
    where = ", ".join(str(f) for f in stale)
    update = settings.update_known_hosts
    if not update and sys.stdin.isatty() and not settings.yes:
        answer = input(
            f"  {where} still holds the old host's key for {domain}; keep only the "
            f"new host's ({fingerprint(key)}) now? [y/N] "
        )
        update = answer.strip().lower() in ("y", "yes")
    if update:
        for path in stale:
            known_hosts.replace_key(path, domain, key)
        print(f"  known_hosts: {domain} now names only the new host's key ({fingerprint(key)})")
    else:
        print(
            f"  known_hosts: {where} still holds the old host's key for {domain} beside the "
            f"new one's; enable-mail keeps only the new host's key ({fingerprint(key)}) "
            "when it ends, or rerun switch-dns with --update-known-hosts"
        )


def enable_mail_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    staged, _ = stages_supported(settings)
    stages = ACTIVATE_STAGES if staged and journal and journal.done("install") else None
    restart_on_copied_state(runner)
    cmdeploy_run(settings, settings.new_host, disable_mail=False, stages=stages)
    expect_mail_services(runner, "new", running=True)
    expect_milters_reachable(runner)
    keep_only_new_host_key(settings, runner, journal)


def restart_on_copied_state(runner: Runner) -> None:
    """Restart what read its keys, certificates and config before the copy.

    A staged activate (relay >= 1.8) only starts what is stopped: opendkim, started by
    Debian's package in the install stage on its default config, would go on without
    chatmail's config (its milter socket) and without the copied DKIM key; nginx would
    keep the certificate it found at install. Services that are stopped start fresh.
    """
    services = " ".join(commands.RESTART_AFTER_COPY)
    result = runner.run(
        "new",
        f"for s in {services}; do if systemctl is-active --quiet $s; then "
        "systemctl restart $s && echo $s; fi; done",
        hide=True,
    )
    restarted = result.stdout.split()
    if restarted:
        print(f"  restarted {', '.join(restarted)} on new: they read the copied state at start")


def expect_milters_reachable(runner: Runner) -> None:
    """Every milter socket postfix is configured with exists (opendkim signs through one)."""
    result = runner.run("new", commands.milter_sockets_command(), hide=True)
    if runner.dry:
        return
    missing = [
        line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("missing ")
    ]
    found = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("ok ")]
    if missing:
        raise MigrateError(
            f"postfix on new cannot reach its milter socket {', '.join(missing)}: outgoing mail "
            "would be tempfailed or leave unsigned; check `systemctl status opendkim` and "
            "its Socket in /etc/opendkim.conf, then rerun enable-mail"
        )
    if found:
        print(f"  postfix reaches its milters: {', '.join(found)}")


def verify_trees(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """List the copied trees on both hosts (one command each) and compare them."""
    paths = copy_paths(settings.relay)
    command = verify.listing_command(paths, settings.checksum)
    display = verify.listing_command(paths, settings.checksum, display=True)
    old_out = runner.capture("old", command, display)
    new_out = runner.capture("new", command, display)
    if settings.dry:
        return
    report = verify.compare(verify.parse_listing(old_out), verify.parse_listing(new_out))
    what = "type, size, mode, mtime, symlink target, owner and group"
    what += ", content (sha256)" if settings.checksum else " (--checksum adds content)"
    print(f"  compared {what}")
    if journal:
        journal.note(
            "verified", ok=report.ok, checksum=settings.checksum,
            summary=report.summary().splitlines()[0],
        )  # fmt: skip
    if not report.ok:
        raise MigrateError("verify: " + report.summary())
    print(f"  {report.summary()}")


def rollback_on_old(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Re-enable mail on the old host, as the relay ran before the migration."""
    old_host_key_during_rollback(settings, runner, journal, done=False)
    cmdeploy_run(settings, settings.old_host, disable_mail=False)
    expect_mail_services(runner, "old", running=True)
    old_host_key_during_rollback(settings, runner, journal, done=True)
