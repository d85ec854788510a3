"""Bridge, network namespaces and veth links that join the lab hosts."""

from __future__ import annotations

import ipaddress
import json
import subprocess


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return ip("netns", "list", check=False).stdout.split().count(name) > 0


def used_networks() -> list[ipaddress.IPv4Network]:
    out = ip("-j", "-4", "addr", "show").stdout
    nets = []
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            nets.append(ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}").network)
    return nets


def free_subnet(base: str = "10.213.0.0/16") -> ipaddress.IPv4Network:
    """The first /24 of ``base`` that no interface on this machine uses yet."""
    used = used_networks()
    for net in ipaddress.ip_network(base).subnets(new_prefix=24):
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /24 left in {base} for another lab")


def add_bridge(name: str, address: str) -> None:
    ip("link", "add", name, "type", "bridge")
    ip("addr", "add", address, "dev", name)
    ip("link", "set", name, "up")


def add_host_link(netns: str, veth: str, bridge: str, address: str) -> None:
    ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", bridge, "up")
    ip("-n", netns, "addr", "add", address, "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "lo", "up")


def netns_pids(netns: str) -> list[int]:
    out = ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split()]


def remove_host_link(netns: str, veth: str) -> None:
    if link_exists(veth):
        ip("link", "del", veth, check=False)
    if netns_exists(netns):
        ip("netns", "del", netns, check=False)


def remove_bridge(name: str) -> None:
    if link_exists(name):
        ip("link", "del", name, check=False)
