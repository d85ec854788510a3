"""The lab's authoritative DNS: two NSD instances on ``spare`` (ns1, ns2) serving the
zone that holds the lab's mail domain, so DNS checks run against real nameservers.

Each instance has its own zone file, so a test can make one of them lag behind.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import textwrap

from chatmail_migrate.lab.lab import Lab

ZONE = "lab.example"
INSTANCES = ("ns1", "ns2")
HOST = "spare"


def ns_addresses(lab: Lab) -> dict[str, str]:
    """ns1 is spare's address; ns2 the next one, added to spare's interface."""
    return dict(zip(INSTANCES, lab.nameservers().split(","), strict=True))


def _state_path(lab: Lab):
    return lab.dir / "zone.json"


def zone_text(lab: Lab, records: dict, serial: int) -> str:
    ns = ns_addresses(lab)
    label = lab.domain.removesuffix("." + ZONE)
    ttl = records["ttl"]
    lines = [
        f"$ORIGIN {ZONE}.",
        f"$TTL {ttl}",
        f"@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. {serial} 300 60 86400 60",
        f"@ IN NS ns1.{ZONE}.",
        f"@ IN NS ns2.{ZONE}.",
        f"ns1 IN A {ns['ns1']}",
        f"ns2 IN A {ns['ns2']}",
    ]
    # Nameserver IPv6 addresses, e.g. ones a workstation without IPv6 cannot reach.
    lines += [f"{name} IN AAAA {a}" for name, a in records.get("ns_aaaa", {}).items()]
    lines += [f"{label} {ttl} IN A {a}" for a in records["a"]]
    lines += [f"{label} {ttl} IN AAAA {a}" for a in records.get("aaaa", [])]
    lines += [f"mta-sts.{label} IN CNAME {label}", f"www.{label} IN CNAME {label}"]
    if records.get("dkim"):
        chunks = " ".join(f'"{c}"' for c in textwrap.wrap(records["dkim"], 200))
        lines.append(f"opendkim._domainkey.{label} IN TXT ( {chunks} )")
    if records.get("accounturi"):
        lines.append(f'{label} IN CAA 0 issue "letsencrypt.org;accounturi={records["accounturi"]}"')
    return "\n".join(lines) + "\n"


def instance_conf(name: str, address: str) -> str:
    return textwrap.dedent(
        f"""\
        server:
            ip-address: {address}
            port: 53
            zonesdir: "/etc/nsd/{name}"
            pidfile: "/run/nsd/{name}.pid"
            database: ""
            zonelistfile: "/var/lib/nsd/{name}-zone.list"
            xfrdfile: "/var/lib/nsd/{name}-xfrd.state"
            logfile: "/var/log/nsd-{name}.log"
            hide-version: yes
        remote-control:
            control-enable: yes
            control-interface: /run/nsd/{name}.ctl
        zone:
            name: {ZONE}
            zonefile: {ZONE}.zone
        """
    )


def start(lab: Lab, records: dict) -> None:
    """Start both instances serving ``records`` (a, aaaa, ttl, dkim, accounturi)."""
    ns = ns_addresses(lab)
    netns = lab.hosts[HOST].netns
    subprocess.run(
        ["ip", "-n", netns, "addr", "add", f"{ns['ns2']}/24", "dev", "eth0"], capture_output=True
    )
    script = [
        "set -e",
        "systemctl disable --now nsd >/dev/null 2>&1 || true",
        "install -d -o nsd -g nsd /run/nsd /var/lib/nsd",
    ]
    for name, address in ns.items():
        script += [
            f"install -d /etc/nsd/{name}",
            f"printf '%s' {shlex.quote(instance_conf(name, address))} > /etc/nsd/{name}.conf",
        ]
    lab.ssh(HOST, "sh -s", input="\n".join(script) + "\n")
    _write(lab, {name: records for name in INSTANCES}, start=True)


def update(lab: Lab, instances=INSTANCES, **changes) -> None:
    """Change records on some instances (the others keep what they had: they lag)."""
    state = json.loads(_state_path(lab).read_text())
    _write(lab, {name: {**state[name], **changes} for name in instances}, start=False)


def records_of(lab: Lab, instance: str = "ns1") -> dict:
    return json.loads(_state_path(lab).read_text())[instance]


def _write(lab: Lab, per_instance: dict[str, dict], start: bool) -> None:
    path = _state_path(lab)
    state = json.loads(path.read_text()) if path.exists() else {}
    script = ["set -e"]
    for name, records in per_instance.items():
        serial = state.get(name, {}).get("serial", 0) + 1
        state[name] = {**records, "serial": serial}
        zone = zone_text(lab, records, serial)
        script.append(f"printf '%s' {shlex.quote(zone)} > /etc/nsd/{name}/{ZONE}.zone")
        if start:
            script.append(f"nsd -c /etc/nsd/{name}.conf")
        else:
            script.append(f"nsd-control -c /etc/nsd/{name}.conf reload {ZONE} >/dev/null")
    lab.ssh(HOST, "sh -s", input="\n".join(script) + "\n")
    path.write_text(json.dumps(state, indent=2))
