"""The final sync and verify after a pre-sync follow the change, not the tree; the
whole tree is compared after the move (steps/delta.py, steps/verify.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from chatmail_migrate.journal import Journal
from chatmail_migrate.lab import Lab, SeedParams
from chatmail_migrate.run.status import report
from tests.helpers import REPO, compare_trees, listing, mail_services, run_tool, tool_env
from tests.test_migrate import MAIL_ON, journal

MAILDIR = "/home/vmail/mail/relay.lab.example"
HOSTS = ["--old-host", "old", "--new-host", "new"]

# The accounts as both scripts number them: the one with a Trash folder (the seed's
# hard link) apart, as "$a".
ACCOUNTS = 't=$(ls -d */.Trash | head -1); a=${t%/.Trash}; set -- $(ls -d *@* | grep -vxF "$a")'

# Before the pre-sync: a folder to rename later, a pending notification to rewrite.
BEFORE = f"""
set -e
cd {MAILDIR}
{ACCOUNTS}
mkdir -p "$8/.Spam/cur" "$8/.Spam/new" "$8/.Spam/tmp"
cp -p "$(ls -d "$8"/cur/* "$8"/new/* | head -1)" "$8/.Spam/cur/"
printf '%s\\n1800000000\\n0123456789abcdef\\n' "$1" > pending_notifications/0badcafe
chown -R vmail:vmail "$8/.Spam" pending_notifications/0badcafe
"""

# After the pre-sync, while old still serves: what a relay does between the two.
AFTER = f"""
set -e
cd {MAILDIR}
{ACCOUNTS}
printf 'late mail\\n' > "$1/new/1800000000.late.old,S=10"
chown vmail:vmail "$1/new/1800000000.late.old,S=10"
rm "$(ls -d "$2"/cur/* | head -1)"
m=$(ls -d "$3"/cur/* | head -1); mv "$m" "$3/new/$(basename "${{m%:2,*}}")"
m=$(ls -d "$3"/new/* | tail -1); mv "$m" "$3/cur/$(basename "$m"):2,S"
rm -r "$4"
cp -a "$5" "zzznewcomer@relay.lab.example"
# Changed in place, the same size: a login's new password hash, a notification.
# The last bytes before the final newline, overwritten:
inplace='import sys; f = open(sys.argv[1], "r+b"); w = sys.argv[2].encode()
f.seek(-len(w) - 1, 2); f.write(w)'
python3 -c "$inplace" "$6/password" ABCD
echo "4321 1" >> "$7/maildirsize"
python3 -c "$inplace" pending_notifications/0badcafe Z
mv "$8/.Spam" "$8/.Junk"
m=$(ls -d "$a"/cur/* | tail -1); ln "$m" "$a/.Trash/cur/$(basename "$m")-copy"
echo "$1 $2 $3 $4 $5 $6 $7 $8 $a" > /root/changed
"""

# What the plan's steps outside the window run (or any caller): the whole tree compared,
# after the move (verify_whole_tree_after_move) or before the cutover.
WHOLE_TREE = """
import sys
from invoke import Context
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import resolve
from chatmail_migrate.steps import verify
settings = resolve(Context(), old_host="old", new_host="new")
runner = Runner(settings)
try:
    getattr(verify, sys.argv[1])(settings, runner, Journal.for_settings(settings))
except MigrateError as e:
    sys.exit(f"error: {e}")
finally:
    runner.close()
"""


def whole_tree(lab: Lab, state_dir: Path, when: str = "after_move") -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", WHOLE_TREE, f"verify_whole_tree_{when}"],
        cwd=REPO,
        env=tool_env(lab, state_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"whole tree {when} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def walked(out: str) -> dict[str, int]:
    """The figures copy-data prints after its walk of what changed."""
    found = re.search(
        r"changed since the pre-sync began \([^)]*\): ([\d,]+) of ([\d,]+) directories "
        r"\(([\d,]+) new there, sent whole\), ([\d,]+) files changed in place of ([\d,]+) "
        r"stat'ed, ([\d,]+) other names",
        out,
    )
    assert found, out
    keys = ("changed", "dirs", "whole", "files", "stated", "partners")
    return dict(zip(keys, (int(g.replace(",", "")) for g in found.groups()), strict=True))


def test_final_sync_and_verify_follow_what_changed_after_the_presync(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=60, messages=3))
    lab.ssh("old", BEFORE)
    # Past the margin: the final sync takes changes from 2 s before the pre-sync began.
    time.sleep(3)
    presync = run_tool(lab, "invoke", "presync", *HOSTS, state_dir=tmp_path)
    assert presync.returncode == 0, presync.stderr
    done = journal(tmp_path, lab)["events"]
    started = [e for e in done if e["event"] == "presync-done"][-1]
    assert started["old_clock_ns"] > 0 and started["by_name"] is True
    lab.ssh("old", AFTER)
    # Outside the window, before the cutover: what old changed since may differ, only.
    before = whole_tree(lab, tmp_path, "before_cutover")
    assert before.returncode == 0, before.stderr
    assert "changed since on their host, as they may: no differences" in before.stdout
    result = run_tool(lab, "invoke", "migrate", *HOSTS, "--yes", "--no-wait", state_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    # New holds exactly what old holds: every entry, hard links and ACLs included.
    first, second, moved, gone, _, relogged, _, renamed, linked = lab.ssh(
        "old", "cat /root/changed"
    ).stdout.split()
    assert compare_trees(listing(lab, "old"), listing(lab, "new")) == []
    new_side = lab.ssh("new", f"cd {MAILDIR} && ls -d *@*").stdout.split()
    assert gone not in new_side and "zzznewcomer@relay.lab.example" in new_side
    assert lab.ssh("new", f"ls {MAILDIR}/{renamed}/.Junk/cur").stdout.strip()
    assert mail_services(lab, "new") == MAIL_ON

    # The window's sync looked at what changed only: 60 accounts walked (their
    # directories stat'ed, cur/new/tmp unlisted), a handful of directories sent.
    seen = walked(out)
    assert seen["dirs"] > 240 and seen["changed"] == 15, seen
    # The folder renamed and the new account are sent whole (4 directories each).
    assert seen["whole"] == 2, seen
    # password, maildirsize and the pending notification; the hard link's other name.
    assert seen["files"] == 3 and seen["partners"] == 1, seen
    copy = out[out.index("copy-data old → new") : out.index("] fix-ownership")]
    assert "what changed since the pre-sync" in copy  # rsync's progress total
    log = (tmp_path / "chatmail-migrate" / f"{lab.domain}.log").read_text()
    assert "--dirs --files-from=/var/lib/chatmail-migrate/changed/files-from --from0" in log
    verify = out[out.index("] verify old ↔ new") : out.index("] switch-dns")]
    # Each host lists, by itself, the entries of the directories the sync looked at.
    assert "<verify's listing script> 0 -" in verify
    assert f"what the final sync looked at ({seen['changed']} directories" in verify
    assert "no differences" in verify
    events = journal(tmp_path, lab)["events"]
    verified = [e for e in events if e["event"] == "verified"]
    assert [e for e in verified if not e.get("after_move")][-1]["changed_only"] is True
    # migrate's converge compared the whole tree once mail ran on new.
    assert [e["ok"] for e in verified if e.get("after_move")] == [True]

    # After the move, with mail on new: the whole tree compares, what new changed since
    # it began serving aside (a login, a message delivered, one deleted).
    lab.ssh(
        "new",
        f"touch {MAILDIR}/{first}/password && printf 'new mail\\n' > "
        f"'{MAILDIR}/{second}/new/1900000000.after.new,S=9' && "
        f'rm "$(ls -d {MAILDIR}/{moved}/cur/* | head -1)"',
    )
    after = whole_tree(lab, tmp_path)
    assert after.returncode == 0, after.stderr
    assert "whole mailbox tree after the move:" in after.stdout
    # Those three, and the two directories whose mtime they moved.
    assert "5 changed since on their host, as they may: no differences" in after.stdout
    assert relogged and linked


def test_a_difference_outside_what_changed_is_caught_after_the_move(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=6, messages=3))
    presync = run_tool(lab, "invoke", "presync", *HOSTS, state_dir=tmp_path)
    assert presync.returncode == 0, presync.stderr
    # On new, in directories nothing changed on old: the final sync and the window's
    # verify do not look there (by design); the compare after the move does.
    altered = lab.ssh("new", f"ls -d {MAILDIR}/*/cur/* | head -1").stdout.strip()
    lost = lab.ssh("new", f"ls -d {MAILDIR}/*/cur/* | tail -1").stdout.strip()
    lab.ssh("new", f"chmod 640 '{altered}' && rm '{lost}'")
    # Before the cutover, the whole tree against the pre-sync already tells.
    before = whole_tree(lab, tmp_path, "before_cutover")
    assert before.returncode == 1 and f"missing on new: {lost}" in before.stderr
    result = run_tool(lab, "invoke", "migrate", *HOSTS, "--yes", "--no-wait", state_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 of " in result.stdout and "what the final sync looked at (0 directories" in (
        result.stdout
    )
    # migrate's converge compares the whole tree once mail flows: the FAIL is its own.
    assert "FAIL  verify after the move" in result.stderr, result.stderr
    after = whole_tree(lab, tmp_path)
    assert after.returncode == 1
    assert f"{altered}: mode 0o600 on old, 0o640 on new" in after.stderr
    assert f"missing on new: {lost}" in after.stderr
    # And the directory the message was deleted from: its mtime moved on new.
    assert "3 differences (1 missing, 1 mode, 1 mtime)" in after.stderr
    assert "`rollback` carries its mail back to the old host" in after.stderr
    verified = [e for e in journal(tmp_path, lab)["events"] if e["event"] == "verified"][-1]
    assert verified["ok"] is False and "3 differences" in verified["summary"]
    # The report, written from the journal when migrate ends, says so and names the
    # rollback (here migrate ended before: the plan's step after the window runs it).
    text = report(Journal.load(tmp_path / "chatmail-migrate" / f"{lab.domain}.json"), None)
    assert "verify (metadata): FAILED: whole tree after the move: " in text
    assert "`rollback` carries new's mail back to old" in text
