"""LAB STAND-IN for the chatmail relay's ``cmdeploy``: not the real thing.

The real ``cmdeploy run`` deploys a whole relay with pyinfra and needs the
internet. Lab hosts have none, so the lab plugs in this script instead (through
``CMDEPLOY``). It takes the arguments the tool passes to ``cmdeploy``, is run
from the relay checkout holding ``chatmail.ini``, reads the release from the
checkout's git tag, and does to hosts, DNS lookups and known_hosts what that
release's ``cmdeploy run`` does (README, "Relay releases", has a row per behaviour
with the upstream file it comes from):

- up to 1.7 it logs in to ``mail_domain`` over OpenSSH itself, before deploying
  (DNS check) and after a deploy (echobot's invite link), whatever ``--ssh-host``
  says: at the address the lab's DNS gives now, checked against the operator's
  known_hosts; from 1.8 it logs in to ``--ssh-host`` first (execnet: OpenSSH with
  the operator's ssh config, an unknown key refused without a terminal);
- the deploy itself (pyinfra) accepts an unknown host key and appends it to the
  ssh config's UserKnownHostsFile, whatever StrictHostKeyChecking says; a changed
  key fails it;
- it checks the domain's A/AAAA and the mta-sts/www CNAMEs (``--skip-dns-check``
  from 1.8), asked of the lab's nameservers;
- stages (1.8+: ``CMDEPLOY_STAGES``, split on "," as upstream): install creates
  users (vmail; echobot up to 1.8), configure writes chatmail's opendkim config
  (socket in the Postfix spool), Postfix's milter settings and the DKIM key when
  missing, activate starts services and restarts only what *this process's*
  configure changed: run separately, activate restarts nothing;
- 1.10+: configure fails when tls_external_cert_and_key names a missing file, and
  makes the self-signed pair of ``_`` domains when missing; 1.11+: IP-only relays
  (no DKIM, self-signed pair);
- ``--disable-mail`` stops and disables postfix and dovecot; everything else runs;
- configure writes a working relay's Dovecot (IMAP on 993, LMTP for Postfix,
  accounts by the lab's doveauth, ``relay_auth.py``) and Postfix (its domain
  delivered by LMTP, submission on 465 with SASL), serving the release's
  certificate (``tls_pair``); activate makes acmetool's certificate when there is
  none and mail is to run (no ACME server here: self-signed).

For fault tests, ``CHATMAIL_LAB_CMDEPLOY_FAIL=before|after[@HOST][:enable]`` makes it
fail before touching the host or after doing its work (``:enable``: only a run that
turns mail on). For pre-sync tests and the
benchmark, ``CHATMAIL_LAB_BEFORE_DISABLE_MAIL`` is shell run on the host
``CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST`` just before ``--disable-mail`` stops the
mail there: the last mail a live relay takes.
"""

from __future__ import annotations

import argparse
import configparser
import ipaddress
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VERSION = "1.7.0"
ALL_STAGES = ("install", "configure", "activate")
OPENDKIM_SOCKET = "/var/spool/postfix/opendkim/opendkim.sock"
SELF_SIGNED = ("/etc/ssl/certs/mailserver.pem", "/etc/ssl/private/mailserver.key")
# The lab's doveauth: Dovecot's checkpassword driver runs this (relay_auth.py).
CHECKPASSWORD = "/usr/local/lib/chatmail-lab/checkpassword"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


@dataclass(frozen=True)
class Release:
    """What one relay release's deploy does, as far as a move can tell."""

    version: str

    def at_least(self, *v: int) -> bool:
        return version_tuple(self.version) >= v

    @property
    def logs_in_to_mail_domain(self) -> bool:  # cmdeploy.py run_cmd, 1.6/1.7
        return not self.at_least(1, 8)

    @property
    def logs_in_to_ssh_host(self) -> bool:  # sshexec.py execnet gateway to --ssh-host, 1.8+
        return self.at_least(1, 8)

    @property
    def staged(self) -> bool:  # basedeploy.py CMDEPLOY_STAGES, 1.8+
        return self.at_least(1, 8)

    @property
    def users(self) -> list[str]:  # deployers.py required_users: echobot up to 1.8
        return ["vmail"] + (["echobot"] if not self.at_least(1, 9) else [])

    @property
    def runs_echobot(self) -> bool:  # 1.8 disables echobot.service at install
        return not self.at_least(1, 8)

    @property
    def shows_echobot_invite(self) -> bool:  # 1.7: cmdeploy.py run_cmd after the deploy
        return self.at_least(1, 7) and not self.at_least(1, 8)

    @property
    def writes_version_file(self) -> bool:  # /etc/chatmail-version from 1.7
        return self.at_least(1, 7)

    @property
    def checks_mtail_address(self) -> bool:  # 1.10+: a non-local one must be the host's
        return self.at_least(1, 10)

    @property
    def checks_external_tls(self) -> bool:  # 1.10+ tls_external_cert_and_key
        return self.at_least(1, 10)

    @property
    def self_signed_underscore(self) -> bool:  # 1.10+ "_" domains
        return self.at_least(1, 10)


