"""``lab.*`` tasks: bring the lab of Debian 12 relay hosts up, seed it, take it down."""

from __future__ import annotations

import shlex

from invoke import Collection, Exit

from chatmail_migrate.cli.task import task
from chatmail_migrate.lab import nameserver
from chatmail_migrate.lab.lab import Lab
from chatmail_migrate.lab.lab_state import DEFAULT_DOMAIN, DEFAULT_NAME
from chatmail_migrate.lab.rehearse import rehearse as run_rehearsal
from chatmail_migrate.lab.rootfs import LabError
from chatmail_migrate.lab.seed import (
    NEW_HOST_USERS,
    RELEASES,
    SeedParams,
    account_password,
    seed_relay,
    seeded_accounts,
)

NAME_HELP = (
    f"Lab name (1-8 letters/digits; default {DEFAULT_NAME}); two labs may run side by side. "
    "Example: --name lab2"
)
SEED_HELP = {
    "accounts": "Number of mail accounts to create on old (default 20). Example: --accounts 200",
    "messages": "Messages per account (default 10). Example: --messages 25",
    "size": "Size of each message in bytes (default 4096). Example: --size 21504",
    "relay_version": f"Relay release the lab pretends to run: {', '.join(RELEASES)} "
    "(default 1.7.0). Example: --relay-version 1.10.0",
    "new_users": f"Relay users on new: {' or '.join(NEW_HOST_USERS)} (default different UIDs). "
    "Example: --new-users none",
}
VARIANT_HELP = {
    "upgraded_from": "Deploy this older release first, then --relay-version over it (keeps "
    "what the older one left, e.g. echobot's state). Example: --upgraded-from 1.7.0",
    "nocreate": "Close registration on old (/etc/chatmail-nocreate). Example: --nocreate",
    "ip_only": "An IP-only relay: mail_domain is old's IPv4 address (1.11+). Example: --ip-only",
}


def _load(name: str) -> Lab:
    lab = Lab.load(name)
    if lab is None:
        raise Exit(f"lab {name} is not up; start it with: invoke lab.up --name {name}", code=1)
    return lab


def _seed(lab: Lab, accounts, messages, size, relay_version, new_users, **variant) -> None:
    params = SeedParams(
        accounts=accounts,
        messages=messages,
        size=size,
        version=relay_version,
        new_users=new_users,
        **variant,
    )
    summary = seed_relay(lab, params)
    upgraded = f" (upgraded from {params.upgraded_from})" if params.upgraded_from else ""
    print(
        f"lab {lab.name}: seeded old as relay {relay_version}{upgraded} for {lab.domain}: "
        f"{accounts} accounts, {summary['mail_files']} files, "
        f"{summary['mail_bytes'] / 1e6:.1f} MB in {summary['seconds']}s"
    )
    addresses = seeded_accounts(lab)
    if addresses:
        print(
            f"accounts: each password is 'lab-' + the first 12 hex digits of sha256(address), "
            f"e.g. {addresses[0]} {account_password(addresses[0])}"
        )


def _print_usage(lab: Lab) -> None:
    print(f"log in:   ssh -F {lab.ssh_config} old   (or new, spare)")
    print(f'use it:   eval "$(invoke lab.env --name {lab.name})"')


@task(
    help={
        "name": NAME_HELP,
        "domain": f"The relay's mail domain, in the lab's zone (default {DEFAULT_DOMAIN}); "
        "a '_' first makes a self-signed relay. Example: --domain _relay.lab.example",
        "seed": "Also seed old as a relay (see lab.seed for the sizes). Example: --seed",
        **SEED_HELP,
    }
)
def up(
    c,
    name=DEFAULT_NAME,
    domain=DEFAULT_DOMAIN,
    seed=False,
    accounts=20,
    messages=10,
    size=4096,
    relay_version="1.7.0",
    new_users="different",
):
    """Boot the lab's hosts (old, new, spare) from the cached Debian 12 image. Needs root.

    Example: invoke lab.up --seed --accounts 200
    """
    lab = Lab(name=name, domain=domain)
    try:
        lab.up()
        if seed:
            _seed(lab, accounts, messages, size, relay_version, new_users)
    except LabError as e:
        raise Exit(f"lab.up: {e}", code=1) from None
    _print_usage(lab)


