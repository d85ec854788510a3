"""Make the lab's ``old`` host a believable relay, and ``new`` a target for it."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from . import nameserver
from .cmdeploy_standin import (
    activate_script,
    checkout_version,
    install_script,
    relay_users,
    user_commands,
    version_tuple,
)
from .lab import Lab

NEW_HOST_USERS = ("different", "none")


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


def serve_relay_zone(lab: Lab, ttl: int) -> None:
    """Publish the relay in the lab's DNS as its operator would have: A to old, the
    DKIM key's TXT record and a CAA record naming the relay's ACME account."""
    facts = lab.ssh(
        "old",
        "openssl pkey -in /etc/dkimkeys/opendkim.private -pubout -outform DER | base64 -w0; echo; "
        "cat /var/lib/acme/accounts/*/*/url",
    ).stdout.split()
    nameserver.start(
        lab,
        {"a": [lab.address("old")], "ttl": ttl, "dkim": f"v=DKIM1; k=rsa; p={facts[0]}",
         "accounturi": facts[1]},
    )  # fmt: skip


def seed_relay(lab: Lab, params: SeedParams | None = None) -> dict:
    """Seed old as a live relay of ``params.version``; prepare new's users."""
    p = params or SeedParams()
    if p.new_users not in NEW_HOST_USERS:
        raise ValueError(f"new_users must be one of {NEW_HOST_USERS}, not {p.new_users!r}")
    started = time.monotonic()
    lab.tag_relay_checkout(p.version)
    echobot = version_tuple(p.version) < (1, 8)
    # On old, the users come first, as the relay's own deploy made them.
    _, githash = checkout_version(lab.relay_dir)
    lab.ssh("old", "sh -s", input=install_script(lab.domain, p.version, githash))
    script = (Path(__file__).parent / "seed_host.py").read_text()
    args = {
        "domain": lab.domain,
        "accounts": p.accounts,
        "messages": p.messages,
        "size": p.size,
        "seed": p.seed,
        "echobot": echobot,
        "hostname": "old",
        "mail_days": 20,
        "inactive_days": 90,
    }
    out = lab.ssh("old", f"python3 - {shlex.quote(json.dumps(args))}", input=script, timeout=1800)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    lab.ssh("old", "sh -s", input=activate_script(disable_mail=False))
    # The image boots with Postfix running; a new host has no mail service yet.
    # Other system users come first there, so the relay's users get other UIDs/GIDs
    # than on old, and old's numeric ids name other users on new.
    commands = [
        "systemctl disable --now postfix dovecot",
        "useradd --system --user-group labpad1",
        "useradd --system --user-group labpad2",
    ]
    if p.new_users == "different":
        commands += user_commands(list(reversed(relay_users(p.version))))
    lab.ssh("new", " && ".join(commands))
    serve_relay_zone(lab, p.dns_ttl)
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary
