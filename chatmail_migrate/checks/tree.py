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
from typing import BinaryIO

from chatmail_migrate.onhost import script

# Runs on each host with its python3 (a relay has one): onhost/listing.py.
LISTING_PY = script("listing")


SPOOL = "/var/spool/postfix/"


# Postfix renames queue files to match new inode numbers: compared by content, not name.
QUEUE_DIRS = {
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
}


# Postfix recreates these per host (its chroot copies, pid files, sockets, fifos).
SPOOL_RUNTIME = {"etc", "lib", "usr", "dev", "pid", "public", "private"}


def listing_command(
    paths: list[str], checksum: bool, display: bool = False, *, ctimes: bool = False
) -> str:
    """The listing command (``display``: with the script's name instead of its text).

    ``paths`` ``["-"]``: the entries come from the command's stdin (:func:`specs`).
    ``ctimes``: each entry's ctime too, for :func:`compare`'s ``changed_since``.
    """
    quoted = " ".join(shlex.quote(p) for p in paths)
    script = "<verify's listing script>" if display else shlex.quote(LISTING_PY)
    return f"python3 -c {script} {int(checksum)}{'c' if ctimes else ''} {quoted}"


def specs(trees: list[str], raw: bytes = b"") -> bytes:
    """What a listing of ``["-"]`` reads: ``trees`` whole, then ``raw`` (specs as the
    walk of what changed wrote them: "D" a directory and its entries, "E" an entry)."""
    return b"".join(b"R" + t.encode() + b"\0" for t in trees) + raw


