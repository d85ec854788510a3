"""The stand-in's table of relay releases: what each release's deploy does, and what
the relay checkout says (its release, from the git tag, and its chatmail.ini).

Each property of ``Release`` stands for a row of README's "Relay releases" table (its
comment names the upstream file); the deploy (``standin_deploy.py``) and the command
line (``cmdeploy_standin.py``) ask these properties, never compare version numbers,
so a new release is one place to read and change.
"""

from __future__ import annotations

import configparser
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

# A checkout without a release tag is taken for the lab's default relay.
DEFAULT_VERSION = "1.7.0"
# cmdeploy's stages in the order they run; from 1.8 CMDEPLOY_STAGES picks some.
ALL_STAGES = ("install", "configure", "activate")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


@dataclass(frozen=True)
class Release:
    """What one relay release's deploy does, as far as a move can tell."""

    version: str

    def at_least(self, *v: int) -> bool:
        return version_tuple(self.version) >= v

    @property
    def logs_in_to_mail_domain(self) -> bool:  # cmdeploy.py run_cmd, 1.6/1.7
        return not self.at_least(1, 8)

    @property
    def logs_in_to_ssh_host(self) -> bool:  # sshexec.py execnet gateway to --ssh-host, 1.8+
        return self.at_least(1, 8)

    @property
    def staged(self) -> bool:  # basedeploy.py CMDEPLOY_STAGES, 1.8+
        return self.at_least(1, 8)

    @property
    def users(self) -> list[str]:  # deployers.py required_users: echobot up to 1.8
        return ["vmail"] + (["echobot"] if not self.at_least(1, 9) else [])

    @property
    def runs_echobot(self) -> bool:  # 1.8 disables echobot.service at install
        return not self.at_least(1, 8)

    @property
    def shows_echobot_invite(self) -> bool:  # 1.7: cmdeploy.py run_cmd after the deploy
        return self.at_least(1, 7) and not self.at_least(1, 8)

    @property
    def writes_version_file(self) -> bool:  # /etc/chatmail-version from 1.7
        return self.at_least(1, 7)

    @property
    def checks_mtail_address(self) -> bool:  # 1.10+: a non-local one must be the host's
        return self.at_least(1, 10)

    @property
    def checks_external_tls(self) -> bool:  # 1.10+ tls_external_cert_and_key
        return self.at_least(1, 10)

    @property
    def self_signed_underscore(self) -> bool:  # 1.10+ "_" domains
        return self.at_least(1, 10)


# chatmail.ini read on its own, not with the tool's relay.py: the stand-in plays
# upstream, and a misreading in the tool must not be mirrored here.
@dataclass(frozen=True)
class RelayIni:
    mail_domain: str
    tls_external: tuple[str, ...] = ()
    mtail_address: str = ""
    mailboxes_dir: str = ""
    # doveauth's rules for accounts created at first login (config.py defaults).
    username_min_length: int = 9
    username_max_length: int = 9
    password_min_length: int = 9

    @property
    def ip_only(self) -> bool:
        try:
            return isinstance(ipaddress.ip_address(self.mail_domain), ipaddress.IPv4Address)
        except ValueError:
            return False

    @property
    def address_domain(self) -> str:
        """What follows the @ of the relay's addresses (config.py: ``[IP]`` when IP-only)."""
        return f"[{self.mail_domain}]" if self.ip_only else self.mail_domain

    @property
    def mailboxes(self) -> str:
        return self.mailboxes_dir or f"/home/vmail/mail/{self.mail_domain}"  # config.py


def read_ini(path: Path) -> RelayIni:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(path)
    params = ini["params"]
    return RelayIni(
        mail_domain=params["mail_domain"].strip(),
        tls_external=tuple(params.get("tls_external_cert_and_key", "").split()),
        mtail_address=params.get("mtail_address", "").strip(),
        mailboxes_dir=params.get("mailboxes_dir", "").strip(),
        username_min_length=int(params.get("username_min_length", 9)),
        username_max_length=int(params.get("username_max_length", 9)),
        password_min_length=int(params.get("password_min_length", 9)),
    )


def checkout_version(relay_dir: Path) -> tuple[str, str]:
    """The relay release (from the checkout's git tag) and its commit hash."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(relay_dir), *args], capture_output=True, text=True
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    return git("describe", "--tags", "--abbrev=0") or DEFAULT_VERSION, git(
        "rev-parse", "HEAD"
    ) or "unknown"
