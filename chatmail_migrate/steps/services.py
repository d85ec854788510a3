"""Mail on and off: disable-mail on old, enable-mail on new, and what a rollback
or a carry back needs of the services (stop, restart on copied state, milters).
"""

from __future__ import annotations

import sys

from chatmail_migrate.checks.live_relay import parse_stamp
from chatmail_migrate.cmdeploy import (
    ACTIVATE_STAGES,
    cmdeploy_run,
    stages_supported,
)
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import commands
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings
from chatmail_migrate.steps import domain_keys
from chatmail_migrate.steps.record_old import record_old_queue, record_old_state
from chatmail_migrate.steps.verify import verify_whole_tree_after_move


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
    # What old serves while it still does, for check-relay.
    record_old_state(settings, runner, journal)
    cmdeploy_run(settings, settings.old_host, disable_mail=True)
    expect_mail_services(runner, "old", running=False)
    # Postfix is off: the queue copy-data carries is final. check-relay looks for it on new.
    record_old_queue(settings, runner, journal)


def stop_mail_units_on_old(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    """migrate's cutover on OLD: mail stops now, by the units themselves.

    The same end state as ``cmdeploy run --disable-mail`` (its units stopped and
    disabled, in its order), without a whole deploy inside the window: that deploy
    runs after it (converge).
    """
    record_old_state(settings, runner, journal)
    runner.run("old", commands.STOP_MAIL_UNITS, hide=True)
    expect_mail_services(runner, "old", running=False)
    record_old_queue(settings, runner, journal)


def start_mail_units_on_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    """migrate's cutover on NEW: mail starts on the copied, verified state.

    Installed and configured before the window (install); the units are enabled and
    started here in the order the release's deploy starts them, and the deploy itself
    runs after the window (converge), where it finds nothing left to start.
    """
    mark_serving(settings, runner, journal)
    restart_unless_current(settings, runner, journal)
    runner.run("new", commands.START_MAIL_UNITS, hide=True)
    expect_mail_services(runner, "new", running=True)
    expect_milters_reachable(runner)
    runner.run("new", commands.FLUSH_QUEUE, hide=True)
    wait_for_carried_local_mail(settings, runner)
    domain_keys.keep_only_new(settings, runner, journal)


# How long the cutover waits for the carried queue's local mail to reach its mailboxes.
LOCAL_MAIL_WAIT_S = 15


def wait_for_carried_local_mail(settings: Settings, runner: Runner) -> None:
    """Until the mail old took for its own users (deferred there once its dovecot
    stopped) is in their mailboxes on new: the last message old accepted is readable
    when enable-mail ends, and converge's deploys start after that, not while users
    still wait for it. Mail Postfix keeps deferred for another reason (a full mailbox)
    is said, and left to its retries."""
    domain = settings.mail_domain
    if not domain:
        return
    command = commands.local_mail_queued_command(domain, LOCAL_MAIL_WAIT_S)
    out = runner.run("new", command, hide=True, quiet=True).stdout.strip()
    if settings.dry or not out.isdigit():
        return
    if int(out):
        print(
            f"  {out} queued message(s) for {domain}'s users still wait on new after "
            f"{LOCAL_MAIL_WAIT_S} s: Postfix retries them (`postqueue -j` on new says why)"
        )
    else:
        print(f"  new's queue holds no mail for {domain}'s users: old's last mail is delivered")


def converge_hosts(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """After the window: each host's own cmdeploy run, so both are what their deploy
    makes (old with mail disabled, new with mail on: the activate stage where the
    install was staged). A run restarts a service only where its configuration changed.
    """
    cmdeploy_run(settings, settings.old_host, disable_mail=True)
    expect_mail_services(runner, "old", running=False)
    staged, _ = stages_supported(settings)
    stages = ACTIVATE_STAGES if staged and journal and journal.done("install") else None
    cmdeploy_run(settings, settings.new_host, disable_mail=False, stages=stages)
    expect_mail_services(runner, "new", running=True)
    expect_milters_reachable(runner)
    # The whole tree, now that the window's verify looked only at what could change.
    # A difference is a FAIL in the output and the report, with the rollback named;
    # mail keeps flowing on new (rolling back is the operator's call, not this step's).
    try:
        verify_whole_tree_after_move(settings, runner, journal)
    except MigrateError as e:
        print(f"FAIL  {e}", file=sys.stderr, flush=True)


def enable_mail_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    staged, _ = stages_supported(settings)
    stages = ACTIVATE_STAGES if staged and journal and journal.done("install") else None
    mark_serving(settings, runner, journal)
    restart_on_copied_state(runner)
    cmdeploy_run(settings, settings.new_host, disable_mail=False, stages=stages)
    expect_mail_services(runner, "new", running=True)
    expect_milters_reachable(runner)
    runner.run("new", commands.FLUSH_QUEUE, hide=True)
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
        since = parse_stamp(result.stdout.split())
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


def restart_unless_current(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """The cutover's restart of what reads the copied state, left out when it would
    change nothing: install restarted opendkim and nginx on the secrets it carried, the
    copy found them unchanged on old, and opendkim's socket is still where postfix looks
    (a retried copy replaces the spool it lives in). A restart takes seconds (opendkim
    waits for its workers), all of them inside the window."""
    if not settings.dry and journal and secrets_read_since_carried(journal, settings.new_host):
        # No wait for a missing socket: missing means restart, at once.
        if not milter_sockets(runner, "new", wait_s=0)[1]:
            print("  opendkim and nginx run on the carried keys and certificates: not restarted")
            return
    restart_on_copied_state(runner)


def secrets_read_since_carried(journal: Journal, host: str | None) -> bool:
    """Whether install restarted what reads the secrets after carrying them to ``host``,
    with no change of the secrets, restart or rollback since."""
    kinds = ("secrets-carried", "secrets-changed", "secrets-restarted", "restart", "rollback")
    for event in reversed(journal.events):
        kind = event.get("event")
        if kind in kinds and event.get("host") in (host, None):
            return kind == "secrets-restarted"
    return False


def milter_sockets(runner: Runner, role: str, wait_s: float = 5.0) -> tuple[list[str], list[str]]:
    """The unix milter sockets postfix on ``role`` uses: (present, missing after
    waiting up to ``wait_s`` for each)."""
    result = runner.run(role, commands.milter_sockets_command(wait_s), hide=True)
    if runner.dry:
        return [], []
    lines = result.stdout.splitlines()
    found = [line.split(" ", 1)[1] for line in lines if line.startswith("ok ")]
    missing = [line.split(" ", 1)[1] for line in lines if line.startswith("missing ")]
    return found, missing


def expect_milters_reachable(runner: Runner, role: str = "new") -> None:
    """Every milter socket postfix is configured with exists (opendkim signs through one)."""
    found, missing = milter_sockets(runner, role)
    if missing:
        raise MigrateError(
            f"postfix on {role} cannot reach its milter socket {', '.join(missing)}: outgoing mail "
            "would be tempfailed or leave unsigned; check `systemctl status opendkim` and "
            "its Socket in /etc/opendkim.conf, then rerun enable-mail"
        )
    if found:
        print(f"  postfix reaches its milters: {', '.join(found)}")


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
