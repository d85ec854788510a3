"""--copy-key ephemeral: old logs in to new for one copy with a key of its own.

By default the copy runs on old with the operator's agent forwarded: root on old can
use every key in it while the copy runs. Instead, a key is made on old for one copy
(its private half never leaves old: a 0700 directory of root's), and new's
authorized_keys takes it only from old's address as new sees it (found by new
itself: old's first login with it may only print ``$SSH_CLIENT``), only for a few
hours (kept ahead while the tool runs: a ``kill -9`` cannot leave a live root key
behind), with ``restrict``, and with a forced command that runs exactly what this
copy sends (commands.Receives) and refuses anything else. Removed after the copy,
whatever its end; a stale one (an interrupted run's) is removed before the next one
is added, and by a rollback.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import commands, copy_commands
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.hostspec import canonical_address, ip
from chatmail_migrate.settings import Settings

# On the sending host: the key, in a directory of root's (/run: gone at a reboot too).
KEY_DIR = "/run/chatmail-migrate-copy-key"


KEY = f"{KEY_DIR}/id_ed25519"


# The comment ending the key's line in authorized_keys, by which it is found again.
MARK = "chatmail-migrate-copy-key"


# On the receiving host: the key's forced command.
RECEIVER = f"{commands.STATE_DIR}/copy-receive"


# A line lives this long past its last renewal; renewed while the tool runs.
EXPIRY_MINUTES = 120


RENEW_SECONDS = 20 * 60


# The first line, only for old to learn its address as new sees it.
PROBE_MINUTES = 10


PROBE = "chatmail-migrate-probe"


# rsync's server options a copy sends (commands.rsync_mailboxes' flags, as rsync 3.2
# and later pass them): bundled short flags with the capability string after "e",
# and the long ones. Nothing that names another path (--log-file, --temp-dir, ...).
# A final sync of what changed adds A (ACLs), d (--dirs), R (--relative, which a
# --files-from on old implies: names relative to the mailbox tree, which rsync's
# receiver keeps below it) and --no-r; the list itself stays on old.
RSYNC_OPTION = (
    r"^(-[lHogDtpXrzAdR]+(e\.[A-Za-z]*)?|--log-format=(%i|X)|--delete|-@-1|--modify-window=-1"
    r"|--mkpath|--compress|--new-compress|--old-compress|--compress-choice=zstd|--no-r)$"
)


# The authorized_keys file sshd reads for this user ($f), as sshd -T says.
AUTHORIZED_KEYS = (
    "f=$(sshd -T 2>/dev/null | awk '$1 == \"authorizedkeysfile\" {print $2; exit}'); "
    'case "$f" in ""|none) f=.ssh/authorized_keys;; esac; '
    'f=$(printf "%s" "$f" | sed "s|%h|$HOME|g; s|%u|$(id -un)|g; s|%%|%|g"); '
    'case "$f" in /*) ;; *) f="$HOME/$f";; esac'
)


# A temporary copy beside it, then written back in place: the file keeps its inode,
# owner, mode and symlinks.
_REWRITE = 't=$(mktemp "$f.XXXXXX"); {edit} "$f" > "$t" || true; cat "$t" > "$f"; rm -f "$t"'


def remove_line_command() -> str:
    """On the receiving host: the copy key's lines and its receiver gone; prints
    ``stale`` when there was a line."""
    edit = _REWRITE.format(edit=f"grep -v ' {MARK}$'")
    return (
        f'{AUTHORIZED_KEYS}; if [ -f "$f" ] && grep -q " {MARK}$" "$f"; then {edit}; '
        f"echo stale; fi; rm -f {RECEIVER}"
    )


def renew_command() -> str:
    """On the receiving host: the key's line expires EXPIRY_MINUTES from now."""
    sed = f'sed "/ {MARK}\\$/ s/expiry-time=\\"[0-9]*\\"/expiry-time=\\"$e\\"/"'
    return (
        f"{AUTHORIZED_KEYS}; e=$(date -d '+{EXPIRY_MINUTES} minutes' +%Y%m%d%H%M); "
        + _REWRITE.format(edit=sed)
    )


