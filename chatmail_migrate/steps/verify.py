"""Step 5: compare the copied trees, each side listed on its own host.

Inside the window, after a final sync that followed the change (steps/delta.py),
only what could have changed since the pre-sync is compared in the mailbox tree;
the whole tree is compared outside the window: :func:`verify_whole_tree_after_move`
once mail flows on new, :func:`verify_whole_tree_before_cutover` while old serves.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from chatmail_migrate.checks import tree as checks_tree
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import change_commands, commands
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.relay import ECHOBOT_TREES, SPOOL, copy_paths
from chatmail_migrate.settings import Settings, mailbox_tree
from chatmail_migrate.steps import delta


def verify_trees(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """List the copied trees on both hosts (one command each, both at once) and compare.

    After a final sync of what changed (and before mail runs on new), the mailbox
    tree's part is what that sync looked at: the changed directories' entries (each
    host lists its own) and the files changed in place; the other trees go whole.
    """
    paths = copy_paths(settings.relay)
    if journal and journal.done("enable-mail"):
        # Mail runs on new: its mailboxes and queue change as they should.
        verify_whole_tree_after_move(settings, runner, journal, paths)
        return
    changes = delta.last_copy_changes(journal, settings.new_host)
    raw = None
    if changes and not settings.dry:
        raw = delta.changed_specs(runner, changes["token"])
        if raw is None:
            print("  old holds no list of what the last copy sent: comparing everything")
    if raw is not None:
        tree = mailbox_tree(settings)
        stdin = checks_tree.specs([p for p in paths if p != tree], raw)
        report = compare_trees(settings, runner, ["-"], settings.checksum, stdin=stdin)
        assert changes is not None
        print(
            f"  the mailbox tree: what the final sync looked at ({changes['changed_dirs']:,} "
            f"directories with their entries, {changes['changed_files'] + changes['partners']:,}"
            " files); the whole tree is compared once mail runs on new"
        )
    else:
        report = compare_trees(settings, runner, paths, settings.checksum)
    if report is None:
        return
    if journal:
        journal.note(
            "verified",
            ok=report.ok,
            checksum=settings.checksum,
            summary=report.summary().splitlines()[0],
            changed_only=raw is not None,
        )
    if not report.ok:
        raise MigrateError("verify: " + report.summary())
    print(f"  {report.summary()}")


def compare_trees(
    settings: Settings,
    runner: Runner,
    paths: list[str],
    checksum: bool,
    *,
    stdin: bytes | None = None,
    changed_since: tuple[int | None, int | None] | None = None,
    changing: tuple[str, ...] | None = None,
    queues: bool = True,
) -> checks_tree.Report | None:
    """``paths`` listed on old and new (one command each, both at once), compared
    (None under --dry). ``stdin``: the listing's specs (``paths`` is ``["-"]``).
    ``changed_since``: (old's, new's) thresholds (ns): entries changed since may differ
    (in the trees ``changing`` names, or all). ``queues``: see checks.tree.compare."""
    ctimes = changed_since is not None
    command = checks_tree.listing_command(paths, checksum, ctimes=ctimes)
    display = checks_tree.listing_command(paths, checksum, display=True, ctimes=ctimes)
    if not settings.dry:  # connected one after the other: host key checks may print
        runner.connection("old"), runner.connection("new")
    # Each host walks its own trees: side by side, the step takes the slower walk's
    # time instead of the sum of both (it lies inside the downtime).
    with ThreadPoolExecutor(max_workers=2) as pool:
        old_job = pool.submit(runner.capture, "old", command, display, input=stdin)
        new_job = pool.submit(runner.capture, "new", command, display, input=stdin)
        old_out, new_out = old_job.result(), new_job.result()
    with old_out, new_out:
        if settings.dry:
            return None
        # The summary's first line says what was compared and what was not.
        return checks_tree.compare(
            checks_tree.parse_listing(old_out),
            checks_tree.parse_listing(new_out),
            changed_since=changed_since,
            changing=changing,
            queues=queues,
        )


def _mark(runner: Runner, role: str, mark: str) -> int | None:
    """One of this tool's marks on a host (its clock, whole seconds) in ns, if there."""
    out = runner.run(role, f"cat {mark} 2>/dev/null || true", hide=True, quiet=True).stdout
    return int(out.split()[0]) * 10**9 if out.strip().isdigit() else None


def verify_whole_tree_after_move(
    settings: Settings,
    runner: Runner,
    journal: Journal | None = None,
    paths: list[str] | None = None,
) -> checks_tree.Report | None:
    """After the move, with mail flowing on new: ``paths`` (the whole mailbox tree by
    default), each host listing its own, compared as verify does. In the trees mail
    flows through, only entries that changed on new since it began serving
    (enable-mail's mark, new's clock), or on old since its mail was carried to new
    (copy-data's mark, old's clock: old's own expiry, say), may differ, and Postfix's
    queue files are not compared; the other trees (keys, certificates) must be
    alike. Any other difference is a FAIL, in the journal and report, naming the
    rollback.
    """
    tree = mailbox_tree(settings)
    paths = paths or [tree]
    since = (None, None)
    if not settings.dry:
        since = (
            _mark(runner, "old", commands.CARRIED_BACK),
            _mark(runner, "new", commands.SERVED_SINCE),
        )
    report = compare_trees(
        settings,
        runner,
        paths,
        settings.checksum,
        changed_since=since,
        changing=(tree, *ECHOBOT_TREES),
        queues=SPOOL not in paths,
    )
    if report is None:
        return None
    first = report.summary().splitlines()[0]
    if journal:  # the report's verify line, the rollback named when it failed
        rollback = "" if report.ok else "; `rollback` carries new's mail back to old"
        journal.note(
            "verified",
            ok=report.ok,
            checksum=settings.checksum,
            summary=f"whole tree after the move: {first}{rollback}",
            changed_only=False,
            after_move=True,
        )
    if not report.ok:
        raise MigrateError(
            f"verify after the move: {report.summary()}\nThese entries differ "
            f"and did not change since mail began on the new host {settings.new_host}: "
            "the final copy missed them, or something changed them on one host. Mail runs "
            "on the new host; `rollback` carries its mail back to the old host, which "
            "serves again with the original, or copy the entries named above by hand."
        )
    what = "whole mailbox tree" if paths == [tree] else "every copied tree"
    print(f"  {what} after the move: {report.summary()}")
    return report


def verify_whole_tree_before_cutover(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> checks_tree.Report | None:
    """While old still serves, after a pre-sync: the whole mailbox tree, each host
    listing its own; only entries changed on old since the pre-sync began (less the
    margin, old's clock) may differ. A difference elsewhere FAILs before mail goes down."""
    done = journal.last_event("presync-done", settings.new_host) if journal else None
    clock = (done or {}).get("old_clock_ns")
    if not clock:
        raise MigrateError("verify before the cutover needs a pre-sync that noted its start")
    since = (int(clock) - change_commands.MARGIN_NS, None)
    tree = mailbox_tree(settings)
    report = compare_trees(settings, runner, [tree], settings.checksum, changed_since=since)
    if report is not None and not report.ok:
        raise MigrateError(f"verify before the cutover: {report.summary()}")
    if report is not None:
        print(f"  whole mailbox tree against the pre-sync: {report.summary()}")
    return report
