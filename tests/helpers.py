"""What the lab tests share: running the tool as an operator would, and comparing trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from chatmail_migrate.lab import Lab
from chatmail_migrate.relay import DEFAULT_COPY_PATHS

REPO = Path(__file__).resolve().parent.parent
# The project's environment: every program of ours a test runs comes from here, never
# from PATH (conftest.py makes a PATH lookup of them fail loudly).
BIN = Path(sys.executable).parent
OUR_PROGRAMS = ("invoke", "fab", "chatmail-migrate", "chatmail-lab-cmdeploy-standin")
# Queue directories: postsuper renames their files to match new inode numbers,
# so they are compared by content, not by name.
QUEUE_DIRS = (
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "maildrop",
    "saved",
    "trace",
)
# Per-host files Postfix regenerates in its chroot at start, and its runtime state.
SPOOL_RUNTIME = ("etc", "lib", "usr", "dev", "pid", "public", "private")


def lab_name(base: str) -> str:
    """A lab name of this test process: pytest-xdist workers run labs side by side."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    # Two test runs on one machine (two developers' sessions) keep apart by offset.
    offset = os.environ.get("CHATMAIL_TEST_LAB_OFFSET")
    if offset:
        worker = str(int(worker or 0) + int(offset))
    name = f"{base}{worker}"
    assert len(name) <= 8, f"lab name {name} is too long"
    return name


def tool_env(lab: Lab, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **lab.env(), "XDG_STATE_HOME": str(state_dir), **extra}
    env.pop("CHATMAIL_LAB_CMDEPLOY_FAIL", None)
    # Tests deploy at the stand-in's own speed, whatever a benchmark shell exported.
    env.pop("CHATMAIL_LAB_CMDEPLOY_SECONDS", None)
    env.update(extra)
    return env


