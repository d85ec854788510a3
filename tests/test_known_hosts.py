"""The operator's known_hosts as OpenSSH keeps it: several key types per host, hashed
names, a symlinked file, @cert-authority and @revoked lines."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import paramiko

from chatmail_migrate.lab import Lab, SeedParams, nameserver
from tests.helpers import listing, run_tool, run_tool_with_fault
from tests.test_migrate import assert_migrated

TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")


def every_key_type(lab: Lab, host: str) -> dict[str, str]:
    """Let the lab host's sshd offer ed25519, ECDSA and RSA keys (as Debian's does);
    its keys by type."""
    lab.ssh(
        host,
        "ssh-keygen -A && printf 'HostKey /etc/ssh/ssh_host_ecdsa_key\\n"
        "HostKey /etc/ssh/ssh_host_rsa_key\\n' >> /etc/ssh/sshd_config.d/lab.conf"
        " && systemctl reload ssh",
    )
    wait_for_sshd(lab, host)
    out = lab.ssh(
        host,
        "cat /etc/ssh/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ecdsa_key.pub "
        "/etc/ssh/ssh_host_rsa_key.pub",
    ).stdout
    keys = dict(line.split()[:2] for line in out.splitlines())
    assert set(keys) == set(TYPES), keys
    return keys


def domain_entries(known_hosts: Path, domain: str) -> set[tuple[str, str]]:
    return {
        (parts[1], parts[2])
        for parts in (line.split() for line in known_hosts.read_text().splitlines())
        if len(parts) >= 3 and domain in parts[0].split(",")
    }


def test_known_hosts_with_every_key_type_of_both_hosts(make_lab, tmp_path: Path):
    # Relay 1.7: its cmdeploy logs in with `ssh root@DOMAIN` before and after the switch.
    lab = make_lab("cmkh", seed=SeedParams(version="1.7.0", accounts=2, messages=1))
    old_keys, new_keys = every_key_type(lab, "old"), every_key_type(lab, "new")
    old, new = lab.address("old"), lab.address("new")
    # One line per type, as OpenSSH (8.5+, UpdateHostKeys) writes: old as the operator
    # always reached it (by alias, address and mail domain); new first recorded by an
    # OpenSSH before 8.5, which preferred ECDSA, its other types added later.
    known = tmp_path / "known_hosts"
    others = [
        line
        for line in lab.known_hosts.read_text().splitlines()
        if not line.startswith(("old,", "new,"))
    ]
    known.write_text(
        "\n".join(
            [
                *others,
                *(f"old,{old},{lab.domain} {t} {old_keys[t]}" for t in TYPES),
                *(
                    f"new,{new} {t} {new_keys[t]}"
                    for t in ("ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa")
                ),
            ]
        )
        + "\n"
    )
    config = tmp_path / "ssh_config"
    config.write_text(lab.ssh_config.read_text().replace(str(lab.known_hosts), str(known)))
    env = {"CHATMAIL_MIGRATE_SSH_CONFIG": str(config), "CHATMAIL_LAB_SSH_CONFIG": str(config)}
    before = listing(lab, "old")

    def nameservers_change_one_after_the_other(proc):
        nameserver.update(lab, instances=("ns1",), a=[new])
        time.sleep(5)
        assert proc.poll() is None, "one lagging nameserver must keep the wait going"
        nameserver.update(lab, instances=("ns2",), a=[new])

    code, output = run_tool_with_fault(
        lab,
        ["migrate", "--new-host", "new", "--yes", "--dns-timeout", "120"],
        state_dir=tmp_path / "state",
        when="waiting for DNS",
        fault=nameservers_change_one_after_the_other,
        **env,
    )
    assert code == 0, output
    assert "HOST IDENTIFICATION HAS CHANGED" not in output
    assert "the old and the new host's keys (ecdsa-sha2-nistp256 SHA256:" in output
    assert ", ssh-ed25519, ssh-rsa) until enable-mail ends" in output
    assert output.count(f"[ssh] login to {lab.domain}") >= 3, output
    assert_migrated(lab, before)
    # During the move the domain was accepted with every type of either host; now only
    # with new's, and old keeps its own names.
    assert domain_entries(known, lab.domain) == set(new_keys.items())
    old_lines = [line.split() for line in known.read_text().splitlines() if line.startswith("old,")]
    assert {(p[0], p[1], p[2]) for p in old_lines} == {
        (f"old,{old}", t, k) for t, k in old_keys.items()
    }


def wait_for_sshd(lab: Lab, host: str) -> None:
    deadline = time.monotonic() + 30
    while lab.ssh(host, "true", check=False).returncode != 0:  # sshd re-executes itself
        assert time.monotonic() < deadline, f"sshd on {host} did not come back"
        time.sleep(0.5)


def names_hashed(line: str, name: str) -> bool:
    field = line.split()[0]
    return field.startswith("|1|") and paramiko.HostKeys.hash_host(name, field) == field


def test_known_hosts_as_openssh_keeps_it(make_lab, tmp_path: Path):
    lab = make_lab("cmkh", seed=SeedParams(version="1.8.0", accounts=2, messages=1))
    old, new = lab.address("old"), lab.address("new")
    new_key = lab.ssh("new", "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    ca = tmp_path / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ca], check=True)
    ca_pub = ca.with_suffix(".pub").read_text().split()
    revoked = tmp_path / "revoked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", revoked], check=True)
    revoked_pub = revoked.with_suffix(".pub").read_text().split()
    # The operator keeps ~/.ssh/known_hosts in a dotfiles checkout (a symlink), hashes
    # the names (HashKnownHosts yes), trusts a CA for the hosts of a domain and has
    # revoked a key.
    target = tmp_path / "dotfiles" / "known_hosts"
    target.parent.mkdir()
    link = tmp_path / "ssh" / "known_hosts"
    link.parent.mkdir()
    link.symlink_to(target)
    plain = [
        line for line in lab.known_hosts.read_text().splitlines() if not line.startswith("new,")
    ]
    markers = [
        f"@cert-authority *.corp.example {ca_pub[0]} {ca_pub[1]}",
        f"@revoked * {revoked_pub[0]} {revoked_pub[1]}",
    ]
    config = tmp_path / "ssh" / "config"
    config.write_text(
        "HashKnownHosts yes\n" + lab.ssh_config.read_text().replace(str(lab.known_hosts), str(link))
    )
    env = {"CHATMAIL_MIGRATE_SSH_CONFIG": str(config), "CHATMAIL_LAB_SSH_CONFIG": str(config)}
    hosts = ["--old-host", "old", "--new-host", "new"]

    # A revoked key is refused, even where a line names the host with it.
    target.write_text(
        "\n".join([*plain, f"new,{new} {new_key}", *markers, f"@revoked new,{new} {new_key}"])
        + "\n"
    )
    target.chmod(0o600)
    result = run_tool(lab, "invoke", "preflight", *hosts, state_dir=tmp_path / "s1", **env)
    assert result.returncode != 0
    assert f"host key of {new} (ssh-ed25519 SHA256:" in result.stdout + result.stderr
    assert "is marked @revoked in" in result.stdout + result.stderr

    # new shows a host certificate of a CA the operator trusts for it, and known_hosts
    # has no plain key: paramiko cannot check certificates, OpenSSH does.
    host_pub = tmp_path / "new_host.pub"
    host_pub.write_text(new_key + "\n")
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            ca,
            "-I",
            "new",
            "-h",
            "-n",
            f"{new},new",
            "-V",
            "-5m:+1h",
            host_pub,
        ],
        check=True,
    )
    cert = host_pub.with_name("new_host-cert.pub").read_text()
    lab.ssh(
        "new",
        "cat > /etc/ssh/ssh_host_ed25519_key-cert.pub && echo 'HostCertificate "
        "/etc/ssh/ssh_host_ed25519_key-cert.pub' >> /etc/ssh/sshd_config.d/lab.conf"
        " && systemctl reload ssh",
        input=cert,
    )
    wait_for_sshd(lab, "new")
    new_ca = f"@cert-authority new,{new} {ca_pub[0]} {ca_pub[1]}"
    target.write_text("\n".join([*plain, *markers, new_ca]) + "\n")
    result = run_tool(lab, "invoke", "preflight", *hosts, state_dir=tmp_path / "s2", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"host key of {new} is certified by a CA your known_hosts trusts for it "
        "(checked by OpenSSH)" in result.stdout
    )
    # Signed by a CA trusted for other hosts only: refused.
    target.write_text("\n".join([*plain, *markers]) + "\n")
    result = run_tool(lab, "invoke", "preflight", *hosts, state_dir=tmp_path / "s3", **env)
    assert result.returncode != 0
    assert f"host key of {new} (ssh-ed25519 SHA256:" in result.stdout + result.stderr

    # --accept-new-host-keys appends to the symlink's target, hashed.
    result = run_tool(
        lab,
        "invoke",
        "preflight",
        *hosts,
        "--accept-new-host-keys",
        state_dir=tmp_path / "s4",
        **env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert link.is_symlink() and link.resolve() == target
    lines = target.read_text().splitlines()
    assert lines[: len(plain) + 2] == [*plain, *markers]
    assert [line.split(" ", 1)[1] for line in lines if names_hashed(line, new)] == [new_key]
    assert not any(new in line.split()[0].split(",") for line in lines)

    # switch-dns: the domain gets new's key beside old's, then (--update-known-hosts)
    # only new's; each rewrite keeps the file a symlink, its previous text in .old.
    result = run_tool(lab, "invoke", "copy-data", *hosts, state_dir=tmp_path / "s5", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    nameserver.update(lab, a=[new])
    before = target.read_text()
    result = run_tool(
        lab,
        "invoke",
        "switch-dns",
        *hosts,
        "--yes",
        "--update-known-hosts",
        state_dir=tmp_path / "s5",
        **env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert link.is_symlink() and link.resolve() == target
    assert (target.stat().st_mode & 0o777) == 0o600
    lines = target.read_text().splitlines()
    assert [line for line in lines if line.startswith("@")] == markers
    assert [line.split(" ", 1)[1] for line in lines if names_hashed(line, lab.domain)] == [new_key]
    assert not any(lab.domain in line for line in lines)
    assert any(line.startswith(f"old,{old},") for line in lines), "old keeps its own names"
    backup = target.with_name("known_hosts.old")
    assert backup.is_file() and not backup.is_symlink()
    assert [line for line in backup.read_text().splitlines() if line.startswith("@")] == markers
    assert backup.read_text() != before, "the last rewrite's previous text"