# chatmail.ini read on its own, not with the tool's relay.py: the stand-in plays
# upstream, and a misreading in the tool must not be mirrored here.
@dataclass(frozen=True)
class RelayIni:
    mail_domain: str
    tls_external: tuple[str, ...] = ()
    mtail_address: str = ""
    mailboxes_dir: str = ""
    # doveauth's rules for accounts created at first login (config.py defaults).
    username_min_length: int = 9
    username_max_length: int = 9
    password_min_length: int = 9

    @property
    def ip_only(self) -> bool:
        try:
            return isinstance(ipaddress.ip_address(self.mail_domain), ipaddress.IPv4Address)
        except ValueError:
            return False

    @property
    def address_domain(self) -> str:
        """What follows the @ of the relay's addresses (config.py: ``[IP]`` when IP-only)."""
        return f"[{self.mail_domain}]" if self.ip_only else self.mail_domain

    @property
    def mailboxes(self) -> str:
        return self.mailboxes_dir or f"/home/vmail/mail/{self.mail_domain}"  # config.py


def read_ini(path: Path) -> RelayIni:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(path)
    params = ini["params"]
    return RelayIni(
        mail_domain=params["mail_domain"].strip(),
        tls_external=tuple(params.get("tls_external_cert_and_key", "").split()),
        mtail_address=params.get("mtail_address", "").strip(),
        mailboxes_dir=params.get("mailboxes_dir", "").strip(),
        username_min_length=int(params.get("username_min_length", 9)),
        username_max_length=int(params.get("username_max_length", 9)),
        password_min_length=int(params.get("password_min_length", 9)),
    )


def user_commands(users: list[str]) -> list[str]:
    """Create the relay's system users as its deploy does (when missing)."""
    commands = []
    for user in users:
        commands.append(
            f"id -u {user} >/dev/null 2>&1 || {{ getent group {user} >/dev/null || "
            f"groupadd --system {user}; useradd -d /home/{user} -g {user} -r -M {user}; }}"
        )
        commands.append(f"install -d -o {user} -g {user} /home/{user}")
    return commands


def install_lines(release: Release) -> list[str]:
    """Users; postfix may use opendkim's socket (postfix/deployer.py required_users).
    opendkim itself is Debian's package: started on its default config when installed."""
    lines = [
        *user_commands(release.users),
        "usermod -a -G opendkim postfix",
        "systemctl is-active --quiet opendkim || systemctl start opendkim",
    ]
    if not release.runs_echobot:
        lines.append(
            "if systemctl is-enabled --quiet echobot 2>/dev/null; then "
            "systemctl disable --now echobot; fi"
        )
    return lines


def _put(path: str, content: str, flag: str, owner: str = "root:root", mode: str = "644") -> str:
    """Write ``content`` to ``path`` when it differs, and then set shell flag ``flag``."""
    quoted = shlex.quote(content)
    return (
        f"if ! printf '%s' {quoted} | cmp -s - {path}; then "
        f"printf '%s' {quoted} > {path}; chown {owner} {path}; chmod {mode} {path}; {flag}=1; fi"
    )


def opendkim_conf(domain: str) -> str:
    return (
        "# chatmail-migrate lab: opendkim as the chatmail relay configures it\n"
        "Syslog yes\nCanonicalization relaxed/simple\n"
        f"Domain {domain}\nSelector opendkim\nKeyFile /etc/dkimkeys/opendkim.private\n"
        "KeyTable /etc/dkimkeys/KeyTable\nSigningTable refile:/etc/dkimkeys/SigningTable\n"
        "UserID opendkim\nUMask 007\n"
        f"Socket local:{OPENDKIM_SOCKET}\nPidFile /run/opendkim/opendkim.pid\n"
    )


def tls_pair(release: Release, ini: RelayIni) -> tuple[str, str]:
    """The certificate and key Dovecot and Postfix serve (config.py ``tls_cert_path``,
    1.10+; earlier releases always acmetool's): the operator's files, the self-signed
    pair, or acmetool's live names."""
    if release.checks_external_tls and len(ini.tls_external) == 2:
        return ini.tls_external[0], ini.tls_external[1]
    if ini.ip_only or (release.self_signed_underscore and ini.mail_domain.startswith("_")):
        return SELF_SIGNED
    live = f"/var/lib/acme/live/{ini.mail_domain}"
    return f"{live}/fullchain", f"{live}/privkey"


def dovecot_conf(ini: RelayIni, cert: str, key: str) -> str:
    """IMAP (993, and 143 with STARTTLS) and LMTP for Postfix, accounts by the lab's doveauth.

    Unlike upstream, anvil's penalty for failed logins stays on: turned off (its
    listener's mode 0), each start of the auth process waits 5 s for it, so the
    first login after every restart does. Wrong passwords slow an address's next
    logins instead.
    """
    return f"""# chatmail-migrate lab: Dovecot as the chatmail relay runs it (LAB STAND-IN)
protocols = imap lmtp
listen = *
auth_mechanisms = plain
mail_location = maildir:{ini.mailboxes}/%u
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.3
# An account is its mailbox directory with a password file (upstream: doveauth).
passdb {{
  driver = checkpassword
  args = {CHECKPASSWORD}
}}
userdb {{
  driver = checkpassword
  args = {CHECKPASSWORD}
  default_fields = uid=vmail gid=vmail
}}
service auth {{
  # The password files are vmail's, and first logins create accounts as vmail.
  user = vmail
  unix_listener /var/spool/postfix/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
service lmtp {{
  user = vmail
  unix_listener /var/spool/postfix/private/dovecot-lmtp {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
"""


def checkpassword_program(ini: RelayIni) -> str:
    """relay_auth.py with this relay's settings in front."""
    config = {
        "mail_domain": ini.address_domain,
        "mailboxes_dir": ini.mailboxes,
        "username_min_length": ini.username_min_length,
        "username_max_length": ini.username_max_length,
        "password_min_length": ini.password_min_length,
    }
    source = (Path(__file__).parent / "relay_auth.py").read_text()
    return f"#!/usr/bin/python3\nCONFIG = {json.dumps(config)}\n{source}"


# Submission with TLS from the first byte (465) and SASL through Dovecot, as
# upstream's master.cf ``smtps`` (without filtermail, which the lab does not run).
SMTPS_OPTIONS = (
    "syslog_name=postfix/smtps",
    "smtpd_tls_wrappermode=yes",
    "smtpd_tls_security_level=encrypt",
    "smtpd_tls_mandatory_protocols=>=TLSv1.3",
    "smtpd_sasl_auth_enable=yes",
    "smtpd_sasl_type=dovecot",
    "smtpd_sasl_path=private/auth",
    "smtpd_reject_unlisted_recipient=no",
    "smtpd_client_restrictions=permit_sasl_authenticated,reject",
    "smtpd_recipient_restrictions=",
    "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
    "milter_macro_daemon_name=ORIGINATING",
)


def postfix_lines(ini: RelayIni, cert: str, key: str) -> list[str]:
    """main.cf: the relay's domain delivered by LMTP to Dovecot, its certificate, its
    name (myhostname); master.cf: smtps. Postfix restarts when this changed anything."""
    main = {
        "virtual_mailbox_domains": ini.address_domain,
        "virtual_transport": "lmtp:unix:private/dovecot-lmtp",
        "smtpd_tls_cert_file": cert,
        "smtpd_tls_key_file": key,
    }
    if not ini.ip_only:
        # As upstream's main.cf: the relay greets other servers by the mail domain,
        # which it delivers only through virtual_mailbox_domains.
        main.update(myhostname=ini.mail_domain, mydestination="")
    state = "$(cat /etc/postfix/main.cf /etc/postfix/master.cf)"
    settings = " ".join(shlex.quote(f"{k} = {v}") for k, v in main.items())
    options = " ".join(shlex.quote(f"smtps/inet/{o}") for o in SMTPS_OPTIONS)
    return [
        f'postfix_before="{state}"',
        f"postconf -e {settings}",
        "grep -q '^smtps[[:space:]]' /etc/postfix/master.cf || "
        "postconf -M 'smtps/inet=smtps inet n - y - - smtpd'",
        f"postconf -P {options}",
        f'[ "$postfix_before" = "{state}" ] || restart_postfix=1',
    ]


def acmetool_lines(ini: RelayIni) -> list[str]:
    """The lab's acmetool: with no ACME server to ask, a certificate for the relay's
    names, self-signed, in acmetool's layout, only when there is none (a real relay
    obtains one at its first deploy; a moved relay brings its own)."""
    domain = ini.mail_domain
    names = ",".join(f"DNS:{n}" for n in (domain, f"mta-sts.{domain}", f"www.{domain}"))
    acme = "/var/lib/acme"
    return [
        f"if [ ! -e {acme}/live/{domain}/fullchain ]; then "
        f"id=lab$(date +%s); install -d -m 700 {acme}/keys/$id; "
        f"install -d -m 755 {acme}/certs/$id {acme}/live; "
        f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        f"-days 90 -subj /CN={domain} "
        f"-addext subjectAltName={names} -keyout {acme}/keys/$id/privkey "
        f"-out {acme}/certs/$id/cert 2>/dev/null; chmod 600 {acme}/keys/$id/privkey; "
        f"cp {acme}/certs/$id/cert {acme}/certs/$id/fullchain; "
        f"ln -s ../../keys/$id/privkey {acme}/certs/$id/privkey; "
        f"for n in {domain} mta-sts.{domain} www.{domain}; do "
        f"ln -sfn ../certs/$id {acme}/live/$n; done; fi"
    ]


def configure_lines(release: Release, ini: RelayIni) -> list[str]:
    """chatmail's configure: config files, each change noted in this process only."""
    domain = ini.mail_domain
    lines = []
    if release.checks_external_tls and ini.tls_external:
        for path in ini.tls_external:
            lines.append(
                f"test -f {shlex.quote(path)} || {{ echo 'External TLS file not found on "
                f"server: {path}' >&2; exit 1; }}"
            )
    elif ini.ip_only or (release.self_signed_underscore and domain.startswith("_")):
        cert, key = SELF_SIGNED
        lines.append(
            f"if [ ! -e {cert} ] || [ ! -e {key} ]; then openssl req -x509 -newkey rsa:2048 "
            f"-nodes -days 3650 -subj /CN={shlex.quote(domain)} -keyout {key} -out {cert} "
            f"2>/dev/null && chmod 600 {key}; fi"
        )
    lines.append(f"printf '%s\\n' {shlex.quote(domain)} > /etc/mailname")
    address = ini.mtail_address
    if release.checks_mtail_address and address not in ("", "127.0.0.1", "::1", "localhost"):
        lines.append(
            f"ip -o address | awk '{{print $4}}' | cut -d/ -f1 | grep -qxF {shlex.quote(address)}"
            f" || {{ echo 'mtail_address {address} is not an address of this host' >&2; exit 1; }}"
        )
    cert, key = tls_pair(release, ini)
    lines += [
        "install -d -m 755 /usr/local/lib/chatmail-lab",
        _put(CHECKPASSWORD, checkpassword_program(ini), "auth_changed", mode="755"),
        _put("/etc/dovecot/dovecot.conf", dovecot_conf(ini, cert, key), "restart_dovecot"),
        *postfix_lines(ini, cert, key),
    ]
    if ini.ip_only:
        return lines  # no DKIM for IP-only relays (1.11+)
    lines += [
        "install -d -o opendkim -g opendkim -m 750 /etc/dkimkeys /var/spool/postfix/opendkim",
        _put("/etc/opendkim.conf", opendkim_conf(domain), "restart_opendkim"),
        _put(
            "/etc/dkimkeys/KeyTable",
            f"opendkim._domainkey.{domain} {domain}:opendkim:/etc/dkimkeys/opendkim.private\n",
            "restart_opendkim",
            "opendkim:opendkim",
        ),
        _put(
            "/etc/dkimkeys/SigningTable",
            f"*@{domain} opendkim._domainkey.{domain}\n",
            "restart_opendkim",
            "opendkim:opendkim",
        ),
        "if [ ! -e /etc/dkimkeys/opendkim.private ]; then "
        f"opendkim-genkey -D /etc/dkimkeys -d {shlex.quote(domain)} -s opendkim && "
        "chown opendkim:opendkim /etc/dkimkeys/opendkim.* && "
        "chmod 600 /etc/dkimkeys/opendkim.private; fi",
        # Postfix signs through opendkim's socket, named relative to its spool.
        'want="unix:opendkim/opendkim.sock"; '
        'if [ "$(postconf -h smtpd_milters)" != "$want" ] || '
        '[ "$(postconf -h non_smtpd_milters)" != "$want" ]; then '
        'postconf -e "smtpd_milters = $want" "non_smtpd_milters = $want"; restart_postfix=1; fi',
    ]
    return lines


