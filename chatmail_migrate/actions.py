"""What each step does on the hosts: plain functions of (settings, runner, journal).

migration.py runs them, with announcements, the journal and rollback; step 6,
switching DNS, has a module of its own (switch_dns.py).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import commands, copy_key, dnscheck, domain_keys, verify
from .cmdeploy import ACTIVATE_STAGES, PREPARE_STAGES, cmdeploy_run, stages_supported
from .errors import MigrateError
from .journal import Journal
from .lock import RUN_ID
from .progress import CopyProgress
from .relay import MAILBOX_ROOT, copy_paths
from .remote import Runner, existing_paths, have_program, path_exists
from .settings import Settings, split_host


def expect_mail_services(runner: Runner, role: str, *, running: bool) -> None:
    result = runner.run(role, commands.service_state_command(), hide=True)
    if runner.dry:
        return
    problems = commands.service_problems(commands.parse_service_states(result.stdout), running)
    if problems:
        raise MigrateError(f"on the {role} host: " + "; ".join(problems))
    state = "active and enabled" if running else "stopped and disabled"
    print(f"  {role} host: postfix and dovecot are {state}")


# The steps that write the relay's data to new: never to a host that took mail.
COPY_STEPS = ("presync", "install", "copy-data", "fix-ownership")


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


def _stamp(lines: list[str]) -> float | None:
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
        served_since=_stamp(facts.get("served", [])),
        carried_back=_stamp(facts.get("carried", [])),
        carrying=_stamp(facts.get("carrying", [])),
        changed=facts.get("changed", []),
        addresses=facts.get("addresses", []),
        installed=_stamp(facts.get("installed", [])),
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
    addresses = {_address(a) for a in facts.addresses} - {None}
    if not (settings.mail_domain and addresses):
        return None
    domain = settings.mail_domain
    try:
        _, servers = dnscheck.authoritative_servers(
            domain, dnscheck.parse_nameservers(settings.nameservers)
        )
        current = dnscheck.address_records(domain, servers)
    except MigrateError:
        return None  # DNS cannot be asked: the host's facts above stand
    published = {_address(v) for a in current.values() for t in ("A", "AAAA") for v in a[t].values}
    live = sorted(str(a) for a in addresses & published)
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


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def disable_mail_on_old(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    # What old serves while it still does, for check-relay (imported here: it uses
    # preflight's Check, and preflight imports this module).
    from .check_relay import record_old_queue, record_old_state

    record_old_state(settings, runner, journal)
    cmdeploy_run(settings, settings.old_host, disable_mail=True)
    expect_mail_services(runner, "old", running=False)
    # Postfix is off: the queue copy-data carries is final. check-relay looks for it on new.
    record_old_queue(settings, runner, journal)


def need_agent(settings: Settings, step: str) -> None:
    if settings.copy_key == "ephemeral":
        return  # old logs in to new with a key made for the copy
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


def need_rsync(settings: Settings, runner: Runner, step: str) -> None:
    if settings.dry:
        return
    for role in ("old", "new"):
        if not have_program(runner, role, "rsync"):
            raise MigrateError(
                f"{step} needs rsync on both hosts, and the {role} host {runner.host(role)} "
                "has none: apt install rsync there"
            )


def copy_target(settings: Settings, runner: Runner) -> dict:
    """Where the old host sends to, and the key it must see there (this machine's view)."""
    host, port, user = runner.address("new")
    if settings.new_host_from_old:
        other = split_host(settings.new_host_from_old)
        host, port, user = other.host, other.port or port, other.user or user
    # Pin the keys this machine trusts for the new host.
    key_line = runner.host_key_line("new", commands.NEW_HOST_ALIAS)
    target = {"host": host, "port": port, "user": user, "host_key_line": key_line}
    if settings.copy_key == "ephemeral":
        target["identity"] = copy_key.KEY
    return target


def copy_to_new(
    settings: Settings, runner: Runner, paths: list[str] | None = None, **options
) -> list[dict]:
    """Build a copy (a pre-sync without ``paths``), authorize old's key for it under
    --copy-key ephemeral, and run it on old."""
    target = copy_target(settings, runner)
    if paths is None:
        script = commands.presync_script(**target, **options)
        receives = commands.presync_receives(**options)
    else:
        script = commands.copy_script(paths, **target, **options)
        receives = commands.copy_receives(paths, **options)
    with copy_key.authorized(settings, runner, receives, target):
        return run_copy(settings, runner, script)


def run_copy(settings: Settings, runner: Runner, script: str) -> list[dict]:
    """Run a copy script on old (the agent forwarded unless --copy-key ephemeral),
    showing its progress.

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
        # With a copy key of its own, old's ssh needs no agent.
        agent = settings.copy_key != "ephemeral"
        runner.stream(
            "old",
            f"{commands.COPY_STOPPED}\n{script}",
            progress.feed,
            forward_agent=agent,
            launcher=commands.copy_launcher(RUN_ID, agent=agent),
        )
    except MigrateError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return progress.summaries


def mailbox_tree(settings: Settings) -> str:
    return settings.relay.mailbox_tree if settings.relay else MAILBOX_ROOT


def presync_old_to_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Mirror the mailbox tree to new while old still serves mail; repeatable."""
    need_agent(settings, "presync")
    refuse_to_overwrite_a_live_relay(settings, runner, "presync", journal)
    tree = mailbox_tree(settings)
    if not settings.dry and not path_exists(runner, "old", tree):
        raise MigrateError(
            f"the old host {settings.old_host} has no {tree}: is it a chatmail relay?"
        )
    need_rsync(settings, runner, "presync")
    compress = _compression(settings, runner)
    if journal and not settings.dry:
        journal.record_start("presync", settings.new_host)
    summaries = copy_to_new(settings, runner, compress=compress, mailbox_tree=tree)
    if journal and not settings.dry:
        journal.note("presync-done", host=settings.new_host, copies=summaries)


def copy_data_old_to_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    need_agent(settings, "copy-data")
    refuse_to_overwrite_a_live_relay(settings, runner, "copy-data", journal)
    tree = mailbox_tree(settings)
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
        paths = with_link_targets(settings, runner, paths)
    # After a pre-sync to this host, rsync sends only what changed since.
    sync = bool(journal and journal.presynced(settings.new_host))
    if sync:  # the pre-sync found rsync on both hosts
        print("  mailboxes were pre-synced: rsync sends what changed and mirrors deletions")
    # Data from an earlier attempt (or, with --force, any) is replaced, never merged.
    replace = settings.force or bool(journal and journal.copy_attempted(settings.new_host))
    if replace and not sync:
        print(f"  replacing what an earlier attempt left on {settings.new_host}")
    compress = _compression(settings, runner)
    by_name = relay_users_exist(settings, runner)
    if by_name:
        print("  the relay's users exist on new: owners and ACLs are restored by name as "
              "the data lands")  # fmt: skip
    if journal:
        secrets_changed_since_install(settings, runner, journal)
    if journal and not settings.dry:
        journal.record_start("copy-data", settings.new_host)
    summaries = copy_to_new(
        settings, runner, paths, replace=replace, sync_mailboxes=sync, compress=compress,
        mailbox_tree=tree, owners_by_name=by_name,
        rsync_total=journal.presync_total(settings.new_host) if sync and journal else None,
    )  # fmt: skip
    if journal and not settings.dry:
        journal.note("copied", host=settings.new_host, copies=summaries)
        if journal.done("disable-mail"):
            # Old's mail, off since disable-mail, is on new now: whatever old took as
            # some earlier move's new host is carried, and old may be a target again.
            runner.run("old", commands.stamp_command(commands.CARRIED_BACK), hide=True)


def relay_users_exist(settings: Settings, runner: Runner) -> bool:
    """Whether the users owning the relay's trees exist on new (install made them).

    Then tar and rsync give every file its owner by name as they write it, and no
    owner list needs to be read on old beside the copy.
    """
    users = ["vmail", "opendkim"]
    if not settings.relay or settings.relay.has_echobot:
        users.append("echobot")
    result = runner.run(
        "new",
        f"for u in {' '.join(users)}; do id -u $u >/dev/null 2>&1 || echo $u; done",
        hide=True,
    )
    return not settings.dry and not result.stdout.split()


def stop_copy_on_old(settings: Settings) -> None:
    """After an interrupt, stop this run's copy still running on old (new connection)."""
    runner = Runner(settings)
    try:
        stop = commands.stop_copy_command(RUN_ID)
        out = runner.run("old", stop, hide=True, quiet=True, warn=True)
        if "stopped" in out.stdout:
            print("  stopped the copy still running on the old host")
    except MigrateError as e:
        print(f"  could not stop the copy on the old host: {e}")
    finally:
        runner.close()


def install_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Deploy the relay on new with mail off: only install and configure where staged."""
    refuse_to_overwrite_a_live_relay(settings, runner, "install", journal)
    if journal and not settings.dry:
        journal.record_start("install", settings.new_host)
    runner.run("new", commands.install_mark_command(ended=False), hide=True, quiet=True)
    staged, why = stages_supported(settings)
    if not staged:
        # A deploy without them would make a new DKIM key and ask for a certificate.
        carry_secrets_first(settings, runner, journal)
        print(f"  cmdeploy deploys whole ({why}), with mail off on new")
        cmdeploy_run(settings, settings.new_host, disable_mail=True)
        expect_mail_services(runner, "new", running=False)
        runner.run("new", commands.install_mark_command(ended=True), hide=True, quiet=True)
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
        # Disabled too: a reboot of the new host before activation must not start them.
        runner.run("new", f"systemctl disable --quiet --now {' '.join(running)}")
        print(f"  stopped {', '.join(running)} on new until the activate stage")
    else:
        print("  new host: postfix and dovecot are not running (activate starts them)")
    runner.run("new", commands.install_mark_command(ended=True), hide=True, quiet=True)


def with_link_targets(settings: Settings, runner: Runner, paths: list[str]) -> list[str]:
    """``paths`` plus, for the external TLS files among them, what their symlinks point
    at (certbot's live/ names are links into archive/): tar carries links as links."""
    external = [p for p in paths if settings.relay and p in settings.relay.tls_external]
    if not external or settings.dry:
        return paths
    quoted = " ".join(shlex.quote(p) for p in external)
    out = runner.run("old", f"readlink -e {quoted}", hide=True, quiet=True, warn=True).stdout
    targets = [t for t in out.split() if t not in paths]
    return paths + sorted(set(targets))


def carry_files_configure_reads(settings: Settings, runner: Runner, paths: list[str]) -> None:
    """Copy what configure needs on new before it runs (1.10+: tls_external_cert_and_key;
    configure fails when those files are missing). copy-data carries them again."""
    need_agent(settings, "install")
    present = paths if settings.dry else existing_paths(runner, "old", paths)
    if present != paths:
        missing = ", ".join(p for p in paths if p not in present)
        raise MigrateError(
            f"chatmail.ini's tls_external_cert_and_key names {missing}, which the old host "
            "does not have: put the files there or fix chatmail.ini"
        )
    print(f"  carrying {', '.join(paths)} to new first: configure reads them")
    paths = with_link_targets(settings, runner, paths)
    copy_to_new(settings, runner, paths)


def carry_secrets_first(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """Copy the relay's secrets (DKIM keys, ACME state, TLS files) to new while old still
    serves, and note their digest: copy-data carries them again and says if they changed."""
    if journal and journal.last_event("copied", settings.new_host):
        # The seed's order, by hand: copy-data brought them (and its owner and ACL
        # records, which another copy would replace).
        print("  the secrets are on new already: copy-data brought them")
        return
    wanted = settings.relay.secret_paths() if settings.relay else []
    if settings.relay and settings.relay.tls_external and not settings.dry:
        missing = [p for p in settings.relay.tls_external if not path_exists(runner, "old", p)]
        if missing:
            raise MigrateError(
                f"chatmail.ini's tls_external_cert_and_key names {', '.join(missing)}, which "
                "the old host does not have: put the files there or fix chatmail.ini"
            )
    paths = wanted if settings.dry else existing_paths(runner, "old", wanted)
    if not paths:
        return
    need_agent(settings, "install")
    print(f"  carrying {', '.join(paths)} to new first: the deploy finds them there")
    paths = with_link_targets(settings, runner, paths)
    digest = secrets_digest(runner, paths)
    copy_to_new(settings, runner, paths)
    if journal and not settings.dry:
        journal.note("secrets-carried", host=settings.new_host, paths=paths, digest=digest)


def secrets_digest(runner: Runner, paths: list[str]) -> str:
    out = runner.run("old", commands.digest_command(paths), hide=True, quiet=True).stdout
    return out.split()[0] if out.split() else ""


def secrets_changed_since_install(settings: Settings, runner: Runner, journal: Journal) -> None:
    """Say whether the secrets install deployed with changed since (a renewed certificate):
    the copy carries the new ones, enable-mail restarts what reads them."""
    carried = journal.last_event("secrets-carried", settings.new_host)
    if not carried or settings.dry:
        return
    if secrets_digest(runner, carried["paths"]) == carried["digest"]:
        print("  the secrets install deployed with are unchanged on old")
    else:
        print(
            "  the secrets changed on old since install (a renewed certificate?): this "
            "copy carries the new ones, and enable-mail restarts what reads them"
        )
        journal.note("secrets-changed", host=settings.new_host)


def fix_ownership_on_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    refuse_to_overwrite_a_live_relay(settings, runner, "fix-ownership", journal)
    paths = copy_paths(settings.relay)
    if not settings.dry:
        paths = existing_paths(runner, "new", paths)
    runner.run_script("new", commands.fix_ownership_script(paths, mailbox_tree(settings)))
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
    if sections.get("by name"):
        # Nothing walked: the copy wrote each owner by name (verify compares every one).
        print(
            f"  owners and ACLs restored by name as the data landed ({sections['by name'][0]} "
            "owner/group pairs, each known here), DKIM key opendkim 0600, postfix check clean"
        )
        return
    print("  owners fixed: no orphaned ids, DKIM key opendkim 0600, postfix check clean")


def enable_mail_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    staged, _ = stages_supported(settings)
    stages = ACTIVATE_STAGES if staged and journal and journal.done("install") else None
    mark_serving(settings, runner, journal)
    restart_on_copied_state(runner)
    cmdeploy_run(settings, settings.new_host, disable_mail=False, stages=stages)
    expect_mail_services(runner, "new", running=True)
    expect_milters_reachable(runner)
    domain_keys.keep_only_new(settings, runner, journal)


def mark_serving(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """Note, on new and in the journal, that mail may be taken there from now on.

    Before anything starts: from here on new may hold mail old does not have, and no
    copy may write over it until a rollback carried it back (live_relay_reason). An
    earlier mark not carried back yet is kept: it dates the oldest such mail.
    """
    mark = commands.SERVED_SINCE
    result = runner.run(
        "new",
        f"umask 077; mkdir -p -m 700 {commands.STATE_DIR} && "
        f"if [ -s {mark} ] && [ ! {commands.CARRIED_BACK} -nt {mark} ]; then cat {mark}; "
        f"else date +%s | tee {mark}.tmp && mv {mark}.tmp {mark}; fi",
        hide=True,
        quiet=True,
    )
    if journal and not settings.dry:
        since = _stamp(result.stdout.split())
        journal.note("new-served", host=settings.new_host, since=since)


def restart_on_copied_state(runner: Runner, role: str = "new") -> None:
    """Restart what read its keys, certificates and config before the copy.

    A staged activate (relay >= 1.8) only starts what is stopped: opendkim, started by
    Debian's package in the install stage on its default config, would go on without
    chatmail's config (its milter socket) and without the copied DKIM key; nginx would
    keep the certificate it found at install. Services that are stopped start fresh.
    """
    services = " ".join(commands.RESTART_AFTER_COPY)
    result = runner.run(
        role,
        f"for s in {services}; do if systemctl is-active --quiet $s; then "
        "systemctl restart $s && echo $s || exit 1; fi; done",
        hide=True,
    )
    restarted = result.stdout.split()
    if restarted:
        print(f"  restarted {', '.join(restarted)} on {role}: they read the copied state at start")


def expect_milters_reachable(runner: Runner, role: str = "new") -> None:
    """Every milter socket postfix is configured with exists (opendkim signs through one)."""
    result = runner.run(role, commands.milter_sockets_command(), hide=True)
    if runner.dry:
        return
    missing = [
        line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("missing ")
    ]
    found = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("ok ")]
    if missing:
        raise MigrateError(
            f"postfix on {role} cannot reach its milter socket {', '.join(missing)}: outgoing mail "
            "would be tempfailed or leave unsigned; check `systemctl status opendkim` and "
            "its Socket in /etc/opendkim.conf, then rerun enable-mail"
        )
    if found:
        print(f"  postfix reaches its milters: {', '.join(found)}")


def verify_trees(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """List the copied trees on both hosts (one command each, both at once) and compare."""
    report = compare_trees(settings, runner, copy_paths(settings.relay), settings.checksum)
    if report is None:
        return
    if journal:
        journal.note(
            "verified", ok=report.ok, checksum=settings.checksum,
            summary=report.summary().splitlines()[0],
        )  # fmt: skip
    if not report.ok:
        raise MigrateError("verify: " + report.summary())
    print(f"  {report.summary()}")


def compare_trees(
    settings: Settings, runner: Runner, paths: list[str], checksum: bool
) -> verify.Report | None:
    """``paths`` listed on old and new (one command each, both at once), compared
    (None under --dry)."""
    command = verify.listing_command(paths, checksum)
    display = verify.listing_command(paths, checksum, display=True)
    if not settings.dry:  # connected one after the other: host key checks may print
        runner.connection("old"), runner.connection("new")
    # Each host walks its own trees: side by side, the step takes the slower walk's
    # time instead of the sum of both (it lies inside the downtime).
    with ThreadPoolExecutor(max_workers=2) as pool:
        old_job = pool.submit(runner.capture, "old", command, display)
        new_job = pool.submit(runner.capture, "new", command, display)
        old_out, new_out = old_job.result(), new_job.result()
    with old_out, new_out:
        if settings.dry:
            return None
        # The summary's first line says what was compared and what was not.
        return verify.compare(verify.parse_listing(old_out), verify.parse_listing(new_out))


def stop_mail_on_new(settings: Settings, runner: Runner, *, must: bool = False) -> None:
    """After a rollback only the old host may take mail: stop it on the new one.

    ``must``: a failure stops the rollback (new's mail is carried back next, and must
    not change under the copy); else it is only said.
    """
    try:
        result = runner.run(
            "new",
            "for s in postfix dovecot; do if systemctl is-active --quiet $s; then "
            "systemctl disable --quiet --now $s && echo $s; fi; done; "
            "! systemctl is-active --quiet postfix@- dovecot",
            hide=True,
        )
    except MigrateError as e:
        if must:
            raise MigrateError(f"cannot stop mail on the new host: {e}") from None
        print(f"  could not reach the new host to stop its mail ({e}): stop it there yourself")
        return
    if result.stdout.split():
        print(
            f"  stopped {' and '.join(result.stdout.split())} on the new host "
            f"{settings.new_host}: only the old host takes mail"
        )


def rollback_on_old(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Re-enable mail on the old host, as the relay ran before the migration."""
    domain_keys.old_key_during_rollback(settings, runner, journal, done=False)
    cmdeploy_run(settings, settings.old_host, disable_mail=False)
    expect_mail_services(runner, "old", running=True)
    domain_keys.old_key_during_rollback(settings, runner, journal, done=True)
