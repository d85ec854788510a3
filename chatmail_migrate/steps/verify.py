"""Step 5: compare the copied trees, each side listed on its own host."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from chatmail_migrate.checks import tree as checks_tree
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.relay import copy_paths
from chatmail_migrate.settings import Settings


def verify_trees(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """List the copied trees on both hosts (one command each, both at once) and compare."""
    report = compare_trees(settings, runner, copy_paths(settings.relay), settings.checksum)
    if report is None:
        return
    if journal:
        journal.note(
            "verified",
            ok=report.ok,
            checksum=settings.checksum,
            summary=report.summary().splitlines()[0],
        )
    if not report.ok:
        raise MigrateError("verify: " + report.summary())
    print(f"  {report.summary()}")


def compare_trees(
    settings: Settings, runner: Runner, paths: list[str], checksum: bool
) -> checks_tree.Report | None:
    """``paths`` listed on old and new (one command each, both at once), compared
    (None under --dry)."""
    command = checks_tree.listing_command(paths, checksum)
    display = checks_tree.listing_command(paths, checksum, display=True)
    if not settings.dry:  # connected one after the other: host key checks may print
        runner.connection("old"), runner.connection("new")
    # Each host walks its own trees: side by side, the step takes the slower walk's
    # time instead of the sum of both (it lies inside the downtime).
    with ThreadPoolExecutor(max_workers=2) as pool:
        old_job = pool.submit(runner.capture, "old", command, display)
        new_job = pool.submit(runner.capture, "new", command, display)
        old_out, new_out = old_job.result(), new_job.result()
    with old_out, new_out:
        if settings.dry:
            return None
        # The summary's first line says what was compared and what was not.
        return checks_tree.compare(
            checks_tree.parse_listing(old_out), checks_tree.parse_listing(new_out)
        )
