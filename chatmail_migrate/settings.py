"""The one place where hosts and settings are resolved.

Every task calls :func:`resolve` with its own command-line values. Precedence,
highest first: the task's flags; the ``fab -H`` host (the step's own host); the
``chatmail_migrate`` config (``invoke.yaml``/``fabric.yaml``, ``INVOKE_``/``FABRIC_``
env vars); the dedicated environment variables; built-in defaults. The result is
frozen: a changed value is a new object (``dataclasses.replace``), made where it
is needed and visible there (``migration.pin_old_host`` for the old host).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from chatmail_migrate import dns_settings
from chatmail_migrate.errors import SettingsError
from chatmail_migrate.hostspec import HOST_RE, canonical_address, same_host, split_host
from chatmail_migrate.relay import MAILBOX_ROOT, Relay, read_relay


def mailbox_tree(settings: Settings) -> str:
    return settings.relay.mailbox_tree if settings.relay else MAILBOX_ROOT


# Defaults for the ``chatmail_migrate`` config namespace, declared once.
DEFAULTS: dict = {
    "chatmail_migrate": {
        "old_host": None,
        "new_host": None,
        # The address the OLD host uses to reach the new one (default: new_host).
        "new_host_from_old": None,
        "relay_dir": None,  # env CHATMAIL_RELAY_DIR; default: cwd if it holds chatmail.ini
        "cmdeploy": None,  # env CMDEPLOY; default: <relay_dir>/scripts/cmdeploy
        "ssh_config": None,  # env CHATMAIL_MIGRATE_SSH_CONFIG; default: ~/.ssh/config
        "user": "root",
        "connect_timeout": 10,
        "journal_dir": None,  # default: $XDG_STATE_HOME/chatmail-migrate
        "yes": False,
        # Trust on first use: record unknown host keys instead of refusing them.
        "accept_new_host_keys": False,
        "force": False,  # replace mailboxes the new host already holds
        "rollback": True,  # migrate re-enables mail on old when a step fails before DNS
        "checksum": False,  # verify compares content hashes too
        # Authoritative nameservers to ask ("ADDR[:PORT],..."); env
        # CHATMAIL_MIGRATE_NAMESERVERS; default: found through the system's resolver.
        "nameservers": None,
        "dns_timeout": 3600,  # how long switch-dns waits for every nameserver
        # How switch-dns changes the records: "manual" (asks you) or "rfc2136" (sends a
        # dynamic update signed with the TSIG key of $CHATMAIL_MIGRATE_TSIG or tsig_file).
        "dns": "manual",
        "dns_server": None,  # where updates go (default: the zone's SOA MNAME)
        "tsig_file": None,  # a key file as tsig-keygen writes it
        "new_addresses": None,  # the new host's public addresses, when not its own
        # Let switch-dns delete the domain's A records when new has no public IPv4.
        "ipv6_only": False,
        "dns_wait": True,
        "wait_caches": False,
        "update_known_hosts": False,
        # migrate: copy the mailboxes while the old relay still serves, then sync the rest.
        "presync": False,
        "compress": False,  # compress the copy on the wire (zstd when both hosts have it)
        # How old's ssh logs in to new for the copy: "agent" (yours, forwarded) or
        # "ephemeral" (a key made on old for one copy, authorized on new for it only).
        "copy_key": "agent",
        # Prepare the new host before the downtime (CMDEPLOY_STAGES, relay >= 1.8):
        # "auto" asks the relay checkout, "yes"/"no" decide.
        "cmdeploy_stages": "auto",
        "progress_interval": 10,  # seconds between progress lines when not on a terminal
    }
}


COPY_KEYS = ("agent", "ephemeral")


ENV_RELAY_DIR = "CHATMAIL_RELAY_DIR"


ENV_CMDEPLOY = "CMDEPLOY"


ENV_SSH_CONFIG = "CHATMAIL_MIGRATE_SSH_CONFIG"


ENV_NAMESERVERS = "CHATMAIL_MIGRATE_NAMESERVERS"


@dataclass(frozen=True)
class Settings:
    old_host: str | None = None
    new_host: str | None = None
    new_host_from_old: str | None = None
    relay_dir: Path | None = None
    cmdeploy: list[str] = field(default_factory=list)
    mail_domain: str | None = None
    # What the checkout says of the relay (release, chatmail.ini); None without one.
    relay: Relay | None = None
    ssh_config: str | None = None
    user: str = "root"
    connect_timeout: int = 10
    journal_dir: Path = Path()
    yes: bool = False
    accept_new_host_keys: bool = False
    force: bool = False
    rollback: bool = True
    checksum: bool = False
    nameservers: str | None = None
    dns_timeout: float = 3600
    dns: str = "manual"
    dns_server: str | None = None
    tsig_file: str | None = None
    new_addresses: list[str] = field(default_factory=list)
    ipv6_only: bool = False
    dns_wait: bool = True
    wait_caches: bool = False
    update_known_hosts: bool = False
    presync: bool = False
    compress: bool = False
    copy_key: str = "agent"
    cmdeploy_stages: str = "auto"
    progress_interval: float = 10
    # True when old_host is the mail domain by default, to be looked up in DNS.
    old_host_from_domain: bool = False
    dry: bool = False
    connect_kwargs: dict = field(default_factory=dict)

    def need(self, *names: str) -> None:
        """Fail with a clear message unless each named setting has a value."""
        hints = {
            "old_host": "give --old-host (or fab -H OLD), or run from a relay checkout",
            "new_host": "give --new-host NEW",
            "relay_dir": f"give --relay-dir, set {ENV_RELAY_DIR}, or cd into the relay checkout",
        }
        for name in names:
            if not getattr(self, name):
                raise SettingsError(f"no {name.replace('_', ' ')}: {hints.get(name, '')}")


def config_section(c) -> dict:
    """The ``chatmail_migrate`` config section of a task's context, as a dict."""
    try:
        return dict(c.config.chatmail_migrate)
    except AttributeError:
        return dict(DEFAULTS["chatmail_migrate"])


