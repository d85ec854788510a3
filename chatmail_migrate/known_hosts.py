"""Editing the operator's known_hosts for the mail domain, line by line (comments,
other hosts and hashed entries of other names are kept as they are).

During a move the mail domain may lead to either host (DNS caches, and relays up to
1.7 whose ``cmdeploy run`` logs in to the domain itself): OpenSSH accepts a host when
any line naming it holds the key it sees, so the domain gets both verified keys
until the move ends, then only the new host's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import paramiko


def _names_domain(field: str, domain: str) -> bool:
    for name in field.split(","):
        if name.startswith("|1|"):
            salt = name.split("|")[2]
            if paramiko.HostKeys.hash_host(domain, salt) == name:
                return True
        elif name == domain:
            return True
    return False


def _entries(path: Path):
    for line in path.read_text().splitlines():
        parts = line.split()
        yield line, parts


def _names(parts: list[str], domain: str) -> bool:
    return (
        len(parts) >= 3 and not parts[0].startswith(("#", "@")) and _names_domain(parts[0], domain)
    )


def names_domain(path: Path, domain: str) -> bool:
    return path.is_file() and any(_names(parts, domain) for _, parts in _entries(path))


def names_other_key(path: Path, domain: str, key: paramiko.PKey) -> bool:
    """Whether ``path`` names ``domain`` with another key of ``key``'s type.

    A key of another type is no conflict: OpenSSH checks the type it negotiates.
    """
    for _, parts in _entries(path):
        if _names(parts, domain) and parts[1] == key.get_name() and parts[2] != key.get_base64():
            return True
    return False


def names_key(path: Path, domain: str, key: paramiko.PKey) -> bool:
    return path.is_file() and any(
        _names(parts, domain) and parts[2] == key.get_base64() for _, parts in _entries(path)
    )


def backup(path: Path) -> Path:
    """Copy ``path`` aside before the first change, named by the time."""
    target = path.with_name(f"{path.name}.chatmail-migrate-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, target)
    return target


def add_key(path: Path, domain: str, key: paramiko.PKey) -> None:
    """Let ``domain`` be known with ``key`` too, keeping the keys it has."""
    if names_key(path, domain, key):
        return
    lines = [line for line, _ in _entries(path)] if path.is_file() else []
    _write(path, [*lines, f"{domain} {key.get_name()} {key.get_base64()}"])


def _write(path: Path, lines: list[str]) -> None:
    """Replace ``path`` whole (a temporary file of its own, then a rename)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o600)
    os.replace(tmp, path)


def replace_key(path: Path, domain: str, key: paramiko.PKey) -> None:
    """Drop ``domain`` from every entry naming it, then add it with ``key``."""
    out = []
    for line, parts in _entries(path):
        if _names(parts, domain):
            rest = [n for n in parts[0].split(",") if not _names_domain(n, domain)]
            if rest:
                out.append(" ".join([",".join(rest), *parts[1:]]))
            continue
        out.append(line)
    out.append(f"{domain} {key.get_name()} {key.get_base64()}")
    _write(path, out)
