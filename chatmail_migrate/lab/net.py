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


def ula_subnet(subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The lab's IPv6 /64 (unique local), named after its IPv4 /24 so labs never share one."""
    third = (int(subnet.network_address) >> 8) & 0xFFFF
    return ipaddress.ip_network(f"fd6c:6162:{third:x}::/64")


def add_bridge(name: str, address: str, address6: str | None = None) -> None:
    ip("link", "add", name, "type", "bridge")
    ip("addr", "add", address, "dev", name)
    if address6:
        # nodad: usable at once, not "tentative" for a second.
        ip("-6", "addr", "add", address6, "dev", name, "nodad")
    ip("link", "set", name, "up")


def add_host_link(
    netns: str, veth: str, bridge: str, address: str, address6: str | None = None
) -> None:
    ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", bridge, "up")
    ip("-n", netns, "addr", "add", address, "dev", "eth0")
    if address6:
        ip("-n", netns, "-6", "addr", "add", address6, "dev", "eth0", "nodad")
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
