"""The walk of what changed since a pre-sync (onhost/changes.py), the listing of its
specs and the comparison that lets entries changed since differ: on this machine's
files, with this machine's rsync playing the copy (no lab)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from chatmail_migrate.checks import tree as checks_tree
from chatmail_migrate.hosts import change_commands, copy_commands

pytestmark = pytest.mark.skipif(not shutil.which("rsync"), reason="needs rsync")

DOMAIN = "relay.example"


def relay_tree(root: Path, accounts: int = 6) -> list[Path]:
    """A small mailbox tree as the relay keeps it; the accounts, sorted."""
    base = root / DOMAIN
    (base / "pending_notifications").mkdir(parents=True)
    (base / "pending_notifications" / "0badcafe").write_text("a@relay.example\n1\nx\n")
    made = []
    for n in range(accounts):
        account = base / f"user{n}@{DOMAIN}"
        for sub in ("cur", "new", "tmp"):
            (account / sub).mkdir(parents=True)
        for m in range(3):
            (account / "cur" / f"17000000{m}.M{n}.old:2,S").write_text(f"message {n} {m}\n")
        (account / "new" / f"17000009.M{n}.old").write_text(f"unread {n}\n")
        for name in ("password", "maildirsize", "dovecot.index.log", "metadata.json"):
            (account / name).write_text(f"{name} of {n}\n")
        made.append(account)
    trash = made[0] / ".Trash"
    for sub in ("cur", "new", "tmp"):
        (trash / sub).mkdir(parents=True)
    os.link(made[0] / "cur" / "170000000.M0.old:2,S", trash / "cur" / "170000000.M0.old:2,S")
    return made


def run_changes(*args: str) -> str:
    return subprocess.run(
        ["python3", "-c", change_commands.CHANGES_PY, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


# As the copy runs it (hosts/copy_commands.py), without the ssh.
RSYNC = [
    "rsync",
    "--archive",
    "--hard-links",
    "--xattrs",
    "--acls",
    "--delete",
    "--modify-window=-1",
]


class Relay:
    """old's tree, new's copy of it by a pre-sync, and the final sync of what changed."""

    def __init__(self, tmp_path: Path):
        self.old, self.new = tmp_path / "old", tmp_path / "new"
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.accounts = relay_tree(self.old)
        time.sleep(0.05)  # the coarse clock the kernel stamps ctimes with, past

    def presync(self) -> None:
        """Snapshot, then rsync, as presync_script runs them on old."""
        out = run_changes("snapshot", str(self.old), str(self.state / "snapshot"))
        self.clock = int(out.split()[0])
        subprocess.run([*RSYNC, f"{self.old}/", f"{self.new}/"], check=True)
        time.sleep(0.05)

    def walk(self, margin: int = 0, clock: int | None = None) -> dict:
        out = run_changes(
            "walk",
            str(self.old),
            str(self.state / "snapshot"),
            str(self.clock if clock is None else clock),
            str(margin),
            str(self.state / "changed"),
        )
        return json.loads(out)

    def final_sync(self, margin: int = 0) -> dict:
        found = self.walk(margin)
        files_from = self.state / "changed" / "files-from"
        subprocess.run(
            [*RSYNC, "--dirs", f"--files-from={files_from}", "--from0"]
            + [f"{self.old}/", f"{self.new}/"],
            check=True,
        )
        return found

    def listed(self, root: Path, stdin: bytes | None = None) -> list[dict]:
        args = ["-"] if stdin is not None else [str(root)]
        out = subprocess.run(
            ["python3", "-c", checks_tree.LISTING_PY, "0c", *args],
            input=stdin,
            capture_output=True,
            check=True,
        ).stdout
        entries = list(checks_tree.parse_listing(out))
        for e in entries:  # both sides under one name
            e["p"] = "/mail" + e["p"].removeprefix(str(root))
            if "hl" in e:
                e["hl"] = "/mail" + e["hl"].removeprefix(str(root))
        return entries

    def whole(self) -> checks_tree.Report:
        return checks_tree.compare(self.listed(self.old), self.listed(self.new))

    def changed_only(self) -> checks_tree.Report:
        """verify inside the window: the walk's specs, each side listing its own."""
        specs = (self.state / "changed" / "verify").read_bytes()
        theirs = specs.replace(os.fsencode(self.old), os.fsencode(self.new))
        return checks_tree.compare(self.listed(self.old, specs), self.listed(self.new, theirs))

    def files_from(self) -> list[str]:
        return (self.state / "changed" / "files-from").read_text().split("\0")[:-1]


