"""Shell commands the steps run on the hosts: built here, as plain testable strings."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .relay import MAILBOX_ROOT

MAIL_SERVICES = ("postfix", "dovecot")
# The units that take mail: Debian's postfix.service only wraps the instance postfix@-.
MAIL_UNITS = ("postfix@-", "dovecot")
# Postfix's queues: a file changed there while Postfix ran is mail it took or moved.
MAIL_QUEUES = ("incoming", "active", "deferred", "hold", "maildrop", "corrupt")
# What this tool keeps on a host (root's own), and its marks there: when enable-mail
# started mail on the host, and when a rollback last carried its mail back to old.
STATE_DIR = "/var/lib/chatmail-migrate"
SERVED_SINCE = f"{STATE_DIR}/served-since"
# When the host's mail was last carried to the other host: by a rollback's carry back
# (new's mail to old), or by a move's copy (old's mail to new, with old's mail off).
CARRIED_BACK = f"{STATE_DIR}/carried-back"
# On old while a carry back writes there: until it is verified, old's mailboxes and
# queue may be partly new's, and old must not serve.
CARRYING = f"{STATE_DIR}/carry-back-incomplete"
# This tool's installs on the host, one line each: "START END" (END once it ended with
# mail stopped). Mail units running in between are the packages' (Debian starts what
# it installs), not a relay's.
INSTALLS = f"{STATE_DIR}/installs"
# Where the new host keeps what copy-data sends beside the trees (ACLs, owner names).
META_DIR = f"{STATE_DIR}/from-old"
NEW_HOST_ALIAS = "chatmail-migrate-new-host"
# The copy on old runs as a transient systemd unit of this name and the run's id.
COPY_UNIT = "chatmail-migrate-copy"
RECEIVE_PID_FILE = "/run/chatmail-migrate-receive.pid"
# On the new host, before receiving: a tar still receiving from an attempt whose
# connection died (the new host cannot always tell) would write into this copy.
STOP_STALE_RECEIVER = (
    f"if [ -s {RECEIVE_PID_FILE} ]; then p=$(cat {RECEIVE_PID_FILE}); "
    'if grep -qaE -- "--extract|--server" "/proc/$p/cmdline" 2>/dev/null; then kill -TERM "$p"; '
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


def ssh_options(
    port: int,
    known_hosts_word: str,
    control_word: str | None = None,
    compress: bool = False,
    identity: str | None = None,
) -> str:
    """The options of the ssh the old host runs to reach the new one: batch, key pinned.

    ``known_hosts_word`` is a shell word (e.g. ``"$kh"``), expanded on the old host.
    ``control_word`` names a control socket: the copy's several ssh sessions (rsync,
    tar, metadata) then share one connection, and one handshake. ``compress``: ssh's zlib.
    ``identity``: the copy's own key on old (--copy-key ephemeral), the only one offered.
    """
    control = ""
    if identity:
        control = f"-i {shlex.quote(identity)} -o IdentitiesOnly=yes "
    if control_word:
        control += f"-o ControlMaster=auto -o ControlPath={control_word} -o ControlPersist=60 "
    return (
        ("-C " if compress else "")
        + control
        + (
            # Keepalives: a link that stays silent for 15 s fails the copy instead of hanging.
            "-o BatchMode=yes -o StrictHostKeyChecking=yes "
            "-o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o ConnectTimeout=15 "
            f"-o UserKnownHostsFile={known_hosts_word} -o GlobalKnownHostsFile=/dev/null "
            f"-o HostKeyAlias={NEW_HOST_ALIAS} -p {int(port)}"
        )
    )


def ssh_to_new(
    host: str,
    port: int,
    user: str,
    known_hosts_word: str,
    control_word: str | None = None,
    compress: bool = False,
    identity: str | None = None,
) -> str:
    """The ssh command line the old host runs to reach the new one."""
    options = ssh_options(port, known_hosts_word, control_word, compress, identity)
    return f"ssh {options} {shlex.quote(f'{user}@{host}')}"


# Lines the copy scripts print for the tool's progress display (see progress.py).
PROGRESS_TAG = "@chatmail-migrate"

# Runs beside a copier on the old host and reports, every second, what it has read
# (/proc/PID/io) and how many entries it has passed (its index file), on fd 3.
# It writes nothing to the pipe, so the copy ends when the copier does.
# wc's stderr is redirected before its input: tar makes its index file a moment after
# the reporter starts, and bash reports a failed redirection on the stderr it has then.
REPORTER = (
    'report() { while kill -0 "$1" 2>/dev/null; do '
    "b=$(awk '/^rchar/ {print $2}' \"/proc/$1/io\" 2>/dev/null || true); "
    'f=$(wc -l 2>/dev/null < "$2" || echo 0); '
    f'echo "{PROGRESS_TAG} progress $3 ${{b:-0}} ${{f:-0}}" >&3; sleep 1 3>&-; done; }}'
)


def measure_command(phase: str, paths: list[str], known: tuple[int, int] | None = None) -> str:
    """Print the bytes (regular files) and entries under ``paths``: the progress total.

    ``known`` (bytes, entries), e.g. what the pre-sync found, is printed instead of
    walking the trees again inside the downtime.
    """
    if known:
        return f'echo "{PROGRESS_TAG} total {phase} {int(known[0])} {int(known[1])} presync" >&3'
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        # A live relay renames files while find runs: what vanished is no error here.
        # Niced: on a small host the copier must not wait for its progress display.
        f"{{ nice -n 19 find {quoted} -printf '%y %s\\n' 2>/dev/null || true; }} | "
        'awk \'{n++; if ($1 == "f") b += $2} '
        f'END {{printf "{PROGRESS_TAG} total {phase} %d %d\\n", b, n}}\' >&3'
    )


def rsync_mailboxes(
    *,
    host: str,
    port: int,
    user: str,
    compress: str | None,
    live: bool = False,
    tree: str = MAILBOX_ROOT,
    known: tuple[int, int] | None = None,
    identity: str | None = None,
) -> list[str]:
    """Lines of bash: mirror the mailbox tree to new with rsync, deletions included.

    Only changed files travel; ``--delete`` is confined to the mailbox tree by the
    trailing slashes, so nothing outside it is ever removed on new. ``live``: the
    relay still serves, so files vanishing under rsync (its exit 24) are expected.
    ``known``: the tree's size as the pre-sync found it (the progress total), so the
    final sync does not walk the tree a second time beside rsync.
    """
    wait = 'wait "$t"'
    if live:
        wait = 'wait "$t" || { rc=$?; [ "$rc" = 24 ] || exit "$rc"; }'
    # --modify-window=-1: compare mtimes to the nanosecond, or a file changed within the
    # second of the pre-sync, at the same size, would be taken as unchanged. --xattrs:
    # as the tar pipe, keep users' xattrs (verify compares them); on 62,000 files it
    # added about 0.1 s of CPU to a pass with nothing to send. No --acls: copy-data
    # carries every ACL beside the data, restored by name. (--acls instead of the
    # getfacl beside it: 4.12 s against 3.32 s for 160k entries with nothing to send,
    # measured side by side on the lab: the getfacl runs on the other core.)
    flags = (
        "--archive --hard-links --xattrs --delete --mkpath --modify-window=-1 "
        "--out-format='%i %l %n'"
    )
    if compress == "zstd":
        flags += " --compress --compress-choice=zstd"
    elif compress:
        flags += " --compress"
    receive = rsync_receive_command()
    # rsync splits HOST:PATH at the first colon: an IPv6 address goes in brackets.
    bracketed = f"[{host}]" if ":" in host else host
    target = shlex.quote(f"{user}@{bracketed}:{tree}/")
    return [
        f"( {measure_command('rsync', [tree], known)} ) & m=$!",
        ': > "$idx"',
        f'{{ rsync {flags} -e "ssh {ssh_options(port, "$kh", "$cm", identity=identity)}" '
        f'--rsync-path={shlex.quote(receive)} {shlex.quote(tree)}/ {target} > "$idx" & t=$!; '
        'report "$t" "$idx" rsync >/dev/null & ' + wait + "; }",
        # Entries rsync listed (%i %l %n), and the bytes of the files among them.
        'wait "$m"; awk \'{n++; if (substr($1, 2, 1) == "f") b += $2} '
        f'END {{printf "{PROGRESS_TAG} done rsync %d %d\\n", n, b}}\' "$idx" >&3',
    ]


def rsync_receive_command() -> str:
    """What rsync runs on new (its --rsync-path): ``--server`` and its options follow."""
    return f"{STOP_STALE_RECEIVER}; echo $$ > {RECEIVE_PID_FILE}; exec rsync"


# What copy-data sends beside the trees lands here, replacing an earlier attempt's.
META_RECEIVE = (
    # umask: META_DIR's parents, made here, are root's alone (the lists come 0600/0700).
    f"umask 077 && rm -rf {META_DIR} && mkdir -p {META_DIR} && tar --extract --file=- -C {META_DIR}"
)


@dataclass(frozen=True)
class Receives:
    """What a copy runs on new, for a copy key's forced command to accept and nothing
    else: these commands exactly, and rsync's server mirroring into ``rsync_tree``."""

    exact: tuple[str, ...] = ()
    rsync_tree: str | None = None


def _split_paths(paths: list[str], sync_mailboxes: bool, mailbox_tree: str):
    """The paths tar carries, and those rsync mirrors (the mailbox tree after a pre-sync)."""
    tar_paths = [p for p in paths if not (sync_mailboxes and p == mailbox_tree)]
    return tar_paths, [p for p in paths if p not in tar_paths]


def tar_receive_command(
    tar_paths: list[str], *, replace: bool, compress: str | None, members: bool
) -> str:
    """What the tar pipe runs on new. ``members``: extract only the copied paths (for a
    copy key: the archive, whatever it holds, writes nowhere else under /)."""
    receive_tar = f"echo $$ > {RECEIVE_PID_FILE}; exec {TAR_EXTRACT}"
    if members:
        receive_tar += " -- " + " ".join(shlex.quote(p.lstrip("/")) for p in tar_paths)
    if compress == "zstd":
        receive_tar = f"zstd --quiet --decompress --stdout | sh -c {shlex.quote(receive_tar)}"
    removals = [f"rm -rf {' '.join(shlex.quote(p) for p in tar_paths)}"] if replace else []
    return "; ".join(["set -o pipefail", STOP_STALE_RECEIVER, *removals, receive_tar])


def presync_receives(*, mailbox_tree: str = MAILBOX_ROOT, **_: object) -> Receives:
    """What presync_script, with the same arguments, runs on new."""
    return Receives(rsync_tree=mailbox_tree)


