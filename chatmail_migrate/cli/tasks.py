"""The migration's tasks: the documented steps, verify, preflight, rollback, migrate.

Tasks stay thin: they resolve their settings (settings.py) and hand them to a
:class:`~chatmail_migrate.run.migration.Migration`, which runs a plain function of
actions.py per step, announcing, timing and journaling it.
"""

from __future__ import annotations

from chatmail_migrate.cli.flags import DNS_FLAGS, dns_settings, flag_help
from chatmail_migrate.cli.task import task
from chatmail_migrate.journal import Journal
from chatmail_migrate.run.migration import Migration
from chatmail_migrate.run.plan import step, task_settings
from chatmail_migrate.run.rollback import roll_back
from chatmail_migrate.run.status import check_relay_by_hand, run_preflight, show_status
from chatmail_migrate.settings import resolve


def run_step(c, name: str, **flags) -> None:
    """A step run by hand: its settings (``fab -H`` names its own host), then the step."""
    planned = step(name)
    settings = task_settings(c, planned.fab_host, planned.needs, planned.deploys_to, **flags)
    Migration.one_step(settings, name).run()


@task(help=flag_help("old_host", "relay_dir"))
def disable_mail(c, old_host=None, relay_dir=None):
    """Step 1, OLD host: cmdeploy run --disable-mail; check postfix/dovecot are off.

    Examples: fab -H 13.37.13.37 disable-mail | invoke disable-mail --old-host 13.37.13.37
    """
    run_step(c, "disable-mail", old_host=old_host, relay_dir=relay_dir)


@task(
    help=flag_help("old_host", "new_host", "new_host_from_old", "relay_dir", "compress", "copy_key")
)
def presync(
    c,
    old_host=None,
    new_host=None,
    new_host_from_old=None,
    relay_dir=None,
    compress=False,
    copy_key=None,
):
    """Before step 1, OLD → NEW: rsync the mailboxes while the old relay still serves.

    Repeat it until little changes; copy-data then sends only the difference and
    mirrors deletions. Runs on old with your agent forwarded for that command only.
    Examples: fab -H 13.37.13.37 presync --new-host 13.12.23.42 |
    invoke presync --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(
        c,
        "presync",
        old_host=old_host,
        new_host=new_host,
        new_host_from_old=new_host_from_old,
        relay_dir=relay_dir,
        compress=compress or None,
        copy_key=copy_key,
    )


@task(
    help=flag_help(
        "old_host", "new_host", "new_host_from_old", "relay_dir", "force", "compress", "copy_key"
    )
)
def copy_data(
    c,
    old_host=None,
    new_host=None,
    new_host_from_old=None,
    relay_dir=None,
    force=False,
    compress=False,
    copy_key=None,
):
    """Step 2, OLD → NEW: tar pipe of mailboxes, TLS, DKIM, echobot, mail queue.

    What goes depends on the relay's release and chatmail.ini (README: Relay
    releases). Refused when the new host serves mail or DNS points at it.
    After a presync the mailboxes go by rsync (changes only, deletions mirrored).
    Runs on the old host with your agent forwarded for that command only.
    Examples: fab -H 13.37.13.37 copy-data --new-host 13.12.23.42 |
    invoke copy-data --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(
        c,
        "copy-data",
        old_host=old_host,
        new_host=new_host,
        new_host_from_old=new_host_from_old,
        relay_dir=relay_dir,
        force=force,
        compress=compress or None,
        copy_key=copy_key,
    )


@task(help=flag_help("new_host", "old_host", "relay_dir", "copy_key"))
def install(c, new_host=None, old_host=None, relay_dir=None, copy_key=None):
    """Step 3, NEW host: cmdeploy run --disable-mail; check postfix/dovecot stay off.

    migrate runs it first, while old still serves. Relay >= 1.8: only
    CMDEPLOY_STAGES=install,configure. Older relays: the secrets (DKIM keys, ACME state,
    TLS files) are carried from old first, then the whole deploy runs.

    Examples: fab -H 13.12.23.42 install | invoke install --new-host 13.12.23.42
    """
    run_step(
        c, "install", new_host=new_host, old_host=old_host, relay_dir=relay_dir, copy_key=copy_key
    )