def add_line_command(public_key: str, options: str, command: str, minutes: int) -> str:
    """On the receiving host: append the key with ``options``, an expiry-time
    ``minutes`` ahead on the host's own clock (the one its sshd compares with) and the
    forced ``command``. A file not ending in a newline gets one first."""
    return (
        f'{AUTHORIZED_KEYS}; umask 077; mkdir -p "$(dirname "$f")"; '
        f"e=$(date -d '+{minutes} minutes' +%Y%m%d%H%M); "
        'if [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ]; then echo >> "$f"; fi; '
        f'printf \'%s,expiry-time="%s",command="%s" %s %s\\n\' {shlex.quote(options)} "$e" '
        f'{shlex.quote(command)} {shlex.quote(public_key)} {MARK} >> "$f"'
    )


def make_key_command() -> str:
    """On the sending host: a fresh key (an earlier one removed, said as ``stale``)."""
    return (
        "command -v ssh-keygen >/dev/null || { echo 'no ssh-keygen: apt install "
        "openssh-client' >&2; exit 3; }; "
        f"if [ -e {KEY_DIR} ]; then rm -rf {KEY_DIR}; echo stale; fi; "
        f"mkdir -m 700 {KEY_DIR} && ssh-keygen -q -t ed25519 -N '' -C {MARK} -f {KEY} && "
        f"cut -d' ' -f1,2 {KEY}.pub"
    )


def remove_key_command() -> str:
    return f"if [ -e {KEY_DIR} ]; then rm -rf {KEY_DIR}; echo stale; fi"


def receiver_script(receives: copy_commands.Receives) -> str:
    """The key's forced command: runs what the copy sends, exactly, refuses the rest.

    A tar receiver restricted to the copied paths, the owner/ACL lists into META_DIR,
    and rsync's server whose options are the copy's and whose only path is the
    mailbox tree: a generic receiver running as root could write anywhere.
    """
    lines = [
        "#!/bin/bash",
        "# chatmail-migrate: the receiving side of one copy (--copy-key ephemeral).",
        "c=${SSH_ORIGINAL_COMMAND-}",
        'refuse() { echo "chatmail-migrate copy key: refused: $1" >&2; exit 126; }',
    ]
    if receives.exact:
        patterns = "|".join(shlex.quote(e) for e in receives.exact)
        lines.append(f'case "$c" in {patterns}) exec /bin/bash -c "$c";; esac')
    if receives.rsync_tree:
        prefix = copy_commands.rsync_receive_command() + " --server "
        suffix = f" . {receives.rsync_tree}/"
        lines += [
            f"p={shlex.quote(prefix)}; s={shlex.quote(suffix)}",
            f"re={shlex.quote(RSYNC_OPTION)}",
            'if [ "${c#"$p"}" != "$c" ] && [ "${c%"$s"}" != "$c" ]; then',
            '  o=${c#"$p"}; o=${o%"$s"}',
            # Words of letters, digits and . % @ = - only: no quoting, globbing or
            # second command survives the split below.
            "  [[ $o =~ ^[A-Za-z0-9.%@=\\ -]*$ ]] || refuse 'rsync options not the copy'\"'\"'s'",
            '  for w in $o; do [[ $w =~ $re ]] || refuse "rsync option $w"; done',
            '  exec /bin/bash -c "$c"',
            "fi",
        ]
    lines.append('refuse "not this copy\'s receiving side: ${c:0:200}"')
    return "\n".join(lines) + "\n"


def _quiet(runner: Runner, role: str, command: str) -> str:
    return runner.run(role, command, hide=True, quiet=True).stdout


def authorize_on(
    runner: Runner,
    role: str,
    public_key: str,
    options: str,
    command: str,
    minutes: int,
    receiver: str = "",
) -> bool:
    """Replace any copy key line on ``role`` by this one, its ``receiver`` script in
    place first; True when a stale line was there."""
    install = ""
    if receiver:
        install = (
            f"umask 077; mkdir -p -m 700 {commands.STATE_DIR}; "
            f"printf '%s' {shlex.quote(receiver)} > {RECEIVER}.tmp; "
            f"chmod 700 {RECEIVER}.tmp; mv {RECEIVER}.tmp {RECEIVER}; "
        )
    add = add_line_command(public_key, options, command, minutes)
    out = _quiet(runner, role, f"set -eu; {remove_line_command()}; {install}{add}")
    return "stale" in out.split()