def copy_receives(
    paths: list[str],
    *,
    replace: bool = False,
    sync_mailboxes: bool = False,
    compress: str | None = None,
    mailbox_tree: str = MAILBOX_ROOT,
    **_: object,
) -> Receives:
    """What copy_script, with the same arguments and an ``identity``, runs on new."""
    tar_paths, synced = _split_paths(paths, sync_mailboxes, mailbox_tree)
    exact = [META_RECEIVE]
    if tar_paths:
        exact.insert(
            0, tar_receive_command(tar_paths, replace=replace, compress=compress, members=True)
        )
    return Receives(tuple(exact), mailbox_tree if synced else None)


def _script_head(host_key_line: str) -> list[str]:
    return [
        "set -euo pipefail",
        "exec 3>&1",
        # What the copy writes on old (the pinned key, the lists for new) is root's alone.
        "umask 077",
        # One directory of root's own (mktemp -d: 0700) holds the pinned key, $meta (sent
        # to new as it is) and ssh's control socket: a name in /tmp itself, another user
        # on old could bind first, and root's ssh would talk to that user's socket.
        'd=$(mktemp -d); kh="$d/known_hosts"; meta="$d/meta"; idx="$meta/index"; cm="$d/ssh"',
        # The shared ssh connection to new ends with the script. "|| true": under set -e
        # a failing command (no master: the copy failed early) would end the trap there.
        'trap \'ssh -o ControlPath="$cm" -O exit x 2>/dev/null || true; rm -rf "$d"\' EXIT',
        'mkdir "$meta"',
        f"printf '%s\\n' {shlex.quote(host_key_line)} > \"$kh\"",
        REPORTER,
    ]


