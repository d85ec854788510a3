"""The migration's tasks: the documented steps, verify, preflight, rollback, migrate.

Tasks stay thin: their flags are declared in cli/flags.py; they resolve settings
(run/plan.py's task_settings) and hand them to a Migration (run/migration.py),
which runs each step's plain function from steps/, announcing, timing and
journaling it.
"""

from __future__ import annotations

from chatmail_migrate.cli.flags import migration_task, settings_from
from chatmail_migrate.journal import Journal
from chatmail_migrate.run.migration import Migration
from chatmail_migrate.run.plan import step, task_settings
from chatmail_migrate.run.rollback import roll_back
from chatmail_migrate.run.status import check_relay_by_hand, run_preflight, show_status
from chatmail_migrate.settings import resolve

BOTH = ("old_host", "new_host")


def run_step(c, name: str, given: dict) -> None:
    """A step run by hand: its settings (``fab -H`` names its own host), then the step."""
    planned = step(name)
    settings = task_settings(
        c, planned.fab_host, planned.needs, planned.deploys_to, **settings_from(given)
    )
    Migration.one_step(settings, name).run()


@migration_task
def disable_mail(c, **given):
    """Step 1, OLD host: cmdeploy run --disable-mail; check postfix/dovecot are off.

    Examples: fab -H 13.37.13.37 disable-mail | invoke disable-mail --old-host 13.37.13.37
    """
    run_step(c, "disable-mail", given)


@migration_task
def presync(c, **given):
    """Before step 1, OLD → NEW: rsync the mailboxes while the old relay still serves.

    Repeat it until little changes; copy-data then sends only the difference and
    mirrors deletions. Runs on old with your agent forwarded for that command only.
    Examples: fab -H 13.37.13.37 presync --new-host 13.12.23.42 |
    invoke presync --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(c, "presync", given)


@migration_task
def copy_data(c, **given):
    """Step 2, OLD → NEW: tar pipe of mailboxes, TLS, DKIM, echobot, mail queue.

    What goes depends on the relay's release and chatmail.ini (README: Relay
    releases). Refused when the new host serves mail or DNS points at it.
    After a presync the mailboxes go by rsync (changes only, deletions mirrored).
    Runs on the old host with your agent forwarded for that command only.
    Examples: fab -H 13.37.13.37 copy-data --new-host 13.12.23.42 |
    invoke copy-data --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(c, "copy-data", given)


@migration_task
def install(c, **given):
    """Step 3, NEW host: cmdeploy run --disable-mail; check postfix/dovecot stay off.

    migrate runs it first, while old still serves. Relay >= 1.8: only
    CMDEPLOY_STAGES=install,configure. Older relays: the secrets (DKIM keys, ACME state,
    TLS files) are carried from old first, then the whole deploy runs.

    Examples: fab -H 13.12.23.42 install | invoke install --new-host 13.12.23.42
    """
    run_step(c, "install", given)


@migration_task
def fix_ownership(c, **given):
    """Step 4, NEW host: owners by name (vmail, opendkim, echobot, root, Postfix spool).

    Examples: fab -H 13.12.23.42 fix-ownership | invoke fix-ownership --new-host 13.12.23.42
    """
    run_step(c, "fix-ownership", given)


