"""Runs on each host (verify): one JSON line per entry under the given paths, gzipped.

Usage: python3 listing.py FLAGS PATH... (100,000 files make about 20 MB). FLAGS is
0 or 1 (content hashes), with "c" after it for each entry's ctime too. PATH "-":
the entries come from stdin, NUL-separated specs: "R" a tree, "D" a directory and
its entries (not below), "E" one entry; listed once each, in the order of a walk.
"""

import grp
import gzip
import hashlib
import heapq
import json
import os
import pwd
import stat
import struct
import sys

checksum = ctimes = False  # set by main()
users, groups = {}, {}
links = {}
ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"


def name(cache, lookup, ident):
    if ident not in cache:
        try:
            cache[ident] = lookup(ident)[0]
        except KeyError:
            cache[ident] = f"#{ident}"
    return cache[ident]


KINDS = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFSOCK: "s",
    stat.S_IFIFO: "p",
}
# The kernel's ACL xattr: a version-2 header, then (tag, perm, id) entries. Users
# and groups go by name: the hosts give the same names different ids.
ACL_TAGS = {1: "u", 2: "u", 4: "g", 8: "g", 0x10: "m", 0x20: "o"}


def acl_entries(raw):
    entries = []
    for off in range(4, len(raw) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, off)
        who = ""
        if tag == 2:
            who = name(users, pwd.getpwuid, ident)
        elif tag == 8:
            who = name(groups, grp.getgrgid, ident)
        rwx = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        entries.append(f"{ACL_TAGS.get(tag, f'?{tag}')}:{who}:{rwx}")
    return entries


def emit(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # gone meanwhile: the relay on new serves (the listing after the move)
    kind = KINDS.get(stat.S_IFMT(st.st_mode), "o")
    item = {
        "p": path,
        "t": kind,
        "m": stat.S_IMODE(st.st_mode),
        "mt": st.st_mtime_ns,
        "u": name(users, pwd.getpwuid, st.st_uid),
        "g": name(groups, grp.getgrgid, st.st_gid),
    }
    if ctimes:
        item["ct"] = st.st_ctime_ns
    if kind == "f":
        item["s"] = st.st_size
        if checksum:
            h = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                item["h"] = h.hexdigest()
            except FileNotFoundError:
                return
        if st.st_nlink > 1:
            # The first path of an inode stands for it: equal structures list alike.
            first = links.setdefault((st.st_dev, st.st_ino), path)
            if first != path:
                item["hl"] = first
    elif kind == "l":
        try:
            item["l"] = os.readlink(path)
        except FileNotFoundError:
            return
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        names = []
    acl, attrs = [], {}
    for n in names:
        try:
            value = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
        if n == ACCESS:
            # The mode holds the owner's, others' and the mask's bits (the group's
            # without a mask): compared as the mode, so a minimal ACL lists as none.
            entries = acl_entries(value)
            base = {"u::", "o::", "m::" if any(e[:3] == "m::" for e in entries) else "g::"}
            acl += [e for e in entries if e[:3] not in base]
        elif n == DEFAULT:
            acl += ["d:" + e for e in acl_entries(value)]
        else:
            attrs[n] = hashlib.sha256(value).hexdigest()[:12]
    if acl:
        item["a"] = ",".join(sorted(acl))
    if attrs:
        item["x"] = attrs
    out.write((json.dumps(item, separators=(",", ":")) + "\n").encode())


out = None  # the gzip stream, set by main()


def path_key(path):
    return path.split("/")


# Pre-order with sorted names: both hosts list in the same order (that of path_key),
# so this machine compares them as two streams, holding neither whole.
def walk(root):
    stack = [root]
    while stack:
        path = stack.pop()
        yield path
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone meanwhile
        stack.extend(os.path.join(path, n) for n in sorted(names, reverse=True))


def from_specs(data):
    """The paths the specs name, once each, in walk order (a tree's walk merged in)."""
    single, trees = set(), []
    for spec in filter(None, data.split(b"\0")):
        kind, path = chr(spec[0]), os.fsdecode(spec[1:])
        if kind == "R":
            trees.append(walk(path))
            continue
        single.add(path)
        if kind == "D":
            try:
                single.update(os.path.join(path, n) for n in os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                pass  # not on this host: the other host's listing has it, alone
    last = None
    for path in heapq.merge(sorted(single, key=path_key), *trees, key=path_key):
        if path != last:
            yield path
        last = path


def main() -> None:
    global checksum, ctimes, out
    checksum, ctimes = sys.argv[1].startswith("1"), "c" in sys.argv[1]
    roots = sys.argv[2:]
    # Specs are read whole before anything is written: the sender is not read meanwhile.
    specs = sys.stdin.buffer.read() if roots == ["-"] else None
    out = gzip.GzipFile(fileobj=sys.stdout.buffer, mode="wb", compresslevel=1)
    if specs is not None:
        for path in from_specs(specs):
            emit(path)
    for root in sorted(roots if specs is None else [], key=path_key):
        if os.path.lexists(root):
            for path in walk(root):
                emit(path)
    out.close()


if __name__ == "__main__":
    main()
