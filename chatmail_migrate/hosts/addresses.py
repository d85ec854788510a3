"""Which of the new host's addresses clients can reach: what DNS should name."""

from __future__ import annotations

import ipaddress
import json

from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import commands
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.settings import Settings

# Bridges of container and VM engines: their addresses serve the host's guests.
GUEST_BRIDGES = ("docker", "br-", "virbr", "cni", "podman", "lxcbr", "lxdbr")


def host_addresses(runner: Runner, role: str) -> list[dict]:
    out = runner.run(role, commands.global_addresses_command(), hide=True, quiet=True).stdout
    return [
        {**addr, "ifname": link.get("ifname", "")}
        for link in json.loads(out or "[]")
        for addr in link.get("addr_info", [])
        if addr.get("local")
    ]


def why_not_for_clients(addr: dict) -> str | None:
    """Why clients cannot use this address of the host (``ip -j address`` entry), or None."""
    ip = ipaddress.ip_address(addr["local"])
    if addr.get("ifname", "").startswith(GUEST_BRIDGES):
        return f"on {addr['ifname']}, a container bridge"
    for flag in ("temporary", "deprecated", "tentative", "dadfailed"):
        if addr.get(flag):
            return flag
    if not ip.is_global:
        return "private" if not ip.is_link_local else "link-local"
    return None


def addresses_for_clients(
    reached: str | None, host: list[dict]
) -> tuple[dict, dict[str, str], list[str]]:
    """The records clients should get for the new host, why each is proposed, and why
    each other address was left.

    The address the tool reached the host at, when public (behind NAT it is on no
    interface), else the host's own public ones; never private, link-local, temporary
    or container-bridge addresses. Without any public address: the reached one, so a
    relay on a private network (the lab) still moves, with a warning.
    """
    records: dict[str, list[str]] = {"A": [], "AAAA": []}
    why: dict[str, str] = {}
    left = []

    def add(address: str, reason: str) -> None:
        records["A" if ipaddress.ip_address(address).version == 4 else "AAAA"].append(address)
        why.setdefault(address, reason)

    reached_ip = ipaddress.ip_address(reached) if reached else None
    if reached_ip and reached_ip.is_global:
        add(str(reached_ip), "the address the tool reached new at")
    for addr in host:
        ip = ipaddress.ip_address(addr["local"])
        reason = why_not_for_clients(addr)
        if reason:
            left.append(f"{ip} ({reason})")
        elif reached_ip and reached_ip.is_global and ip.version == reached_ip.version:
            if ip != reached_ip:
                left.append(f"{ip} (another public address; the tool reached {reached_ip})")
        else:
            add(str(ip), f"public on new's {addr.get('ifname') or 'interface'}")
    if not records["A"] and not records["AAAA"] and reached_ip:
        add(str(reached_ip), "new has no public address: the one the tool reached")
        left.append(f"no public address: proposing {reached_ip}, the address the tool reached")
    return {t: sorted(set(v)) for t, v in records.items()}, why, left


def new_host_records(
    settings: Settings, runner: Runner, echo=print
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The new host's addresses by record type (--new-address, else those clients
    reach; no IPv4 with --ipv6-only), and why: by address, and by record type for a
    type that gets none."""
    if settings.new_addresses:
        new = {
            "A": [a for a in settings.new_addresses if ":" not in a],
            "AAAA": [a for a in settings.new_addresses if ":" in a],
        }
        why = dict.fromkeys(settings.new_addresses, "--new-address")
        why.update(A="--new-address has no IPv4", AAAA="--new-address has no IPv6")
    elif settings.dry:
        runner.run("new", commands.global_addresses_command())
        if settings.ipv6_only:
            new = {"A": [], "AAAA": ["<new IPv6>"]}
        else:
            new = {"A": ["<new IPv4>"], "AAAA": []}
        why = dict.fromkeys(("<new IPv4>", "<new IPv6>", "A", "AAAA"), "dry run")
    else:
        new, why, left = addresses_for_clients(
            runner.reached_address("new"), host_addresses(runner, "new")
        )
        why.update(A="new has no public IPv4", AAAA="new has no public IPv6")
        for line in left:
            echo(f"  not proposed: {line}")
    if settings.ipv6_only:
        for address in new["A"]:
            echo(f"  not proposed: {address} (--ipv6-only)")
        if new["A"]:
            why["A"] = f"--ipv6-only; new's IPv4 {', '.join(new['A'])} left out"
        else:
            why["A"] += ": --ipv6-only"
        new = {**new, "A": []}
        if not new["AAAA"]:
            raise MigrateError(
                f"--ipv6-only, but the new host {settings.new_host} has no public IPv6 "
                "address; give --new-address IPV6 (the address clients will reach it at)"
            )
    if not new["A"] and not new["AAAA"]:
        raise MigrateError(
            f"the new host {settings.new_host} has no public address; give --new-address ADDR "
            "(the address clients will reach it at)"
        )
    return new, why


def new_host_addresses(settings: Settings, runner: Runner, echo=print) -> dict[str, list[str]]:
    """The new host's addresses by record type (:func:`new_host_records`)."""
    return new_host_records(settings, runner, echo)[0]


def ipv4_deletion_refused(
    settings: Settings, old_a: list[str], new_a: list[str], why_none: str
) -> str | None:
    """Why proposing these records is refused: they would delete every A record of the
    mail domain (IPv4-only clients lose the relay) without --ipv6-only; else None."""
    if not old_a or new_a or settings.ipv6_only:
        return None
    return (
        f"{why_none}, so {settings.mail_domain}'s A record ({', '.join(old_a)}) would be "
        "deleted and IPv4-only clients could no longer reach the relay: give --new-address "
        "with new's public IPv4 (the one clients reach, NAT included), or --ipv6-only to "
        "delete it"
    )
