"""The lab's DNS as a zone that takes updates: Knot on ``spare``, a primary (ns1) that
accepts RFC 2136 updates signed with the lab's TSIG key, and a secondary (ns2) that
follows it by NOTIFY and zone transfer, as a provider's would.

It replaces the static NSD pair of :mod:`nameserver` on the same addresses, serving
the same records (``serve_updatable`` after the relay's zone was published); from
then on the zone changes only through updates (the tool's, or :func:`edit`), never
through :func:`nameserver.update`. :func:`hold`/:func:`release` keep the secondary
from loading changes, so a test sees a secondary that lags.
"""

from __future__ import annotations

import base64
import os
import shlex
import textwrap
import time
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdatatype

from chatmail_migrate.lab import nameserver
from chatmail_migrate.lab.lab import Lab

KEY_NAME = "lab-update."


def key_file(lab: Lab) -> Path:
    """The TSIG key, as ``tsig-keygen`` writes it (what ``--tsig-file`` takes)."""
    return lab.dir / "tsig.key"


def _secret(lab: Lab) -> str:
    path = key_file(lab)
    if not path.exists():
        secret = base64.b64encode(os.urandom(32)).decode()
        name = KEY_NAME.rstrip(".")
        text = f'key "{name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
    return path.read_text().split('secret "', 1)[1].split('"', 1)[0]


def _conf(name: str, address: str, body: str) -> str:
    return (
        textwrap.dedent(
            f"""\
            server:
                listen: {address}@53
                rundir: /run/knot-{name}
                user: knot:knot
            control:
                listen: /run/knot-{name}/knot.sock
            log:
              - target: /var/log/knot-{name}.log
                any: info
            template:
              - id: default
                storage: /var/lib/knot/{name}
            """
        )
        + body
    )


def primary_conf(ns: dict[str, str], secret: str) -> str:
    zone = nameserver.ZONE
    return _conf(
        "ns1",
        ns["ns1"],
        textwrap.dedent(
            f"""\
            key:
              - id: {KEY_NAME}
                algorithm: hmac-sha256
                secret: {secret}
            remote:
              - id: ns2
                address: {ns["ns2"]}@53
                via: {ns["ns1"]}
            acl:
              - id: update
                key: {KEY_NAME}
                action: update
              - id: transfer
                address: {ns["ns2"]}
                action: transfer
            zone:
              - domain: {zone}
                file: {zone}.zone
                notify: ns2
                acl: [update, transfer]
                zonefile-sync: -1
                zonefile-load: whole
                journal-content: changes
            """
        ),
    )


def secondary_conf(ns: dict[str, str]) -> str:
    zone = nameserver.ZONE
    return _conf(
        "ns2",
        ns["ns2"],
        textwrap.dedent(
            f"""\
            remote:
              - id: ns1
                address: {ns["ns1"]}@53
                # Both instances share spare's interface: ask from ns2's own address,
                # the one ns1's transfer ACL names.
                via: {ns["ns2"]}
            acl:
              - id: notify
                address: {ns["ns1"]}
                action: notify
            zone:
              - domain: {zone}
                master: ns1
                acl: notify
                zonefile-sync: -1
            """
        ),
    )


def knotc(lab: Lab, instance: str, *args: str) -> str:
    command = f"knotc -c /etc/knot/{instance}.conf " + " ".join(shlex.quote(a) for a in args)
    return lab.ssh(nameserver.HOST, command).stdout