def parse_listing(data: bytes | BinaryIO) -> Iterator[dict]:
    """The entries of a gzip-compressed listing (bytes or a file), one at a time, in
    listing order."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    if not source.read(1):
        return
    source.seek(0)
    with gzip.GzipFile(fileobj=source) as lines:
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


# What compare() compares, its label in messages, in the summary's order.
LABELS = {
    "t": "type",
    "m": "mode",
    "u": "owner",
    "g": "group",
    "s": "size",
    "mt": "mtime",
    "l": "symlink target",
    "a": "ACL",
    "x": "xattrs",
    "hl": "hard links",
    "h": "content",
}


# Always in a listing (when present at all); content ("h") only with --checksum.
METADATA = ["t", "m", "u", "g", "s", "mt", "l", "a", "x", "hl"]


# In the summary: what each key stands for, in the plural.
COMPARED = {"l": "symlink targets", "a": "ACLs", "h": "content (sha256)"}


@dataclass
class Report:
    files: int = 0
    bytes: int = 0
    differences: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    kinds: Counter = field(default_factory=Counter)
    skipped: int = 0
    # Files (counted in ``files``) whose content old's listing hashed.
    hashed: int = 0
    keys: list[str] = field(default_factory=lambda: list(METADATA))
    # Entries that differ but changed on their host after compare()'s changed_since.
    excused: int = 0
    # Whether Postfix's queue files were compared (matched without their names).
    queues: bool = True

    @property
    def ok(self) -> bool:
        return not self.kinds

    def add(self, kind: str, message: str) -> None:
        self.kinds[kind] += 1
        if len(self.differences) < KEEP_DIFFERENCES:
            self.differences.append((kind, message))

    def by_kind(self) -> Counter:
        return self.kinds

    def compared(self) -> str:
        """What was compared, and what was not, in words."""
        what = ", ".join(COMPARED.get(k, LABELS[k]) for k in self.keys if k != "h")
        if self.hashed == self.files:
            return f"{what}, {COMPARED['h']}"
        if self.hashed:
            left = self.files - self.hashed
            return f"{what}, content (sha256) of {self.hashed}; content of {left} not compared"
        return f"{what}; content not compared: --checksum compares it"

    def summary(self, first: int = 5) -> str:
        head = f"{self.files} files, {self.bytes / 1e6:.1f} MB compared ({self.compared()})"
        if self.excused:
            head += f"; {self.excused} changed since on their host, as they may"
        if not self.queues:
            head += "; Postfix queue files not compared (mail flows through them on new)"
        if self.ok:
            queue_files = "queue files matched without their names" if self.queues else ""
            return (
                f"{head}: no differences ({self.skipped} sockets and Postfix runtime "
                f"entries not compared{'; ' if queue_files else ''}{queue_files})"
            )
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind().items()))
        count = sum(self.kinds.values())
        lines = [f"{head}: {count} difference{'s' if count != 1 else ''} ({kinds})"]
        lines += [f"  {message}" for _, message in self.differences[:first]]
        return "\n".join(lines)


def _shown(key: str, value) -> str:
    if value is None:
        return "(none)"
    if key == "m":
        return oct(value)
    if key == "x":
        return ",".join(f"{n}={digest}" for n, digest in sorted(value.items()))
    if key == "hl":
        return f"one file with {value}"
    return str(value)


class Changed:
    """Whether an entry changed on its host at or after that host's threshold (ns, its
    own clock; None: nothing may differ there): from the entry's ctime ("ct"), or for
    an entry the host lacks, its nearest directory there (a deletion or a rename in
    a directory moves that directory's ctime). Fed entries in listing order."""

    def __init__(
        self, thresholds: tuple[int | None, int | None], trees: tuple[str, ...] | None = None
    ):
        self.thresholds = {"old": thresholds[0], "new": thresholds[1]}
        # Where the thresholds hold (None: everywhere); elsewhere nothing may differ.
        self.trees = trees
        # Per host, the directories above the last entry seen: (path, ctime), outermost first.
        self.above: dict[str, list[tuple[str, int]]] = {"old": [], "new": []}
        # Per host, directories on that side only and excused (made or renamed since):
        # their whole subtree is, though a rename leaves the children's ctimes alone.
        self.roots: dict[str, list[str]] = {"old": [], "new": []}

    def seen(self, side: str, item: dict) -> None:
        chain = self.above[side]
        while chain and not item["p"].startswith(chain[-1][0] + "/"):
            chain.pop()
        if item["t"] == "d":
            chain.append((item["p"], item.get("ct", 0)))

    def flowing(self, path: str) -> bool:
        return self.trees is None or any(
            path == tree or path.startswith(tree.rstrip("/") + "/") for tree in self.trees
        )

    def entry(self, side: str, item: dict | None) -> bool:
        limit = self.thresholds[side]
        return (
            item is not None
            and limit is not None
            and item.get("ct", 0) >= limit
            and self.flowing(item["p"])
        )

    def alone(self, side: str, item: dict) -> bool:
        """Whether ``item``, on ``side`` only, may be: it changed there since, the other
        side's directory above it changed, or it lies under such a directory."""
        other = "new" if side == "old" else "old"
        path = item["p"]
        if any(path.startswith(root + "/") for root in self.roots[side]):
            return True
        if not (self.entry(side, item) or self.lacking(other, path)):
            return False
        if item["t"] == "d":
            self.roots[side].append(path)
        return True

    def lacking(self, side: str, path: str) -> bool:
        """Whether ``side``, which has no ``path``, changed above it since its threshold."""
        limit = self.thresholds[side]
        if not self.flowing(path):
            return False
        for directory, ctime in reversed(self.above[side]):
            if path.startswith(directory + "/"):
                return limit is not None and ctime >= limit
        return False


def compare(
    old: Iterable[dict],
    new: Iterable[dict],
    *,
    owners: bool = True,
    changed_since: tuple[int | None, int | None] | None = None,
    changing: tuple[str, ...] | None = None,
    queues: bool = True,
) -> Report:
    """What differs between old's and new's trees (sockets and Postfix runtime skipped).

    Both listings must come in :func:`path_key` order; they are read as streams.
    Content is compared where the listings hold it (``--checksum``).
    ``changed_since``: (old's, new's) thresholds, each in its host's clock (listings
    with ctimes): an entry that changed on its host since may differ (counted apart);
    ``changing``: the trees where that holds (None: all). ``queues`` False: Postfix's
    queue files are not compared (mail flows through them on new), and the report says so.
    """
    keys = [k for k in METADATA if owners or k not in ("u", "g")] + ["h"]
    report = Report(keys=keys, queues=queues)
    changed = Changed(changed_since, changing) if changed_since else None
    # Postfix renames queue files, so their hard-link partners' paths differ too.
    queue_keys = [k for k in keys if k != "hl"]
    queued: dict[str, Counter] = {"old": Counter(), "new": Counter()}

    def skipped(item: dict) -> bool:
        part = _spool_part(item["p"])
        if part in QUEUE_DIRS and item["t"] == "f":
            return True
        if part in QUEUE_DIRS and item["t"] == "d" and item["p"].rstrip("/") != SPOOL + part:
            # A queue's hash directories (defer/8): Postfix makes them as it renames a
            # carried message to its inode on new; they hold no mail of their own.
            return True
        return item["t"] == "s" or part in SPOOL_RUNTIME

    def seen(side: str, item: dict) -> bool:
        """Count a queue file (matched by its attributes); whether the entry is compared."""
        part = _spool_part(item["p"])
        if part in QUEUE_DIRS and item["t"] == "f":
            attrs = (json.dumps(item.get(k), sort_keys=True) for k in queue_keys)
            queued[side][(part, *attrs)] += 1
            report.hashed += queues and side == "old" and "h" in item
        if side == "old" and skipped(item):
            report.skipped += item["t"] == "s" or part in SPOOL_RUNTIME
        elif side == "old" and item["t"] == "f":
            report.files += 1
            report.bytes += item.get("s", 0)
            report.hashed += "h" in item
        return not skipped(item)

    def pair(item: dict, other: dict) -> None:
        if not changed:
            compared_pair(report, item, other)
            return
        found = Report(keys=keys)
        compared_pair(found, item, other)
        if found.kinds and (changed.entry("old", item) or changed.entry("new", other)):
            report.excused += 1
            return
        for kind, message in found.differences:
            report.add(kind, message)

    def compared_pair(report: Report, item: dict, other: dict) -> None:
        path = item["p"]
        for key in keys:
            if key == "mt" and (item["t"] == "d" and _spool_part(path) is not None):
                continue  # queue directories change as Postfix renames their files
            mine, theirs = item.get(key), other.get(key)
            if mine != theirs:
                if key == "hl" and theirs is None:
                    message = f"{path}: hard links: one file with {mine} on old, separate on new"
                elif key == "hl" and mine is None:
                    message = f"{path}: hard links: separate on old, one file with {theirs} on new"
                else:
                    message = (
                        f"{path}: {LABELS[key]} {_shown(key, mine)} on old, "
                        f"{_shown(key, theirs)} on new"
                    )
                report.add(LABELS[key], message)
        if owners and (other.get("u", "").startswith("#") or other.get("g", "").startswith("#")):
            report.add("numeric owner", f"{path}: owned by ids with no name on new")

    old_items, new_items = iter(old), iter(new)
    a, b = next(old_items, None), next(new_items, None)
    while a is not None or b is not None:
        if b is None or (a is not None and path_key(a["p"]) < path_key(b["p"])):
            assert a is not None
            if changed:
                changed.seen("old", a)
            if seen("old", a):
                if changed and changed.alone("old", a):
                    report.excused += 1
                else:
                    report.add("missing", f"missing on new: {a['p']}")
            a = next(old_items, None)
        elif a is None or path_key(b["p"]) < path_key(a["p"]):
            if changed:
                changed.seen("new", b)
            if seen("new", b):
                if changed and changed.alone("new", b):
                    report.excused += 1
                else:
                    report.add("extra", f"only on new: {b['p']}")
            b = next(new_items, None)
        else:
            if changed:
                changed.seen("old", a)
                changed.seen("new", b)
            compared = seen("old", a)
            seen("new", b)
            if compared:
                pair(a, b)
            a, b = next(old_items, None), next(new_items, None)

    common = queued["old"] & queued["new"]

    def per_queue(counter: Counter) -> Counter:
        totals: Counter = Counter()
        for q, n in counter.items():
            totals[q[0]] += n
        return totals

    parts = sorted({q[0] for q in queued["old"] | queued["new"]})
    old_n, new_n, same_n = per_queue(queued["old"]), per_queue(queued["new"]), per_queue(common)
    for part in parts:
        mine, theirs, same = old_n[part], new_n[part], same_n[part]
        report.files += mine if queues else 0
        if queues and (same != mine or mine != theirs):
            report.add(
                "queue", f"Postfix {part} queue: {mine} files on old, {theirs} on new, {same} alike"
            )
    return report
