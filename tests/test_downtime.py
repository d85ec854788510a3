"""Short downtime: pre-sync while the relay serves, staged cmdeploy, progress, --compress."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

from chatmail_migrate.lab import Lab, SeedParams
from tests.helpers import BIN, REPO, compare_trees, listing, mail_services, run_tool, tool_env
from tests.test_migrate import MAIL_OFF, MAIL_ON, assert_migrated, journal

MAILDIR = "/home/vmail/mail/relay.lab.example"

# The relay keeps serving between pre-sync and disable-mail: a message arrives in
# one account, a message is deleted in another, and a whole account expires.
LAST_MAIL = f"""
set -e
cd {MAILDIR}
set -- $(ls -d *@* | sort)
printf 'late mail\\n' > "$1/new/1800000000.late.old:2,"
chown vmail:vmail "$1/new/1800000000.late.old:2,"
rm "$(ls -d "$2"/cur/* | head -1)"
rm -r "$3"
echo "$1 $2 $3" > /root/last-mail
"""


def test_presync_staged_relay_mirrors_changes_made_before_the_downtime(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=12, messages=4, version="1.10.0"))
    result = run_tool(
        lab,
        "invoke",
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--presync",
        "--yes",
        "--no-wait",
        state_dir=tmp_path,
        CHATMAIL_LAB_BEFORE_DISABLE_MAIL=LAST_MAIL,
        CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST="old",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Relay 1.10 deploys in stages: the new host is prepared before mail goes down.
    order = [
        "presync",
        "install",
        "disable-mail",
        "copy-data",
        "fix-ownership",
        "verify",
        "switch-dns",
        "enable-mail",
        "converge",
    ]
    positions = [out.index(f"[{n}/9] {step} done in") for n, step in enumerate(order, 1)]
    assert positions == sorted(positions)
    assert "CMDEPLOY_STAGES=install,configure" in out and "CMDEPLOY_STAGES=activate" in out
    assert journal(tmp_path, lab)["plan"] == order
    # Not on a terminal: plain progress lines, with what the final sync sent.
    assert "mailboxes (rsync): at most" in out and "mailboxes (rsync): done" in out
    assert "mirrors deletions" in out and "copy (tar): done" in out

    added, trimmed, expired = lab.ssh("old", "cat /root/last-mail").stdout.split()
    new_side = lab.ssh("new", f"cd {MAILDIR} && ls -d *@* && ls {trimmed}/cur | wc -l").stdout
    assert expired not in new_side, "an account deleted on old before the downtime came back"
    assert added in new_side
    assert lab.ssh("new", f"cat '{MAILDIR}/{added}/new/1800000000.late.old:2,'").stdout == (
        "late mail\n"
    )
    assert compare_trees(listing(lab, "old"), listing(lab, "new")) == []
    verify = run_tool(
        lab,
        "invoke",
        "verify",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--checksum",
        state_dir=tmp_path,
    )
    assert verify.returncode == 0 and "no differences" in verify.stdout
    assert mail_services(lab, "new") == MAIL_ON and mail_services(lab, "old") == MAIL_OFF
    # No echobot in relay 1.10: not even looked for, and nothing left orphaned.
    assert "skipping /var/lib/echobot" not in out
    assert lab.ssh("new", "ls -d /var/lib/echobot /run/echobot", check=False).stdout == ""
    assert lab.ssh("new", f"stat -c %U:%G {MAILDIR}/{added}/new").stdout.strip() == "vmail:vmail"
    assert_log_and_report(lab, tmp_path, out)


def assert_log_and_report(lab: Lab, state_dir: Path, out: str) -> None:
    """Every command is in the log, with host, time, duration and exit; the report adds up."""
    log = state_dir / "chatmail-migrate" / f"{lab.domain}.log"
    report = state_dir / "chatmail-migrate" / f"{lab.domain}-report.txt"
    assert f"command log: {log}" in out and f"report: {report}" in out
    text = log.read_text()
    new = lab.address("new")
    assert "[old: old] (agent forwarded) exit=0" in text  # the copy, with its script
    assert re.search(r"^    \| \{ rsync --archive", text, re.M)  # scripts in full
    assert "[new: new] exit=0" in text
    assert f"[local {lab.relay_dir}] exit=0" in text and "CMDEPLOY_STAGES=activate" in text
    for line in text.splitlines():
        if not line.startswith("    |"):
            assert re.match(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (--|\[.*\] .*exit=-?\d+ "
                r"\d+\.\d\ds \$)",
                line,
            ), line
    # No secrets: no key material, no password hashes, no agent socket (its path; the
    # copy's unit is told the variable's name, SSH_AUTH_SOCK, to pass the agent on).
    for secret in ("PRIVATE KEY", "$6$", "{SHA512-CRYPT}", str(lab.agent_sock), "/tmp/ssh-"):
        assert secret not in text and secret not in report.read_text()
    key = lab.ssh("new", "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    assert key not in text  # host keys pinned in the copy script are shortened
    summary = report.read_text()
    assert "mail downtime: " in summary and "verify (metadata): passed" in summary
    assert f"DNS: switched to A {new}" in summary
    assert "copy (rsync):" in summary and "pre-sync (rsync):" in summary
    assert "skipped: /etc/chatmail-nocreate (not on the old host)" in summary
    status = run_tool(lab, "invoke", "status", state_dir=state_dir)
    assert f"command log: {log}" in status.stdout and f"report: {report}" in status.stdout


def test_presync_by_hand_then_file_deleted_on_old_is_gone_on_new(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=6, messages=3))
    args = ["--old-host", "old", "--new-host", "new"]
    for _ in range(2):  # repeatable: the second pass finds nothing to send
        first = run_tool(lab, "invoke", "presync", *args, state_dir=tmp_path)
        assert first.returncode == 0, first.stderr
    assert "done, 0 entries updated" in first.stdout
    victim = lab.ssh("old", f"ls -d {MAILDIR}/*/cur/* | head -1").stdout.strip()
    assert lab.ssh("new", f"test -e '{victim}' && echo there").stdout == "there\n"
    lab.ssh("old", f"rm '{victim}'")
    result = run_tool(lab, "invoke", "migrate", *args, "--yes", "--no-wait", state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[3/8] copy-data done" in result.stdout  # relay 1.7: install first, no stages
    assert "CMDEPLOY_STAGES" not in result.stdout
    assert lab.ssh("new", f"test -e '{victim}' || echo gone").stdout == "gone\n"
    assert_migrated(lab, listing(lab, "old"))


def _run_on_terminal(lab: Lab, state_dir: Path, *args: str) -> tuple[int, str]:
    """Run the tool with its output on a pseudo-terminal, as an operator sees it."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "invoke"), *args],
        cwd=REPO,
        env=tool_env(lab, state_dir),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the tool closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    output = b"".join(chunks).decode(errors="replace")
    print(output)
    return proc.wait(timeout=60), output


