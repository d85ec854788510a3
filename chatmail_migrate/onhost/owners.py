"""Runs on the new host (fix-ownership): give each copied file the owner and group
*names* it had on the old host.

The list holds old's numeric ids, mapped through old's id-to-name maps. Ids without
a name there, or names unknown here, are left as they are (and listed by the check).
Usage: python3 owners.py META_DIR/owners
"""

import functools
import grp
import os
import pwd
import sys


def names(f):
    lines = open(os.path.join(os.path.dirname(sys.argv[1]), f)).read().splitlines()
    pairs = (line.rsplit(":", 1) for line in lines if ":" in line)
    return {i: n for n, i in pairs}


users, groups = {}, {}  # old's id-to-name maps, read by main()


@functools.cache
def uid(i):
    return pwd.getpwnam(users[i]).pw_uid if i in users else -1


@functools.cache
def gid(i):
    return grp.getgrnam(groups[i]).gr_gid if i in groups else -1


def main() -> None:
    users.update(names("users"))
    groups.update(names("groups"))
    items = open(sys.argv[1], "rb").read().split(b"\0")
    for owner, path in zip(items[0::2], items[1::2], strict=False):
        user, _, group = owner.decode().partition(":")
        try:
            want, st = (uid(user), gid(group)), os.lstat(path)
            if want[0] not in (-1, st.st_uid) or want[1] not in (-1, st.st_gid):
                os.chown(path, *want, follow_symlinks=False)
        except (KeyError, FileNotFoundError):
            pass


if __name__ == "__main__":
    main()