def activate_lines(release: Release, ini: RelayIni, disable_mail: bool) -> list[str]:
    """Start what is stopped; restart only what this process's configure changed."""

    # As pyinfra's systemd.service: it reads the unit's state first and changes only
    # what differs (each enable or disable reloads systemd: most of a second here).
    def ensure(service: str, flag: str) -> str:
        return (
            f"systemctl is-enabled --quiet {service} || systemctl enable --quiet {service}; "
            f'if [ "${flag}" = 1 ]; then systemctl restart {service}; '
            f"else systemctl is-active --quiet {service} || systemctl start {service}; fi"
        )

    lines = [] if ini.ip_only else [ensure("opendkim", "restart_opendkim")]
    if not disable_mail and tls_pair(release, ini)[0].startswith("/var/lib/acme/"):
        lines += acmetool_lines(ini)
    if disable_mail:
        lines.append(
            "for s in postfix dovecot; do if systemctl is-active --quiet $s; then "
            "systemctl stop $s; fi; if systemctl is-enabled --quiet $s; then "
            "systemctl disable --quiet $s; fi; done"
        )
    else:
        lines += [ensure("postfix", "restart_postfix"), ensure("dovecot", "restart_dovecot")]
    return lines


def deploy_script(
    release: Release, ini: RelayIni, githash: str, stages: list[str], disable_mail: bool
) -> str:
    """The shell the deploy runs on the host; its flags live as long as this one run."""
    lines = ["set -e", "restart_opendkim=0 restart_postfix=0 restart_dovecot=0 auth_changed=0"]
    if "install" in stages:
        lines += install_lines(release)
    if "configure" in stages:
        lines += configure_lines(release, ini)
    if "activate" in stages:
        lines += activate_lines(release, ini, disable_mail)
    if "activate" in stages and release.writes_version_file:
        # As the real deploy: the checkout's commit (and its uncommitted diff).
        lines.append(f"printf '%s\\n' {shlex.quote(githash)} > /etc/chatmail-version")
    return "\n".join(lines) + "\n"


