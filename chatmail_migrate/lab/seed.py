"""Make the lab's ``old`` host a believable relay, and ``new`` a target for it.

The relay really works (the stand-in configures Postfix, Dovecot and OpenDKIM): IMAP
on 993, submission on 465, delivery by LMTP, DKIM signing. Every seeded account's
password is known: ``account_password(address)``, "lab-" and the first 12 hex
digits of the address's SHA-256 (``invoke lab.seed`` prints one account with it).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from chatmail_migrate.lab import nameserver
from chatmail_migrate.lab.lab import Lab
from chatmail_migrate.lab.seed_host import account_password
from chatmail_migrate.lab.standin_deploy import deploy_script, user_commands
from chatmail_migrate.lab.standin_release import ALL_STAGES, Release, checkout_version, read_ini

__all__ = ["account_password", "seed_relay", "seeded_accounts", "SeedParams"]

NEW_HOST_USERS = ("different", "none")
RELEASES = ("1.6.0", "1.7.0", "1.8.0", "1.9.0", "1.10.0", "1.11.0", "1.12.0")


@dataclass
class SeedParams:
    accounts: int = 20
    messages: int = 10
    size: int = 4096
    version: str = "1.7.0"
    # "different": the relay's users exist on new with other UIDs/GIDs;
    # "none": a bare new host, users not created yet.
    new_users: str = "different"
    seed: int = 1
    dns_ttl: int = 300
    # A relay first deployed as this release, then upgraded to ``version`` in place
    # (it keeps what the older release left, such as echobot's state).
    upgraded_from: str | None = None
    # Registration closed: /etc/chatmail-nocreate exists on old.
    nocreate: bool = False
    # mail_domain is old's IPv4 address (an IP-only relay, 1.11+).
    ip_only: bool = False
    # chatmail.ini's mailboxes_dir (default: /home/vmail/mail/DOMAIN).
    mailboxes_dir: str = ""
    # tls_external_cert_and_key (1.10+): a certificate the operator manages, on old.
    tls_external: bool = False
    # chatmail.ini's mtail_address.
    mtail_address: str = ""


EXTERNAL_TLS = ("/etc/ssl/lab-external/fullchain.pem", "/etc/ssl/lab-external/privkey.pem")


def serve_relay_zone(lab: Lab, ttl: int) -> None:
    """Publish the relay in the lab's DNS as its operator would have: A to old, the
    DKIM key's TXT record and a CAA record naming the relay's ACME account."""
    facts = lab.ssh(
        "old",
        "openssl pkey -in /etc/dkimkeys/opendkim.private -pubout -outform DER | base64 -w0; echo; "
        "cat /var/lib/acme/accounts/*/*/url 2>/dev/null || true",
    ).stdout.split()
    records = {"a": [lab.address("old")], "ttl": ttl, "dkim": f"v=DKIM1; k=rsa; p={facts[0]}"}
    if len(facts) > 1:
        records["accounturi"] = facts[1]
    nameserver.start(lab, records)


def seeded_accounts(lab: Lab, host: str = "old") -> list[str]:
    """The addresses with an account on ``host`` (a password file in their mailbox)."""
    ini = read_ini(lab.relay_dir / "chatmail.ini")
    listing = f"cd {shlex.quote(ini.mailboxes)} && ls -d *@*/password 2>/dev/null || true"
    out = lab.ssh(host, listing).stdout
    return sorted(line.rsplit("/", 1)[0] for line in out.split())


def deploy_on_old(lab: Lab, version: str) -> None:
    """What a full ``cmdeploy run`` of ``version`` does to old (the stand-in's own script)."""
    lab.tag_relay_checkout(version)
    ini = read_ini(lab.relay_dir / "chatmail.ini")
    _, githash = checkout_version(lab.relay_dir)
    script = deploy_script(Release(version), ini, githash, list(ALL_STAGES), disable_mail=False)
    lab.ssh("old", "sh -s", input=script)


def seed_relay(lab: Lab, params: SeedParams | None = None) -> dict:
    """Seed old as a live relay of ``params.version``; prepare new's users."""
    p = params or SeedParams()
    if p.new_users not in NEW_HOST_USERS:
        raise ValueError(f"new_users must be one of {NEW_HOST_USERS}, not {p.new_users!r}")
    started = time.monotonic()
    domain = lab.address("old") if p.ip_only else lab.domain
    lab.set_ini(
        mail_domain=domain,
        mailboxes_dir=p.mailboxes_dir,
        mtail_address=p.mtail_address,
        tls_external_cert_and_key=" ".join(EXTERNAL_TLS) if p.tls_external else "",
    )
    if p.tls_external:
        # As certbot keeps them: the names in chatmail.ini are links into an archive.
        cert, key = EXTERNAL_TLS
        archive = Path(cert).parent / "archive"
        lab.ssh(
            "old",
            f"mkdir -p {archive} && openssl req -x509 -newkey rsa:2048 -nodes -days 90 "
            f"-subj /CN={domain} -keyout {archive}/privkey1.pem -out {archive}/fullchain1.pem "
            f"2>/dev/null && chmod 600 {archive}/privkey1.pem && "
            f"ln -s archive/fullchain1.pem {cert} && ln -s archive/privkey1.pem {key}",
        )
    first = p.upgraded_from or p.version
    # The relay's own deploy comes first: users, opendkim on chatmail's socket, the
    # DKIM key, Postfix's milter, services running.
    deploy_on_old(lab, first)
    script = (Path(__file__).parent / "seed_host.py").read_text()
    args = {
        "domain": domain,
        "accounts": p.accounts,
        "messages": p.messages,
        "size": p.size,
        "seed": p.seed,
        "echobot": Release(first).runs_echobot,
        "acme": not (p.ip_only or p.tls_external or domain.startswith("_")),
        "dkim": not p.ip_only,
        "mailboxes_dir": p.mailboxes_dir or f"/home/vmail/mail/{domain}",
        "hostname": "old",
        "mail_days": 20,
        "inactive_days": 90,
    }
    out = lab.ssh("old", f"python3 - {shlex.quote(json.dumps(args))}", input=script, timeout=1800)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    if p.upgraded_from:
        deploy_on_old(lab, p.version)
    if p.nocreate:
        lab.ssh("old", "touch /etc/chatmail-nocreate")
    # The seed replaced the certificate the first deploy made for itself (the lab's
    # acmetool): the relay serves the seeded one, as a relay serves its own.
    lab.ssh("old", "systemctl try-reload-or-restart dovecot postfix")
    # The image boots with Postfix running; a new host has no mail service yet.
    # Other system users come first there, so the relay's users get other UIDs/GIDs
    # than on old, and old's numeric ids name other users on new.
    commands = [
        "systemctl disable --now postfix dovecot",
        "useradd --system --user-group labpad1",
        "useradd --system --user-group labpad2",
    ]
    if p.new_users == "different":
        commands += user_commands(list(reversed(Release(p.version).users)))
    lab.ssh("new", " && ".join(commands))
    if not p.ip_only:
        serve_relay_zone(lab, p.dns_ttl)
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary
