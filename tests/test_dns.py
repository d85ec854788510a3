"""DNS against the lab's real authoritative nameservers (NSD on spare: ns1, ns2)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmail_migrate import nameservers
from chatmail_migrate.lab import Lab, SeedParams, nameserver, seed_relay
from tests.helpers import host_key, lab_name, mail_services, run_tool, run_tool_with_fault

SWITCH = ["switch-dns", "--old-host", "old", "--new-host", "new", "--yes"]

# One lab for the module (a fixture): its tests stay on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("dns")


@pytest.fixture(scope="module")
def dns_lab(lab_available, tmp_path_factory) -> Iterator[Lab]:
    """A seeded lab whose new host already holds old's data (DKIM key, ACME account)."""
    stale = Lab.load(lab_name("cmdns"))
    if stale:
        stale.down()
    lab = Lab(name=lab_name("cmdns"))
    try:
        lab.up()
        seed_relay(lab, SeedParams(accounts=3, messages=1))
        state = tmp_path_factory.mktemp("state")
        steps = (
            ["copy-data", "--old-host", "old", "--new-host", "new"],
            ["install", "--new-host", "new"],
            ["fix-ownership", "--new-host", "new"],
        )
        for step in steps:
            assert run_tool(lab, "invoke", *step, state_dir=state).returncode == 0
        yield lab
    finally:
        lab.down()


@pytest.fixture
def dns(dns_lab: Lab) -> Iterator[Lab]:
    """Each test starts with both nameservers pointing at old, TTL 300, and the lab's
    known_hosts as it was (switch-dns adds the new host's key for the domain)."""
    original = {k: v for k, v in nameserver.records_of(dns_lab).items() if k != "serial"}
    known_hosts = dns_lab.known_hosts.read_text()
    yield dns_lab
    nameserver.update(dns_lab, **original)
    dns_lab.known_hosts.write_text(known_hosts)


def test_preflight_warns_about_a_long_ttl(dns: Lab, tmp_path: Path):
    nameserver.update(dns, ttl=3600)
    result = run_tool(
        dns, "invoke", "preflight", "--new-host", "new", "--force", state_dir=tmp_path
    )
    assert f"PASS  DNS: {dns.domain} → {dns.address('old')} at 2 nameservers of lab.example." in (
        result.stdout
    )
    assert (
        "WARN  DNS TTL: 3600 s: after the switch, resolvers may keep sending clients to the "
        "old host for up to 60 min (3600 s)" in result.stdout
    )


def test_wait_ends_when_every_nameserver_has_changed_and_not_before(dns: Lab, tmp_path: Path):
    new = dns.address("new")

    def operator(proc):
        time.sleep(2)
        assert proc.poll() is None, "switch-dns must wait while the records are unchanged"
        nameserver.update(dns, instances=("ns1",), a=[new])
        time.sleep(4)
        assert proc.poll() is None, "one lagging nameserver must keep the wait going"
        nameserver.update(dns, instances=("ns2",), a=[new])

    code, output = run_tool_with_fault(
        dns, SWITCH, state_dir=tmp_path, when="waiting for DNS", fault=operator
    )
    assert code == 0, output
    assert "ns1.lab.example:✓ ns2.lab.example:…" in output
    assert "all 2 nameservers answer the new values" in output
    assert (
        f"    A     {dns.domain}: replace {dns.address('old')} with {new} "
        "(new has no public address: the one the tool reached)"
    ) in output
    assert "resolvers may hand out the old address until" in output


def test_wait_times_out_with_the_lagging_servers_named(dns: Lab, tmp_path: Path):
    nameserver.update(dns, instances=("ns1",), a=[dns.address("new")])
    result = run_tool(dns, "invoke", *SWITCH, "--dns-timeout", "4", state_dir=tmp_path)
    assert result.returncode == 1
    assert "ns2.lab.example (" in result.stderr and "still does not answer" in result.stderr
    assert "ns1.lab.example (" not in result.stderr.split("still")[0]


