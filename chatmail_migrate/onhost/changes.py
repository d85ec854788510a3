"""Runs on old: what changed in the mailbox tree since the last pre-sync began, found
by walking directories, not files (copy-data after a pre-sync).

Usage:
  python3 changes.py snapshot TREE OUT
      Prints this host's clock (ns), then writes to OUT, gzipped JSON: that clock and
      the inode of every directory the walk lists. Run just before the pre-sync's rsync.
  python3 changes.py walk TREE SNAPSHOT CLOCK MARGIN OUTDIR
      With the snapshot taken at CLOCK (else one JSON line {"fallback": why}): every
      directory whose ctime is at or after CLOCK - MARGIN (ns), and every file of a
      listed directory changed in place since, into OUTDIR: ``files-from`` (rsync's
      list, NUL-separated, relative to TREE; "DIR/" sends that directory's entries,
      not below), ``verify`` (verify's specs: "D" a directory and its entries, "E"
      one entry) and ``summary.json``, also printed.

Why ctime: adding, removing or renaming an entry changes its directory's ctime, and
a program cannot set a ctime (utime sets the mtime and moves the ctime to now). So
a directory whose ctime is older than the pre-sync's start holds the entries the
pre-sync copied. Files changed in place (an account's password, whose mtime is the
last login, maildirsize, Dovecot's index and log, metadata.json, the files in
pending_notifications/) leave their directory alone: every listed directory's files
are stat'ed. Maildir's cur/, new/ and tmp/ are not listed unless they changed:
Dovecot never rewrites a message in place (a flag change renames it), and a link
count of 2 says they hold no subdirectory.
"""

import gzip
import json
import os
import stat
import sys
import time

# Maildir's message folders: messages there are written once, then only renamed.
MESSAGE_DIRS = {"cur", "new", "tmp"}


def key(st):
    return f"{st.st_dev}:{st.st_ino}"


def leaf(name, st):
    """A message folder without subdirectories: nothing in it changes unless it does."""
    return name in MESSAGE_DIRS and st.st_nlink == 2


def entries(path):
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []  # gone meanwhile (a live relay)


def lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def snapshot(tree, out):
    """The directories the walk lists, by inode: a renamed one shows as another inode."""
    clock = time.time_ns()
    dirs = {}
    stack = [(tree, ".", "")]
    while stack:
        path, rel, name = stack.pop()
        st = lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode) or leaf(name, st):
            continue
        dirs[rel] = key(st)
        for e in entries(path):
            if e.is_dir(follow_symlinks=False):
                stack.append((e.path, e.name if rel == "." else f"{rel}/{e.name}", e.name))
    with gzip.open(out, "wt") as f:
        json.dump({"clock": clock, "tree": tree, "dirs": dirs}, f)
    print(clock)


class Walk:
    """One walk of the tree against the pre-sync's snapshot and threshold (ns)."""

    def __init__(self, tree, dirs, threshold):
        self.tree, self.dirs, self.threshold = tree, dirs, threshold
        self.changed_dirs, self.changed_files = [], []
        # Files changed since the threshold with other names: (dev, ino) -> (path, nlink).
        self.linked = {}
        self.count = dict.fromkeys(
            (
                "dirs",
                "listed",
                "stated",
                "changed_dirs",
                "changed_files",
                "replaced",
                "partners",
                "entries",
                "bytes",
            ),
            0,
        )

    def recent(self, st):
        return st.st_ctime_ns >= self.threshold

    def run(self):
        stack = [(self.tree, ".", "", False)]
        while stack:
            path, rel, name, whole = stack.pop()
            st = lstat(path)
            if st is None:
                continue
            self.count["dirs"] += 1
            changed = whole or self.recent(st)
            if not changed and leaf(name, st):
                continue
            if changed and not whole and not leaf(name, st) and self.dirs.get(rel) != key(st):
                # Not the directory the pre-sync saw here (renamed or moved in, or new):
                # its subdirectories' entries are unknown to new, whatever their ctimes.
                whole = True
                self.count["replaced"] += 1
            self.count["listed"] += 1
            if changed:
                self.changed_dirs.append(rel)
            for e in entries(path):
                child = e.name if rel == "." else f"{rel}/{e.name}"
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, child, e.name, whole))
                    self.count["entries"] += changed
                elif changed or name not in MESSAGE_DIRS:
                    self.file(e.path, child, sent=changed, whole=whole)

    def file(self, path, rel, sent, whole):
        """A file of a listed directory (``sent``: with it): stat'ed for a change in
        place or a new link; ``whole``: in a directory new to new."""
        st = lstat(path)
        if st is None:
            return
        self.count["stated"] += 1
        recent = self.recent(st)
        if sent or recent:
            self.count["entries"] += 1
            self.count["bytes"] += st.st_size if stat.S_ISREG(st.st_mode) else 0
        if recent and not sent:
            self.changed_files.append(rel)
        if (recent or whole) and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            # A link made since (Dovecot copies by hard link), or a name new to new:
            # rsync links only the names it sends, so the file's other names go too.
            self.linked[(st.st_dev, st.st_ino)] = (path, st.st_nlink)

    def partners(self):
        """The other names of ``linked`` files: searched in the file's directory, then
        its parent's tree and so on up (Dovecot links within one account)."""
        found = {k: {path} for k, (path, _) in self.linked.items()}
        scanned = set()

        def scan(top):
            stack = [top]
            while stack:
                d = stack.pop()
                if d in scanned:
                    continue  # its whole tree was scanned before
                scanned.add(d)
                for e in entries(d):
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        continue
                    st = lstat(e.path)
                    if st is not None and (st.st_dev, st.st_ino) in found:
                        found[(st.st_dev, st.st_ino)].add(e.path)

        for k, (path, nlink) in self.linked.items():
            scope = os.path.dirname(path)
            while len(found[k]) < nlink:
                scan(scope)
                if scope == self.tree or scope == os.path.dirname(scope):
                    break  # names outside the tree: rsync keeps none of those either
                scope = os.path.dirname(scope)
        listed = {os.path.normpath(os.path.join(self.tree, d)) for d in self.changed_dirs}
        extra = set()
        for names in found.values():
            extra.update(p for p in names if os.path.dirname(p) not in listed)
        known = set(self.changed_files)
        rels = sorted(r for r in (os.path.relpath(p, self.tree) for p in extra) if r not in known)
        self.count["partners"] = len(rels)
        return rels


