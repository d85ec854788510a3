"""The window's copy and verify after a pre-sync, the whole tree against what changed,
side by side on one lab (run by hand, as root; not a test).

    .venv/bin/python benchmarks/final_sync.py --files 160000 --repeat 3

Seeds old as a relay (2 KiB messages, 25 per account), then per round and per way:
``presync`` (new equals old), 1% of messages added and 0.5% deleted on old (the
churn of benchmarks/downtime.py), then copy-data and verify, timed, as the window
runs them:

- tree: rsync of the whole mailbox tree and verify's listing of every entry on both
  hosts (the tool before issue 24: its walk of what changed switched off, and verify's
  listing script as it was then);
- changed: the walk of old's directories, rsync of what changed, verify of that.

Mail stays on on old (copy-data by hand needs no disable-mail), caches warm. Prints
each round and the medians with their ratio; writes every run as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from invoke import Context  # noqa: E402

from benchmarks.downtime import CHURN_PY, MAILDIR  # noqa: E402
from chatmail_migrate.checks import tree as checks_tree  # noqa: E402
from chatmail_migrate.hosts.runner import Runner  # noqa: E402
from chatmail_migrate.journal import Journal  # noqa: E402
from chatmail_migrate.lab import Lab, SeedParams, seed_relay  # noqa: E402
from chatmail_migrate.settings import resolve  # noqa: E402
from chatmail_migrate.steps import copy, delta, verify  # noqa: E402

# verify's listing script before issue 24 (it stat'ed every entry three times).
BEFORE_LISTING = subprocess.run(
    ["git", "show", "r23:chatmail_migrate/onhost/listing.py"],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
).stdout


def churn(lab: Lab, messages: int, size: int) -> None:
    new, gone = max(messages // 100, 1), max(messages // 200, 1)
    lab.ssh("old", f"python3 -c {shlex.quote(CHURN_PY)} {MAILDIR} {new} {gone} {size}")


def timed(way: str, settings, journal) -> dict[str, float]:
    """copy-data then verify, as the window runs them, the one way or the other."""
    find_changes, listing = delta.find_changes, checks_tree.LISTING_PY
    if way == "tree":
        delta.find_changes = lambda *args, **kwargs: None
        if BEFORE_LISTING:
            checks_tree.LISTING_PY = BEFORE_LISTING
    runner = Runner(settings, echo=lambda *_: None)
    seconds = {}
    try:
        for step, run in (("copy", copy.copy_data_old_to_new), ("verify", verify.verify_trees)):
            started = time.monotonic()
            run(settings, runner, journal)
            seconds[step] = time.monotonic() - started
    finally:
        delta.find_changes, checks_tree.LISTING_PY = find_changes, listing
        runner.close()
    seconds["window"] = seconds["copy"] + seconds["verify"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=160_000, help="entries to seed")
    parser.add_argument("--messages", type=int, default=25)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--name", default="fsbench")
    parser.add_argument("--out", default="/tmp/final-sync.json")
    args = parser.parse_args()
    accounts = max(args.files // (args.messages + 10), 1)
    stale = Lab.load(args.name)
    if stale:
        stale.down()
    lab = Lab(name=args.name)
    lab.up()
    runs = []
    try:
        seed_relay(lab, SeedParams(accounts=accounts, messages=args.messages, size=args.size))
        entries = int(lab.ssh("old", f"find {MAILDIR} | wc -l").stdout)
        state = Path(f"/tmp/{args.name}-state")
        subprocess.run(["rm", "-rf", str(state)], check=True)
        os.environ.update({**lab.env(), "XDG_STATE_HOME": str(state)})
        settings = resolve(Context(), old_host="old", new_host="new")
        print(f"{entries:,} entries in {MAILDIR} ({accounts:,} accounts)", flush=True)
        for round_ in range(args.repeat):
            for way in ("tree", "changed") if round_ % 2 == 0 else ("changed", "tree"):
                journal = Journal.for_settings(settings)
                runner = Runner(settings, echo=lambda *_: None)
                copy.presync_old_to_new(settings, runner, journal)
                runner.close()
                churn(lab, accounts * args.messages, args.size)
                result = {"round": round_, "way": way, **timed(way, settings, journal)}
                # Not timed: the whole tree, each host its own, must be alike.
                runner = Runner(settings, echo=lambda *_: None)
                whole = verify.compare_trees(settings, runner, [MAILDIR], False)
                runner.close()
                assert whole is not None and whole.ok, whole and whole.summary()
                changed = journal.last_event("copied", settings.new_host).get("changed") or {}
                result["walk"] = {k: changed.get(k) for k in ("seconds", "changed_dirs", "dirs")}
                runs.append(result)
                print(
                    f"  round {round_ + 1} {way:7}: copy-data {result['copy']:.2f}s, verify "
                    f"{result['verify']:.2f}s, together {result['window']:.2f}s"
                    + (f" (walk {changed['seconds']:.2f}s)" if changed else ""),
                    flush=True,
                )
    finally:
        lab.down()
    Path(args.out).write_text(json.dumps({"entries": entries, "runs": runs}, indent=2))
    print(f"\nmedians of {args.repeat} interleaved rounds, {entries:,} entries, warm caches:")
    medians = {}
    for way in ("tree", "changed"):
        mine = [r for r in runs if r["way"] == way]
        medians[way] = {
            k: statistics.median(r[k] for r in mine) for k in ("copy", "verify", "window")
        }
        m = medians[way]
        print(
            f"  {way:7}  copy-data {m['copy']:6.2f}s  verify {m['verify']:6.2f}s  "
            f"together {m['window']:6.2f}s"
        )
    t, c = medians["tree"], medians["changed"]
    print(
        f"  changed/tree: copy-data {c['copy'] / t['copy']:.2f}, verify "
        f"{c['verify'] / t['verify']:.2f}, together {c['window'] / t['window']:.2f}"
    )
    print(f"runs: {args.out}")


if __name__ == "__main__":
    main()
