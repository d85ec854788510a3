"""The command-line flags of the migration tasks, each declared once.

A :class:`Flag` names the tasks that take it, its help (with an example), its default
and the setting it gives :func:`settings.resolve`. :func:`migration_task` builds a
task's parameters and ``--help`` from these declarations, so a flag is added here
and nowhere else; the README's settings table is checked against them
(tests/test_cli.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from chatmail_migrate.cli.task import task


@dataclass(frozen=True)
class Flag:
    name: str  # the task parameter; --name-with-dashes on the command line
    help: str
    tasks: tuple[str, ...]
    # The resolve() keyword it sets; None: the task reads it itself.
    setting: str | None
    # None: takes a value; False: a switch; True: on unless --no-NAME.
    default: bool | None = None

    @property
    def option(self) -> str:
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.default is True else f"--{dashed}"


# Every migration task: the steps, then the others. Flags most tasks take are said
# as "all but" these.
TASKS = (
    "disable-mail",
    "presync",
    "copy-data",
    "install",
    "fix-ownership",
    "verify",
    "switch-dns",
    "enable-mail",
    "preflight",
    "check-relay",
    "rollback",
    "migrate",
    "status",
)


def all_but(*names: str) -> tuple[str, ...]:
    return tuple(task for task in TASKS if task not in names)


FLAGS = (
    Flag(
        "old_host",
        "Old relay host, as you would give it to ssh (alias, name or address); default: "
        "mail_domain from chatmail.ini. Example: --old-host 13.37.13.37",
        tasks=all_but("fix-ownership", "enable-mail", "check-relay", "status"),
        setting="old_host",
        default=None,
    ),
    Flag(
        "new_host",
        "New host, as you would give it to ssh. Example: --new-host 13.12.23.42",
        tasks=all_but("disable-mail", "status"),
        setting="new_host",
        default=None,
    ),
    Flag(
        "new_host_from_old",
        "Address the OLD host uses to reach the new one, when it differs from yours "
        "(e.g. a private network). Example: --new-host-from-old 10.0.0.2",
        tasks=("presync", "copy-data", "preflight", "migrate"),
        setting="new_host_from_old",
        default=None,
    ),
    Flag(
        "relay_dir",
        "Relay checkout holding chatmail.ini and scripts/cmdeploy; default: "
        "$CHATMAIL_RELAY_DIR or the current directory. Example: --relay-dir ~/relay",
        tasks=TASKS,
        setting="relay_dir",
        default=None,
    ),
    Flag(
        "yes",
        "Do not wait for confirmation that DNS was changed (unattended runs). Example: --yes",
        tasks=("switch-dns", "migrate"),
        setting="yes",
        default=False,
    ),
    Flag(
        "restart",
        "Forget the journal of this relay and start the migration from step 1. Example: --restart",
        tasks=("migrate"),
        setting=None,
        default=False,
    ),
    Flag(
        "force",
        "Replace mailboxes the new host already holds for this domain (preflight "
        "refuses otherwise). Example: --force",
        tasks=("copy-data", "preflight", "migrate"),
        setting="force",
        default=False,
    ),
    Flag(
        "rollback",
        "When a step fails before DNS is switched, re-enable mail on the old host "
        "(default); --no-rollback leaves it off, to resume at the failed step. Example: "
        "--no-rollback",
        tasks=("migrate"),
        setting="rollback",
        default=True,
    ),
    Flag(
        "accept_new_host_keys",
        "Trust host keys not yet in known_hosts and record them there (changed keys are "
        "always refused). Example: --accept-new-host-keys",
        tasks=("preflight", "migrate"),
        setting="accept_new_host_keys",
        default=False,
    ),
    Flag(
        "checksum",
        "Also compare file contents (sha256) on both hosts: slower, thorough. Example: --checksum",
        tasks=("verify", "migrate"),
        setting="checksum",
        default=False,
    ),
    Flag(
        "nameserver",
        "Authoritative nameservers to ask, ADDR[:PORT],... (split horizon, tests); "
        "default: found through your resolver. Example: --nameserver 192.0.2.53",
        tasks=("switch-dns", "preflight", "check-relay", "migrate"),
        setting="nameservers",
        default=None,
    ),
    Flag(
        "dns_timeout",
        "Seconds to wait for every nameserver to answer the new address (default 3600). "
        "Example: --dns-timeout 600",
        tasks=("switch-dns", "migrate"),
        setting="dns_timeout",
        default=None,
    ),
    Flag(
        "dns",
        "How switch-dns changes the records: manual (default: it prints them and waits "
        "for you) or rfc2136 (it sends the zone's primary a dynamic update signed with "
        "the TSIG key of $CHATMAIL_MIGRATE_TSIG or --tsig-file; rollback sets them "
        "back). Example: --dns rfc2136",
        tasks=("switch-dns", "preflight", "rollback", "migrate"),
        setting="dns",
        default=None,
    ),
    Flag(
        "dns_server",
        "Where --dns rfc2136 sends its updates, ADDR[:PORT] (a hidden primary, a "
        "provider's update server); default: the zone's SOA MNAME. Example: "
        "--dns-server 192.0.2.53",
        tasks=("switch-dns", "preflight", "rollback", "migrate"),
        setting="dns_server",
        default=None,
    ),
    Flag(
        "tsig_file",
        "The TSIG key for --dns rfc2136, a file as tsig-keygen writes it (else "
        "$CHATMAIL_MIGRATE_TSIG=[ALGORITHM:]NAME:SECRET; never the secret itself as a "
        "flag). Example: --tsig-file /etc/chatmail-migrate/relay-update.key",
        tasks=("switch-dns", "preflight", "rollback", "migrate"),
        setting="tsig_file",
        default=None,
    ),
    Flag(
        "new_address",
        "The address(es) clients will reach the new host at, for its DNS records (and "
        "where preflight tries relay 1.6/1.7 cmdeploy's own ssh root@DOMAIN). Default: "
        "the address the tool reached it at when public (NAT included), else the public "
        "ones on its interfaces (never private, docker or temporary). Example: "
        "--new-address 13.12.23.42,2001:db8::42",
        tasks=("switch-dns", "preflight", "migrate"),
        setting="new_addresses",
        default=None,
    ),
    Flag(
        "ipv6_only",
        "Clients reach the new host over IPv6 only: switch-dns proposes no A record (it "
        "deletes the domain's A records), preflight and switch-dns refuse that deletion "
        "without it. Example: --ipv6-only",
        tasks=("switch-dns", "preflight", "migrate"),
        setting="ipv6_only",
        default=False,
    ),
    Flag(
        "wait",
        "Wait for every nameserver to answer the new address (default); --no-wait does "
        "not. Example: --no-wait",
        tasks=("switch-dns", "migrate"),
        setting="dns_wait",
        default=True,
    ),
    Flag(
        "wait_caches",
        "After the switch, also wait until resolver caches can no longer hold the old "
        "address (the old TTL). Example: --wait-caches",
        tasks=("switch-dns", "migrate"),
        setting="wait_caches",
        default=False,
    ),
    Flag(
        "presync",
        "Copy the mailboxes while the old relay still serves, so the copy during the "
        "downtime sends only what changed since (rsync, deletions mirrored). Example: "
        "--presync",
        tasks=("migrate"),
        setting="presync",
        default=False,
    ),
    Flag(
        "compress",
        "Compress the copy on the wire (zstd when both hosts have it, else ssh -C): for "
        "slow links only. Example: --compress",
        tasks=("presync", "copy-data", "migrate"),
        setting="compress",
        default=False,
    ),
    Flag(
        "copy_key",
        "How old's ssh logs in to new for the copy: agent (default: your agent, "
        "forwarded to old while the copy runs) or ephemeral (a key made on old for that "
        "copy only, authorized on new for old's address, a few hours and the copy's "
        "receiving side only; removed after). Example: --copy-key ephemeral",
        tasks=("presync", "copy-data", "install", "preflight", "migrate"),
        setting="copy_key",
        default=None,
    ),
    Flag(
        "update_known_hosts",
        "Replace the old host's key for the mail domain in your known_hosts with the "
        "new host's key (verified by the tool's own connection). Example: "
        "--update-known-hosts",
        tasks=("switch-dns", "migrate"),
        setting="update_known_hosts",
        default=False,
    ),
    Flag(
        "probe_account",
        "Also log in over IMAP 993 as this existing account and list its folders. The "
        "password is asked at a prompt, or read from $CHATMAIL_PROBE_PASSWORD, never "
        "given as a flag; refused when new has no such account (a first login would "
        "create it). Example: --probe-account abcdefghi@chat.example.org",
        tasks=("check-relay"),
        setting=None,
        default=None,
    ),
    Flag(
        "new_host_gone",
        "The new host is gone for good (a dead disk): roll back without asking it; "
        "whatever mail it took is lost with it. Example: --new-host-gone",
        tasks=("rollback"),
        setting=None,
        default=False,
    ),
)
BY_NAME = {flag.name: flag for flag in FLAGS}


def flags_of(task_name: str) -> list[Flag]:
    return [flag for flag in FLAGS if task_name in flag.tasks]


def settings_from(given: dict) -> dict:
    """The flags given on the command line as resolve() takes them (not given: left out,
    so configuration and environment decide)."""
    out = {}
    for name, value in given.items():
        flag = BY_NAME[name]
        if flag.setting and value != flag.default:
            out[flag.setting] = value
    return out


def migration_task(body):
    """An Invoke task ``body(c, **given)`` taking the flags declared for its name.

    Its parameters (hence its options) and ``--help`` come from :data:`FLAGS`. Long
    options only: Invoke's automatic short ones follow the parameters' order, so they
    would change as flags are added (and it gave one task an unusable ``--``).
    """
    name = body.__name__.replace("_", "-")
    declared = flags_of(name)
    built = task(help={flag.name: flag.help for flag in declared}, auto_shortflags=False)(body)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("c", kind)]
    params += [inspect.Parameter(flag.name, kind, default=flag.default) for flag in declared]
    built.body.__signature__ = inspect.Signature(params)
    return built