@task(help=flag_help("new_host", "relay_dir"))
def fix_ownership(c, new_host=None, relay_dir=None):
    """Step 4, NEW host: owners by name (vmail, opendkim, echobot, root, Postfix spool).

    Examples: fab -H 13.12.23.42 fix-ownership | invoke fix-ownership --new-host 13.12.23.42
    """
    run_step(c, "fix-ownership", new_host=new_host, relay_dir=relay_dir)


@task(help=flag_help("old_host", "new_host", "relay_dir", "checksum"))
def verify(c, old_host=None, new_host=None, relay_dir=None, checksum=False):
    """Step 5, OLD ↔ NEW: compare the copied trees (run after fix-ownership).

    Examples: fab -H 13.37.13.37 verify --new-host 13.12.23.42 --checksum |
    invoke verify --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(
        c,
        "verify",
        old_host=old_host,
        new_host=new_host,
        relay_dir=relay_dir,
        checksum=checksum,
    )


@task(help=flag_help("old_host", "new_host", "relay_dir", "yes", *DNS_FLAGS))
def switch_dns(
    c,
    old_host=None,
    new_host=None,
    relay_dir=None,
    yes=False,
    nameserver=None,
    dns_timeout=None,
    new_address=None,
    ipv6_only=False,
    wait=True,
    wait_caches=False,
    update_known_hosts=False,
):
    """Step 6, DNS: print the A/AAAA records to change and wait for your 'done'.

    Examples: fab -H 13.12.23.42 switch-dns --old-host 13.37.13.37 |
    invoke switch-dns --old-host 13.37.13.37 --new-host 13.12.23.42 --yes
    """
    run_step(
        c,
        "switch-dns",
        old_host=old_host,
        new_host=new_host,
        relay_dir=relay_dir,
        yes=yes or None,
        **dns_settings(
            nameserver, dns_timeout, new_address, ipv6_only, wait, wait_caches, update_known_hosts
        ),
    )


@task(help=flag_help("new_host", "relay_dir"))
def enable_mail(c, new_host=None, relay_dir=None):
    """Step 7, NEW host: cmdeploy run; check postfix/dovecot run, milters reachable.

    Restarts opendkim and nginx first (they read the copied keys and certificates at
    start). Relay >= 1.8, after a staged install: only CMDEPLOY_STAGES=activate. Then
    your known_hosts names only the new host's key for the mail domain, once DNS
    points there.

    Examples: fab -H 13.12.23.42 enable-mail | invoke enable-mail --new-host 13.12.23.42
    """
    run_step(c, "enable-mail", new_host=new_host, relay_dir=relay_dir)


@task(
    help=flag_help(
        "old_host",
        "new_host",
        "new_host_from_old",
        "relay_dir",
        "force",
        "accept_new_host_keys",
        "nameserver",
        "new_address",
        "ipv6_only",
        "copy_key",
    )
)
def preflight(
    c,
    old_host=None,
    new_host=None,
    new_host_from_old=None,
    relay_dir=None,
    force=False,
    accept_new_host_keys=False,
    nameserver=None,
    new_address=None,
    ipv6_only=False,
    copy_key=None,
):
    """OLD and NEW, changing nothing: can the migration work? PASS/WARN/FAIL per check.

    Examples: fab -H 13.37.13.37 preflight --new-host 13.12.23.42 |
    invoke preflight --new-host 13.12.23.42
    """
    s = task_settings(
        c,
        "old",
        ("old_host", "new_host", "relay_dir"),
        ("old_host", "new_host"),
        old_host=old_host,
        new_host=new_host,
        new_host_from_old=new_host_from_old,
        relay_dir=relay_dir,
        force=force or None,
        accept_new_host_keys=accept_new_host_keys or None,
        nameservers=nameserver,
        new_addresses=new_address,
        ipv6_only=ipv6_only or None,
        copy_key=copy_key,
    )
    run_preflight(s, Journal.for_settings(s))


@task(
    help={
        **flag_help("new_host", "relay_dir", "nameserver"),
        "probe_account": "Also log in over IMAP 993 as this existing account and list its "
        "folders. The password is asked at a prompt, or read from $CHATMAIL_PROBE_PASSWORD, "
        "never given as a flag; refused when new has no such account (a first login would "
        "create it). Example: --probe-account abcdefghi@chat.example.org",
    }
)
def check_relay(c, new_host=None, relay_dir=None, nameserver=None, probe_account=None):
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
    needs = ("new_host", "relay_dir")
    flags = {"new_host": new_host, "relay_dir": relay_dir, "nameservers": nameserver}
    check_relay_by_hand(task_settings(c, "new", needs, False, **flags), probe_account)


@task(
    help={
        **flag_help("old_host", "new_host", "relay_dir"),
        "new_host_gone": "The new host is gone for good (a dead disk): roll back without "
        "asking it; whatever mail it took is lost with it. Example: --new-host-gone",
    }
)
def rollback(c, old_host=None, new_host=None, relay_dir=None, new_host_gone=False):
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
    flags = {"old_host": old_host, "new_host": new_host, "relay_dir": relay_dir}
    roll_back(task_settings(c, "old", ("relay_dir",), **flags), new_host_gone=new_host_gone)


@task(
    help=flag_help(
        "old_host",
        "new_host",
        "relay_dir",
        "new_host_from_old",
        "presync",
        "compress",
        "copy_key",
        "yes",
        "restart",
        "force",
        "rollback",
        "accept_new_host_keys",
        "checksum",
        *DNS_FLAGS,
    ),
)
def migrate(
    c,
    old_host=None,
    new_host=None,
    relay_dir=None,
    new_host_from_old=None,
    presync=False,
    compress=False,
    copy_key=None,
    yes=False,
    restart=False,
    force=False,
    rollback=True,
    accept_new_host_keys=False,
    checksum=False,
    nameserver=None,
    dns_timeout=None,
    new_address=None,
    ipv6_only=False,
    wait=True,
    wait_caches=False,
    update_known_hosts=False,
):
    """OLD → NEW: preflight, then every step of this relay's plan; a rerun resumes.

    The plan (migrate and --dry print it): install, while old still serves (from 1.8
    the install,configure stages; before, the secrets first, then the whole deploy),
    then disable-mail, copy-data, fix-ownership, verify, switch-dns, enable-mail (from
    1.8 only the activate stage); --presync puts presync in front.
    Examples: invoke migrate --new-host 13.12.23.42 |
    invoke migrate --new-host 13.12.23.42 --presync |
    fab -H 13.37.13.37 migrate --new-host 13.12.23.42 | invoke --dry migrate --new-host NEW
    """
    s = task_settings(
        c,
        "old",
        ("old_host", "new_host", "relay_dir"),
        ("old_host", "new_host"),
        old_host=old_host,
        new_host=new_host,
        relay_dir=relay_dir,
        new_host_from_old=new_host_from_old,
        presync=presync or None,
        compress=compress or None,
        copy_key=copy_key,
        yes=yes or None,
        force=force or None,
        rollback=None if rollback else False,
        accept_new_host_keys=accept_new_host_keys or None,
        checksum=checksum or None,
        **dns_settings(
            nameserver, dns_timeout, new_address, ipv6_only, wait, wait_caches, update_known_hosts
        ),
    )
    Migration.whole_relay(s, restart=restart).run()


@task(help=flag_help("relay_dir"))
def status(c, relay_dir=None):
    """This machine only: where the migration stands (journal, command log, report).

    Example: invoke status --relay-dir ~/relay
    """
    show_status(resolve(c, relay_dir=relay_dir))
