"""Which of the new host's addresses clients can reach: what DNS should name."""

from __future__ import annotations

import ipaddress
import json

from . import commands
from .errors import MigrateError
from .remote import Runner
from .settings import Settings

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


def addresses_for_clients(reached: str | None, host: list[dict]) -> tuple[dict, list[str]]:
    """The records clients should get for the new host, and why each other address was left.

    The address the tool reached the host at, when public (behind NAT it is on no
    interface), else the host's own public ones; never private, link-local, temporary
    or container-bridge addresses. Without any public address: the reached one, so a
    relay on a private network (the lab) still moves, with a warning.
    """
    records: dict[str, list[str]] = {"A": [], "AAAA": []}
    left = []

    def add(address: str) -> None:
        records["A" if ipaddress.ip_address(address).version == 4 else "AAAA"].append(address)

    reached_ip = ipaddress.ip_address(reached) if reached else None
    if reached_ip and reached_ip.is_global:
        add(str(reached_ip))
    for addr in host:
        ip = ipaddress.ip_address(addr["local"])
        why = why_not_for_clients(addr)
        if why:
            left.append(f"{ip} ({why})")
        elif reached_ip and reached_ip.is_global and ip.version == reached_ip.version:
            if ip != reached_ip:
                left.append(f"{ip} (another public address; the tool reached {reached_ip})")
        else:
            add(str(ip))
    if not records["A"] and not records["AAAA"] and reached_ip:
        add(str(reached_ip))
        left.append(f"no public address: proposing {reached_ip}, the address the tool reached")
    return {t: sorted(set(v)) for t, v in records.items()}, left


def new_host_addresses(settings: Settings, runner: Runner, echo=print) -> dict[str, list[str]]:
    """The new host's addresses by record type: --new-address, else those clients reach."""
    if settings.new_addresses:
        new = {
            "A": [a for a in settings.new_addresses if ":" not in a],
            "AAAA": [a for a in settings.new_addresses if ":" in a],
        }
    elif settings.dry:
        runner.run("new", commands.global_addresses_command())
        new = {"A": ["<new IPv4>"], "AAAA": []}
    else:
        new, left = addresses_for_clients(
            runner.reached_address("new"), host_addresses(runner, "new")
        )
        for line in left:
            echo(f"  not proposed: {line}")
    if not new["A"] and not new["AAAA"]:
        raise MigrateError(
            f"the new host {settings.new_host} has no public address; give --new-address ADDR "
            "(the address clients will reach it at)"
        )
    return new
