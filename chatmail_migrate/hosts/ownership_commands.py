"""The shell that gives copied files their owners by name."""

from __future__ import annotations

import shlex

from chatmail_migrate.hosts.commands import META_DIR
from chatmail_migrate.onhost import script
from chatmail_migrate.relay import MAILBOX_ROOT

# Written by a copy made while the relay's users existed on new (owners_by_name):
# the owner/group names tar sent, one ``user/group`` a line.
NAMES_FILE = f"{META_DIR}/names"


def fix_ownership_script(paths: list[str], mailbox_tree: str = MAILBOX_ROOT) -> str:
    """The seed's chowns (for what exists), then owners by name as on old, then ACLs.

    The seed's ``chown -R`` also hands files in those trees that old gave to another
    user (e.g. root's README in /etc/dkimkeys) to the tree's user, and it leaves out
    the Postfix spool; the owner list recorded on old puts every name back.
    When the copy found the relay's users on new (``NAMES_FILE``), tar and rsync
    already gave every file its owner, group and ACLs by name: no walk, only a check
    that every name tar sent exists here, and the DKIM key's mode.
    """
    quoted_tree = shlex.quote(mailbox_tree)
    fast = [
        "set -euo pipefail",
        # A name missing here would have left old's number on the file: name it.
        'missing=$(while IFS=/ read -r u g; do getent passwd "$u" >/dev/null || '
        'echo "user $u"; getent group "$g" >/dev/null || echo "group $g"; '
        f"done < {NAMES_FILE} | sort -u | tr '\\n' ' ')",
        'if [ -n "$missing" ]; then echo "owners on old that this host lacks: $missing'
        '(create them, or run install first, then copy-data again)" >&2; exit 3; fi',
        "if [ -e /etc/dkimkeys/opendkim.private ]; then "
        "chmod 600 /etc/dkimkeys/opendkim.private; fi",
        f"if [ -s {META_DIR}/acls ]; then setfacl --restore={META_DIR}/acls; fi",
    ]
    lines = [
        f"if [ -e {NAMES_FILE} ]; then",
        *fast,
        "exit 0",
        "fi",
        "set -euo pipefail",
        'need() { id -u "$1" >/dev/null 2>&1 || { echo "user $1 does not exist on this '
        'host: run the install step first" >&2; exit 3; }; }',
        "if [ -d /var/lib/acme ]; then chown -R root: /var/lib/acme; fi",
        "if [ -d /etc/dkimkeys ]; then need opendkim; chown -R opendkim: /etc/dkimkeys; fi",
        "if [ -e /etc/dkimkeys/opendkim.private ]; then "
        "chmod 600 /etc/dkimkeys/opendkim.private; fi",
        f"if [ -d {quoted_tree} ]; then need vmail; chown -R vmail: {quoted_tree}; fi",
        "for d in /run/echobot /var/lib/echobot; do "
        'if [ -d "$d" ]; then need echobot; chown -R echobot: "$d"; fi; done',
    ]
    owners = f"{META_DIR}/owners"
    lines.append(f"if [ -s {owners} ]; then python3 -c {shlex.quote(OWNERS_PY)} {owners}; fi")
    lines.append(f"if [ -s {META_DIR}/acls ]; then setfacl --restore={META_DIR}/acls; fi")
    return "\n".join(lines)


# onhost/owners.py: owners by the names they had on old.
OWNERS_PY = script("owners")


def ownership_check_command(paths: list[str]) -> str:
    """Lists files owned by ids with no name, the DKIM key's owner/mode, and postfix check.

    After a copy that restored owners by name (``NAMES_FILE``) the orphan walk is
    left out: fix-ownership checked every name tar sent, and verify compares every
    entry's owner by name (an id without a name there is a difference).
    """
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f"echo '== by name'; [ ! -e {NAMES_FILE} ] || wc -l < {NAMES_FILE}; "
        f"echo '== orphans'; [ -e {NAMES_FILE} ] || "
        f"find {quoted} \\( -nouser -o -nogroup \\) -print 2>/dev/null | head -20; "
        "echo '== dkim'; stat -c '%U %a' /etc/dkimkeys/opendkim.private 2>/dev/null || true; "
        "echo '== postfix check'; postfix check 2>&1 || echo \"postfix check exited $?\""
    )
