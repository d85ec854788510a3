"""Shell commands the steps run on the hosts: built here, as plain testable strings."""

from __future__ import annotations

import shlex

from chatmail_migrate.relay import MAILBOX_ROOT

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


# The cutover's own commands, in the order every release's deploy handles the units
# (dovecot before postfix, both ways: 1.6/1.7 __init__.py, 1.8+ deployers.py), and as
# its --disable-mail leaves them: stopped and disabled, so a reboot keeps mail off.
# postfix.service only wraps the instance postfix@- (pulled in through a generator's
# wants link): stopping the wrapper stops the instance; both are named to be sure.
# --no-reload: enabling or disabling only writes the wants links a boot reads; the
# manager's reload (twice, about 0.5 s each on a small host) would sit in the window,
# and the units themselves are loaded already (the converge deploy reloads after).
# SYSTEMCTL_SKIP_SYSV=1: both packages also ship an init script, and systemctl would
# run update-rc.d for each (0.3 s apiece, 0.6 s of new's enable in the window); a
# systemd boot ignores the rc.d links of a unit that has a unit file, and the
# converge deploy's own enable/disable brings them in line afterwards.
# Disabled before they stop, enabled before they start: a reboot at any moment keeps
# at most one host taking mail.
STOP_MAIL_UNITS = (
    "SYSTEMCTL_SKIP_SYSV=1 systemctl disable --quiet --no-reload "
    "dovecot.service postfix.service postfix@-.service && "
    "systemctl stop dovecot.service && systemctl stop postfix.service postfix@-.service"
)
START_MAIL_UNITS = (
    "SYSTEMCTL_SKIP_SYSV=1 systemctl enable --quiet --no-reload dovecot.service postfix.service && "
    "systemctl start dovecot.service && systemctl start postfix.service"
)
# Mail old took after its dovecot stopped (the release's order) waits in the carried
# queue as deferred, for Postfix's next retry (minutes): delivered at once instead.
FLUSH_QUEUE = "postqueue -f"


def local_mail_queued_command(domain: str, seconds: float) -> str:
    """After the flush: wait up to ``seconds`` until no queued message has a recipient
    at ``domain``, then print how many still have (0: all delivered to mailboxes)."""
    count = (
        "import json,sys; d='@'+sys.argv[1].lower(); print(sum(1 for l in sys.stdin "
        "if l.strip() and any(r.get('address','').lower().endswith(d) "
        "for r in json.loads(l).get('recipients',[]))))"
    )
    tries = max(1, int(seconds / 0.2))
    return (
        f"for i in $(seq {tries}); do n=$(postqueue -j | python3 -c {shlex.quote(count)} "
        f'{shlex.quote(domain)}); [ "$n" = 0 ] && break; sleep 0.2; done; echo "$n"'
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


def measure_command(
    phase: str, paths: list[str], known: tuple[int, int] | None = None, source: str = "presync"
) -> str:
    """Print the bytes (regular files) and entries under ``paths``: the progress total.

    ``known`` (bytes, entries), e.g. what the pre-sync found, is printed instead of
    walking the trees again inside the downtime; ``source`` says where it comes from
    ("presync", or "changed": the size of what changed since the pre-sync).
    """
    if known:
        return f'echo "{PROGRESS_TAG} total {phase} {int(known[0])} {int(known[1])} {source}" >&3'
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        # A live relay renames files while find runs: what vanished is no error here.
        # Niced: on a small host the copier must not wait for its progress display.
        f"{{ nice -n 19 find {quoted} -printf '%y %s\\n' 2>/dev/null || true; }} | "
        'awk \'{n++; if ($1 == "f") b += $2} '
        f'END {{printf "{PROGRESS_TAG} total {phase} %d %d\\n", b, n}}\' >&3'
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


def milter_sockets_command(wait_s: float = 5.0) -> str:
    """``ok PATH`` or ``missing PATH`` for each unix milter socket postfix uses.

    Postfix (main.cf and master.cf overrides) names them relative to its spool, where
    its smtpd runs chrooted; opendkim creates its socket a moment after it starts, so a
    missing one is waited for up to ``wait_s`` (0: the answer as it is now).
    """
    tries = max(0, int(wait_s / 0.1))
    return (
        "for m in $( { postconf -hx smtpd_milters non_smtpd_milters; "
        "postconf -P 2>/dev/null | sed -n 's/.*milters = //p'; } | tr ', ' '\\n\\n' | "
        "sed -n 's/^unix://p' | sort -u); do case $m in /*) p=$m;; "
        '*) p="$(postconf -h queue_directory)/$m";; esac; '
        f'for i in $(seq {tries}); do [ -S "$p" ] && break; sleep 0.1; done; '
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
