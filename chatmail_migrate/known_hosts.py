"""Editing the operator's known_hosts for the mail domain, line by line (comments,
other hosts and hashed entries of other names are kept as they are).

During a move the mail domain may lead to either host (DNS caches, and relays up to
1.7 whose ``cmdeploy run`` logs in to the domain itself): OpenSSH accepts a host when
any line naming it holds the key it sees, so the domain gets both hosts' verified
keys until the move ends, then only the new host's. Every key type a host serves:
OpenSSH asks for the types known_hosts holds for the name, and refuses a key of a
type it knows when no line of that type holds it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import paramiko

# A host key as a known_hosts line holds it: (type, base64).
Key = tuple[str, str]


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


def names_other_key(path: Path, domain: str, keys: list[Key]) -> bool:
    """Whether ``path`` names ``domain`` with a key not among ``keys``."""
    return any(
        _names(parts, domain) and (parts[1], parts[2]) not in keys for _, parts in _entries(path)
    )


def names_keys(path: Path, domain: str, keys: list[Key]) -> bool:
    """Whether ``path`` names ``domain`` with each of ``keys``."""
    known = {(p[1], p[2]) for _, p in _entries(path) if _names(p, domain)} if path.is_file() else ()
    return all(key in known for key in keys)


def backup(path: Path) -> Path:
    """Copy ``path`` aside before the first change, named by the time."""
    target = path.with_name(f"{path.name}.chatmail-migrate-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, target)
    return target


def add_keys(path: Path, domain: str, keys: list[Key]) -> None:
    """Let ``domain`` be known with each of ``keys`` too, keeping the keys it has."""
    lines = [line for line, _ in _entries(path)] if path.is_file() else []
    known = {(p[1], p[2]) for _, p in _entries(path) if _names(p, domain)} if lines else set()
    missing = [k for k in keys if k not in known]
    if missing:
        _write(path, [*lines, *(f"{domain} {t} {k}" for t, k in missing)])


def _write(path: Path, lines: list[str]) -> None:
    """Replace ``path`` whole (a temporary file of its own, then a rename)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o600)
    os.replace(tmp, path)


def replace_keys(path: Path, domain: str, keys: list[Key]) -> None:
    """Drop ``domain`` from every entry naming it, then add it with ``keys``."""
    out = []
    for line, parts in _entries(path):
        if _names(parts, domain):
            rest = [n for n in parts[0].split(",") if not _names_domain(n, domain)]
            if rest:
                out.append(" ".join([",".join(rest), *parts[1:]]))
            continue
        out.append(line)
    _write(path, [*out, *(f"{domain} {t} {k}" for t, k in keys)])
