"""preflight's checks of one host or of this machine, one Check each."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time

import paramiko

from chatmail_migrate import audit, nameservers
from chatmail_migrate.checks.check import Check
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import copy_commands
from chatmail_migrate.hosts.addresses import (
    ipv4_deletion_refused,
    new_host_addresses,
    new_host_records,
)
from chatmail_migrate.hosts.commands import parse_sections
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.hostspec import canonical_address
from chatmail_migrate.lock import RUN_ID
from chatmail_migrate.relay import Relay, copy_paths
from chatmail_migrate.settings import Settings

# chatmail/docker keeps the relay's state in volumes, and chatmail.ini in the container.
DOCKER_FACTS = (
    "echo '== docker'; if [ -d /var/lib/docker/volumes ]; then "
    "find /var/lib/docker/volumes -mindepth 3 -maxdepth 4 \\( -name opendkim.private "
    "-o -name chatmail.ini \\) -print 2>/dev/null | head -n3; fi; "
    "if command -v docker >/dev/null; then docker ps --format '{{.Names}} {{.Image}}' "
    "2>/dev/null | grep -i chatmail | head -n3; fi; true"
)


def facts_command(relay: Relay | None) -> str:
    """One command that tells preflight all it needs about a host."""
    paths = " ".join(shlex.quote(p) for p in copy_paths(relay))
    mailboxes = shlex.quote(relay.mailbox_dir if relay else "/nonexistent")
    external = " ".join(shlex.quote(p) for p in (relay.tls_external if relay else ()))
    return "; ".join(
        [
            "echo '== machine-id'; cat /etc/machine-id 2>/dev/null",
            "echo '== os'; . /etc/os-release 2>/dev/null; echo \"${ID:-unknown} ${VERSION_ID:-?}\"",
            "echo '== chatmail-version'; head -n1 /etc/chatmail-version 2>/dev/null",
            "echo '== addresses'; ip -o address show scope global | awk '{print $4}' | cut -d/ -f1",
            "echo '== programs'; for p in tar rsync zstd getfacl setfacl python3 ssh; do "
            'command -v "$p" >/dev/null && echo "$p"; done',
            f"echo '== mailboxes'; if [ -d {mailboxes} ]; then echo dir; "
            f"find {mailboxes} -mindepth 1 -maxdepth 1 -name '*@*' | wc -l; fi",
            # Bytes the trees take on disk, and free bytes where each would land.
            f"echo '== size'; du -s -B1 -c {paths} 2>/dev/null | tail -n1 | cut -f1",
            "echo '== free'; for p in " + paths + "; do d=$p; "
            'while [ ! -e "$d" ]; do d=$(dirname "$d"); done; '
            'df -B1 --output=target,avail "$d" | tail -n1; done | sort -u',
            f'echo \'== tls-external\'; for f in {external}; do test -f "$f" && echo "$f"; '
            "done; true",
            DOCKER_FACTS,
        ]
    )


def host_facts(runner: Runner, role: str, relay: Relay | None) -> dict[str, list[str]]:
    result = runner.run(role, facts_command(relay), hide=True, quiet=True, warn=True)
    return parse_sections(result.stdout)


def _run_local(
    settings: Settings, command: list[str], timeout: int, **kwargs
) -> subprocess.CompletedProcess:
    """Run a command on this machine, recorded in the command log. One that cannot
    start or times out comes back with exit code -1 and the reason as its stderr."""
    started, clock = time.time(), time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        result = subprocess.CompletedProcess(command, -1, "", f"cannot run: {e}")
    where = f"[local {kwargs.get('cwd') or os.getcwd()}]"
    seconds = time.monotonic() - clock
    audit.record(settings, where, shlex.join(command), started, seconds, result.returncode)
    return result


def _last_line(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stderr or result.stdout).strip().splitlines()[-1:]) or "no output"


def check_cmdeploy_runs(settings: Settings) -> Check:
    command = [*settings.cmdeploy, "--help"]
    result = _run_local(settings, command, 120, cwd=settings.relay_dir)
    if result.returncode == -1:
        return Check("FAIL", "cmdeploy", f"`{shlex.join(command)}` {result.stderr}")
    if result.returncode != 0:
        return Check(
            "FAIL",
            "cmdeploy",
            f"`{shlex.join(command)}` exited {result.returncode}: {_last_line(result)}; "
            "run scripts/initenv.sh in the relay checkout",
        )
    return Check(
        "PASS", "cmdeploy", f"{shlex.join(settings.cmdeploy)} runs (relay {settings.relay_dir})"
    )


def check_domain_login(settings: Settings, runner: Runner) -> Check | None:
    """Relays up to 1.7: cmdeploy's own ``ssh root@DOMAIN`` must reach new after the switch.

    Their cmdeploy logs in to the mail domain whatever ``--ssh-host`` says, with OpenSSH
    and the operator's ssh config, at the address DNS gives: after the switch that is
    new, on the port (and jump host) the config gives the domain, not the ones the tool
    uses for new. Tried here with OpenSSH at each address the records will name, new's
    key pinned under the domain's name, so a failure shows before mail goes down.
    """
    relay, domain = settings.relay, settings.mail_domain
    if not relay or not domain or relay.ip_only or not relay.logs_in_to_mail_domain:
        return None
    name = f"login to {domain} (cmdeploy {relay.release or 'before 1.8'})"
    config = ["-F", settings.ssh_config] if settings.ssh_config else []
    pinned = _configured_hostname(settings, config, domain)
    if pinned:
        # A HostName for the domain wins over DNS: cmdeploy logs in there, before and
        # after the switch, as it does today.
        command = [
            "ssh",
            *config,
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=15",
            f"root@{domain}",
            "true",
        ]
        result = _run_local(settings, command, 60)
        if result.returncode != 0:
            return Check(
                "FAIL",
                name,
                f"`ssh root@{domain}` (HostName {pinned} in your ssh config) failed: "
                f"{_last_line(result)}; "
                "this relay's cmdeploy logs in there on every run",
            )
        if canonical_address(pinned) == canonical_address(runner.address("old")[0]):
            return Check(
                "WARN",
                name,
                f"your ssh config's HostName sends `ssh root@{domain}` to the old host "
                f"{pinned}, which this relay's cmdeploy logs in to on every run: the move "
                "works, but point that HostName at the new host before old is gone",
            )
        return Check(
            "PASS", name, f"`ssh root@{domain}` goes to {pinned} (your ssh config's HostName)"
        )
    try:
        records = new_host_addresses(settings, runner, echo=lambda line: None)
    except MigrateError as e:
        return Check("WARN", name, f"not tried: {e}")
    addresses = records["A"] + records["AAAA"]
    try:
        key_line = runner.host_key_line("new", domain)
    except MigrateError as e:
        return Check("FAIL", name, f"not tried: {e}")
    failed = []
    with tempfile.NamedTemporaryFile("w", prefix="chatmail-migrate-kh-") as known:
        known.write(key_line + "\n")
        known.flush()
        for address in addresses:
            command = [
                "ssh",
                *config,
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=15",
                "-o",
                f"HostName={address}",
                "-o",
                f"HostKeyAlias={domain}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={known.name}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                f"root@{domain}",
                "true",
            ]
            result = _run_local(settings, command, 60)
            if result.returncode != 0:
                failed.append(f"{address}: {_last_line(result)}")
    if failed and len(failed) == len(addresses):
        return Check(
            "FAIL",
            name,
            f"this relay's cmdeploy logs in with `ssh root@{domain}`, which after the DNS "
            f"switch reaches new and failed ({'; '.join(failed)}): let new's sshd answer "
            f"where your ssh config sends {domain} (port 22 unless a Host entry says "
            "otherwise), or upgrade the relay to 1.8+, whose cmdeploy logs in to --ssh-host",
        )
    if failed:
        return Check("WARN", name, f"`ssh root@{domain}` at new failed at {'; '.join(failed)}")
    return Check("PASS", name, f"`ssh root@{domain}` reaches new at {', '.join(addresses)}")


def _configured_hostname(settings: Settings, config: list[str], name: str) -> str | None:
    """The HostName the ssh config gives ``name``, when it gives one (``ssh -G``)."""
    result = _run_local(settings, ["ssh", *config, "-G", f"root@{name}"], 30)
    if result.returncode != 0:
        return None
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname":
            return value if value.lower() != name.lower() else None
    return None


def check_agent(settings: Settings) -> Check:
    if settings.copy_key == "ephemeral":
        return Check(
            "PASS", "ssh-agent", "not forwarded: old logs in to new with a key made per copy"
        )
    sock = os.environ.get("SSH_AUTH_SOCK")
    if not sock or not os.path.exists(sock):
        return Check(
            "FAIL",
            "ssh-agent",
            "no agent (SSH_AUTH_SOCK): copy-data forwards it to the old host; "
            "run ssh-agent and ssh-add a key the new host accepts",
        )
    try:
        keys = paramiko.Agent().get_keys()
    except paramiko.SSHException as e:
        return Check("FAIL", "ssh-agent", f"cannot talk to the agent at {sock}: {e}")
    if not keys:
        return Check(
            "FAIL", "ssh-agent", "the agent holds no key: ssh-add the key for the new host"
        )
    return Check("PASS", "ssh-agent", f"{len(keys)} key(s) to forward for the copy")


def check_relay_kind(relay: Relay | None) -> Check | None:
    """Relays this tool cannot move to another address (chatmail.ini alone tells)."""
    if relay and relay.ip_only:
        return Check(
            "FAIL",
            "relay kind",
            f"mail_domain {relay.mail_domain} is an IP address (IP-only relay): every "
            f"address user@[{relay.mail_domain}] names the old host, so a new host with "
            "another address breaks them all; chatmail-migrate does not move IP-only relays",
        )
    return None


def check_relay_files(relay: Relay, old: dict, new: dict):
    """What chatmail.ini names that the new host needs: external TLS files, mtail's address."""
    if relay.tls_external:
        found = set(old.get("tls-external", []))
        missing = [p for p in relay.tls_external if p not in found]
        if missing:
            yield Check(
                "FAIL",
                "external TLS files",
                f"tls_external_cert_and_key names {', '.join(missing)}, not on old: put them "
                "there (or fix chatmail.ini); cmdeploy's configure fails without them",
            )
        else:
            yield Check(
                "PASS", "external TLS files", f"{' and '.join(relay.tls_external)} on old: carried"
            )
    address = relay.mtail_address
    if address and address not in ("127.0.0.1", "::1", "localhost"):
        if nameservers.canonical([address]) & nameservers.canonical(new.get("addresses", [])):
            yield Check("PASS", "mtail address", f"{address} is on new")
        else:
            yield Check(
                "FAIL",
                "mtail address",
                f"chatmail.ini sets mtail_address = {address}, which is not an address of "
                "the new host: mtail could not listen there; add the address to new or "
                "change mtail_address",
            )