def checkout_version(relay_dir: Path) -> tuple[str, str]:
    """The relay release (from the checkout's git tag) and its commit hash."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(relay_dir), *args], capture_output=True, text=True
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    return git("describe", "--tags", "--abbrev=0") or DEFAULT_VERSION, git(
        "rev-parse", "HEAD"
    ) or "unknown"


def _ssh_base() -> list[str]:
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
    shown = subprocess.run([*_ssh_base(), "-G", f"root@{domain}"], capture_output=True, text=True)
    configured = [
        line.split(" ", 1)[1] for line in shown.stdout.splitlines() if line.startswith("hostname ")
    ]
    if configured and configured[0].lower() != domain.lower():
        return subprocess.run(
            [*_ssh_base(), f"root@{domain}", command], capture_output=True, text=True
        )
    addresses = lookup(domain, "A") or lookup(domain, "AAAA")
    if not addresses:
        raise SystemExit(f"ssh: Could not resolve hostname {domain}: Name or service not known")
    return subprocess.run(
        [
            *_ssh_base(),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatmail-lab-cmdeploy-standin",
        description="LAB STAND-IN for cmdeploy: not the real cmdeploy (see module docstring).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="deploy (users, opendkim, services) to a lab host")
    run.add_argument("--disable-mail", action="store_true")
    run.add_argument("--ssh-host")
    run.add_argument("--config", default=os.environ.get("CHATMAIL_INI", "chatmail.ini"))
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--skip-dns-check", action="store_true")
    run.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)

    print("cmdeploy LAB STAND-IN (not the real cmdeploy)", flush=True)
    ini_path = Path(args.config)
    if not ini_path.exists():
        print(
            f"error: {ini_path.resolve()} not found; run from the relay checkout", file=sys.stderr
        )
        return 1
    ini = read_ini(ini_path)
    domain = ini.mail_domain
    host = args.ssh_host or domain
    version, githash = checkout_version(ini_path.resolve().parent)
    release = Release(version)
    if args.skip_dns_check and not release.staged:
        print("cmdeploy run: error: unrecognized arguments: --skip-dns-check", file=sys.stderr)
        return 2

    stages = list(ALL_STAGES)
    if release.staged and os.environ.get("CMDEPLOY_STAGES"):
        stages = os.environ["CMDEPLOY_STAGES"].split(",")
        unknown = set(stages) - set(ALL_STAGES)
        if unknown:
            print(f"error: unknown CMDEPLOY_STAGES {sorted(unknown)}", file=sys.stderr)
            return 1

    fail, _, only = os.environ.get("CHATMAIL_LAB_CMDEPLOY_FAIL", "").partition(":")
    fail_mode, _, fail_host = fail.partition("@")
    # ":enable": only the run that turns mail on (enable-mail), not install's.
    if (fail_host and fail_host != host) or (only == "enable" and args.disable_mail):
        fail_mode = ""
    if fail_mode == "before":
        print(
            f"error: deploy to {host} failed (on purpose: CHATMAIL_LAB_CMDEPLOY_FAIL)",
            file=sys.stderr,
        )
        return 1

    # Before deploying (a dry run too): the DNS check, on the host it logs in to itself.
    if release.logs_in_to_mail_domain and not ini.ip_only:
        login = login_to_domain(domain, "true")
        if login.returncode != 0:
            print(login.stderr.strip(), file=sys.stderr)
            print(f"execnet.gateway_base.HostNotFound: root@{domain}", file=sys.stderr)
            return 1
    if release.logs_in_to_ssh_host:
        login = subprocess.run(
            [*_ssh_base(), f"root@{host}", "true"], capture_output=True, text=True
        )
        if login.returncode != 0:
            print(login.stderr.strip(), file=sys.stderr)
            print(f"execnet.gateway_base.HostNotFound: root@{host}", file=sys.stderr)
            return 1
    if not (args.skip_dns_check or ini.ip_only) and not check_dns(domain):
        return 1
    if args.dry_run:
        print(f"dry run: relay {version} to {host}, stages {','.join(stages)}")
        return 0

    script = ""
    hook_host = os.environ.get("CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST")
    if (
        args.disable_mail
        and hook_host == host
        and os.environ.get("CHATMAIL_LAB_BEFORE_DISABLE_MAIL")
    ):
        script += os.environ["CHATMAIL_LAB_BEFORE_DISABLE_MAIL"].rstrip() + "\n"
    script += deploy_script(release, ini, githash, stages, args.disable_mail)
    print(
        f"deploying relay {version} to {host}: stages {','.join(stages)}"
        f"{' (mail disabled)' if args.disable_mail else ''}",
        flush=True,
    )
    # pyinfra's own ssh: accept-new whatever the ssh config says (pyinfra >= 3 default).
    pyinfra_ssh = [*_ssh_base(), "-o", "StrictHostKeyChecking=accept-new"]
    result = subprocess.run([*pyinfra_ssh, f"root@{host}", "sh -s"], input=script, text=True)
    if result.returncode == 255:
        print(f"error: cannot reach {host} over SSH", file=sys.stderr)
        return 1
    if result.returncode != 0:
        print(f"error: deploy to {host} failed (exit {result.returncode})", file=sys.stderr)
        return 1
    if fail_mode == "after":
        print(f"error: deploy to {host} failed after its work (on purpose)", file=sys.stderr)
        return 1
    # After a deploy, 1.7 shows the echobot's invite link, read through the domain.
    if release.shows_echobot_invite:
        print("\nYou can try out the relay by talking to this echo bot: ", flush=True)
        link = login_to_domain(domain, "cat /var/lib/echobot/invite-link.txt")
        if link.returncode != 0:
            print(link.stderr.strip(), file=sys.stderr)
            print(
                "Traceback: remote command failed: cat /var/lib/echobot/invite-link.txt",
                file=sys.stderr,
            )
            return 1
        print(link.stdout.strip())
    print(f"deploy to {host} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
