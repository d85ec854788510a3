"""Compare the copied trees on the old and the new host: one listing per host, no
per-file round trips, then a comparison on this machine."""

from __future__ import annotations

import gzip
import io
import json
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator
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
# Pre-order with sorted names: both hosts list in the same order (that of path_key),
# so this machine compares them as two streams, holding neither whole.
def walk(path):
    emit(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for n in sorted(os.listdir(path)):
            walk(os.path.join(path, n))
for root in sorted(sys.argv[2:], key=lambda p: p.split("/")):
    if os.path.lexists(root):
        walk(root)
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


def parse_listing(data: bytes) -> Iterator[dict]:
    """The entries of a gzip-compressed listing, one at a time, in listing order."""
    if not data:
        return
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as lines:
        for line in lines:
            if line.startswith(b"{"):
                yield json.loads(line)


def path_key(path: str) -> list[str]:
    """The order listings come in: a sorted pre-order walk, i.e. by path components."""
    return path.split("/")


def _spool_part(path: str) -> str | None:
    if path.startswith(SPOOL):
        return path[len(SPOOL) :].split("/")[0]
    return None


# Differences kept for the message; all of them are counted.
KEEP_DIFFERENCES = 200


@dataclass
class Report:
    files: int = 0
    bytes: int = 0
    differences: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    kinds: Counter = field(default_factory=Counter)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.kinds

    def add(self, kind: str, message: str) -> None:
        self.kinds[kind] += 1
        if len(self.differences) < KEEP_DIFFERENCES:
            self.differences.append((kind, message))

    def by_kind(self) -> Counter:
        return self.kinds

    def summary(self, first: int = 5) -> str:
        head = f"{self.files} files, {self.bytes / 1e6:.1f} MB compared"
        if self.ok:
            return (
                f"{head}: no differences "
                f"({self.skipped} sockets and Postfix runtime entries not compared)"
            )
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind().items()))
        count = sum(self.kinds.values())
        lines = [f"{head}: {count} difference{'s' if count != 1 else ''} ({kinds})"]
        lines += [f"  {message}" for _, message in self.differences[:first]]
        return "\n".join(lines)


def compare(old: Iterable[dict], new: Iterable[dict], *, owners: bool = True) -> Report:
    """What differs between old's and new's trees (sockets and Postfix runtime skipped).

    Both listings must come in :func:`path_key` order; they are read as streams.
    """
    report = Report()
    keys = ["t", "m", "s", "mt", "l", "h"] + (["u", "g"] if owners else [])
    labels = {"t": "type", "m": "mode", "s": "size", "mt": "mtime", "l": "target",
              "h": "content", "u": "owner", "g": "group"}  # fmt: skip
    queues: dict[str, Counter] = {"old": Counter(), "new": Counter()}

    def skipped(item: dict) -> bool:
        part = _spool_part(item["p"])
        if part in QUEUE_DIRS and item["t"] == "f":
            return True
        return item["t"] == "s" or part in SPOOL_RUNTIME

    def seen(side: str, item: dict) -> bool:
        """Count a queue file (compared by content); whether the entry is compared."""
        part = _spool_part(item["p"])
        if part in QUEUE_DIRS and item["t"] == "f":
            queues[side][(part, *(item.get(k) for k in keys))] += 1
        if side == "old" and skipped(item):
            report.skipped += item["t"] == "s" or part in SPOOL_RUNTIME
        elif side == "old" and item["t"] == "f":
            report.files += 1
            report.bytes += item.get("s", 0)
        return not skipped(item)

    def pair(item: dict, other: dict) -> None:
        path = item["p"]
        for key in keys:
            if key == "mt" and (item["t"] == "d" and _spool_part(path) is not None):
                continue  # queue directories change as Postfix renames their files
            if item.get(key) != other.get(key):
                mine, theirs = item.get(key), other.get(key)
                if key == "m":
                    mine, theirs = oct(mine), oct(theirs or 0)
                report.add(labels[key], f"{path}: {labels[key]} {mine} on old, {theirs} on new")
        if owners and (other.get("u", "").startswith("#") or other.get("g", "").startswith("#")):
            report.add("numeric owner", f"{path}: owned by ids with no name on new")

    old_items, new_items = iter(old), iter(new)
    a, b = next(old_items, None), next(new_items, None)
    while a is not None or b is not None:
        if b is None or (a is not None and path_key(a["p"]) < path_key(b["p"])):
            if seen("old", a):  # type: ignore[arg-type]
                report.add("missing", f"missing on new: {a['p']}")  # type: ignore[index]
            a = next(old_items, None)
        elif a is None or path_key(b["p"]) < path_key(a["p"]):
            if seen("new", b):
                report.add("extra", f"only on new: {b['p']}")
            b = next(new_items, None)
        else:
            compared = seen("old", a)
            seen("new", b)
            if compared:
                pair(a, b)
            a, b = next(old_items, None), next(new_items, None)

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
            report.add(
                "queue", f"Postfix {part} queue: {mine} files on old, {theirs} on new, {same} alike"
            )
    return report