def test_progress_bar_on_a_terminal_and_compress_gives_the_same_result(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=20, messages=5, new_users="different"))
    before = listing(lab, "old")
    code, output = _run_on_terminal(
        lab,
        tmp_path,
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--compress",
        "--yes",
        "--no-wait",
    )
    assert code == 0, output
    assert "compressing on the wire with zstd" in output
    assert "zstd --quiet -1" in output
    # On a terminal the progress is a bar redrawn in place.
    assert "\r\x1b[K  [" in output and "copy (tar): done" in output
    assert_migrated(lab, before)
    copies = [e for e in journal(tmp_path, lab)["events"] if e.get("event") == "copied"]
    tally = copies[-1]["copies"][0]  # journaled for the report
    assert tally["phase"] == "copy" and tally["entries"] > 100 and tally["bytes_sent"] > 0


def test_presync_then_preflight_counts_what_is_already_on_new(make_lab, tmp_path: Path):
    # About 35 MB of mail; the new host's /home/vmail holds 150 MiB: room for the copy
    # once (plus preflight's margin of 10% and 100 MiB), not for it twice.
    lab = make_lab(seed=SeedParams(accounts=60, messages=20, size=25_000))
    lab.ssh("new", "mount -t tmpfs -o size=150m,mode=755 tmpfs /home/vmail")
    hosts = ["--old-host", "old", "--new-host", "new"]
    assert run_tool(lab, "invoke", "presync", *hosts, state_dir=tmp_path).returncode == 0
    result = run_tool(lab, "invoke", "preflight", *hosts, state_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "free space on new" in x)
    assert line.startswith("PASS") and "already there; enough free" in line, line


