"""What another user on a host, or on the operator's machine, can reach of a migration.

Each test plays that user against the lab's real hosts, with the tool run as an
operator would run it.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

from chatmail_migrate.hosts import commands
from chatmail_migrate.lab import Lab, SeedParams
from tests.helpers import run_tool, start_tool

HOSTS = ["--old-host", "old", "--new-host", "new"]
ATTACKER_LOG = "/var/tmp/attacker.log"
# Runs as nobody on old. Whatever root's copy creates in /tmp, it tries at once to
# put a listening unix socket where that name says ssh's control socket will be
# (NAME.ssh, and NAME/ssh for a directory), and logs every connection it gets.
# inotify wakes it within microseconds of root's mktemp, long before rsync has
# started ssh; a scan of /tmp every millisecond is its fallback.
ATTACKER = r"""
import ctypes, os, select, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
ino = libc.inotify_init1(os.O_NONBLOCK)
libc.inotify_add_watch(ino, b"/tmp", 0x100 | 0x80)  # IN_CREATE | IN_MOVED_TO
log = open("/var/tmp/attacker.log", "a", buffering=1)
log.write("watching\n")
seen, listeners = set(os.listdir("/tmp")), {}
while True:
    ready, _, _ = select.select([ino, *listeners], [], [], 0.001)
    if ino in ready:
        os.read(ino, 65536)
    for s in [r for r in ready if r in listeners]:
        conn, _ = s.accept()
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        log.write(f"connection on {listeners[s]} from uid {uid}\n")
        conn.close()
    names = set(os.listdir("/tmp"))
    for name in sorted(names - seen):
        if not name.startswith("tmp.") or name.endswith(".ssh"):
            continue
        for path in (f"/tmp/{name}.ssh", f"/tmp/{name}/ssh"):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.bind(path)
                s.listen(8)
                listeners[s] = path
                log.write(f"bound {path}\n")
            except OSError as e:
                s.close()
                log.write(f"cannot bind {path}: {e.strerror}\n")
    seen = names
"""


def _tmp_of_root(lab: Lab) -> set[str]:
    out = lab.ssh("old", "find /tmp -mindepth 1 -maxdepth 1 -user root -printf '%f\\n'").stdout
    return set(out.split())


def test_copy_control_socket_cannot_be_taken_by_another_user_on_old(make_lab, tmp_path: Path):
    lab = make_lab("cmsec", seed=SeedParams(accounts=4, messages=2))
    lab.ssh("old", "cat > /usr/local/lib/attacker.py", input=ATTACKER)
    lab.ssh(
        "old",
        "chmod 644 /usr/local/lib/attacker.py && systemd-run --quiet --unit=attacker "
        "-p User=nobody -p Group=nogroup python3 /usr/local/lib/attacker.py && "
        f"for i in $(seq 100); do grep -qs watching {ATTACKER_LOG} && break; sleep 0.1; done",
    )
    before = _tmp_of_root(lab)

    done = run_tool(lab, "invoke", "presync", *HOSTS, state_dir=tmp_path)
    copied = run_tool(lab, "invoke", "copy-data", *HOSTS, state_dir=tmp_path)
    # A copy that fails for another reason: new's sshd refuses old's root, so no
    # shared connection ever comes up, and the script's exit trap still cleans up.
    olds = lab.ssh("old", "ip -o address show scope global | awk '{print $4}' | cut -d/ -f1")
    deny = " ".join(f"root@{shlex.quote(a)}" for a in olds.stdout.split())
    lab.ssh(
        "new",
        f"echo 'DenyUsers {deny}' > /etc/ssh/sshd_config.d/deny-old.conf && systemctl reload ssh",
    )
    refused = run_tool(lab, "invoke", "presync", *HOSTS, state_dir=tmp_path)

    attacker = lab.ssh("old", f"cat {ATTACKER_LOG}").stdout
    print(attacker)
    left = _tmp_of_root(lab) - before
    assert "bound" in attacker or "cannot bind" in attacker, "the attacker saw no copy"
    assert "connection on" not in attacker
    assert done.returncode == 0, done.stderr
    assert copied.returncode == 0, copied.stderr
    assert refused.returncode != 0 and "presync FAILED" in refused.stderr
    assert not left, f"left in old's /tmp: {sorted(left)}"
    assert "No such file or directory" not in done.stderr + copied.stderr


def _modes(lab: Lab, host: str, top: str) -> dict[str, str]:
    """``type mode`` (find's %y and %m) of ``top`` and everything under it."""
    out = lab.ssh(host, f"find {top} -printf '%y %m %p\\n'").stdout
    return {line.split(" ", 2)[2]: line.rsplit(" ", 1)[0] for line in out.splitlines()}


PRIVATE = ("d 700", "f 600")


def test_journal_log_report_and_lists_on_new_are_the_operators_alone(make_lab, tmp_path: Path):
    lab = make_lab("cmsec", seed=SeedParams(accounts=4, messages=2))
    state = tmp_path / "state"
    args = ["migrate", *HOSTS, "--yes", "--no-wait"]
    result = run_tool(lab, "invoke", *args, state_dir=state)
    assert result.returncode == 0, result.stderr
    journal_dir = state / "chatmail-migrate"
    domain = lab.domain
    names = {p.name for p in journal_dir.iterdir()}
    assert {f"{domain}.json", f"{domain}.log", f"{domain}-report.txt"} <= names, names
    local = {
        str(p): f"{'d' if p.is_dir() else 'f'} {p.stat().st_mode & 0o777:o}"
        for p in [journal_dir, *journal_dir.rglob("*")]
    }
    on_new = _modes(lab, "new", "/var/lib/chatmail-migrate")
    assert f"{commands.META_DIR}/names" in on_new or f"{commands.META_DIR}/owners" in on_new
    print(local, on_new)
    wrong = [f"{p}: {m}" for p, m in local.items() if m not in PRIVATE]
    wrong += [f"new:{p}: {m}" for p, m in on_new.items() if m not in PRIVATE]
    assert not wrong, wrong


# Root's bash on old, started by sshd, reads this first (Debian's bash sources
# ~/.bashrc for ssh commands): the lock request alone answers late.
SLOW_LOCK_ANSWER = """case "$BASH_EXECUTION_STRING" in
*chatmail-migrate-lock*) touch /run/lock-asked; sleep 8;;
esac
"""


def test_interrupt_while_taking_a_host_lock_leaves_nothing_held(make_lab, tmp_path: Path):
    lab = make_lab("cmsec", seed=SeedParams(accounts=2, messages=1))
    lab.ssh(
        "old",
        "cat - /root/.bashrc > /root/.bashrc.new && mv /root/.bashrc.new /root/.bashrc",
        input=SLOW_LOCK_ANSWER,
    )
    proc = start_tool(lab, "invoke", "presync", *HOSTS, state_dir=tmp_path)
    lab.ssh("old", "for i in $(seq 600); do [ -e /run/lock-asked ] && break; sleep 0.1; done")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    print(output)
    # The pattern's brackets keep this very command out of what it finds.
    left = lab.ssh("old", "pgrep -af 'chatmail-migrate-loc[k]'", check=False).stdout
    assert proc.returncode == 130
    assert "[presync] presync" not in output, "interrupted before the step began"
    assert left == "", f"still on old: {left}"
    assert "the lock on the old host old was not kept: nothing held there" in output
    again = run_tool(lab, "invoke", "presync", *HOSTS, state_dir=tmp_path)
    assert again.returncode == 0, again.stderr
