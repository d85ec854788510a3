"""The cached Debian 12 root file system every lab host boots from.

Built once per machine with debootstrap from the machine's own apt mirror, then
shared read-only: each host mounts it as the lower layer of its own overlay.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"

# What a relay host needs for the tool's real path, plus what makes it a
# bootable, reachable machine.
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "openssh-client",
    "tar",
    "rsync",
    "zstd",
    "acl",
    "procps",
    "iproute2",
    "python3",
    "openssl",
    "postfix",
    "dovecot-imapd",
    "dovecot-lmtpd",
    "opendkim",
    "opendkim-tools",
    # spare serves the lab's zone (two instances: ns1, ns2): static (NSD), or taking
    # updates, a primary and its secondary (Knot, knot.py)
    "nsd",
    "knot",
]

# Bump when the post-build customisation below changes, so old caches are not reused.
LAYOUT_VERSION = "2"

DEFAULT_CACHE_DIR = Path("/var/cache/chatmail-migrate")


class LabError(Exception):
    """A lab operation failed; the message says what and how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get("CHATMAIL_LAB_CACHE", DEFAULT_CACHE_DIR))


def rootfs_path() -> Path:
    key = hashlib.sha256(" ".join([SUITE, LAYOUT_VERSION, *PACKAGES]).encode()).hexdigest()[:12]
    return cache_dir() / f"rootfs-{SUITE}-{key}"


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's own apt uses (never a hard-coded one)."""
    override = os.environ.get("CHATMAIL_LAB_MIRROR")
    if override:
        return override
    texts = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        texts.append(path.read_text())
    uris = []
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(
                (m.group(1).lower(), m.group(2).strip())
                for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
            )
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in fields.get("types", "").split():
                uris.extend(fields.get("uris", "").split())
    for path in [
        sources_dir / "sources.list",
        *sorted((sources_dir / "sources.list.d").glob("*.list")),
    ]:
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["deb"]:
                    uris.extend(p for p in parts[1:] if "://" in p)
    for uri in uris:
        if "debian" in uri and "security" not in uri:
            return uri
    raise LabError(
        "no Debian mirror found in this machine's apt sources; "
        "set CHATMAIL_LAB_MIRROR to the mirror URI to use"
    )


def ensure_rootfs(log=print) -> Path:
    """Return the cached root file system, building it first if needed."""
    target = rootfs_path()
    if (target / "etc/chatmail-lab-rootfs").exists():
        return target
    for tool in ("debootstrap", "systemd-nspawn"):
        if not shutil.which(tool):
            raise LabError(
                f"{tool} is not installed; run: apt-get install debootstrap systemd-container"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "etc/chatmail-lab-rootfs").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        mirror = debian_mirror()
        log(f"lab: building the Debian {SUITE} root file system in {target} (once per machine)")
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(building),
            mirror,
        ]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-15:])
            raise LabError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
        _customise(building)
        building.rename(target)
    return target


def _customise(root: Path) -> None:
    """Make the generic system fit to boot many times as different lab hosts."""
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    # Nobody logs in on the console; a getty there only costs a process.
    for unit in (
        "console-getty.service",
        "getty@.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
    ):
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Only spare serves DNS, with its own instances (nameserver.py).
    for unit in ("nsd.service", "knot.service"):
        (root / "etc/systemd/system/multi-user.target.wants" / unit).unlink(missing_ok=True)
    (root / "etc/chatmail-lab-rootfs").write_text(
        "Lab host root file system built by chatmail-migrate's lab. Not a real relay.\n"
    )
