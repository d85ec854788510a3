"""The final sync after a pre-sync follows the change, not the tree.

The pre-sync notes old's clock just before its rsync begins, and the inode of every
directory it will list (hosts/change_commands.py); both count once its rsync ended
well. Inside the window a walk of old's directories (onhost/changes.py, one command)
finds what changed since that moment, less a margin: directories whose ctime moved
(entries added, removed or renamed: their entries go, deletions mirrored), files
changed in place (stat'ed in every directory but Maildir's untouched cur/new/tmp),
and directories the pre-sync never saw there (their whole tree). copy-data sends
only that, and verify compares only that, each host listing its own entries. The
whole tree is compared outside the window (steps/verify.py).
"""

from __future__ import annotations

import json
import time

from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import change_commands
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings


def take_snapshot(settings: Settings, runner: Runner, tree: str) -> int | None:
    """Old's clock (ns) now, just before the pre-sync's rsync, with its directories."""
    command = change_commands.snapshot_command(tree)
    display = change_commands.snapshot_command(tree, display=True)
    with runner.capture("old", command, display) as out:
        if settings.dry:
            return None
        return int(out.read().split()[0])


def commit_snapshot(settings: Settings, runner: Runner) -> None:
    """The pre-sync's rsync ended well: a final sync may start from its snapshot."""
    runner.run("old", change_commands.commit_snapshot_command(), hide=True, quiet=True)


def presync_record(clock: int | None, by_name: bool) -> dict:
    """What presync-done journals for the final sync: old's clock at its start, and
    whether the relay's users existed on new (then owners and ACLs landed by name)."""
    return {"old_clock_ns": clock, "by_name": by_name} if clock else {}


def find_changes(
    settings: Settings, runner: Runner, journal: Journal | None, tree: str, by_name: bool
) -> dict | None:
    """What changed on old since the last pre-sync to new began (one command on old);
    None when the final sync must look at the whole tree (why is printed)."""
    done = journal.last_event("presync-done", settings.new_host) if journal else None
    why = None
    if not done or not done.get("old_clock_ns"):
        why = "the pre-sync noted no start on old (an older version of this tool)"
    elif not done.get("by_name"):
        # Then the pre-sync wrote old's numeric ids; only a pass over every file, as
        # rsync makes, gives them their names.
        why = "the relay's users did not exist on new at the pre-sync (owners by number)"
    elif not by_name:
        why = "the relay's users do not exist on new"
    if why:
        print(f"  the final sync compares the whole mailbox tree: {why}")
        return None
    assert done is not None
    clock = int(done["old_clock_ns"])
    command = change_commands.walk_command(tree, clock)
    display = change_commands.walk_command(tree, clock, display=True)
    with runner.capture("old", command, display) as out:
        text = out.read().decode(errors="replace").strip()
    if settings.dry:  # the commands it would run, with what the walk would find
        return {"bytes": 0, "entries": 0, "token": "dry"}
    try:
        found = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        raise MigrateError(f"the walk of what changed on old said: {text[-300:]!r}") from None
    if "fallback" in found:
        print(f"  the final sync compares the whole mailbox tree: {found['fallback']}")
        return None
    since = time.strftime("%H:%M:%S", time.localtime(found["threshold_ns"] / 1e9))
    print(
        f"  changed since the pre-sync began ({since} on old's clock, "
        f"{change_commands.MARGIN_NS / 1e9:.0f} s before it started): "
        f"{found['changed_dirs']:,} of {found['dirs']:,} directories "
        f"({found['replaced']:,} new there, sent whole), {found['changed_files']:,} files "
        f"changed in place of {found['stated']:,} stat'ed, {found['partners']:,} other names "
        f"of linked files; walked in {found['seconds']:.1f}s: rsync looks at those only"
    )
    return found


def last_copy_changes(journal: Journal | None, new_host: str | None) -> dict | None:
    """What the last copy to ``new_host`` sent, when it followed the change (its walk)."""
    copied = journal.last_event("copied", new_host) if journal else None
    return (copied or {}).get("changed")


def changed_specs(runner: Runner, token: str) -> bytes | None:
    """verify's specs of the walk ``token`` names (None: old holds another walk's)."""
    with runner.capture("old", change_commands.specs_command()) as out:
        summary, _, specs = out.read().partition(b"\n")
    try:
        found = json.loads(summary)
    except ValueError:
        return None
    return specs if found.get("token") == token else None