def test_owners_restored_by_name_as_the_data_lands_without_walking_the_trees(
    make_lab, tmp_path: Path
):
    # Bare new host: the pre-sync writes old's numeric ids (no vmail there yet, and the
    # lab's padding users give it another id later); install (relay 1.10: before the
    # downtime) makes the users, then copy-data restores every owner by name as it writes.
    lab = make_lab(seed=SeedParams(accounts=8, messages=3, version="1.10.0", new_users="none"))
    lab.ssh(
        "old",
        "setfacl -m u:vmail:rx /var/lib/acme/accounts && "
        "printf 'keep me\\n' > /etc/dkimkeys/README && chown root:root /etc/dkimkeys/README && "
        "useradd --system labonly && touch /var/lib/acme/conf/stray && "
        "chown labonly /var/lib/acme/conf/stray",
    )
    # An ACL naming vmail in the mailbox tree (vmail's id on new differs from old's,
    # and vmail does not exist there yet at the pre-sync).
    mailbox_file = lab.ssh("old", f"ls -d {MAILDIR}/*/cur/* | head -1").stdout.strip()
    lab.ssh("old", f"setfacl -m u:vmail:r,g:vmail:rw {mailbox_file}")
    args = ["migrate", "--old-host", "old", "--new-host", "new", "--presync", "--yes", "--no-wait"]
    # A name new does not know: tar could only write old's number. Named, rolled back.
    failed = run_tool(lab, "invoke", *args, state_dir=tmp_path)
    assert failed.returncode != 0
    assert "owners on old that this host lacks: user labonly" in failed.stderr
    assert "[5/9] fix-ownership FAILED" in failed.stderr and "Rolled back" in failed.stderr
    assert mail_services(lab, "old") == MAIL_ON
    # The pre-sync wrote old's numbers (no vmail on new then): the final sync looked at
    # the whole tree, which gives every file its owner by name, ACLs listed beside it.
    first = failed.stdout[failed.stdout.index("[4/9] copy-data") :]
    assert "users did not exist on new at the pre-sync (owners by number)" in first
    assert "--recursive /home/vmail/mail >" in first and "(as the pre-sync found it)" in first
    lab.ssh("old", "chown root /var/lib/acme/conf/stray")
    before = listing(lab, "old")
    result = run_tool(lab, "invoke", *args, state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "owners and ACLs are restored by name as the data lands" in out
    assert "owners and ACLs restored by name as the data landed" in out
    # Inside the downtime nothing walks the trees beside the copier but the niced
    # progress total of tar's small trees. The rerun's pre-sync found the relay's users
    # on new (the first attempt's install made them): the final sync looks at what
    # changed since, ACLs with it, and nothing lists the mailbox tree beside it.
    copy = out[out.index("[4/9] copy-data") : out.index("[5/9] fix-ownership")]
    assert "%U:%G" not in copy and "getent passwd" not in copy
    assert "--recursive /home/vmail/mail" not in copy
    assert "find /home/vmail/mail" not in copy
    assert "what changed since the pre-sync" in copy and "--acls --dirs --files-from" in copy
    # Verify compared every owner, group and ACL by name; the listing agrees.
    assert "[6/9] verify done" in out
    assert compare_trees(before, listing(lab, "new")) == []
    assert "user:vmail:r-x" in lab.ssh("new", "getfacl -cp /var/lib/acme/accounts").stdout
    acl = lab.ssh("new", f"getfacl -cp {mailbox_file}").stdout
    assert "user:vmail:r--" in acl and "group:vmail:rw-" in acl, acl
    owners = lab.ssh("new", f"stat -c %U:%G /etc/dkimkeys/README {MAILDIR}/*/cur/* | sort -u")
    assert owners.stdout.split() == ["root:root", "vmail:vmail"]