def test_the_tool_s_final_sync_is_this_rsync():
    lines = "\n".join(
        copy_commands.rsync_mailboxes(
            host="n", port=22, user="root", compress=None, files_from="/x/files-from", acls=True
        )
    )
    assert "--archive --hard-links --xattrs --delete" in lines
    assert "--acls --dirs --files-from=/x/files-from --from0" in lines


def test_nothing_changed_nothing_sent(tmp_path: Path):
    relay = Relay(tmp_path)
    relay.presync()
    found = relay.final_sync()
    assert relay.files_from() == []
    assert found["changed_dirs"] == found["changed_files"] == found["partners"] == 0
    # Every directory stat'ed; cur/new/tmp not listed (a link count of 2).
    assert found["dirs"] == 3 + 6 * 4 + 4 and found["listed"] == 3 + 6 + 1
    assert relay.whole().ok


def test_what_a_relay_changes_after_the_presync_is_all_that_is_sent(tmp_path: Path):
    relay = Relay(tmp_path)
    relay.presync()
    a = relay.accounts
    base = relay.old / DOMAIN
    (a[1] / "new" / "1800000000.late").write_text("late mail\n")  # delivered
    next((a[2] / "cur").iterdir()).unlink()  # expunged
    moved = next((a[3] / "new").iterdir())
    moved.rename(a[3] / "cur" / f"{moved.name}:2,S")  # read
    shutil.rmtree(a[4])  # account expired
    shutil.copytree(a[5], base / f"newcomer@{DOMAIN}", symlinks=True)  # registered
    with open(a[5] / "password", "r+b") as f:  # a login: same size, new hash and mtime
        f.seek(2)
        f.write(b"XY")
    with open(a[1] / "maildirsize", "a") as f:
        f.write("10 1\n")
    with open(base / "pending_notifications" / "0badcafe", "r+b") as f:
        f.write(b"Z")
    (a[0] / ".Trash").rename(a[0] / ".Old")  # a folder renamed: its tree goes whole
    linked = next((a[2] / "cur").iterdir())
    (a[2] / ".Copies" / "cur").mkdir(parents=True)
    os.link(linked, a[2] / ".Copies" / "cur" / "copy")  # Dovecot copies by hard link

    found = relay.final_sync()
    sent = relay.files_from()
    rel = f"{DOMAIN}/"
    assert sorted(sent) == sorted(
        [
            rel,  # accounts added and removed
            f"{rel}user0@{DOMAIN}/",
            f"{rel}user0@{DOMAIN}/.Old/",
            *(f"{rel}user0@{DOMAIN}/.Old/{s}/" for s in ("cur", "new", "tmp")),
            f"{rel}user1@{DOMAIN}/new/",
            f"{rel}user2@{DOMAIN}/",
            f"{rel}user2@{DOMAIN}/cur/",
            f"{rel}user2@{DOMAIN}/.Copies/",
            f"{rel}user2@{DOMAIN}/.Copies/cur/",
            f"{rel}user3@{DOMAIN}/cur/",
            f"{rel}user3@{DOMAIN}/new/",
            f"{rel}newcomer@{DOMAIN}/",
            *(f"{rel}newcomer@{DOMAIN}/{s}/" for s in ("cur", "new", "tmp")),
            f"{rel}pending_notifications/0badcafe",
            f"{rel}user5@{DOMAIN}/password",
            f"{rel}user1@{DOMAIN}/maildirsize",
            # The renamed folder's link to its account's cur/: both names travel.
            f"{rel}user0@{DOMAIN}/cur/170000000.M0.old:2,S",
        ]
    ), sent
    assert found["replaced"] == 3  # .Old, .Copies and the newcomer: new to new
    report = relay.whole()
    assert report.ok, report.summary()
    assert os.stat(relay.new / f"{rel}user2@{DOMAIN}/.Copies/cur/copy").st_nlink == 2
    assert os.stat(relay.new / f"{rel}user0@{DOMAIN}/.Old/cur/170000000.M0.old:2,S").st_nlink == 2
    # verify inside the window: what the sync looked at, each side listing its own.
    window = relay.changed_only()
    assert window.ok and 0 < window.files < relay.whole().files, window.summary()


