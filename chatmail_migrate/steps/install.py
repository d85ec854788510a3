"""Step 3: install the relay on new while old still serves (cmdeploy with
mail off; before 1.8 the secrets are carried first).
"""

from __future__ import annotations

from chatmail_migrate.checks.live_relay import refuse_to_overwrite_a_live_relay
from chatmail_migrate.cmdeploy import (
    PREPARE_STAGES,
    cmdeploy_run,
    stages_supported,
)
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import commands
from chatmail_migrate.hosts.runner import Runner, existing_paths, path_exists
from chatmail_migrate.hosts.transfer import copy_to_new, need_agent, with_link_targets
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings
from chatmail_migrate.steps.services import expect_mail_services, restart_on_copied_state


def install_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Deploy the relay on new with mail off: only install and configure where staged."""
    refuse_to_overwrite_a_live_relay(settings, runner, "install", journal)
    if journal and not settings.dry:
        journal.record_start("install", settings.new_host)
    runner.run("new", commands.install_mark_command(ended=False), hide=True, quiet=True)
    staged, why = stages_supported(settings)
    # A deploy without them would make a new DKIM key and ask for a certificate
    # (1.10+'s configure fails without tls_external_cert_and_key's files).
    carried = carry_secrets_first(settings, runner, journal)
    if not staged:
        print(f"  cmdeploy deploys whole ({why}), with mail off on new")
        cmdeploy_run(settings, settings.new_host, disable_mail=True)
        expect_mail_services(runner, "new", running=False)
        restart_on_carried_secrets(settings, runner, journal, carried)
        runner.run("new", commands.install_mark_command(ended=True), hide=True, quiet=True)
        return
    print(f"  cmdeploy runs in stages ({why}): install and configure now, activate last")
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
    restart_on_carried_secrets(settings, runner, journal, carried)
    runner.run("new", commands.install_mark_command(ended=True), hide=True, quiet=True)


def restart_on_carried_secrets(
    settings: Settings, runner: Runner, journal: Journal | None, carried: bool
) -> None:
    """Restart opendkim and nginx on the keys and certificates carried before the deploy
    (and, staged, on configure's files), so that the cutover need not: its window is
    then only mail's own units (services.restart_unless_current)."""
    if not carried or settings.dry:
        return
    restart_on_copied_state(runner)
    if journal:
        journal.note("secrets-restarted", host=settings.new_host)


def carry_secrets_first(settings: Settings, runner: Runner, journal: Journal | None) -> bool:
    """Copy the relay's secrets (DKIM keys, ACME state, TLS files) to new while old still
    serves, and note their digest: copy-data carries them again and says if they changed.
    Whether they were carried now."""
    if journal and journal.last_event("copied", settings.new_host):
        # The seed's order, by hand: copy-data brought them (and its owner and ACL
        # records, which another copy would replace).
        print("  the secrets are on new already: copy-data brought them")
        return False
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
        return False
    need_agent(settings, "install")
    print(f"  carrying {', '.join(paths)} to new first: the deploy finds them there")
    paths = with_link_targets(settings, runner, paths)
    digest = secrets_digest(runner, paths)
    copy_to_new(settings, runner, paths)
    if journal and not settings.dry:
        journal.note("secrets-carried", host=settings.new_host, paths=paths, digest=digest)
    return True


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