@task(help={"name": NAME_HELP, **SEED_HELP, **VARIANT_HELP})
def seed(
    c,
    name=DEFAULT_NAME,
    accounts=20,
    messages=10,
    size=4096,
    relay_version="1.7.0",
    new_users="different",
    upgraded_from=None,
    nocreate=False,
    ip_only=False,
):
    """Seed old as a live relay of a release (mailboxes, DKIM, ACME, a deferred message).

    The relay serves mail (IMAP 993, submission 465, LMTP, DKIM). Each account's
    password is 'lab-' + the first 12 hex digits of sha256(address); one is printed.
    Example: invoke lab.seed --accounts 2000 --messages 25 --size 20000 |
    invoke lab.seed --relay-version 1.10.0 --upgraded-from 1.7.0
    """
    try:
        _seed(
            _load(name),
            accounts,
            messages,
            size,
            relay_version,
            new_users,
            upgraded_from=upgraded_from,
            nocreate=nocreate,
            ip_only=ip_only,
        )
    except (LabError, ValueError) as e:
        raise Exit(f"lab.seed: {e}", code=1) from None


@task(help={"name": NAME_HELP})
def down(c, name=DEFAULT_NAME):
    """Stop the lab's hosts and remove everything the lab made (also after a failed up)."""
    lab = Lab.load(name)
    if lab is None:
        print(f"lab {name}: not up, nothing to do")
        return
    lab.down()


@task(help={"name": NAME_HELP})
def status(c, name=DEFAULT_NAME):
    """Show each lab host's address and state."""
    lab = _load(name)
    states = lab.status()
    for host in lab.hosts.values():
        print(f"{host.name:6} {host.address:15} {states.get(host.name, '?')}")
    _print_usage(lab)


@task(help={"name": NAME_HELP})
def env(c, name=DEFAULT_NAME):
    """Print shell exports that point chatmail-migrate, ssh and the stand-in at the lab."""
    for key, value in _load(name).env().items():
        print(f"export {key}={shlex.quote(value)}")


@task(
    help={
        "name": NAME_HELP,
        "point_at": "Lab host the relay's A record names: old or new (as an operator "
        "switching DNS would). Example: --point-at new",
        "ttl": "TTL of the relay's records in seconds (default: unchanged). Example: --ttl 300",
    }
)
def dns(c, name=DEFAULT_NAME, point_at="new", ttl=None):
    """Change the relay's records on the lab's nameservers (ns1 and ns2 on spare).

    Example, in a second terminal while migrate waits at switch-dns:
    invoke lab.dns --point-at new
    """
    lab = _load(name)
    if point_at not in lab.hosts:
        raise Exit(f"lab.dns: --point-at must name a lab host ({', '.join(lab.hosts)})", code=1)
    changes = {"a": [lab.address(point_at)]}
    if ttl is not None:
        changes["ttl"] = int(ttl)
    nameserver.update(lab, **changes)
    print(f"lab {lab.name}: {lab.domain} A {lab.address(point_at)} ({point_at}) on ns1 and ns2")


@task(
    help={
        "name": "Lab name (1-8 letters/digits; default rehearse), so that rehearsals or "
        "labs can run side by side. Example: --name reh2",
        "keep": "Leave the lab up afterwards to look around (prints how to log in). "
        "Example: --keep",
        **SEED_HELP,
        "accounts": "Number of mail accounts to create on old (default 200). "
        "Example: --accounts 1000",
    }
)
def rehearse(
    c,
    name="rehearse",
    accounts=200,
    messages=10,
    size=4096,
    relay_version="1.7.0",
    new_users="different",
    keep=False,
):
    """Rehearse a whole migration on the lab, Delta Chat users chatting before and after.

    Up, seed, two Delta Chat users chatting on old, migrate (check-relay at its end),
    verify, the users chatting on new, summary, down.

    Needs root on a Debian-family machine, and Delta Chat's core (./bootstrap installs
    it). Example: invoke rehearse --accounts 1000 --keep
    """
    params = SeedParams(
        accounts=accounts, messages=messages, size=size, version=relay_version, new_users=new_users
    )
    try:
        code = run_rehearsal(params, name=name, keep=keep)
    except (LabError, ValueError) as e:
        raise Exit(f"rehearse: {e}", code=1) from None
    if code:
        raise Exit(code=code)


ns = Collection("lab", up, seed, down, status, env, dns)
