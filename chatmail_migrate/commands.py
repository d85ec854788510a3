"""Shell commands the steps run on the hosts: built here, as plain testable strings."""

from __future__ import annotations

import shlex

# What the documented procedure copies, plus the echobot's real state.
COPY_PATHS = [
    "/home/vmail/mail",
    "/var/lib/acme",
    "/etc/dkimkeys",
    "/run/echobot",
    "/var/lib/echobot",
    "/var/spool/postfix",
]
MAIL_SERVICES = ("postfix", "dovecot")
# Where the new host keeps what copy-data sends beside the trees (ACLs, owner names).
META_DIR = "/var/lib/chatmail-migrate/from-old"
NEW_HOST_ALIAS = "chatmail-migrate-new-host"
COPY_PID_FILE = "/run/chatmail-migrate-copy.pid"
RECEIVE_PID_FILE = "/run/chatmail-migrate-receive.pid"
# On the new host, before receiving: a tar still receiving from an attempt whose
# connection died (the new host cannot always tell) would write into this copy.
STOP_STALE_RECEIVER = (
    f"if [ -s {RECEIVE_PID_FILE} ]; then p=$(cat {RECEIVE_PID_FILE}); "
    'if grep -qa -- --extract "/proc/$p/cmdline" 2>/dev/null; then kill -TERM "$p"; '
    'for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done; '
    'kill -KILL "$p" 2>/dev/null; fi; fi'
)

# pax keeps sub-second mtimes, ACLs and xattrs; sockets in the spool are skipped quietly.
TAR_CREATE = (
    'tar --create --file=- --format=posix --acls --xattrs --xattrs-include="*" '
    "--warning=no-file-ignored --directory=/"
)
# Owners are restored by name where the name exists on the new host (tar's default as root).
TAR_EXTRACT = (
    "tar --extract --file=- --directory=/ --preserve-permissions --same-owner "
    '--acls --xattrs --xattrs-include="*" --keep-directory-symlink --warning=no-timestamp'
)


def service_state_command(services=MAIL_SERVICES) -> str:
    """Print ``NAME ACTIVE ENABLED`` per service, and whether Postfix really runs.

    Debian's postfix.service stays "active" when the Postfix instance died, so
    ``postfix status`` is asked too.
    """
    parts = [
        f'printf "%s %s %s\\n" {s} "$(systemctl is-active {s})" "$(systemctl is-enabled {s})"'
        for s in services
    ]
    parts.append(
        "if postfix status >/dev/null 2>&1; then echo postfix-instance running; "
        "else echo postfix-instance stopped; fi"
    )
    return "; ".join(parts)


def parse_service_states(stdout: str) -> dict[str, tuple[str, str]]:
    states = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
        elif len(parts) == 2:
            states[parts[0]] = (parts[1], "")
    return states


def service_problems(states: dict[str, tuple[str, str]], want_running: bool) -> list[str]:
    """What differs from 'mail on' (active+enabled) or 'mail off' (inactive+disabled)."""
    problems = []
    for service in MAIL_SERVICES:
        active, enabled = states.get(service, ("unknown", "unknown"))
        if want_running and (active != "active" or enabled != "enabled"):
            problems.append(f"{service} is {active}/{enabled}, expected active/enabled")
        if not want_running and (active == "active" or enabled == "enabled"):
            problems.append(f"{service} is {active}/{enabled}, expected inactive/disabled")
    instance = states.get("postfix-instance", ("unknown", ""))[0]
    if want_running and instance != "running":
        problems.append("the Postfix instance is not running (postfix status)")
    if not want_running and instance == "running":
        problems.append("the Postfix instance still runs (postfix status)")
    return problems


def ssh_to_new(host: str, port: int, user: str, known_hosts_word: str) -> str:
    """The ssh the old host runs to reach the new one: batch mode, key pinned.

    ``known_hosts_word`` is a shell word (e.g. ``"$kh"``), expanded on the old host.
    """
    return (
        # Keepalives: a link that stays silent for 15 s fails the copy instead of hanging.
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes "
        "-o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o ConnectTimeout=15 "
        f"-o UserKnownHostsFile={known_hosts_word} -o GlobalKnownHostsFile=/dev/null "
        f"-o HostKeyAlias={NEW_HOST_ALIAS} -p {int(port)} {shlex.quote(f'{user}@{host}')}"
    )


def copy_script(
    paths: list[str], *, host: str, port: int, user: str, host_key_line: str, replace: bool = False
) -> str:
    """The documented ``tar c | ssh new tar x`` pipe, fixed and checked end to end.

    Runs on the old host with the agent forwarded. ``pipefail`` makes a failure of
    either tar or of the ssh between them fail the whole command. A second, small
    stream carries what tar cannot restore on a host whose users do not exist yet:
    the ACLs and every copied file's owner and group names, applied by fix-ownership.
    With ``replace``, the new host's copies of the trees (from an earlier attempt)
    are removed first, so nothing deleted on old since then survives on new.
    """
    relative = " ".join(shlex.quote(p.lstrip("/")) for p in paths)
    absolute = " ".join(shlex.quote(p) for p in paths)
    ssh = ssh_to_new(host, port, user, '"$kh"')
    extract = "; ".join(
        [STOP_STALE_RECEIVER, *([f"rm -rf {absolute}"] if replace else []),
         f"echo $$ > {RECEIVE_PID_FILE}", f"exec {TAR_EXTRACT}"]
    )  # fmt: skip
    lines = [
        "set -euo pipefail",
        # The pid lets the tool stop this copy (and its whole process group) if interrupted.
        f"echo $$ > {COPY_PID_FILE}",
        f'kh=$(mktemp); meta=$(mktemp -d); trap \'rm -rf "$kh" "$meta" {COPY_PID_FILE}\' EXIT',
        f"printf '%s\\n' {shlex.quote(host_key_line)} > \"$kh\"",
        f"{TAR_CREATE} {relative} | {ssh} {shlex.quote(extract)}",
        "if command -v getfacl >/dev/null; then "
        f'getfacl --absolute-names --skip-base --recursive {absolute} > "$meta/acls"; fi',
    ]
    lines.append(f"find {absolute} -printf '%u:%g\\0%p\\0' > \"$meta/owners\"")
    receive = f"rm -rf {META_DIR} && mkdir -p {META_DIR} && tar --extract --file=- -C {META_DIR}"
    lines.append(f'tar --create --file=- -C "$meta" . | {ssh} {shlex.quote(receive)}')
    return "\n".join(lines)


