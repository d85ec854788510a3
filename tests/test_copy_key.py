"""--copy-key ephemeral: the copy from old to new without the operator's agent on old.

The documented default forwards the operator's agent to old's root for the whole copy.
With ``--copy-key ephemeral`` old authenticates with a key made there for one copy,
authorized on new for old's source address only, for a few hours, and only for the
copy's receiving side; nothing of it stays on either host.
"""

from __future__ import annotations

import datetime
import shlex
import time
from pathlib import Path

import pytest

from chatmail_migrate.hosts import commands, copy_commands
from chatmail_migrate.lab import Lab, SeedParams
from tests.helpers import run_tool, run_tool_with_fault, slow_link, start_tool
from tests.test_migrate import journal

KEY_DIR = "/run/chatmail-migrate-copy-key"
KEY = f"{KEY_DIR}/id_ed25519"
MARK = "chatmail-migrate-copy-key"
EPHEMERAL = ["--copy-key", "ephemeral"]
# Old reaches new over a private network of their own: new sees old's address there,
# not the one the tool reaches old at.
OLD_PRIVATE, NEW_PRIVATE = "192.168.77.1", "192.168.77.2"


def key_lines(lab: Lab) -> list[str]:
    out = lab.ssh("new", "cat /root/.ssh/authorized_keys").stdout
    return [line for line in out.splitlines() if MARK in line]


def assert_nothing_left(lab: Lab) -> None:
    """No key on old, no key line and no receiver on new."""
    assert key_lines(lab) == []
    left_old = lab.ssh("old", f"ls -a {KEY_DIR} 2>&1; ls /root/.ssh", check=False).stdout
    assert "No such file" in left_old and "id_ed25519" not in left_old, left_old
    left_new = lab.ssh("new", f"ls {commands.STATE_DIR} 2>/dev/null", check=False).stdout
    assert "copy-receive" not in left_new, left_new


def fresh_big_file(lab: Lab) -> None:
    """16 MB rsync must send whole (random, unlike what new has): the copy lasts ~16 s."""
    path = f"/home/vmail/mail/{lab.domain}/big"
    lab.ssh("old", f"head -c 16M /dev/urandom > {path} && chown vmail: {path}")


def wait_receiving(lab: Lab) -> None:
    """Until new's receiving side of the copy runs (the key is in use)."""
    pid = copy_commands.RECEIVE_PID_FILE
    for _ in range(120):
        alive = lab.ssh("new", f'[ -s {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null', check=False)
        if alive.returncode == 0:
            return
        time.sleep(0.25)
    pytest.fail("new's receiving side never started")


def ssh_from_old(lab: Lab, address: str, command: str) -> tuple[int, str]:
    """Old's root with the copy key, the way root (or anyone who has it) could use it."""
    ssh = (
        f"ssh -i {KEY} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@{address} {shlex.quote(command)}"
    )
    result = lab.ssh("old", f"{ssh} </dev/null", check=False)
    return result.returncode, result.stdout + result.stderr


def check_during_copy(lab: Lab) -> None:
    """While the copy runs: what the key may do, and that no agent reached old."""
    wait_receiving(lab)
    lines = key_lines(lab)
    assert len(lines) == 1, lines
    options = lines[0].split(" ")[0]
    assert options.startswith(f'restrict,from="{OLD_PRIVATE}",expiry-time="'), options
    assert f'command="{commands.STATE_DIR}/copy-receive"' in options, options
    expiry = options.split('expiry-time="')[1].split('"')[0]
    now = lab.ssh("new", "date +%Y%m%d%H%M").stdout.strip()
    fmt = "%Y%m%d%H%M"
    left = datetime.datetime.strptime(expiry, fmt) - datetime.datetime.strptime(now, fmt)
    assert datetime.timedelta(minutes=30) < left <= datetime.timedelta(hours=3), left
    # The private key: on old only, root's alone.
    modes = lab.ssh("old", f"stat -c '%a %U %n' {KEY_DIR} {KEY}").stdout.split("\n")
    assert modes[0] == f"700 root {KEY_DIR}" and modes[1] == f"600 root {KEY}", modes
    # No agent reached old: no forwarded socket, none in the copy's ssh environment.
    agent = lab.ssh(
        "old",
        "ls -d /tmp/ssh-* 2>/dev/null; for p in $(pgrep -x ssh); do "
        "tr '\\0' '\\n' < /proc/$p/environ | grep -a '^SSH_AUTH_SOCK=.'; done; true",
    ).stdout
    assert agent == "", agent
    # Anything but this copy's receiving side is refused.
    receive_rsync = copy_commands.rsync_receive_command()
    for command in (
        "id",
        "cat /etc/shadow",
        "tar --extract --file=- --directory=/",
        copy_commands.TAR_EXTRACT,
        f"{receive_rsync} --server -logDtpre.iLsfxCIvu . /root/.ssh/",
        f"{receive_rsync} --server -logDtpre.iLsfxCIvu --log-file=/etc/x . "
        f"/home/vmail/mail/{lab.domain}/",
        f"{receive_rsync} --server -logDtpre.iLsfxCIvu . /home/vmail/mail/; id",
    ):
        code, out = ssh_from_old(lab, NEW_PRIVATE, command)
        assert code != 0 and "uid=" not in out and "root:" not in out, (command, out)
        assert "refused" in out, (command, out)
    # From another address the key opens nothing (from=), even in the right hands.
    stolen_key = lab.ssh("old", f"cat {KEY}").stdout
    lab.ssh(
        "spare",
        "mkdir -p -m 700 /root/stolen && umask 077 && cat > /root/stolen/key",
        input=stolen_key,
    )
    stolen = lab.ssh(
        "spare",
        "ssh -i /root/stolen/key -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"root@{lab.address('new')} id </dev/null",
        check=False,
    )
    assert stolen.returncode != 0 and "Permission denied" in stolen.stderr, stolen
    lab.ssh("spare", "rm -rf /root/stolen")