def run_tool(
    lab: Lab, tool: str, *args: str, state_dir: Path, cwd: Path = REPO, **extra: str
) -> subprocess.CompletedProcess:
    """Run ``invoke``/``fab``/``chatmail-migrate`` as an operator would, from ``cwd``."""
    result = subprocess.run(
        [str(BIN / tool), *args],
        cwd=cwd,
        env=tool_env(lab, state_dir, **extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(f"$ {tool} {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def start_tool(lab: Lab, tool: str, *args: str, state_dir: Path, **extra: str) -> subprocess.Popen:
    """Start the tool in the background, its output readable line by line."""
    return subprocess.Popen(
        [str(BIN / tool), *args],
        cwd=REPO,
        env=tool_env(lab, state_dir, **extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_tool_with_fault(
    lab: Lab, args: list[str], *, state_dir: Path, when: str, fault, **extra: str
) -> tuple[int, str]:
    """Run the tool; as soon as a line containing ``when`` appears, call ``fault(proc)``."""
    proc = start_tool(lab, "invoke", *args, state_dir=state_dir, **extra)
    assert proc.stdout is not None
    lines, fired = [], False
    for line in proc.stdout:
        lines.append(line)
        if not fired and when in line:
            fired = True
            fault(proc)
    code = proc.wait(timeout=600)
    output = "".join(lines)
    print(f"$ invoke {' '.join(args)} -> {code}\n{output}")
    assert fired, f"never saw {when!r}"
    return code, output


def slow_link(lab: Lab, host: str, rate: str = "8mbit") -> None:
    """Throttle traffic into a lab host (its bridge port), so a copy lasts long enough."""
    subprocess.run(
        [
            "tc",
            "qdisc",
            "add",
            "dev",
            lab.hosts[host].veth,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "64kb",
            "latency",
            "500ms",
        ],
        check=True,
    )


def listing(lab: Lab, host: str, paths=DEFAULT_COPY_PATHS) -> dict:
    script = (Path(__file__).parent / "tree_listing.py").read_text()
    out = lab.ssh(host, "python3 - " + " ".join(paths), input=script).stdout
    entries, acls = {}, ""
    for line in out.splitlines():
        item = json.loads(line)
        if "acls" in item:
            acls = item["acls"]
        else:
            entries[item["path"]] = item
    return {"entries": entries, "acls": acls}


def _spool_part(path: str) -> str | None:
    parts = path.split("/")
    if path.startswith("/var/spool/postfix/") and len(parts) > 4:
        return parts[4]
    return None


def compare_trees(old: dict, new: dict) -> list[str]:
    """Differences between the copied trees, [] when new holds exactly old's data."""
    diffs = []
    queue_old, queue_new = [], []
    for entries, queue in (
        (old["entries"], queue_old),
        (new["entries"], queue_new),
    ):
        for path, item in entries.items():
            part = _spool_part(path)
            if part in QUEUE_DIRS and item["type"] == "file":
                queue.append((part, item["sha256"], item["mode"], item["owner"], item["group"]))
    for path, item in old["entries"].items():
        part = _spool_part(path)
        if part in SPOOL_RUNTIME or item["type"] == "socket":
            continue
        if part in QUEUE_DIRS and item["type"] == "file":
            continue
        other = new["entries"].get(path)
        if other is None:
            diffs.append(f"missing on new: {path}")
            continue
        for key in (
            "type",
            "mode",
            "owner",
            "group",
            "mtime_ns",
            "size",
            "sha256",
            "target",
            "xattrs",
            "nlink",
        ):
            if item.get(key) != other.get(key):
                diffs.append(f"{path}: {key} {item.get(key)!r} on old, {other.get(key)!r} on new")
    for path, item in new["entries"].items():
        part = _spool_part(path)
        if path not in old["entries"] and part not in SPOOL_RUNTIME and item["type"] != "socket":
            if not (part in QUEUE_DIRS and item["type"] == "file"):
                diffs.append(f"only on new: {path}")
    if sorted(queue_old) != sorted(queue_new):
        diffs.append(f"mail queue differs: {sorted(queue_old)} on old, {sorted(queue_new)} on new")
    if old["acls"] != new["acls"]:
        diffs.append(f"ACLs differ:\n{old['acls']}\n---\n{new['acls']}")
    return diffs


def assert_old_untouched(before: dict, after: dict) -> None:
    """Old's copied trees hold the same bytes, modes and owners as at the start.

    Postfix's runtime files (pid, chroot copies, sockets) and the queue files' names
    and mtimes change while it runs, so the queue is compared by content.
    """

    def content(listing: dict) -> dict:
        result = {}
        for path, item in listing["entries"].items():
            part = _spool_part(path)
            if part in SPOOL_RUNTIME or item["type"] == "socket":
                continue
            if part in QUEUE_DIRS:
                if item["type"] == "file":
                    result.setdefault(("queue", part), []).append(item["sha256"])
                continue
            keys = ("type", "mode", "owner", "group", "size", "sha256", "target", "xattrs")
            result[path] = {k: item.get(k) for k in keys}
            if not path.startswith("/var/spool/"):
                result[path]["mtime_ns"] = item.get("mtime_ns")
        return {k: sorted(v) if isinstance(v, list) else v for k, v in result.items()}

    assert content(before) == content(after)
    assert before["acls"] == after["acls"]


def mail_services(lab: Lab, host: str) -> dict[str, str]:
    out = lab.ssh(
        host,
        "for s in postfix dovecot; do echo $s $(systemctl is-active $s) $(systemctl is-enabled $s);"
        " done",
        check=False,
    ).stdout
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


def domain_keys(known_hosts: Path, domain: str) -> list[str]:
    """The keys (base64) a known_hosts file holds for ``domain``, in file order."""
    return [
        line.split()[2]
        for line in known_hosts.read_text().splitlines()
        if line.strip() and domain in line.split()[0].split(",")
    ]


def host_key(lab: Lab, host: str) -> str:
    """The lab host's ed25519 host key (base64)."""
    return lab.ssh(host, "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
