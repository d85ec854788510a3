"""What the relay checkout says about the relay being moved: its release and chatmail.ini.

Releases differ in what a move must carry and in how their ``cmdeploy`` behaves;
README's "Relay releases" table names the upstream source of every difference.
This module only reads the checkout: it never talks to a host.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chatmail_migrate.errors import RelayConfigError

MAILBOX_ROOT = "/home/vmail/mail"


# Trees every release keeps, besides the mailboxes (seed: step 2).
SECRET_TREES = ["/var/lib/acme", "/etc/dkimkeys"]


ECHOBOT_TREES = ["/run/echobot", "/var/lib/echobot"]


SPOOL = "/var/spool/postfix"


# doveauth refuses new accounts while this file exists (any release).
NOCREATE = "/etc/chatmail-nocreate"


# The self-signed pair of "_"-prefixed (1.10+) and IP-only (1.11+) relays.
SELF_SIGNED_PAIR = ["/etc/ssl/certs/mailserver.pem", "/etc/ssl/private/mailserver.key"]


def version_tuple(text: str | None) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text or "")[:3])


@dataclass(frozen=True)
class Relay:
    mail_domain: str
    # The checkout's release (its latest git tag, as upstream tags releases), if known.
    release: str | None = None
    mailboxes_dir: str = ""
    # tls_external_cert_and_key (1.10+): the certificate and key the operator manages.
    tls_external: tuple[str, ...] = ()
    mtail_address: str | None = None

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.release)

    def since(self, *version: int) -> bool:
        """Whether the release is known and at least ``version``."""
        return bool(self.release) and self.version >= version

    @property
    def ip_only(self) -> bool:
        """1.11+: mail_domain is an IPv4 address; addresses look like user@[1.2.3.4]."""
        try:
            return isinstance(ipaddress.ip_address(self.mail_domain), ipaddress.IPv4Address)
        except ValueError:
            return False

    @property
    def has_echobot(self) -> bool:
        """Echobot runs up to 1.7 (1.8 disables it); an unknown release may have one."""
        return not self.since(1, 8)

    @property
    def logs_in_to_mail_domain(self) -> bool:
        """Up to 1.7, ``cmdeploy run`` also opens its own ssh to mail_domain."""
        return not self.since(1, 8)

    @property
    def self_signed(self) -> bool:
        return not self.tls_external and (self.mail_domain.startswith("_") or self.ip_only)

    @property
    def mailbox_tree(self) -> str:
        """The tree the mailboxes are copied as: all of /home/vmail/mail by default."""
        default = f"{MAILBOX_ROOT}/{self.mail_domain}"
        if not self.mailboxes_dir or self.mailboxes_dir.rstrip("/") == default:
            return MAILBOX_ROOT
        return self.mailboxes_dir.rstrip("/")

    @property
    def mailbox_dir(self) -> str:
        """The directory holding one directory per account."""
        return self.mailboxes_dir.rstrip("/") or f"{MAILBOX_ROOT}/{self.mail_domain}"

    def secret_paths(self) -> list[str]:
        """State the new host's configure stage reads (1.10+ fails without the external
        TLS files), which does not change while the relay serves."""
        paths = [*SECRET_TREES, *self.tls_external]
        if self.self_signed:
            paths += SELF_SIGNED_PAIR
        return paths

    def copy_paths(self) -> list[str]:
        """Everything the move carries from old to new, mailboxes first."""
        paths = [self.mailbox_tree, *self.secret_paths()]
        if self.has_echobot:
            paths += ECHOBOT_TREES
        return [*paths, SPOOL, NOCREATE]


def read_relay(relay_dir: Path) -> Relay:
    """The relay as the checkout in ``relay_dir`` describes it."""
    ini_path = relay_dir / "chatmail.ini"
    ini = configparser.ConfigParser(interpolation=None)
    try:
        ini.read(ini_path)
        params = ini["params"]
        domain = params["mail_domain"].strip()
    except (KeyError, configparser.Error) as e:
        raise RelayConfigError(
            f"{ini_path}: no [params] mail_domain ({e}); fix chatmail.ini"
        ) from None
    external = tuple(params.get("tls_external_cert_and_key", "").split())
    if external and len(external) != 2:
        raise RelayConfigError(
            f"{ini_path}: tls_external_cert_and_key needs two paths, CERT KEY; fix chatmail.ini"
        )
    return Relay(
        mail_domain=domain,
        release=checkout_release(relay_dir),
        mailboxes_dir=params.get("mailboxes_dir", "").strip(),
        tls_external=external,
        mtail_address=params.get("mtail_address", "").strip() or None,
    )


def checkout_release(relay_dir: Path) -> str | None:
    """The relay release of the checkout (its latest tag, as upstream tags releases)."""
    result = subprocess.run(
        ["git", "-C", str(relay_dir), "describe", "--tags", "--abbrev=0"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


# What a move carries when no relay checkout is given (a step run by hand):
# every path any release may hold, each skipped where old does not have it.
DEFAULT_COPY_PATHS = [MAILBOX_ROOT, *SECRET_TREES, *ECHOBOT_TREES, SPOOL, NOCREATE]


def copy_paths(relay: Relay | None) -> list[str]:
    return relay.copy_paths() if relay else list(DEFAULT_COPY_PATHS)
