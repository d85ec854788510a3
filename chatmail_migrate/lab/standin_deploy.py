"""What the stand-in's deploy does on a host: the shell of its stages.

``deploy_script`` is the one shell script a ``cmdeploy run`` sends to the host:
install (users, opendkim), configure (Dovecot, Postfix, OpenDKIM, the certificate;
each change noted in a flag of this one run) and activate (services started, and
restarted only when this run's configure changed them), as the release
(``standin_release.Release``) says.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from chatmail_migrate.lab.standin_release import RelayIni, Release

OPENDKIM_SOCKET = "/var/spool/postfix/opendkim/opendkim.sock"
SELF_SIGNED = ("/etc/ssl/certs/mailserver.pem", "/etc/ssl/private/mailserver.key")
# The lab's doveauth: Dovecot's checkpassword driver runs this (relay_auth.py).
CHECKPASSWORD = "/usr/local/lib/chatmail-lab/checkpassword"


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
    # Every release deploys Dovecot before Postfix ("it creates the authentication
    # socket required by Postfix": 1.6-1.7 __init__.py, 1.8+ deployers.py), in both
    # directions: --disable-mail stops dovecot first too.
    if disable_mail:
        lines.append(
            "for s in dovecot postfix; do if systemctl is-active --quiet $s; then "
            "systemctl stop $s; fi; if systemctl is-enabled --quiet $s; then "
            "systemctl disable --quiet $s; fi; done"
        )
    else:
        lines += [ensure("dovecot", "restart_dovecot"), ensure("postfix", "restart_postfix")]
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
