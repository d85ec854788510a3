"""Host names as operators give them: [user@]host[:port], canonical addresses."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# USER@HOST:PORT, where HOST is a name, an IPv4 address, or an IPv6 address
# (bracketed when a port follows); nothing that ssh or cmdeploy could read as an option.
HOST_RE = re.compile(
    r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?"
    r"(?:[A-Za-z0-9_][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)"
    r"(?::[0-9]{1,5})?"
)


@dataclass(frozen=True)
class HostSpec:
    """A host as typed (``USER@HOST:PORT``), split the way OpenSSH reads it."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port else self.host
        port = f":{self.port}" if self.port else ""
        return (f"{self.user}@" if self.user else "") + host + port


def split_host(value: str) -> HostSpec:
    """``USER@HOST:PORT``: an IPv6 address is bare (no port) or bracketed (``[ADDR]:PORT``).

    Fabric reads ``2001:db8::2:2222`` as a host without a port and ``[2001:db8::2]:2222``
    as a host named with its brackets; the tool hands Fabric host, user and port apart.
    """
    user, _, hostport = value.rpartition("@")
    port = None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host = hostport
    return HostSpec(host, user or None, int(port) if port else None)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``text`` writes (``[2001:db8::42]`` too), or None for a name."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def canonical_address(text: str) -> str:
    """An IP address in its one written form (``2001:DB8:0::42`` is ``2001:db8::42``);
    anything else (a name) as it is."""
    address = ip(text)
    return str(address) if address else text


def same_host(a: str, b: str) -> bool:
    one, other = split_host(a), split_host(b)
    return (canonical_address(one.host), one.port or 22) == (
        canonical_address(other.host),
        other.port or 22,
    )
