"""Compare the copied trees on the old and the new host: one listing per host, no
per-file round trips, then a comparison on this machine."""

from __future__ import annotations

import gzip
import json
import shlex
from collections import Counter
from dataclasses import dataclass, field

# Runs on each host with its python3 (a relay has one): one JSON line per entry,
# gzip-compressed (100,000 files make about 20 MB of listing).
LISTING_PY = r"""
import grp, gzip, hashlib, json, os, pwd, stat, sys
checksum = sys.argv[1] == "1"
users, groups = {}, {}
def name(cache, lookup, ident):
    if ident not in cache:
        try:
            cache[ident] = lookup(ident)[0]
        except KeyError:
            cache[ident] = "#%d" % ident
    return cache[ident]
KINDS = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFSOCK: "s",
         stat.S_IFIFO: "p"}
def emit(path):
    st = os.lstat(path)
    kind = KINDS.get(stat.S_IFMT(st.st_mode), "o")
    item = {"p": path, "t": kind, "m": stat.S_IMODE(st.st_mode), "mt": st.st_mtime_ns,
            "u": name(users, pwd.getpwuid, st.st_uid), "g": name(groups, grp.getgrgid, st.st_gid)}
    if kind == "f":
        item["s"] = st.st_size
        if checksum:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            item["h"] = h.hexdigest()
    elif kind == "l":
        item["l"] = os.readlink(path)
    out.write((json.dumps(item, separators=(",", ":")) + "\n").encode())
out = gzip.GzipFile(fileobj=sys.stdout.buffer, mode="wb", compresslevel=1)
for root in sys.argv[2:]:
    if not os.path.lexists(root):
        continue
    for dirpath, dirnames, filenames in os.walk(root):
        emit(dirpath)
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            emit(os.path.join(dirpath, n))
out.close()
"""

SPOOL = "/var/spool/postfix/"
# Postfix renames queue files to match new inode numbers: compared by content, not name.
QUEUE_DIRS = {"active", "bounce", "corrupt", "defer", "deferred", "flush", "hold",
              "incoming", "maildrop", "saved", "trace"}  # fmt: skip
# Postfix recreates these per host (its chroot copies, pid files, sockets, fifos).
SPOOL_RUNTIME = {"etc", "lib", "usr", "dev", "pid", "public", "private"}


def listing_command(paths: list[str], checksum: bool, display: bool = False) -> str:
    """The listing command (``display``: with the script's name instead of its text)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    script = "<verify's listing script>" if display else shlex.quote(LISTING_PY)
    return f"python3 -c {script} {int(checksum)} {quoted}"


def parse_listing(data: bytes) -> dict[str, dict]:
    entries = {}
    for line in gzip.decompress(data).decode().splitlines() if data else []:
        if line.startswith("{"):
            item = json.loads(line)
            entries[item["p"]] = item
    return entries


def _spool_part(path: str) -> str | None:
    if path.startswith(SPOOL):
        return path[len(SPOOL) :].split("/")[0]
    return None


@dataclass
class Report:
    files: int = 0
    bytes: int = 0
    differences: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences

    def by_kind(self) -> Counter:
        return Counter(kind for kind, _ in self.differences)

    def summary(self, first: int = 5) -> str:
        head = f"{self.files} files, {self.bytes / 1e6:.1f} MB compared"
        if self.ok:
            return (
                f"{head}: no differences "
                f"({self.skipped} sockets and Postfix runtime entries not compared)"
            )
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind().items()))
        count = len(self.differences)
        lines = [f"{head}: {count} difference{'s' if count != 1 else ''} ({kinds})"]
        lines += [f"  {message}" for _, message in self.differences[:first]]
        return "\n".join(lines)


def compare(old: dict[str, dict], new: dict[str, dict], *, owners: bool = True) -> Report:
    """What differs between old's and new's trees (sockets and Postfix runtime skipped)."""
    report = Report()
    keys = ["t", "m", "s", "mt", "l", "h"] + (["u", "g"] if owners else [])
    labels = {"t": "type", "m": "mode", "s": "size", "mt": "mtime", "l": "target",
              "h": "content", "u": "owner", "g": "group"}  # fmt: skip
    queues: dict[str, Counter] = {"old": Counter(), "new": Counter()}
    for side, entries in (("old", old), ("new", new)):
        for path, item in entries.items():
            part = _spool_part(path)
            if part in QUEUE_DIRS and item["t"] == "f":
                queues[side][(part, *(item.get(k) for k in keys))] += 1

    def skipped(path: str, item: dict) -> bool:
        part = _spool_part(path)
        return (
            item["t"] == "s" or part in SPOOL_RUNTIME or (part in QUEUE_DIRS and item["t"] == "f")
        )

    for path, item in old.items():
        if skipped(path, item):
            report.skipped += item["t"] == "s" or _spool_part(path) in SPOOL_RUNTIME
            continue
        if item["t"] == "f":
            report.files += 1
            report.bytes += item.get("s", 0)
        other = new.get(path)
        if other is None:
            report.differences.append(("missing", f"missing on new: {path}"))
            continue
        for key in keys:
            if key == "mt" and (item["t"] == "d" and _spool_part(path) is not None):
                continue  # queue directories change as Postfix renames their files
            if item.get(key) != other.get(key):
                mine, theirs = item.get(key), other.get(key)
                if key == "m":
                    mine, theirs = oct(mine), oct(theirs or 0)
                report.differences.append(
                    (labels[key], f"{path}: {labels[key]} {mine} on old, {theirs} on new")
                )
        if owners and (other.get("u", "").startswith("#") or other.get("g", "").startswith("#")):
            report.differences.append(
                ("numeric owner", f"{path}: owned by ids with no name on new")
            )
    for path, item in new.items():
        if path not in old and not skipped(path, item):
            report.differences.append(("extra", f"only on new: {path}"))
    common = queues["old"] & queues["new"]

    def per_queue(counter: Counter) -> Counter:
        totals: Counter = Counter()
        for q, n in counter.items():
            totals[q[0]] += n
        return totals

    parts = sorted({q[0] for q in queues["old"] | queues["new"]})
    old_n, new_n, same_n = per_queue(queues["old"]), per_queue(queues["new"]), per_queue(common)
    for part in parts:
        mine, theirs, same = old_n[part], new_n[part], same_n[part]
        report.files += mine
        if same != mine or mine != theirs:
            report.differences.append(
                (
                    "queue",
                    f"Postfix {part} queue: {mine} files on old, {theirs} on new, {same} alike",
                )
            )
    return report