NO_LOGIN = (
    "-o PubkeyAuthentication=no -o PasswordAuthentication=no -o GSSAPIAuthentication=no "
    "-o KbdInteractiveAuthentication=no -o HostbasedAuthentication=no"
)


def check_copy_path(settings: Settings, runner: Runner) -> Check:
    """The exact path of the copy: from old, in its unit, forwarded agent, batch ssh to new.

    With --copy-key ephemeral the copy's key does not exist yet (nothing is changed
    here): old reaches new's sshd, new's key pinned, and is asked to authenticate.
    """
    host, port, user = runner.address("new")
    host = settings.new_host_from_old or host
    key_line = runner.host_key_line("new", copy_commands.NEW_HOST_ALIAS)
    ephemeral = settings.copy_key == "ephemeral"
    ssh = copy_commands.ssh_to_new(host, port, user, '"$kh"')
    if ephemeral:
        # No method at all: "Permission denied" comes only once new's key was checked.
        ssh = ssh.replace("ssh ", f"ssh {NO_LOGIN} ", 1)
    script = (
        f"set -e; kh=$(mktemp); trap 'rm -f \"$kh\"' EXIT; "
        f"printf '%s\\n' {shlex.quote(key_line)} > \"$kh\"; timeout 60 {ssh} true"
    )
    result = runner.run(
        "old",
        f"{copy_commands.copy_launcher(RUN_ID, agent=not ephemeral)}bash -c "
        + shlex.quote(copy_commands.for_unit(script)),
        hide=True,
        quiet=True,
        warn=True,
        forward_agent=not ephemeral,
    )
    if ephemeral and "Permission denied" in result.stderr:
        return Check(
            "PASS", "old reaches new", f"{user}@{host}:{port}, key pinned (a copy key per copy)"
        )
    if result.exited != 0 or ephemeral:
        reason = (result.stderr.strip().splitlines() or ["logged in with no key"])[-1]
        # Old's ssh goes direct: a jump host that lets this machine in does not help it.
        gateway = runner.connection("new").gateway
        via = getattr(gateway, "host", "a ProxyCommand")
        jump = f" (this machine goes through {via}; old goes direct)" if gateway else ""
        return Check(
            "FAIL",
            "old reaches new",
            f"ssh {user}@{host}:{port} from old failed: {reason}{jump}; "
            "check the agent key, the address (--new-host-from-old) and firewalls",
        )
    return Check(
        "PASS", "old reaches new", f"{user}@{host}:{port} with forwarded agent, key pinned"
    )


