"""The shell that finds what changed on old since the last pre-sync began
(onhost/changes.py), for the final sync and verify to follow the change, not the tree.
"""

from __future__ import annotations

import shlex

from chatmail_migrate.hosts.commands import STATE_DIR
from chatmail_migrate.onhost import script

# Runs on old: onhost/changes.py.
CHANGES_PY = script("changes")


# On old: the last pre-sync's clock and directories (committed once its rsync ended),
# and what the last walk found (rsync's list, verify's specs, the summary).
SNAPSHOT = f"{STATE_DIR}/presync-snapshot"
CHANGED_DIR = f"{STATE_DIR}/changed"
FILES_FROM = f"{CHANGED_DIR}/files-from"


# Subtracted from the pre-sync's start: a change made just after it may carry a ctime a
# little before it. The kernel stamps ctimes from a coarse clock (a tick, up to 10 ms,
# behind the one ``time.time_ns()`` reads); some file systems keep whole seconds
# (ext4 with 128-byte inodes, ext3: a ctime is the second, rounded down); and a
# clock stepped back a little (NTP) between the two moves the start past changes
# made after it. Two seconds covers the second-granularity case twice over and costs
# only what changed in those two seconds before the pre-sync, sent again.
MARGIN_NS = 2_000_000_000


def _run(*args: str, display: bool = False) -> str:
    text = "<onhost/changes.py>" if display else shlex.quote(CHANGES_PY)
    return f"python3 -c {text} {' '.join(shlex.quote(a) for a in args)}"


def snapshot_command(tree: str, display: bool = False) -> str:
    """On old, just before the pre-sync's rsync: prints old's clock (ns) and writes the
    directories' inodes beside it (committed by :func:`commit_snapshot_command`)."""
    return f"umask 077; mkdir -p -m 700 {STATE_DIR} && " + _run(
        "snapshot", tree, f"{SNAPSHOT}.new", display=display
    )


def commit_snapshot_command() -> str:
    """After the pre-sync's rsync ended well: its snapshot is the one to compare with."""
    return f"mv -f {SNAPSHOT}.new {SNAPSHOT}"


def walk_command(tree: str, clock_ns: int, display: bool = False) -> str:
    """On old, one command: what changed since ``clock_ns`` (less the margin), as JSON."""
    return "umask 077; " + _run(
        "walk", tree, SNAPSHOT, str(clock_ns), str(MARGIN_NS), CHANGED_DIR, display=display
    )


def specs_command() -> str:
    """The last walk's summary (one JSON line), then verify's specs (nothing if none)."""
    files = f"cat {CHANGED_DIR}/summary.json && echo && cat {CHANGED_DIR}/verify"
    return f"{{ {files}; }} 2>/dev/null || true"