@migration_task
def verify(c, **given):
    """Step 5, OLD ↔ NEW: compare the copied trees (run after fix-ownership).

    Examples: fab -H 13.37.13.37 verify --new-host 13.12.23.42 --checksum |
    invoke verify --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(c, "verify", given)


@migration_task
def switch_dns(c, **given):
    """Step 6, DNS: print the A/AAAA records to change and wait for your 'done'.

    Examples: fab -H 13.12.23.42 switch-dns --old-host 13.37.13.37 |
    invoke switch-dns --old-host 13.37.13.37 --new-host 13.12.23.42 --yes
    """
    run_step(c, "switch-dns", given)


@migration_task
def enable_mail(c, **given):
    """Step 7, NEW host: cmdeploy run; check postfix/dovecot run, milters reachable.

    Restarts opendkim and nginx first (they read the copied keys and certificates at
    start). Relay >= 1.8, after a staged install: only CMDEPLOY_STAGES=activate. Then
    your known_hosts names only the new host's key for the mail domain, once DNS
    points there.

    Examples: fab -H 13.12.23.42 enable-mail | invoke enable-mail --new-host 13.12.23.42
    """
    run_step(c, "enable-mail", given)


@migration_task
def preflight(c, **given):
    """OLD and NEW, changing nothing: can the migration work? PASS/WARN/FAIL per check.

    Examples: fab -H 13.37.13.37 preflight --new-host 13.12.23.42 |
    invoke preflight --new-host 13.12.23.42
    """
    s = task_settings(c, "old", (*BOTH, "relay_dir"), BOTH, **settings_from(given))
    run_preflight(s, Journal.for_settings(s))


@migration_task
def check_relay(c, **given):
    """NEW host, changing nothing: does the relay serve as old did? PASS/WARN/FAIL per check.

    Against what the journal recorded at disable-mail: the services and TCP ports old
    had, the certificate it served (IMAP 993, submission 465, HTTPS 443 when nginx
    runs, STARTTLS on SMTP 25, whose greeting names the mail domain), its mail queue
    (each message queued or delivered on new); LMTP recipients (nothing delivered);
    Postfix's milters; opendkim's key against the DKIM record (asked of the
    authoritative nameservers) and a test signature by the running opendkim (nothing
    sent); DNS. No account is created. migrate runs it after enable-mail; any FAIL
    exits 1 and rolls nothing back.
    Examples: fab -H 13.12.23.42 check-relay | invoke check-relay --new-host 13.12.23.42 |
    invoke check-relay --new-host 13.12.23.42 --probe-account abcdefghi@chat.example.org
    """
    s = task_settings(c, "new", ("new_host", "relay_dir"), **settings_from(given))
    check_relay_by_hand(s, given["probe_account"])


@migration_task
def rollback(c, **given):
    """OLD host: mail back on it, after carrying back what the new host took.

    Reads both hosts first. Mail stops on the new host; when this tool's enable-mail
    let mail in there, its mailboxes (deletions too) and queue are copied back to old
    and verified; then cmdeploy run on old. Hosts: the flags, else the journal's,
    never DNS's. Safe to repeat; refuses, changing nothing, when both hosts took mail,
    the hosts look swapped, or new cannot be reached. migrate rolls back by itself
    when a step fails before DNS is switched.
    Examples: fab -H 13.37.13.37 rollback | invoke rollback |
    invoke rollback --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    s = task_settings(c, "old", ("relay_dir",), **settings_from(given))
    roll_back(s, new_host_gone=given["new_host_gone"])


@migration_task
def migrate(c, **given):
    """OLD → NEW: preflight, then every step of this relay's plan; a rerun resumes.

    The plan (migrate and --dry print it): install, while old still serves (from 1.8
    the install,configure stages; before, the secrets first, then the whole deploy
    with mail off); the cutover: disable-mail (old's units stopped and disabled),
    copy-data, fix-ownership, verify, switch-dns, enable-mail (new's units enabled
    and started); then converge, outside the downtime: each host's own cmdeploy run
    (--disable-mail on old; the activate stage, or the whole deploy, on new).
    --presync puts presync in front.
    Examples: invoke migrate --new-host 13.12.23.42 |
    invoke migrate --new-host 13.12.23.42 --presync |
    fab -H 13.37.13.37 migrate --new-host 13.12.23.42 | invoke --dry migrate --new-host NEW
    """
    s = task_settings(c, "old", (*BOTH, "relay_dir"), BOTH, **settings_from(given))
    Migration.whole_relay(s, restart=given["restart"]).run()


@migration_task
def status(c, **given):
    """This machine only: where the migration stands (journal, command log, report).

    Example: invoke status --relay-dir ~/relay
    """
    show_status(resolve(c, **settings_from(given)))