def connection_host(c) -> str | None:
    """The host string of ``fab -H`` (as typed) when the task got a Connection."""
    return getattr(c, "original_host", None)


def pinned_old_host(journal_dir: Path, mail_domain: str | None) -> str | None:
    """The old host a journaled migration of this domain uses (DNS may point elsewhere now)."""
    if not mail_domain:
        return None
    path = journal_dir / f"{mail_domain}.json"
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return None  # the journal itself says what is wrong with it, when it is read
    old_host = data.get("old_host") if isinstance(data, dict) else None
    return old_host if isinstance(old_host, str) else None


def resolve_relay_dir(value: str | None) -> Path | None:
    if value:
        path = Path(value).expanduser()
        if not (path / "chatmail.ini").is_file():
            raise SettingsError(
                f"relay dir {path} holds no chatmail.ini; point --relay-dir or "
                f"{ENV_RELAY_DIR} at the relay checkout"
            )
        return path.resolve()
    if Path("chatmail.ini").is_file():
        return Path.cwd()
    return None


def resolve_cmdeploy(value: str | None, relay_dir: Path | None) -> list[str]:
    if value:
        return shlex.split(value)
    if relay_dir:
        return [str(relay_dir / "scripts" / "cmdeploy")]
    return []


def check_cmdeploy(settings: Settings) -> None:
    """Fail unless the cmdeploy command can be started (before any host is touched)."""
    settings.need("relay_dir")
    if not settings.cmdeploy:
        raise SettingsError(f"no cmdeploy command: set {ENV_CMDEPLOY} or use a relay checkout")
    program = settings.cmdeploy[0]
    found = shutil.which(program, path=str(settings.relay_dir)) if "/" not in program else None
    found = found or shutil.which(program)
    if not found and not (("/" in program) and os.access(program, os.X_OK)):
        raise SettingsError(
            f"cmdeploy command {program!r} not found or not executable; run "
            f"scripts/initenv.sh in the relay checkout or set {ENV_CMDEPLOY}"
        )


def check_dns_update(settings: Settings) -> None:
    """The DNS mode, its server and its key, read before any host is touched (the key
    is loaded to check it, and not kept: each use reads it again)."""
    if settings.dns not in dns_settings.DNS_MODES:
        raise SettingsError(
            f"--dns {settings.dns!r} is none of {', '.join(dns_settings.DNS_MODES)}; give "
            "--dns manual (you change the records) or --dns rfc2136 (the tool sends them)"
        )
    if settings.dns_server:
        dns_settings.check_server_address(settings.dns_server)
    if settings.dns == "rfc2136":
        dns_settings.load_tsig(settings.tsig_file)