def test_ephemeral_copy_key(make_lab, tmp_path: Path):
    lab = make_lab("cmkey", seed=SeedParams(accounts=4, messages=3))  # 1.7: install copies
    lab.add_address("old", f"{OLD_PRIVATE}/24")
    lab.add_address("new", f"{NEW_PRIVATE}/24")
    slow_link(lab, "new")
    via_private = ["--old-host", "old", "--new-host", "new", "--new-host-from-old", NEW_PRIVATE]
    log = tmp_path / "chatmail-migrate" / f"{lab.domain}.log"

    # A pre-sync: old's key opens only the receiving side, from old's private address.
    fresh_big_file(lab)
    code, output = run_tool_with_fault(
        lab,
        ["presync", *via_private, *EPHEMERAL],
        state_dir=tmp_path,
        when=f"--unit={copy_commands.COPY_UNIT}-",
        fault=lambda proc: check_during_copy(lab),
    )
    assert code == 0, output
    assert "agent forwarded" not in output
    assert "agent forwarded" not in log.read_text()
    assert_nothing_left(lab)

    # A copy that fails (new's receiver dies): the key goes all the same.
    def kill_receiver(proc):
        wait_receiving(lab)
        lab.ssh("new", f"kill -KILL $(cat {copy_commands.RECEIVE_PID_FILE})")

    fresh_big_file(lab)
    code, output = run_tool_with_fault(
        lab,
        ["presync", *via_private, *EPHEMERAL],
        state_dir=tmp_path,
        when=f"--unit={copy_commands.COPY_UNIT}-",
        fault=kill_receiver,
    )
    assert code != 0, output
    assert_nothing_left(lab)

    # The tool killed mid-copy (kill -9) leaves the key, for a few hours at most; the
    # rerun removes it before it makes its own, and leaves nothing either.
    def killed_mid_copy() -> None:
        fresh_big_file(lab)
        proc = start_tool(lab, "invoke", "presync", *via_private, *EPHEMERAL, state_dir=tmp_path)
        wait_receiving(lab)
        proc.kill()
        proc.communicate(timeout=60)
        assert len(key_lines(lab)) == 1

    killed_mid_copy()
    fresh_big_file(lab)
    rerun = run_tool(lab, "invoke", "presync", *via_private, *EPHEMERAL, state_dir=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "removed the copy key an interrupted run left" in rerun.stdout
    assert_nothing_left(lab)

    # ... and so does a rollback.
    killed_mid_copy()
    rollback = run_tool(
        lab, "invoke", "rollback", "--old-host", "old", "--new-host", "new", state_dir=tmp_path
    )
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert "removed the copy key an interrupted run left" in rollback.stdout
    assert_nothing_left(lab)

    # The whole move, old reaching new over IPv6: install (relay 1.7 carries the
    # secrets first), copy-data (rsync after the pre-sync, tar for the rest).
    result = run_tool(
        lab,
        "invoke",
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--new-host-from-old",
        lab.address6("new"),
        *EPHEMERAL,
        "--yes",
        "--no-wait",
        state_dir=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert journal(tmp_path, lab)["steps"]["enable-mail"]
    assert "agent forwarded" not in log.read_text()
    assert_nothing_left(lab)
    logins = lab.ssh("new", "journalctl -q -o cat _COMM=sshd | grep 'Accepted publickey'").stdout
    assert f"from {lab.address6('old')} " in logins, logins
