"""Reading and editing the operator's known_hosts as OpenSSH keeps it, line by line
(comments, other hosts, hashed names, ``@cert-authority`` and ``@revoked`` lines are
kept as they are; new names are hashed under ``HashKnownHosts yes``; a symlinked file
is edited at its target, its previous text kept in ``.old`` as ``ssh-keygen -R`` does).

During a move the mail domain may lead to either host (DNS caches, and relays up to
1.7 whose ``cmdeploy run`` logs in to the domain itself): OpenSSH accepts a host when
any line naming it holds the key it sees, so the domain gets both hosts' verified
keys until the move ends, then only the new host's. Every key type a host serves:
OpenSSH asks for the types known_hosts holds for the name, and refuses a key of a
type it knows when no line of that type holds it.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
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


def _matches(field: str, name: str) -> bool:
    """OpenSSH's host patterns: hashed names, ``*``/``?`` wildcards, ``!`` negation."""
    hit = False
    for pattern in field.split(","):
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        if pattern.startswith("|1|"):  # OpenSSH hashes the name in lower case
            found = _names_domain(pattern, name.lower())
        else:
            found = fnmatch.fnmatchcase(name.lower(), pattern.lower().replace("[", "[[]"))
        if found and negated:
            return False
        hit = hit or found
    return hit


def _lines(paths: Iterable[Path]):
    for path in paths:
        if path.is_file():
            for _, parts in _entries(path):
                if len(parts) >= 3 and not parts[0].startswith("#"):
                    yield path, parts


def revoked(paths: Iterable[Path]) -> set[Key]:
    """Every key a ``@revoked`` line holds (OpenSSH never accepts it for those hosts)."""
    return {(p[2], p[3]) for _, p in _lines(paths) if p[0] == "@revoked" and len(p) >= 4}


def revoked_for(paths: Iterable[Path], name: str, key: Key) -> Path | None:
    """The file whose ``@revoked`` line matching ``name`` holds ``key``, if any."""
    for path, p in _lines(paths):
        if p[0] == "@revoked" and len(p) >= 4 and _matches(p[1], name) and (p[2], p[3]) == key:
            return path
    return None


def has_cert_authority(paths: Iterable[Path], names: Iterable[str]) -> bool:
    """Whether a ``@cert-authority`` line is meant for one of ``names``."""
    lines = [p for _, p in _lines(paths) if p[0] == "@cert-authority" and len(p) >= 4]
    return any(_matches(p[1], name) for p in lines for name in names)


def keys_for(paths: Iterable[Path], name: str) -> list[Key]:
    """The keys plain lines accept for ``name`` (none a ``@revoked`` line holds)."""
    paths = list(paths)
    bad = revoked(paths)
    found = [
        (p[1], p[2]) for _, p in _lines(paths) if not p[0].startswith("@") and _matches(p[0], name)
    ]
    return [k for k in dict.fromkeys(found) if k not in bad]


def without_markers(path: Path, dropped: set[Key]) -> str:
    """The file's plain lines, without those of ``dropped`` keys: what paramiko can
    load (it raises on ``@`` lines, and would accept a revoked key a plain line holds)."""
    return "".join(
        line + "\n"
        for line, parts in _entries(path)
        if not (parts and parts[0].startswith("@"))
        and not (len(parts) >= 3 and (parts[1], parts[2]) in dropped)
    )


def hashed_name(name: str) -> str:
    return paramiko.HostKeys.hash_host(name)


def line_for(name: str, key: Key, hashed: bool) -> str:
    return f"{hashed_name(name) if hashed else name} {key[0]} {key[1]}"


def append(path: Path, name: str, key: Key, hashed: bool) -> None:
    """Add one line at the end, as OpenSSH records a key (a symlink's target)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line_for(name, key, hashed) + "\n")


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


def add_keys(path: Path, domain: str, keys: list[Key], hashed: bool = False) -> None:
    """Let ``domain`` be known with each of ``keys`` too, keeping the keys it has."""
    lines = [line for line, _ in _entries(path)] if path.is_file() else []
    known = {(p[1], p[2]) for _, p in _entries(path) if _names(p, domain)} if lines else set()
    missing = [k for k in keys if k not in known]
    if missing:
        _write(path, [*lines, *(line_for(domain, k, hashed) for k in missing)])


def _write(path: Path, lines: list[str]) -> None:
    """Replace the file whole (a temporary file of its own, then a rename), at a
    symlink's target, which stays a symlink; the previous text is kept in ``.old``
    beside the file, as ``ssh-keygen -R`` keeps it."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if target.is_file():
        shutil.copy2(target, target.with_name(target.name + ".old"))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o600)
    os.replace(tmp, target)


def replace_keys(path: Path, domain: str, keys: list[Key], hashed: bool = False) -> None:
    """Drop ``domain`` from every entry naming it, then add it with ``keys``."""
    out = []
    for line, parts in _entries(path):
        if _names(parts, domain):
            rest = [n for n in parts[0].split(",") if not _names_domain(n, domain)]
            if rest:
                out.append(" ".join([",".join(rest), *parts[1:]]))
            continue
        out.append(line)
    _write(path, [*out, *(line_for(domain, k, hashed) for k in keys)])