def presync_script(
    *,
    host: str,
    port: int,
    user: str,
    host_key_line: str,
    compress: str | None = None,
    mailbox_tree: str = MAILBOX_ROOT,
    identity: str | None = None,
) -> str:
    """Mirror the mailbox tree to new while the old relay still serves (repeatable)."""
    lines = _script_head(host_key_line)
    lines += rsync_mailboxes(
        host=host, port=port, user=user, compress=compress, live=True, tree=mailbox_tree,
        identity=identity,
    )  # fmt: skip
    return "\n".join(lines)


def copy_script(
    paths: list[str],
    *,
    host: str,
    port: int,
    user: str,
    host_key_line: str,
    replace: bool = False,
    sync_mailboxes: bool = False,
    compress: str | None = None,
    mailbox_tree: str = MAILBOX_ROOT,
    owners_by_name: bool = False,
    rsync_total: tuple[int, int] | None = None,
    identity: str | None = None,
) -> str:
    """The documented ``tar c | ssh new tar x`` pipe, fixed and checked end to end.

    Runs on the old host with the agent forwarded, or with ``identity``, a key made for
    this copy whose forced command on new runs only what copy_receives lists.
    ``pipefail`` makes a failure of either tar or of the ssh between them fail the
    whole command. A second, small
    stream carries what tar cannot restore on a host whose users do not exist yet:
    the ACLs, every copied file's numeric owner and group, and old's id-to-name maps,
    applied by name by fix-ownership.
    With ``replace``, the new host's copies of the trees (from an earlier attempt)
    are removed first, so nothing deleted on old since then survives on new.
    With ``sync_mailboxes`` (after a pre-sync), the mailbox tree is mirrored by rsync
    instead, which sends only what changed and removes what old no longer has.
    ``compress`` is "zstd" (both hosts have it), "ssh" (ssh's zlib) or None.
    ``owners_by_name``: the relay's users exist on new before the data lands, so tar
    (pax headers carry owner names and ACLs by name) and rsync (it maps owners by
    name, also on files it does not send) restore them as they write: no walk over
    the trees beside the copy, only the names tar saw, for fix-ownership to check.
    ``rsync_total``: the mailbox tree's (bytes, entries) as the pre-sync found it.
    """
    lines = _script_head(host_key_line)
    tar_paths, synced = _split_paths(paths, sync_mailboxes, mailbox_tree)
    if owners_by_name:
        # rsync carries no ACLs (the relay keeps none in mailboxes): read them there only.
        lists = " ".join(shlex.quote(p) for p in synced)
        acls = (
            "if command -v getfacl >/dev/null; then nice -n 19 getfacl --absolute-names "
            f'--skip-base --recursive {lists} > "$meta/acls"; fi; '
            if synced
            else ""
        )
        lines.append(f"{{ {acls}true; }} & lists=$!")
    else:
        absolute = " ".join(shlex.quote(p) for p in paths)
        # Read while the copy runs (mail is off, the trees do not change): every file's
        # numeric owner and group, old's id-to-name maps (names only, no hashes), the ACLs.
        lines.append(
            "{ if command -v getfacl >/dev/null; then getfacl --absolute-names --skip-base "
            f'--recursive {absolute} > "$meta/acls"; fi; '
            f"find {absolute} -printf '%U:%G\\0%p\\0' > \"$meta/owners\"; "
            'getent passwd | cut -d: -f1,3 > "$meta/users"; '
            'getent group | cut -d: -f1,3 > "$meta/groups"; } & lists=$!'
        )
    if synced:
        lines += rsync_mailboxes(
            host=host, port=port, user=user, compress=compress, tree=mailbox_tree,
            known=rsync_total, identity=identity,
        )  # fmt: skip
    relative = " ".join(shlex.quote(p.lstrip("/")) for p in tar_paths)
    ssh = ssh_to_new(host, port, user, '"$kh"', '"$cm"', identity=identity)
    # The whole relay goes through a connection of its own: a shared one would pass
    # every byte through the master ssh once more. Small copies share it.
    bulk = (
        ssh
        if sync_mailboxes
        else ssh_to_new(host, port, user, '"$kh"', compress=compress == "ssh", identity=identity)
    )
    zstd = " | zstd --quiet -1 -T0" if compress == "zstd" else ""
    receive = tar_receive_command(
        tar_paths, replace=replace, compress=compress, members=identity is not None
    )
    if tar_paths:
        lines += [
            f"( {measure_command('copy', tar_paths)} ) & m=$!",
            # Twice verbose: each index line names the entry's owner/group as sent.
            f'{{ {TAR_CREATE} --verbose --verbose --index-file="$idx" {relative} & t=$!; '
            f'report "$t" "$idx" copy >/dev/null & wait "$t"; }}{zstd} | '
            f"{bulk} {shlex.quote(receive)}",
            f'wait "$m"; echo "{PROGRESS_TAG} done copy $(wc -l < "$idx")" >&3',
        ]
    if owners_by_name:
        # The owner/group names tar wrote (the index's second column), once each; the
        # file also tells fix-ownership that no owner list was made.
        names = "awk '!seen[$2]++ {print $2}' \"$idx\"" if tar_paths else "true"
        lines.append(f'{names} > "$meta/names"')
    lines.append('wait "$lists"')
    lines.append(
        f'tar --create --file=- -C "$meta" --exclude=./index . | {ssh} {shlex.quote(META_RECEIVE)}'
    )
    return "\n".join(lines)


