"""Editing the operator's known_hosts for the mail domain, line by line (comments,
other hosts and hashed entries of other names are kept as they are)."""

from __future__ import annotations

import os
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


def names_other_key(path: Path, domain: str, key: paramiko.PKey) -> bool:
    """Whether ``path`` names ``domain`` with a key other than ``key``."""
    for _, parts in _entries(path):
        if len(parts) >= 3 and not parts[0].startswith("#") and _names_domain(parts[0], domain):
            if parts[2] != key.get_base64():
                return True
    return False


def replace_key(path: Path, domain: str, key: paramiko.PKey) -> None:
    """Drop ``domain`` from every entry naming it, then add it with ``key``."""
    out = []
    for line, parts in _entries(path):
        if len(parts) >= 3 and not parts[0].startswith("#") and _names_domain(parts[0], domain):
            rest = [n for n in parts[0].split(",") if not _names_domain(n, domain)]
            if rest:
                out.append(" ".join([",".join(rest), *parts[1:]]))
            continue
        out.append(line)
    out.append(f"{domain} {key.get_name()} {key.get_base64()}")
    tmp = path.with_name(path.name + ".chatmail-migrate")
    tmp.write_text("\n".join(out) + "\n")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    tmp.replace(path)