def resolve(
    c,
    *,
    role: str | None = None,
    old_host: str | None = None,
    new_host: str | None = None,
    relay_dir: str | None = None,
    new_host_from_old: str | None = None,
    yes: bool | None = None,
    accept_new_host_keys: bool | None = None,
    force: bool | None = None,
    rollback: bool | None = None,
    checksum: bool | None = None,
    nameservers: str | None = None,
    dns_timeout: float | None = None,
    dns: str | None = None,
    dns_server: str | None = None,
    tsig_file: str | None = None,
    new_addresses: str | None = None,
    ipv6_only: bool | None = None,
    dns_wait: bool | None = None,
    wait_caches: bool | None = None,
    update_known_hosts: bool | None = None,
    presync: bool | None = None,
    compress: bool | None = None,
    copy_key: str | None = None,
) -> Settings:
    """Settings for a task; ``role`` ("old"/"new") says which host ``fab -H`` names."""
    cfg = config_section(c)
    env = os.environ
    cli_host = connection_host(c)
    if role == "old" and cli_host and not old_host:
        old_host = cli_host
    if role == "new" and cli_host and not new_host:
        new_host = cli_host
    rdir = resolve_relay_dir(relay_dir or cfg.get("relay_dir") or env.get(ENV_RELAY_DIR))
    relay = read_relay(rdir) if rdir else None
    mail_domain = relay.mail_domain if relay else None
    state_home = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local/state")
    fabric_ssh = getattr(c.config, "runtime_ssh_path", None) if hasattr(c, "config") else None
    try:
        dry = bool(c.config.run.dry)
    except AttributeError:
        dry = False
    journal_dir = Path(cfg.get("journal_dir") or state_home / "chatmail-migrate").expanduser()
    old_host = old_host or cfg.get("old_host") or pinned_old_host(journal_dir, mail_domain)
    settings = Settings(
        # cmdeploy's own --ssh-host default: the mail domain, i.e. where DNS points now.
        old_host=old_host or mail_domain,
        old_host_from_domain=not old_host and bool(mail_domain),
        new_host=new_host or cfg.get("new_host"),
        new_host_from_old=new_host_from_old or cfg.get("new_host_from_old"),
        relay_dir=rdir,
        cmdeploy=resolve_cmdeploy(cfg.get("cmdeploy") or env.get(ENV_CMDEPLOY), rdir),
        mail_domain=mail_domain,
        relay=relay,
        ssh_config=fabric_ssh or cfg.get("ssh_config") or env.get(ENV_SSH_CONFIG),
        user=cfg.get("user") or "root",
        connect_timeout=int(cfg.get("connect_timeout") or 10),
        journal_dir=journal_dir,
        yes=bool(yes if yes is not None else cfg.get("yes")),
        accept_new_host_keys=bool(accept_new_host_keys or cfg.get("accept_new_host_keys")),
        force=bool(force or cfg.get("force")),
        rollback=bool(rollback if rollback is not None else cfg.get("rollback", True)),
        checksum=bool(checksum or cfg.get("checksum")),
        nameservers=nameservers or cfg.get("nameservers") or env.get(ENV_NAMESERVERS),
        dns_timeout=float(dns_timeout or cfg.get("dns_timeout") or 3600),
        dns=str(dns or cfg.get("dns") or "manual").lower(),
        dns_server=dns_server or cfg.get("dns_server"),
        tsig_file=tsig_file or cfg.get("tsig_file"),
        new_addresses=[
            a
            for a in (new_addresses or cfg.get("new_addresses") or "").replace(" ", ",").split(",")
            if a
        ],
        ipv6_only=bool(ipv6_only or cfg.get("ipv6_only")),
        dns_wait=bool(dns_wait if dns_wait is not None else cfg.get("dns_wait", True)),
        wait_caches=bool(wait_caches or cfg.get("wait_caches")),
        update_known_hosts=bool(update_known_hosts or cfg.get("update_known_hosts")),
        presync=bool(presync or cfg.get("presync")),
        compress=bool(compress or cfg.get("compress")),
        copy_key=str(copy_key or cfg.get("copy_key") or "agent").lower(),
        cmdeploy_stages=str(cfg.get("cmdeploy_stages") or "auto").lower(),
        progress_interval=float(cfg.get("progress_interval") or 10),
        dry=dry,
        connect_kwargs=dict(getattr(c.config, "connect_kwargs", None) or {}),
    )
    for name in ("old_host", "new_host", "new_host_from_old"):
        value = getattr(settings, name)
        if value and not HOST_RE.fullmatch(value):
            raise SettingsError(
                f"{name.replace('_', ' ')} {value!r} is not a host name or address; "
                "give HOST, USER@HOST or HOST:PORT (or an alias from your ssh config)"
            )
        if value and not 0 < (split_host(value).port or 22) < 65536:
            raise SettingsError(f"{name.replace('_', ' ')} {value!r}: the port must be 1-65535")
    for address in settings.new_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise SettingsError(
                f"new address {address!r} is not an IP address; give --new-address "
                "IPV4,IPV6 (what the new host's A and AAAA records should say)"
            ) from None
    if settings.ipv6_only and any(":" not in a for a in settings.new_addresses):
        raise SettingsError(
            "--ipv6-only and an IPv4 --new-address contradict each other: drop one "
            "(--ipv6-only deletes the A records, --new-address IPV4 sets them)"
        )
    settings = dataclasses.replace(
        settings, new_addresses=[canonical_address(a) for a in settings.new_addresses]
    )
    if settings.copy_key not in COPY_KEYS:
        raise SettingsError(
            f"copy key {settings.copy_key!r} is none of {', '.join(COPY_KEYS)}; give "
            "--copy-key agent (your agent, forwarded to old) or --copy-key ephemeral"
        )
    check_dns_update(settings)
    if settings.cmdeploy_stages not in ("auto", "yes", "no"):
        raise SettingsError(
            f"cmdeploy_stages is {settings.cmdeploy_stages!r}; set it to auto, yes or no"
        )
    if settings.ssh_config and not Path(settings.ssh_config).expanduser().is_file():
        raise SettingsError(
            f"ssh config {settings.ssh_config} does not exist; fix {ENV_SSH_CONFIG}"
        )
    if settings.old_host and settings.new_host and same_host(settings.old_host, settings.new_host):
        raise SettingsError(
            f"old and new host are both {settings.old_host}; give the new host with --new-host"
        )
    return settings
