"""How the stand-in meets DNS and known_hosts, as the release's cmdeploy does.

It resolves names with the lab's nameservers (the operator's resolver in the lab),
checks the domain's records, and logs in three ways that differ in which address
they reach and which known_hosts entry they trust: to the mail domain over OpenSSH
(up to 1.7), to ``--ssh-host`` with the operator's ssh config (execnet, 1.8+), and
as pyinfra, which accepts and records an unknown host key.
"""

from __future__ import annotations

import os
import subprocess
import sys


def ssh_base() -> list[str]:
    """OpenSSH as the operator runs it: the lab's ssh config, never a prompt."""
    ssh = ["ssh", "-o", "BatchMode=yes"]
    if os.environ.get("CHATMAIL_LAB_SSH_CONFIG"):
        ssh += ["-F", os.environ["CHATMAIL_LAB_SSH_CONFIG"]]
    return ssh


def lab_resolver() -> list[str]:
    """The operator's resolver in the lab: the lab's own nameservers."""
    servers = os.environ.get("CHATMAIL_LAB_RESOLVER", "")
    return [s for s in servers.split(",") if s]


def lookup(name: str, rtype: str) -> list[str]:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    for server in lab_resolver():
        try:
            response = dns.query.udp(dns.message.make_query(name, rtype), server, timeout=3)
        except (dns.exception.DNSException, OSError):
            continue
        if response.rcode() == dns.rcode.NOERROR:
            return [item.to_text() for rrset in response.answer for item in rrset]
        return []
    raise SystemExit(f"error: no lab nameserver answered for {name} (CHATMAIL_LAB_RESOLVER)")


def check_dns(domain: str) -> bool:
    """dns.py check_initial_remote_data: A or AAAA, and the mta-sts and www CNAMEs."""
    if not (lookup(domain, "A") or lookup(domain, "AAAA")):
        print(f"Missing A and/or AAAA DNS records for {domain}!", file=sys.stderr)
        return False
    for sub in ("mta-sts", "www"):
        if f"{domain}." not in lookup(f"{sub}.{domain}", "CNAME"):
            print(f"Missing {sub} CNAME record: {sub}.{domain}. CNAME {domain}.", file=sys.stderr)
            return False
    return True


def login_to_domain(domain: str, command: str) -> subprocess.CompletedProcess:
    """``ssh root@DOMAIN``, as OpenSSH does it: a HostName the ssh config gives the
    domain, else the address DNS gives now (the lab's, never this machine's resolver),
    the key checked against known_hosts under the domain's name."""
    print(f"[ssh] login to {domain}", flush=True)
    shown = subprocess.run([*ssh_base(), "-G", f"root@{domain}"], capture_output=True, text=True)
    configured = [
        line.split(" ", 1)[1] for line in shown.stdout.splitlines() if line.startswith("hostname ")
    ]
    if configured and configured[0].lower() != domain.lower():
        return subprocess.run(
            [*ssh_base(), f"root@{domain}", command], capture_output=True, text=True
        )
    addresses = lookup(domain, "A") or lookup(domain, "AAAA")
    if not addresses:
        raise SystemExit(f"ssh: Could not resolve hostname {domain}: Name or service not known")
    return subprocess.run(
        [
            *ssh_base(),
            "-o",
            f"HostName={addresses[0]}",
            "-o",
            f"HostKeyAlias={domain}",
            f"root@{domain}",
            command,
        ],
        capture_output=True,
        text=True,
    )


def login_to_ssh_host(host: str) -> subprocess.CompletedProcess:
    """execnet's gateway to ``--ssh-host`` (1.8+): OpenSSH with the ssh config as it
    is, so an unknown host key is refused (there is no terminal to ask)."""
    return subprocess.run([*ssh_base(), f"root@{host}", "true"], capture_output=True, text=True)


def pyinfra_ssh() -> list[str]:
    """pyinfra's own ssh: accept-new whatever the ssh config says (pyinfra >= 3 default),
    so the deploy records an unknown key in the UserKnownHostsFile and fails on a
    changed one."""
    return [*ssh_base(), "-o", "StrictHostKeyChecking=accept-new"]
