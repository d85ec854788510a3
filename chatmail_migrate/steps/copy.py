"""Copy the relay's state from old to new: presync (rsync while old serves)
and copy-data (tar pipe, or rsync after a presync), run on old with ssh to new.
"""

from __future__ import annotations

from chatmail_migrate.checks.live_relay import refuse_to_overwrite_a_live_relay
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import change_commands, commands
from chatmail_migrate.hosts.runner import Runner, existing_paths, path_exists
from chatmail_migrate.hosts.transfer import (
    compression,
    copy_to_new,
    need_agent,
    need_rsync,
    relay_users_exist,
    with_link_targets,
)
from chatmail_migrate.journal import Journal
from chatmail_migrate.relay import copy_paths
from chatmail_migrate.settings import Settings, mailbox_tree
from chatmail_migrate.steps import delta
from chatmail_migrate.steps.install import secrets_changed_since_install


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
    compress = compression(settings, runner)
    by_name = relay_users_exist(settings, runner)
    if journal and not settings.dry:
        journal.record_start("presync", settings.new_host)
    # Old's clock and directories now, before rsync looks at anything: the final sync
    # starts from there (steps/delta.py).
    clock = delta.take_snapshot(settings, runner, tree)
    summaries = copy_to_new(settings, runner, compress=compress, mailbox_tree=tree)
    delta.commit_snapshot(settings, runner)
    if journal and not settings.dry:
        journal.note(
            "presync-done",
            host=settings.new_host,
            copies=summaries,
            **delta.presync_record(clock, by_name),
        )


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
    by_name = relay_users_exist(settings, runner)
    # Where the pre-sync allows, rsync looks only at what changed on old since it began.
    changes = delta.find_changes(settings, runner, journal, tree, by_name) if sync else None
    # Data from an earlier attempt (or, with --force, any) is replaced, never merged.
    replace = settings.force or bool(journal and journal.copy_attempted(settings.new_host))
    if replace and not sync:
        print(f"  replacing what an earlier attempt left on {settings.new_host}")
    compress = compression(settings, runner)
    if by_name:
        print(
            "  the relay's users exist on new: owners and ACLs are restored by name as "
            "the data lands"
        )
    if journal:
        secrets_changed_since_install(settings, runner, journal)
    # The progress total: what changed, or the tree as the pre-sync found it.
    total = journal.presync_total(settings.new_host) if sync and journal else None
    if changes:
        total = (changes["bytes"], changes["entries"])
    if journal and not settings.dry:
        journal.record_start("copy-data", settings.new_host)
    summaries = copy_to_new(
        settings,
        runner,
        paths,
        replace=replace,
        sync_mailboxes=sync,
        compress=compress,
        mailbox_tree=tree,
        owners_by_name=by_name,
        rsync_total=total,
        changes=change_commands.FILES_FROM if changes else None,
    )
    if journal and not settings.dry:
        journal.note("copied", host=settings.new_host, copies=summaries, changed=changes)
        if journal.done("disable-mail"):
            # Old's mail, off since disable-mail, is on new now: whatever old took as
            # some earlier move's new host is carried, and old may be a target again.
            runner.run("old", commands.stamp_command(commands.CARRIED_BACK), hide=True)
