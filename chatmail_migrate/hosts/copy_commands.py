"""The shell that copies: the ssh from old to new, the tar and
rsync pipelines, and the transient systemd unit the copy runs in.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from chatmail_migrate.hosts.commands import META_DIR, PROGRESS_TAG, REPORTER, measure_command
from chatmail_migrate.relay import MAILBOX_ROOT

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
    acls: bool = False,
    files_from: str | None = None,
) -> list[str]:
    """Lines of bash: mirror the mailbox tree to new with rsync, deletions included.

    Only changed files travel; ``--delete`` is confined to the mailbox tree by the
    trailing slashes, so nothing outside it is ever removed on new. ``live``: the
    relay still serves, so files vanishing under rsync (its exit 24) are expected.
    ``known``: the tree's size as the pre-sync found it (the progress total), so the
    final sync does not walk the tree a second time beside rsync. ``acls``: rsync
    carries them (by name, as owners). ``files_from``: a list on old (what changed
    since the pre-sync, relative to the tree, NUL-separated): only those entries are
    looked at; a "DIR/" in it is mirrored with its entries, not below (``--dirs``),
    deletions included; ``known`` is then the list's size.
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
    if acls:
        flags += " --acls"
    if files_from:
        flags += f" --dirs --files-from={shlex.quote(files_from)} --from0"
    if compress == "zstd":
        flags += " --compress --compress-choice=zstd"
    elif compress:
        flags += " --compress"
    receive = rsync_receive_command()
    # rsync splits HOST:PATH at the first colon: an IPv6 address goes in brackets.
    bracketed = f"[{host}]" if ":" in host else host
    target = shlex.quote(f"{user}@{bracketed}:{tree}/")
    return [
        f"( {measure_command('rsync', [tree], known, 'changed' if files_from else 'presync')} )"
        " & m=$!",
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
    removals = [removal_command(tar_paths)] if replace else []
    return "; ".join(["set -o pipefail", STOP_STALE_RECEIVER, *removals, receive_tar])


def removal_command(paths: list[str]) -> str:
    """Remove what an earlier attempt left at ``paths`` on the receiving host, but the
    sockets (and the directories holding them): they are no data (tar carries none),
    and a service listens there: opendkim's socket in Postfix's spool, which install
    restarted on the carried keys so that the cutover need not."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f'for p in {quoted}; do if [ -d "$p" ] && [ ! -L "$p" ]; then '
        'find "$p" -mindepth 1 -depth \\( -type d -empty -delete \\) -o '
        '\\( ! -type d ! -type s -delete \\); else rm -rf "$p"; fi; done'
    )


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
    # ACLs too (by name): a final sync of what changed since carries no others.
    lines += rsync_mailboxes(
        host=host,
        port=port,
        user=user,
        compress=compress,
        live=True,
        tree=mailbox_tree,
        identity=identity,
        acls=True,
    )
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
    changes: str | None = None,
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
    ``changes`` (with ``sync_mailboxes``): the list on old of what changed since the
    pre-sync (hosts/change_commands.py): rsync looks at those entries only, ACLs with
    them (the pre-sync carried the others'), and ``rsync_total`` is their size.
    """
    lines = _script_head(host_key_line)
    tar_paths, synced = _split_paths(paths, sync_mailboxes, mailbox_tree)
    if owners_by_name:
        # rsync carries no ACLs (the relay keeps none in mailboxes): read them there only.
        lists = " ".join(shlex.quote(p) for p in synced)
        acls = (
            "if command -v getfacl >/dev/null; then nice -n 19 getfacl --absolute-names "
            f'--skip-base --recursive {lists} > "$meta/acls"; fi; '
            if synced and not changes
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
            host=host,
            port=port,
            user=user,
            compress=compress,
            tree=mailbox_tree,
            known=rsync_total,
            identity=identity,
            acls=bool(changes),
            files_from=changes,
        )
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