def stop_copy_command() -> str:
    """Stop a copy left running on the old host by an interrupted tool."""
    return (
        f'if [ -s {COPY_PID_FILE} ]; then pgid=$(ps -o pgid= -p "$(cat {COPY_PID_FILE})" | '
        f'tr -d " "); if [ -n "$pgid" ]; then kill -TERM -- "-$pgid"; echo stopped; fi; '
        f"rm -f {COPY_PID_FILE}; fi"
    )


def fix_ownership_script(paths: list[str]) -> str:
    """The seed's chowns (for what exists), then owners by name as on old, then ACLs.

    The seed's ``chown -R`` also hands files in those trees that old gave to another
    user (e.g. root's README in /etc/dkimkeys) to the tree's user, and it leaves out
    the Postfix spool; the owner list recorded on old puts every name back.
    """
    lines = [
        "set -euo pipefail",
        'need() { id -u "$1" >/dev/null 2>&1 || { echo "user $1 does not exist on this '
        'host: run the install step first" >&2; exit 3; }; }',
        "if [ -d /var/lib/acme ]; then chown -R root: /var/lib/acme; fi",
        "if [ -d /etc/dkimkeys ]; then need opendkim; chown -R opendkim: /etc/dkimkeys; fi",
        "if [ -e /etc/dkimkeys/opendkim.private ]; then "
        "chmod 600 /etc/dkimkeys/opendkim.private; fi",
        "if [ -d /home/vmail/mail ]; then need vmail; chown -R vmail: /home/vmail/mail; fi",
        "for d in /run/echobot /var/lib/echobot; do "
        'if [ -d "$d" ]; then need echobot; chown -R echobot: "$d"; fi; done',
    ]
    owners = f"{META_DIR}/owners"
    lines.append(f"if [ -s {owners} ]; then python3 -c {shlex.quote(OWNERS_PY)} {owners}; fi")
    lines.append(f"if [ -s {META_DIR}/acls ]; then setfacl --restore={META_DIR}/acls; fi")
    return "\n".join(lines)


# Give each copied file the owner and group *names* it had on the old host. Names
# unknown there (bare numbers) or here are left as they are, and listed by the check.
OWNERS_PY = """
import functools, grp, os, pwd, sys
uid = functools.cache(lambda n: -1 if n.isdigit() else pwd.getpwnam(n).pw_uid)
gid = functools.cache(lambda n: -1 if n.isdigit() else grp.getgrnam(n).gr_gid)
items = open(sys.argv[1], "rb").read().split(b"\\0")
for owner, path in zip(items[0::2], items[1::2]):
    user, _, group = owner.decode().partition(":")
    try:
        want, st = (uid(user), gid(group)), os.lstat(path)
        if want[0] not in (-1, st.st_uid) or want[1] not in (-1, st.st_gid):
            os.chown(path, *want, follow_symlinks=False)
    except (KeyError, FileNotFoundError):
        pass
"""


def ownership_check_command(paths: list[str]) -> str:
    """Lists files owned by ids with no name, the DKIM key's owner/mode, and postfix check."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f"echo '== orphans'; "
        f"find {quoted} \\( -nouser -o -nogroup \\) -print 2>/dev/null | head -20; "
        "echo '== dkim'; stat -c '%U %a' /etc/dkimkeys/opendkim.private 2>/dev/null || true; "
        "echo '== postfix check'; postfix check 2>&1 || echo \"postfix check exited $?\""
    )


def parse_sections(stdout: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            sections[current] = []
        elif current and line.strip():
            sections[current].append(line.strip())
    return sections


# postfix check renames copied queue files to match their new inodes: expected, not a fault.
POSTFIX_CHECK_EXPECTED = ("Renamed to match inode number", "QUEUE FILE NAMES WERE CHANGED")


def postfix_check_problems(lines: list[str]) -> list[str]:
    return [line for line in lines if not any(e in line for e in POSTFIX_CHECK_EXPECTED)]


def published_keys_facts_command() -> str:
    """The new host's DKIM public key (base64 DER) and its ACME account URLs."""
    return (
        "echo '== dkim'; openssl pkey -in /etc/dkimkeys/opendkim.private -pubout -outform DER "
        "2>/dev/null | base64 -w0; echo; "
        "echo '== acme'; cat /var/lib/acme/accounts/*/*/url 2>/dev/null; true"
    )


def global_addresses_command() -> str:
    return "ip -j address show scope global"
