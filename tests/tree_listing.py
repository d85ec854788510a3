"""Runs ON a lab host (stdlib only): one JSON line per entry of the given trees.

Used by the tests to compare old and new after a migration: type, mode, size,
mtime (ns), owner and group names, symlink target, sha256, xattrs and ACLs.
"""

import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys


def name(table, ident):
    try:
        return table(ident)[0]
    except KeyError:
        return str(ident)


def entry(path):
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    item = {
        "path": path,
        "type": {
            stat.S_IFREG: "file",
            stat.S_IFDIR: "dir",
            stat.S_IFLNK: "link",
            stat.S_IFSOCK: "socket",
            stat.S_IFIFO: "fifo",
        }.get(kind, "other"),
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "owner": name(pwd.getpwuid, st.st_uid),
        "group": name(grp.getgrgid, st.st_gid),
        "mtime_ns": st.st_mtime_ns if kind != stat.S_IFDIR else None,
        "nlink": st.st_nlink if kind == stat.S_IFREG else None,
    }
    if kind == stat.S_IFREG:
        item["size"] = st.st_size
        with open(path, "rb") as f:
            item["sha256"] = hashlib.sha256(f.read()).hexdigest()
    if kind == stat.S_IFLNK:
        item["target"] = os.readlink(path)
    if kind in (stat.S_IFREG, stat.S_IFDIR):
        try:
            attrs = sorted(os.listxattr(path, follow_symlinks=False))
        except OSError:
            attrs = []
        item["xattrs"] = {
            a: os.getxattr(path, a, follow_symlinks=False).hex()
            for a in attrs
            if not a.startswith("system.posix_acl")
        }
    return item


def main():
    for root in sys.argv[1:]:
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            print(json.dumps(entry(dirpath)))
            for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                print(json.dumps(entry(os.path.join(dirpath, n))))
    acl = subprocess.run(
        [
            "getfacl",
            "--absolute-names",
            "--skip-base",
            "--recursive",
            "--omit-header",
            *[r for r in sys.argv[1:] if os.path.lexists(r)],
        ],
        capture_output=True,
        text=True,
    )
    print(json.dumps({"acls": acl.stdout}))


main()