def write_outputs(outdir, tree, walk, partners, summary):
    """The lists, replaced as a whole (a directory renamed into place)."""
    tmp = f"{outdir}.new"
    os.makedirs(tmp, mode=0o700, exist_ok=True)
    for name in os.listdir(tmp):
        os.unlink(os.path.join(tmp, name))
    dirs = ["./" if d == "." else f"{d}/" for d in walk.changed_dirs]
    files = walk.changed_files + partners
    with open(os.path.join(tmp, "files-from"), "wb") as f:
        f.write(b"".join(os.fsencode(p) + b"\0" for p in dirs + files))
    specs = [b"D" + os.fsencode(os.path.normpath(os.path.join(tree, d))) for d in walk.changed_dirs]
    specs += [b"E" + os.fsencode(os.path.join(tree, p)) for p in files]
    with open(os.path.join(tmp, "verify"), "wb") as f:
        f.write(b"".join(s + b"\0" for s in specs))
    with open(os.path.join(tmp, "summary.json"), "w") as f:
        json.dump(summary, f)
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            os.unlink(os.path.join(outdir, name))
        os.rmdir(outdir)
    os.rename(tmp, outdir)


def walk(tree, snapshot_path, clock, margin, outdir):
    try:
        with gzip.open(snapshot_path, "rt") as f:
            taken = json.load(f)
    except (OSError, ValueError) as e:
        print(json.dumps({"fallback": f"no pre-sync snapshot on this host ({e})"}))
        return
    if taken.get("clock") != clock or taken.get("tree") != tree:
        print(json.dumps({"fallback": "the pre-sync snapshot here is another pre-sync's"}))
        return
    if os.path.islink(tree) or not os.path.isdir(tree):
        print(json.dumps({"fallback": f"{tree} is not a directory here"}))
        return
    started = time.monotonic()
    w = Walk(tree, taken["dirs"], clock - margin)
    w.run()
    partners = w.partners()
    w.count["changed_dirs"] = len(w.changed_dirs)
    w.count["changed_files"] = len(w.changed_files)
    summary = {
        **w.count,
        "threshold_ns": clock - margin,
        "token": os.urandom(8).hex(),
        "seconds": round(time.monotonic() - started, 3),
    }
    write_outputs(outdir, tree, w, partners, summary)
    print(json.dumps(summary))


def main() -> None:
    if sys.argv[1] == "snapshot":
        snapshot(sys.argv[2].rstrip("/") or "/", sys.argv[3])
    elif sys.argv[1] == "walk":
        tree, snap, clock, margin, outdir = sys.argv[2:7]
        walk(tree.rstrip("/") or "/", snap, int(clock), int(margin), outdir)
    else:
        sys.exit(f"usage: {sys.argv[0]} snapshot TREE OUT | walk TREE SNAPSHOT CLOCK MARGIN OUT")


if __name__ == "__main__":
    main()