def test_unreachable_nameserver_is_a_clear_failure(dns: Lab, tmp_path: Path):
    result = run_tool(
        dns,
        "invoke",
        "preflight",
        "--new-host",
        "new",
        "--force",
        "--old-host",
        "old",
        "--nameserver",
        dns.address("new"),
        state_dir=tmp_path,
    )
    assert result.returncode != 0
    # Nothing listens there: dnspython hears no ICMP on its unconnected socket, so it
    # is a timeout (a refusing server would be "cannot be asked").
    assert f"FAIL  DNS: nameserver {dns.address('new')} did not answer in 3s" in result.stdout


def test_dkim_record_not_matching_the_new_key_is_caught(dns: Lab, tmp_path: Path):
    bogus = "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAbogus"
    nameserver.update(dns, a=[dns.address("new")], dkim=bogus)
    result = run_tool(dns, "invoke", *SWITCH, state_dir=tmp_path)
    assert result.returncode == 1
    assert (
        "DKIM: opendkim._domainkey.relay.lab.example publishes p=MIIBIjANBgkqhkiG9w0BAQEFAAOC"
        "AQ8AMIIBCgKCAQEAbogus but the new host's /etc/dkimkeys/opendkim.private has p=MIIB"
        in (result.stderr)
    )


def test_known_hosts_entry_for_the_domain_is_replaced_on_request(dns: Lab, tmp_path: Path):
    known = tmp_path / "known_hosts"
    known.write_text(dns.known_hosts.read_text())
    config = tmp_path / "ssh_config"
    config.write_text(dns.ssh_config.read_text().replace(str(dns.known_hosts), str(known)))
    nameserver.update(dns, a=[dns.address("new")])
    env = {"CHATMAIL_MIGRATE_SSH_CONFIG": str(config)}
    advised = run_tool(dns, "invoke", *SWITCH, state_dir=tmp_path, **env)
    assert advised.returncode == 0, advised.stderr
    assert "still holds the old host's key for relay.lab.example beside the new one's" in (
        advised.stdout
    )
    # During the move the domain is accepted with either verified key; the file was
    # backed up first, and nothing else in it changed.
    new_key = host_key(dns, "new")
    assert known.read_text() == dns.known_hosts.read_text() + (
        f"{dns.domain} ssh-ed25519 {new_key}\n"
    )
    backup = next(tmp_path.glob("known_hosts.chatmail-migrate-*"))
    assert backup.read_text() == dns.known_hosts.read_text()
    done = run_tool(dns, "invoke", *SWITCH, "--update-known-hosts", state_dir=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    lines = known.read_text().splitlines()
    assert f"{dns.domain} ssh-ed25519 {new_key}" in lines
    old_line = next(line for line in lines if line.startswith("old,"))
    assert dns.domain not in old_line, "the old host keeps its own names, not the domain"


def test_lab_dns_task_switches_the_record(dns: Lab, tmp_path: Path):
    pass

    result = run_tool(
        dns,
        "invoke",
        "lab.dns",
        "--name",
        dns.name,
        "--point-at",
        "new",
        "--ttl",
        "600",
        state_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    servers = nameservers.parse_nameservers(dns.nameservers())
    for answers in nameservers.address_records(dns.domain, servers).values():
        assert (answers["A"].values, answers["A"].ttl) == ([dns.address("new")], 600)


def test_migrate_yes_with_a_timed_out_wait_rolls_back_when_dns_never_changed(
    dns: Lab, tmp_path: Path
):
    # --yes and a wait that timed out say nothing about DNS: the authoritative servers
    # still answer the old address, so mail goes back on at the old host.
    result = run_tool(
        dns,
        "invoke",
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--yes",
        "--force",
        "--dns-timeout",
        "3",
        state_dir=tmp_path,
    )
    assert result.returncode == 1, result.stdout
    assert "switch-dns FAILED" in result.stderr
    assert "Rolled back: mail runs on the old host again" in result.stderr
    assert mail_services(dns, "old") == {"postfix": "active enabled", "dovecot": "active enabled"}
