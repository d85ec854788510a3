"""Step 4: owners by name on the new host (uids differ between hosts)."""

from __future__ import annotations

from chatmail_migrate.checks.live_relay import refuse_to_overwrite_a_live_relay
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import commands, ownership_commands
from chatmail_migrate.hosts.runner import Runner, existing_paths
from chatmail_migrate.journal import Journal
from chatmail_migrate.relay import copy_paths
from chatmail_migrate.settings import Settings, mailbox_tree


def fix_ownership_on_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    refuse_to_overwrite_a_live_relay(settings, runner, "fix-ownership", journal)
    paths = copy_paths(settings.relay)
    if not settings.dry:
        paths = existing_paths(runner, "new", paths)
    runner.run_script("new", ownership_commands.fix_ownership_script(paths, mailbox_tree(settings)))
    result = runner.run("new", ownership_commands.ownership_check_command(paths), hide=True)
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