@contextmanager
def authorized(
    settings: Settings, runner: Runner, receives: copy_commands.Receives, target: dict
) -> Iterator[None]:
    """With --copy-key ephemeral: the copy key made on old and authorized on new for
    the copy's duration; removed from both whatever happens. Else nothing."""
    if settings.copy_key != "ephemeral":
        yield
        return
    try:
        stale = []
        out = _quiet(runner, "old", make_key_command())
        if "stale" in out.split():
            stale.append("old")
        public_key = _public_key(out, settings.dry)
        probe = f"echo {PROBE} $SSH_CLIENT"
        if authorize_on(runner, "new", public_key, "restrict", probe, PROBE_MINUTES):
            stale.append("new")
        if stale:
            print(f"  removed the copy key an interrupted run left (on {' and '.join(stale)})")
        address = _source_address(settings, runner, target)
        options = f'restrict,from="{address}"'
        authorize_on(
            runner,
            "new",
            public_key,
            options,
            RECEIVER,
            EXPIRY_MINUTES,
            receiver_script(receives),
        )
        print(
            f"  copy key made on old, authorized on new for {address} and this copy's "
            f"receiving side, expiring {EXPIRY_MINUTES} minutes after the tool last renews "
            "it; your agent stays here"
        )
        with _renewing(settings):
            yield
    finally:
        remove(settings, runner)


def _public_key(out: str, dry: bool) -> str:
    words = out.split()
    if dry:
        return "ssh-ed25519 <copy key>"
    if (
        len(words) >= 2
        and words[-2] == "ssh-ed25519"
        and re.fullmatch(r"[A-Za-z0-9+/=]+", words[-1])
    ):
        return f"{words[-2]} {words[-1]}"
    raise MigrateError(f"ssh-keygen on old printed no ed25519 key ({out.strip()[:80]!r})")


def _source_address(settings: Settings, runner: Runner, target: dict) -> str:
    """Old's address as new sees it: old's first login with the key prints it."""
    ssh = copy_commands.ssh_to_new(
        target["host"], target["port"], target["user"], '"$kh"', identity=KEY
    )
    script = (
        'set -e; d=$(mktemp -d); trap \'rm -rf "$d"\' EXIT; kh="$d/known_hosts"; '
        f"printf '%s\\n' {shlex.quote(target['host_key_line'])} > \"$kh\"; "
        f"timeout 60 {ssh} {PROBE} </dev/null"
    )
    result = runner.run("old", f"bash -c {shlex.quote(script)}", hide=True, quiet=True, warn=True)
    if settings.dry:
        return "<old's address as new sees it>"
    words = result.stdout.split()
    if result.exited == 0 and PROBE in words:
        address = words[words.index(PROBE) + 1] if len(words) > words.index(PROBE) + 1 else ""
        if ip(address):
            return canonical_address(address)
    reason = (result.stderr.strip().splitlines() or [result.stdout.strip() or "no output"])[-1]
    raise MigrateError(
        f"old could not log in to new with the copy key ({reason}): check that new's sshd "
        "reads ~/.ssh/authorized_keys and allows public keys, or use --copy-key agent"
    )


@contextmanager
def _renewing(settings: Settings) -> Iterator[None]:
    """Keep the line's expiry ahead while the copy runs (a copy may last longer than
    the expiry; a later ssh session of it logs in again). Its own connection."""
    if settings.dry:
        yield
        return
    stop = threading.Event()

    def renew() -> None:
        runner = Runner(settings, echo=lambda *_: None)
        try:
            while not stop.wait(RENEW_SECONDS):
                try:
                    _quiet(runner, "new", renew_command())
                except MigrateError as e:
                    print(f"  could not renew the copy key's expiry on new: {e}", flush=True)
        finally:
            runner.close()

    thread = threading.Thread(target=renew, name="copy-key-renew", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def remove(settings: Settings, runner: Runner, *, interrupted: bool = False) -> None:
    """No copy key left on either host (a copy back from new, in a rollback, makes it
    the other way round); a host that cannot be reached is named, with what may be left
    there. ``interrupted``: say when one was found (a rollback finds an earlier run's)."""
    found = []
    for role in ("new", "old"):
        try:
            out = _quiet(runner, role, f"{remove_line_command()}; {remove_key_command()}")
        except MigrateError as e:
            print(
                f"  could not remove the copy key from {role} ({e}): remove {KEY_DIR} and "
                f"the line ending in {MARK} in root's authorized_keys there (it expires by "
                f"itself within {EXPIRY_MINUTES} minutes)"
            )
            continue
        if "stale" in out.split():
            found.append(role)
    if interrupted and found:
        print(f"  removed the copy key an interrupted run left (on {' and '.join(found)})")