def serve_updatable(lab: Lab) -> None:
    """Stop NSD and serve the zone it served from Knot: ns1 primary, ns2 secondary."""
    ns = nameserver.ns_addresses(lab)
    records = nameserver.records_of(lab)
    serial = records["serial"] + 1
    zone_text = nameserver.zone_text(lab, records, serial)
    secret = _secret(lab)
    script = [
        "set -e",
        *(f"nsd-control -c /etc/nsd/{name}.conf stop >/dev/null 2>&1 || true" for name in ns),
        "pkill -x nsd || true",
        # Both addresses free before Knot binds them (NSD's children exit last).
        "for i in $(seq 100); do pgrep -x nsd >/dev/null || break; sleep 0.1; done",
        "pkill -9 -x nsd || true",
        "for i in $(seq 50); do ss -Hlun | grep -q ':53 ' || break; sleep 0.1; done",
        "systemctl disable --now knot >/dev/null 2>&1 || true",
    ]
    for name, conf in (("ns1", primary_conf(ns, secret)), ("ns2", secondary_conf(ns))):
        script += [
            f"install -d -o knot -g knot /var/lib/knot/{name} /run/knot-{name}",
            f"printf '%s' {shlex.quote(conf)} > /etc/knot/{name}.conf",
            f"chmod 640 /etc/knot/{name}.conf && chgrp knot /etc/knot/{name}.conf",
        ]
    zone = nameserver.ZONE
    script += [
        f"printf '%s' {shlex.quote(zone_text)} > /var/lib/knot/ns1/{zone}.zone",
        f"chown knot:knot /var/lib/knot/ns1/{zone}.zone",
        "knotd -c /etc/knot/ns1.conf -d",
        "knotd -c /etc/knot/ns2.conf -d",
    ]
    lab.ssh(nameserver.HOST, "sh -s", input="\n".join(script) + "\n")
    wait_in_step(lab, timeout=30)


def soa_serial(lab: Lab, instance: str) -> int | None:
    address = nameserver.ns_addresses(lab)[instance]
    query = dns.message.make_query(nameserver.ZONE, "SOA")
    try:
        response = dns.query.udp(query, address, timeout=2)
    except Exception:
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return rrset[0].serial
    return None


def wait_in_step(lab: Lab, timeout: float = 30) -> int:
    """Until the secondary serves the primary's serial; that serial."""
    deadline = time.monotonic() + timeout
    while True:
        primary, secondary = soa_serial(lab, "ns1"), soa_serial(lab, "ns2")
        if primary is not None and primary == secondary:
            return primary
        if time.monotonic() > deadline:
            raise RuntimeError(f"lab DNS: ns2 serves serial {secondary}, ns1 {primary}")
        time.sleep(0.2)


def hold(lab: Lab, instance: str = "ns2") -> None:
    """The instance loads no change (no transfer, no update) until :func:`release`."""
    knotc(lab, instance, "zone-freeze", nameserver.ZONE)


def release(lab: Lab, instance: str = "ns2") -> None:
    knotc(lab, instance, "zone-thaw", nameserver.ZONE)
    if instance == "ns2":
        knotc(lab, "ns2", "zone-refresh", nameserver.ZONE)


def edit(lab: Lab, name: str, rtype: str, values: list[str], ttl: int = 300) -> None:
    """Someone else edits the zone at the primary (as at a provider's console)."""
    zone = nameserver.ZONE
    owner = name if name.endswith(".") else name + "."
    lines = ["set -e", f"knotc -c /etc/knot/ns1.conf zone-begin {zone}"]
    lines.append(f"knotc -c /etc/knot/ns1.conf zone-unset {zone} {owner} {rtype} || true")
    lines += [
        f"knotc -c /etc/knot/ns1.conf zone-set {zone} {owner} {ttl} {rtype} {v}" for v in values
    ]
    lines.append(f"knotc -c /etc/knot/ns1.conf zone-commit {zone}")
    lab.ssh(nameserver.HOST, "sh -s", input="\n".join(lines) + "\n")


def published(lab: Lab, instance: str, name: str, rtype: str) -> list[str]:
    """The ``rtype`` values ``instance`` serves for ``name`` now."""
    address = nameserver.ns_addresses(lab)[instance]
    query = dns.message.make_query(name, rtype)
    response = dns.query.udp(query, address, timeout=2)
    want = dns.rdatatype.from_text(rtype)
    owner = dns.name.from_text(name)
    return sorted(
        r.to_text() for rs in response.answer if rs.rdtype == want and rs.name == owner for r in rs
    )


def logs(lab: Lab) -> str:
    """Both instances' logs (a test shows them when it fails)."""
    return lab.ssh(nameserver.HOST, "cat /var/log/knot-ns1.log /var/log/knot-ns2.log").stdout
