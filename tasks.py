"""Invoke collection: the migration tasks (as in ``fab --list``), the lab, and development.

Run ``invoke --list`` from the repository root.
"""

import shlex
import sys

from invoke import task

from chatmail_migrate.cli.collection import migration_collection
from chatmail_migrate.lab.tasks import ns as lab
from chatmail_migrate.lab.tasks import rehearse


@task(
    help={
        "k": "Only tests matching this pytest -k expression. Example: -k presync",
        "x": "Stop at the first failure. Example: -x",
        "benchmarks": "Also run the README's benchmark commands (minutes each; CI does "
        "not). Example: --benchmarks",
    }
)
def test(c, k=None, x=False, benchmarks=False):
    """Lint, then run the whole test suite but the benchmarks (lab tests need root)."""
    python = shlex.quote(sys.executable)  # the venv's, whatever PATH says
    c.run(f"{python} -m ruff check . && {python} -m ruff format --check .")
    args = (["-k", shlex.quote(k)] if k else []) + (["-x"] if x else [])
    args += [] if benchmarks else ["-m", shlex.quote("not benchmark")]
    # Two workers: the lab tests mostly wait on hosts, and labs run side by side;
    # tests sharing a lab (xdist_group marks) stay on one worker.
    c.run(f"{python} -m pytest -n 2 --dist loadgroup {' '.join(args)}")


@task
def fmt(c):
    """Format and auto-fix the code with ruff."""
    python = shlex.quote(sys.executable)
    c.run(f"{python} -m ruff format . && {python} -m ruff check --fix .")


ns = migration_collection()
ns.add_collection(lab)
ns.add_task(rehearse)
ns.add_task(test)
ns.add_task(fmt, name="format")
