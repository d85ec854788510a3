"""Runs on each host (verify): one JSON line per entry under the given paths, gzipped.

Usage: python3 listing.py CHECKSUM(0|1) PATH... (100,000 files make about 20 MB).
"""

import grp
import gzip
import hashlib
import json
import os
import pwd
import stat
import struct
import sys

checksum = False  # set by main()
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
    st = os.lstat(path)
    kind = KINDS.get(stat.S_IFMT(st.st_mode), "o")
    item = {
        "p": path,
        "t": kind,
        "m": stat.S_IMODE(st.st_mode),
        "mt": st.st_mtime_ns,
        "u": name(users, pwd.getpwuid, st.st_uid),
        "g": name(groups, grp.getgrgid, st.st_gid),
    }
    if kind == "f":
        item["s"] = st.st_size
        if checksum:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            item["h"] = h.hexdigest()
        if st.st_nlink > 1:
            # The first path of an inode stands for it: equal structures list alike.
            first = links.setdefault((st.st_dev, st.st_ino), path)
            if first != path:
                item["hl"] = first
    elif kind == "l":
        item["l"] = os.readlink(path)
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


# Pre-order with sorted names: both hosts list in the same order (that of path_key),
# so this machine compares them as two streams, holding neither whole.
def walk(path):
    emit(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for n in sorted(os.listdir(path)):
            walk(os.path.join(path, n))


def main() -> None:
    global checksum, out
    checksum = sys.argv[1] == "1"
    out = gzip.GzipFile(fileobj=sys.stdout.buffer, mode="wb", compresslevel=1)
    for root in sorted(sys.argv[2:], key=lambda p: p.split("/")):
        if os.path.lexists(root):
            walk(root)
    out.close()


if __name__ == "__main__":
    main()