def test_a_file_changed_in_place_is_found_only_by_its_stat(tmp_path: Path):
    """What the lab test shows failing when the walk stops stat'ing files: a password
    rewritten in place leaves its directory's ctime alone."""
    relay = Relay(tmp_path)
    relay.presync()
    account = relay.accounts[3]
    before = os.stat(account).st_ctime_ns
    with open(account / "password", "r+b") as f:
        f.write(b"P")
    assert os.stat(account).st_ctime_ns == before
    relay.final_sync()
    assert relay.files_from() == [f"{DOMAIN}/user3@{DOMAIN}/password"]
    assert relay.whole().ok


def test_the_window_s_verify_sees_a_change_the_sync_missed_in_what_it_looked_at(tmp_path: Path):
    relay = Relay(tmp_path)
    relay.presync()
    (relay.accounts[1] / "new" / "late").write_text("late\n")
    relay.final_sync()
    (relay.new / DOMAIN / f"user1@{DOMAIN}" / "new" / "late").write_text("other\n")
    (relay.new / DOMAIN / f"user1@{DOMAIN}" / "new" / "stray").write_text("x\n")
    window = relay.changed_only()
    kinds = dict(window.by_kind())
    assert kinds.get("size") == 1 and kinds.get("extra") == 1, window.summary()


def test_without_its_snapshot_the_walk_says_so(tmp_path: Path):
    relay = Relay(tmp_path)
    relay.presync()
    assert "fallback" in relay.walk(clock=relay.clock + 1)
    (relay.state / "snapshot").unlink()
    assert "no pre-sync snapshot" in relay.walk()["fallback"]


def test_the_margin_takes_changes_made_just_before_the_presync_began(tmp_path: Path):
    relay = Relay(tmp_path)
    time.sleep(change_commands.MARGIN_NS / 1e9)  # the tree itself older than the margin
    (relay.accounts[2] / "new" / "just-before").write_text("x\n")
    relay.presync()
    assert relay.walk()["changed_dirs"] == 0
    # A second-granularity file system would stamp that change before the clock read.
    assert relay.walk(margin=change_commands.MARGIN_NS)["changed_dirs"] == 1


def test_compare_lets_entries_changed_since_differ_and_only_those():
    def entry(path: str, ct: int, kind: str = "f", mode: int = 0o600) -> dict:
        return {"p": path, "t": kind, "m": mode, "ct": ct, "s": 1}

    old = [
        entry("/m", 1, "d"),
        entry("/m/a", 1, "d"),
        entry("/m/a/gone-on-new", 1),  # deleted on new after it served: a's ctime 9
        entry("/m/a/same", 1),
        entry("/m/b", 1, "d"),
        entry("/m/b/chmod-on-new", 1),
        entry("/m/b/lost", 1),
    ]
    new = [
        entry("/m", 1, "d"),
        entry("/m/a", 9, "d"),
        entry("/m/a/delivered", 9),
        entry("/m/a/same", 1),
        entry("/m/b", 1, "d"),
        entry("/m/b/chmod-on-new", 9, mode=0o640),
    ]
    report = checks_tree.compare(old, new, changed_since=(None, 5))
    assert report.excused == 3
    assert [m for _, m in report.differences] == ["missing on new: /m/b/lost"]
    strict = checks_tree.compare(old, new)
    assert strict.excused == 0 and sum(strict.kinds.values()) == 4
