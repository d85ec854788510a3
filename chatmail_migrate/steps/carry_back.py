"""Carry mail the new host took back to old, before a rollback."""

from __future__ import annotations

import dataclasses

from chatmail_migrate.checks import live_relay
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import commands, ownership_commands, transfer
from chatmail_migrate.hosts.runner import Runner, existing_paths
from chatmail_migrate.journal import Journal
from chatmail_migrate.relay import SPOOL
from chatmail_migrate.settings import Settings, mailbox_tree
from chatmail_migrate.steps.verify import compare_trees


def new_host_facts(
    settings: Settings, runner: Runner, never_served: bool
) -> live_relay.MailFacts | None:
    """The new host's mail facts. Unreachable, it stops the rollback (whether it took
    mail, or serves still, cannot be told, and its mail would be stranded), unless this
    run knows it never served."""
    try:
        return live_relay.mail_facts(settings, runner, "new")
    except MigrateError as e:
        if never_served:
            print(f"  the new host cannot be reached ({e}); it never served mail in this run")
            return None
        raise MigrateError(
            f"rollback refused, nothing changed: the new host {settings.new_host} cannot be "
            f"reached ({e}), so whether it serves or took mail cannot be told. Make it "
            "reachable and rerun; if it is gone for good (its mail with it), rerun with "
            "--new-host-gone"
        ) from None


def carry_back_new_to_old(
    settings: Settings,
    runner: Runner,
    journal: Journal | None,
    new_facts: live_relay.MailFacts,
) -> None:
    """Mirror new's mailbox tree onto old's and replace old's queue with new's, verified.

    The copy runs on new, as the forward one runs on old (agent forwarded, old's key
    pinned to the one this machine saw), with both hosts' mail stopped. Old carries a
    mark while it may be partly new's; only a verified carry back removes it.
    """
    print(
        f"  the new host {settings.new_host} took mail ({new_facts.took_mail_reason()}): "
        f"carrying it back to the old host {settings.old_host} before old serves again"
    )
    # The same copy, the other way: new is the source ("old" role), old the target.
    back = dataclasses.replace(
        settings,
        old_host=settings.new_host,
        new_host=settings.old_host,
        new_host_from_old=None,
        compress=False,
    )
    back_runner = Runner(back)
    if journal:
        journal.note("carry-back-started", host=settings.new_host)
    try:
        back_runner.run("new", commands.stamp_command(commands.CARRYING), hide=True)
        tree = mailbox_tree(settings)
        paths = existing_paths(back_runner, "old", [tree, SPOOL])
        transfer.need_agent(back, "rollback")
        transfer.need_rsync(back, back_runner, "rollback")
        try:
            summaries = transfer.copy_to_new(
                back,
                back_runner,
                paths,
                replace=True,
                sync_mailboxes=tree in paths,
                mailbox_tree=tree,
                owners_by_name=True,
            )
        except (MigrateError, KeyboardInterrupt) as e:
            why = str(e) if isinstance(e, MigrateError) else "interrupted"
            raise MigrateError(
                f"carrying new's mail back failed ({why}): old's mailboxes and queue may be "
                "partly replaced by new's, whose are untouched; old stays off. Fix the "
                "cause and rerun rollback: it carries everything back again"
            ) from None
        # Queue files renamed to old's inode numbers, owners checked by name.
        back_runner.run_script("new", ownership_commands.fix_ownership_script(paths, tree))
        checked = back_runner.run("new", "postfix check 2>&1 || true", hide=True).stdout
        problems = commands.postfix_check_problems(checked.splitlines())
        if problems:
            raise MigrateError("postfix check on old after the carry back: " + " / ".join(problems))
        report = compare_trees(back, back_runner, paths, checksum=False)
        if not report.ok:
            raise MigrateError(
                "the mail carried back differs from the new host's: "
                + report.summary()
                + "; old stays off, new's data is untouched: fix it and rerun rollback"
            )
        back_runner.run("old", commands.stamp_command(commands.CARRIED_BACK), hide=True)
        back_runner.run("new", f"rm -f {commands.CARRYING}", hide=True)
    finally:
        back_runner.close()
    if journal:
        journal.note("carried-back", host=settings.new_host, copies=summaries)
    print(f"  carried back: {report.summary().splitlines()[0]}")