def copy_unit(run_id: str) -> str:
    return f"{COPY_UNIT}-{run_id}.service"


def copy_launcher(run_id: str, *, agent: bool = True) -> str:
    """What starts a copy script on old: a transient unit named after the run.

    Its unit is the copy's whole, exact handle: stopping it ends every process of this
    run's copy, and nothing else (a pid or process group names whatever runs now). Its
    output still streams back (``--pipe``), its exit code is the script's (``--wait``),
    and the forwarded agent reaches it (``--setenv``: root's unit can open the socket).
    """
    setenv = "--setenv=SSH_AUTH_SOCK " if agent else ""
    return f"systemd-run --unit={copy_unit(run_id)} --pipe --wait --collect --quiet {setenv}-- "


def for_unit(script: str) -> str:
    """``script`` as a transient unit's command line must carry it: systemd expands
    ``$$`` and ``${VAR}`` there (seen: ``echo $$`` wrote ``$``), and ``$$`` is its ``$``."""
    return script.replace("$", "$$")


# systemd counts a service ended by SIGTERM as a success: a stopped copy must fail.
COPY_STOPPED = "trap 'exit 143' TERM"


def stop_copy_command(run_id: str) -> str:
    """Stop the copy of run ``run_id`` on the old host, if it still runs."""
    unit = copy_unit(run_id)
    return (
        f"case $(systemctl show -P ActiveState {unit}) in "
        f"active|activating|deactivating|reloading) systemctl stop {unit} && echo stopped;; esac"
    )


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


# Give each copied file the owner and group *names* it had on the old host: the list
# holds old's numeric ids, mapped through old's id-to-name maps. Ids without a name
# there, or names unknown here, are left as they are (and listed by the check).
OWNERS_PY = """
import functools, grp, os, pwd, sys
meta = os.path.dirname(sys.argv[1])
def names(f):
    pairs = (l.rsplit(":", 1) for l in open(os.path.join(meta, f)).read().splitlines() if ":" in l)
    return {i: n for n, i in pairs}
users, groups = names("users"), names("groups")
@functools.cache
def uid(i):
    return pwd.getpwnam(users[i]).pw_uid if i in users else -1
@functools.cache
def gid(i):
    return grp.getgrnam(groups[i]).gr_gid if i in groups else -1
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


# Services that read the copied keys and certificates only when they start.
RESTART_AFTER_COPY = ("opendkim", "nginx")


def milter_sockets_command() -> str:
    """``ok PATH`` or ``missing PATH`` for each unix milter socket postfix uses.

    Postfix (main.cf and master.cf overrides) names them relative to its spool, where
    its smtpd runs chrooted; opendkim creates its socket a moment after it starts.
    """
    return (
        "for m in $( { postconf -hx smtpd_milters non_smtpd_milters; "
        "postconf -P 2>/dev/null | sed -n 's/.*milters = //p'; } | tr ', ' '\\n\\n' | "
        "sed -n 's/^unix://p' | sort -u); do case $m in /*) p=$m;; "
        '*) p="$(postconf -h queue_directory)/$m";; esac; '
        'for i in $(seq 50); do [ -S "$p" ] && break; sleep 0.1; done; '
        'if [ -S "$p" ]; then echo "ok $p"; else echo "missing $p"; fi; done'
    )


def live_relay_facts_command(mailbox_tree: str = MAILBOX_ROOT) -> str:
    """What says a host serves, or served, mail: its mail units running, this tool's
    marks (enable-mail started mail there; its mail was carried to the other host
    since; a carry back into it not finished), folders of the mailbox tree or the
    queue changed while a mail unit ran (after the last carry: a delivery, an expunge,
    a flag changed, a queue file moved), and its global addresses. Folders only: a walk
    of every file would lie inside the downtime.

    Units started during one of this tool's installs (Debian's packages start what
    they install) and stopped when it ended, or still running from an install that
    did not end, are not counted: the deploy itself may touch the mailbox tree a
    pre-sync made. Debian's ``postfix.service`` is a wrapper that stays active when the
    real instance failed: the instance is ``postfix@-``. A unit's timestamps survive
    only while systemd keeps it loaded (not a reboot); this tool's marks survive.
    """
    queues = " ".join(f"/var/spool/postfix/{q}" for q in MAIL_QUEUES)
    script = rf"""
