"""The operator's known_hosts as OpenSSH keeps it: several key types per host, hashed
names, a symlinked file, @cert-authority and @revoked lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chatmail_migrate.lab import Lab, SeedParams, nameserver

from .helpers import listing, run_tool_with_fault
from .test_migrate import assert_migrated

TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")


def every_key_type(lab: Lab, host: str) -> dict[str, str]:
    """Let the lab host's sshd offer ed25519, ECDSA and RSA keys (as Debian's does);
    its keys by type."""
    lab.ssh(host, "ssh-keygen -A && printf 'HostKey /etc/ssh/ssh_host_ecdsa_key\\n"
                  "HostKey /etc/ssh/ssh_host_rsa_key\\n' >> /etc/ssh/sshd_config.d/lab.conf"
                  " && systemctl reload ssh")  # fmt: skip
    deadline = time.monotonic() + 30
    while lab.ssh(host, "true", check=False).returncode != 0:  # sshd re-executes itself
        assert time.monotonic() < deadline, f"sshd on {host} did not come back"
        time.sleep(0.5)
    out = lab.ssh(host, "cat /etc/ssh/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ecdsa_key.pub "
                        "/etc/ssh/ssh_host_rsa_key.pub").stdout  # fmt: skip
    keys = dict(line.split()[:2] for line in out.splitlines())
    assert set(keys) == set(TYPES), keys
    return keys


def domain_entries(known_hosts: Path, domain: str) -> set[tuple[str, str]]:
    return {
        (parts[1], parts[2])
        for parts in (line.split() for line in known_hosts.read_text().splitlines())
        if len(parts) >= 3 and domain in parts[0].split(",")
    }


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 22 item 5: switch-dns adds only the key type paramiko negotiated with new "
    "(ECDSA) for the domain; cmdeploy 1.7's ssh root@DOMAIN then gets new's ED25519 key, "
    "beside old's ED25519 line: REMOTE HOST IDENTIFICATION HAS CHANGED, mail down on both",
)
def test_known_hosts_with_every_key_type_of_both_hosts(make_lab, tmp_path: Path):
    # Relay 1.7: its cmdeploy logs in with `ssh root@DOMAIN` before and after the switch.
    lab = make_lab("cmkh", seed=SeedParams(version="1.7.0", accounts=2, messages=1))
    old_keys, new_keys = every_key_type(lab, "old"), every_key_type(lab, "new")
    old, new = lab.address("old"), lab.address("new")
    # One line per type, as OpenSSH (8.5+, UpdateHostKeys) writes: old as the operator
    # always reached it (by alias, address and mail domain); new first recorded by an
    # OpenSSH before 8.5, which preferred ECDSA, its other types added later.
    known = tmp_path / "known_hosts"
    others = [line for line in lab.known_hosts.read_text().splitlines()
              if not line.startswith(("old,", "new,"))]  # fmt: skip
    known.write_text("\n".join([
        *others,
        *(f"old,{old},{lab.domain} {t} {old_keys[t]}" for t in TYPES),
        *(f"new,{new} {t} {new_keys[t]}" for t in ("ecdsa-sha2-nistp256", "ssh-ed25519",
                                                     "ssh-rsa")),
    ]) + "\n")  # fmt: skip
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
        lab, ["migrate", "--new-host", "new", "--yes", "--dns-timeout", "120"],
        state_dir=tmp_path / "state", when="waiting for DNS",
        fault=nameservers_change_one_after_the_other, **env,
    )  # fmt: skip
    assert code == 0, output
    assert "HOST IDENTIFICATION HAS CHANGED" not in output
    assert output.count(f"[ssh] login to {lab.domain}") >= 3, output
    assert_migrated(lab, before)
    # During the move the domain was accepted with every type of either host; now only
    # with new's, and old keeps its own names.
    assert domain_entries(known, lab.domain) == set(new_keys.items())
    old_lines = [line.split() for line in known.read_text().splitlines()
                 if line.startswith("old,")]  # fmt: skip
    assert {(p[0], p[1], p[2]) for p in old_lines} == {
        (f"old,{old}", t, k) for t, k in old_keys.items()
    }
