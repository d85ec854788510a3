"""What the relay checkout says a move carries, and known_hosts edits (no lab needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from chatmail_migrate.hosts import known_hosts
from chatmail_migrate.relay import Relay, RelayConfigError, read_relay

ECHOBOT = ["/run/echobot", "/var/lib/echobot"]


def checkout(tmp_path: Path, tag: str | None, **params: str) -> Path:
    ini = "[params]\n" + "".join(f"{k} = {v}\n" for k, v in params.items())
    (tmp_path / "chatmail.ini").write_text(ini)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    if tag:
        subprocess.run([*git, "tag", tag], check=True)
    return tmp_path


@pytest.mark.parametrize(
    "tag, echobot, logs_in_to_domain",
    [
        ("1.6.0", True, True),
        ("1.7.0", True, True),
        ("1.8.0", False, False),
        ("1.12.0", False, False),
        (None, True, True),
    ],
)
def test_release_decides_echobot_and_domain_login(tmp_path, tag, echobot, logs_in_to_domain):
    relay = read_relay(checkout(tmp_path, tag, mail_domain="chat.example.org"))
    assert relay.release == tag
    assert relay.has_echobot is echobot
    assert relay.logs_in_to_mail_domain is logs_in_to_domain
    assert all(p in relay.copy_paths() for p in ECHOBOT) is echobot
    assert relay.copy_paths()[0] == "/home/vmail/mail"
    assert "/etc/chatmail-nocreate" in relay.copy_paths()


def test_chatmail_ini_settings_reach_the_copy(tmp_path):
    relay = read_relay(
        checkout(
            tmp_path,
            "1.10.0",
            mail_domain="_chat.example.org",
            mailboxes_dir="/srv/mail/_chat.example.org",
            tls_external_cert_and_key="/etc/tls/cert.pem /etc/tls/key.pem",
            mtail_address="10.0.0.5",
        )
    )
    paths = relay.copy_paths()
    assert paths[0] == relay.mailbox_tree == relay.mailbox_dir == "/srv/mail/_chat.example.org"
    assert "/etc/tls/cert.pem" in paths and "/etc/tls/key.pem" in paths
    # External certificates replace the self-signed pair a "_" domain would get.
    assert "/etc/ssl/certs/mailserver.pem" not in paths
    assert relay.mtail_address == "10.0.0.5"


def test_self_signed_and_ip_only_relays(tmp_path):
    underscore = Relay(mail_domain="_chat.example.org", release="1.10.0")
    assert underscore.self_signed and not underscore.ip_only
    assert "/etc/ssl/private/mailserver.key" in underscore.copy_paths()
    ip_only = Relay(mail_domain="192.0.2.7", release="1.11.0")
    assert ip_only.ip_only and ip_only.self_signed
    assert not Relay(mail_domain="2001:db8::7").ip_only, "IP-only relays are IPv4 (1.11)"
    assert Relay(mail_domain="chat.example.org").mailbox_dir == "/home/vmail/mail/chat.example.org"


def test_bad_external_tls_setting_is_one_line(tmp_path):
    relay_dir = checkout(tmp_path, "1.10.0", mail_domain="x.org", tls_external_cert_and_key="/a")
    with pytest.raises(RelayConfigError, match="tls_external_cert_and_key") as refused:
        read_relay(relay_dir)  # the setting to fix is named
    assert "\n" not in str(refused.value)


def _key(tmp_path: Path, name: str) -> paramiko.PKey:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def test_known_hosts_accepts_both_keys_then_only_the_new_one(tmp_path):
    old, new = _key(tmp_path, "old"), _key(tmp_path, "new")
    old_keys = [(old.get_name(), old.get_base64()), ("ssh-rsa", "AAAAoldrsa")]
    new_keys = [(new.get_name(), new.get_base64()), ("ecdsa-sha2-nistp256", "AAAAnewecdsa")]
    hashed = paramiko.HostKeys.hash_host("chat.example.org")
    path = tmp_path / "known_hosts"
    original = (
        "# mine\n"
        f"{hashed} {old.get_name()} {old.get_base64()}\n"
        f"{hashed} ssh-rsa AAAAoldrsa\n"
        "other.example.org ssh-ed25519 AAAAother\n"
    )
    path.write_text(original)
    domain = "chat.example.org"
    assert known_hosts.names_domain(path, domain)
    assert known_hosts.names_other_key(path, domain, new_keys)
    backup = known_hosts.backup(path)
    known_hosts.add_keys(path, domain, new_keys)
    known_hosts.add_keys(path, domain, new_keys)  # once only
    assert backup.read_text() == original
    assert path.read_text() == original + "".join(f"{domain} {t} {k}\n" for t, k in new_keys)
    assert known_hosts.names_keys(path, domain, old_keys + new_keys)
    known_hosts.replace_keys(path, domain, new_keys)
    assert not known_hosts.names_other_key(path, domain, new_keys)
    assert not known_hosts.names_keys(path, domain, old_keys[:1])
    assert "other.example.org ssh-ed25519 AAAAother" in path.read_text()
    # After a rollback: the old keys alone again, every other line as it was.
    known_hosts.add_keys(path, domain, old_keys)
    known_hosts.replace_keys(path, domain, old_keys)
    assert not known_hosts.names_keys(path, domain, new_keys[:1])
    assert known_hosts.names_keys(path, domain, old_keys)
    assert "# mine" in path.read_text() and "other.example.org" in path.read_text()


def test_a_key_the_host_does_not_serve_is_another_key_whatever_its_type(tmp_path):
    new = _key(tmp_path, "new")
    path = tmp_path / "known_hosts"
    path.write_text("chat.example.org ecdsa-sha2-nistp256 AAAAecdsa\n")
    served = [(new.get_name(), new.get_base64())]
    assert known_hosts.names_other_key(path, "chat.example.org", served)
    served.append(("ecdsa-sha2-nistp256", "AAAAecdsa"))
    assert not known_hosts.names_other_key(path, "chat.example.org", served)


def test_known_hosts_markers_patterns_hashing_and_symlinks(tmp_path):
    key = _key(tmp_path, "k")
    seen = (key.get_name(), key.get_base64())
    target = tmp_path / "dotfiles" / "known_hosts"
    target.parent.mkdir()
    text = (
        f"@cert-authority *.corp.example,!bad.corp.example {seen[0]} {seen[1]}\n"
        f"@revoked 10.0.0.* {seen[0]} {seen[1]}\n"
        f"*.example.org,!skip.example.org {seen[0]} {seen[1]}\n"
        f"{paramiko.HostKeys.hash_host('chat.example.org')} ssh-rsa AAAArsa\n"
    )
    target.write_text(text)
    target.chmod(0o640)
    link = tmp_path / "known_hosts"
    link.symlink_to(target)
    assert known_hosts.has_cert_authority([link], ["db.corp.example"])
    assert not known_hosts.has_cert_authority([link], ["bad.corp.example", "corp.example"])
    assert known_hosts.revoked_for([link], "10.0.0.7", seen) == link
    assert known_hosts.revoked_for([link], "10.0.1.7", seen) is None
    # A revoked key is accepted for no name, whatever pattern revoked it.
    assert known_hosts.keys_for([link], "www.example.org") == []
    assert known_hosts.keys_for([link], "CHAT.example.org") == [("ssh-rsa", "AAAArsa")]
    assert known_hosts.without_markers(link, {seen}) == text.splitlines(True)[3]
    known_hosts.add_keys(link, "chat.example.org", [seen], hashed=True)
    assert link.is_symlink() and (target.stat().st_mode & 0o777) == 0o640
    assert target.with_name("known_hosts.old").read_text() == text
    added = target.read_text().splitlines()[-1].split()
    assert added[0].startswith("|1|") and (added[1], added[2]) == seen
    assert known_hosts.names_keys(link, "chat.example.org", [seen, ("ssh-rsa", "AAAArsa")])
    known_hosts.append(link, "10.0.0.9", seen, hashed=False)
    assert link.is_symlink() and target.read_text().endswith(f"10.0.0.9 {seen[0]} {seen[1]}\n")