c=$(cat {CARRIED_BACK} 2>/dev/null || echo 0)
echo '== active'
for u in {" ".join(MAIL_UNITS)}; do systemctl is-active --quiet "$u" && echo "$u"; done
echo '== served'; cat {SERVED_SINCE} 2>/dev/null || true
echo '== carried'; [ "$c" = 0 ] || echo "$c"
echo '== carrying'; cat {CARRYING} 2>/dev/null || true
echo '== installed'; tail -n 1 {INSTALLS} 2>/dev/null | cut -d' ' -f1
echo '== changed'
for u in {" ".join(MAIL_UNITS)}; do
  a=$(systemctl show -P ActiveEnterTimestamp --timestamp=unix "$u" 2>/dev/null | tr -d @)
  [ -n "$a" ] || continue
  i=$(systemctl show -P InactiveEnterTimestamp --timestamp=unix "$u" 2>/dev/null | tr -d @)
  end=""
  if ! systemctl is-active --quiet "$u" && [ -n "$i" ] && [ "$i" -ge "$a" ]; then end=$i; fi
  ours=""
  if [ -s {INSTALLS} ]; then
    while read -r s0 s1; do
      [ -n "$s0" ] && [ "$a" -ge "$s0" ] || continue
      if [ -n "$end" ] && [ -n "$s1" ] && [ "$end" -le "$s1" ]; then ours=1; fi
      if [ -z "$end" ] && [ -z "$s1" ]; then ours=1; fi
    done < {INSTALLS}
  fi
  [ -z "$ours" ] || continue
  start=$a; [ "$c" -le "$start" ] || start=$c
  if [ -n "$end" ] && [ "$end" -le "$start" ]; then continue; fi
  find {shlex.quote(mailbox_tree)} {queues} -type d -newerct "@$start" \
    ${{end:+! -newerct @$end}} -print 2>/dev/null | head -n 3 | sed "s|^|$u $start |"
done
echo '== addresses'
ip -o address show scope global | awk '{{print $4}}' | cut -d/ -f1
"""
    return script


def install_mark_command(*, ended: bool) -> str:
    """Add an install's start to the host's list of this tool's installs, or its end."""
    if not ended:
        return f"umask 077; mkdir -p -m 700 {STATE_DIR} && date +%s >> {INSTALLS}"
    return f"[ ! -s {INSTALLS} ] || sed -i '$ s/^\\([0-9]*\\)$/\\1 '$(date +%s)'/' {INSTALLS}"


def stamp_command(mark: str) -> str:
    """Write the time now into one of this tool's marks on a host (root's alone)."""
    return (
        f"umask 077; mkdir -p -m 700 {STATE_DIR} && date +%s > {mark}.tmp && mv {mark}.tmp {mark}"
    )


def digest_command(paths: list[str]) -> str:
    """One sha256 over the names and contents of every file under ``paths``."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f"find {quoted} -type f -print0 2>/dev/null | sort -z | "
        "xargs -0r sha256sum | sha256sum | cut -d' ' -f1"
    )


def global_addresses_command() -> str:
    return "ip -j address show scope global"