def describe_version(settings: Settings, first_line: str) -> str:
    """/etc/chatmail-version holds the deploy's git commit: name its tag if we can."""
    if settings.relay_dir and first_line not in ("", "unknown"):
        result = subprocess.run(
            ["git", "-C", str(settings.relay_dir), "describe", "--tags", first_line],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            return f"{result.stdout.strip()} (commit {first_line[:12]})"
    return f"commit {first_line[:12]}" if first_line else "version unknown"


def check_new_records(settings: Settings, runner: Runner) -> Check | None:
    """The records switch-dns will propose for new, refused here as there when they
    delete every A record without --ipv6-only (IPv4-only clients would lose the relay)."""
    name = "records for new"
    try:
        new, why = new_host_records(settings, runner, echo=lambda line: None)
    except MigrateError as e:
        return Check("WARN", name, f"not checked: {e}")
    try:
        _, servers = nameservers.authoritative_servers(
            settings.mail_domain or "", nameservers.parse_nameservers(settings.nameservers)
        )
        current = nameservers.address_records(settings.mail_domain or "", servers)
    except MigrateError:
        return None  # the DNS check above says why
    old_a = sorted({v for answer in current.values() for v in answer["A"].values})
    refused = ipv4_deletion_refused(settings, old_a, new["A"], why["A"])
    if refused:
        return Check("FAIL", name, refused)
    return Check(
        "PASS",
        name,
        "; ".join(f"{t} {', '.join(v) or '(none)'}" for t, v in new.items()),
    )
