"""The command-line flags the migration tasks share: their help, each with an example.

Tasks pass the flags they take to :func:`settings.resolve`; these are the texts
``--help TASK`` shows for them.
"""

from __future__ import annotations

HELP = {
    "old_host": "Old relay host, as you would give it to ssh (alias, name or address); "
    "default: mail_domain from chatmail.ini. Example: --old-host 13.37.13.37",
    "new_host": "New host, as you would give it to ssh. Example: --new-host 13.12.23.42",
    "relay_dir": "Relay checkout holding chatmail.ini and scripts/cmdeploy; default: "
    "$CHATMAIL_RELAY_DIR or the current directory. Example: --relay-dir ~/relay",
    "new_host_from_old": "Address the OLD host uses to reach the new one, when it differs "
    "from yours (e.g. a private network). Example: --new-host-from-old 10.0.0.2",
    "yes": "Do not wait for confirmation that DNS was changed (unattended runs). Example: --yes",
    "restart": "Forget the journal of this relay and start the migration from step 1. "
    "Example: --restart",
    "force": "Replace mailboxes the new host already holds for this domain (preflight "
    "refuses otherwise). "
    "Example: --force",
    "rollback": "When a step fails before DNS is switched, re-enable mail on the old host "
    "(default); --no-rollback leaves it off, to resume at the failed step. "
    "Example: --no-rollback",
    "accept_new_host_keys": "Trust host keys not yet in known_hosts and record them there "
    "(changed keys are always refused). "
    "Example: --accept-new-host-keys",
    "checksum": "Also compare file contents (sha256) on both hosts: slower, thorough. "
    "Example: --checksum",
    "nameserver": "Authoritative nameservers to ask, ADDR[:PORT],... (split horizon, tests); "
    "default: found through your resolver. Example: --nameserver 192.0.2.53",
    "dns_timeout": "Seconds to wait for every nameserver to answer the new address (default 3600). "
    "Example: --dns-timeout 600",
    "new_address": "The address(es) clients will reach the new host at, for its DNS records "
    "(and where preflight tries relay 1.6/1.7 cmdeploy's own ssh root@DOMAIN). "
    "Default: the address the tool reached it at when public (NAT included), else the "
    "public ones on its interfaces (never private, docker or temporary). "
    "Example: --new-address 13.12.23.42,2001:db8::42",
    "ipv6_only": "Clients reach the new host over IPv6 only: switch-dns proposes no A "
    "record (it deletes the domain's A records), preflight and switch-dns refuse that "
    "deletion without it. Example: --ipv6-only",
    "wait": "Wait for every nameserver to answer the new address (default); --no-wait does not. "
    "Example: --no-wait",
    "wait_caches": "After the switch, also wait until resolver caches can no longer hold "
    "the old address (the old TTL). "
    "Example: --wait-caches",
    "presync": "Copy the mailboxes while the old relay still serves, so the copy during the "
    "downtime sends only what changed since (rsync, deletions mirrored). "
    "Example: --presync",
    "compress": "Compress the copy on the wire (zstd when both hosts have it, else ssh -C): "
    "for slow links only. "
    "Example: --compress",
    "copy_key": "How old's ssh logs in to new for the copy: agent (default: your agent, "
    "forwarded to old while the copy runs) or ephemeral (a key made on old for that copy "
    "only, authorized on new for old's address, a few hours and the copy's receiving "
    "side only; removed after). Example: --copy-key ephemeral",
    "update_known_hosts": "Replace the old host's key for the mail domain in your "
    "known_hosts with the new host's key (verified by the tool's own connection). "
    "Example: --update-known-hosts",
}


def flag_help(*names: str) -> dict[str, str]:
    return {name: HELP[name] for name in names}


DNS_FLAGS = (
    "nameserver",
    "dns_timeout",
    "new_address",
    "ipv6_only",
    "wait",
    "wait_caches",
    "update_known_hosts",
)


def dns_settings(
    nameserver, dns_timeout, new_address, ipv6_only, wait, wait_caches, update_known_hosts
):
    """Command-line DNS values as resolve() takes them (None: not given)."""
    return {
        "nameservers": nameserver,
        "dns_timeout": dns_timeout,
        "new_addresses": new_address,
        "ipv6_only": ipv6_only or None,
        "dns_wait": False if not wait else None,
        "wait_caches": wait_caches or None,
        "update_known_hosts": update_known_hosts or None,
    }
