"""Every relay release 1.6 to 1.12 (and one upgraded in place), migrated unattended
against the stand-in's per-release behaviours; relays the tool must not move."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from chatmail_migrate.lab import Lab, SeedParams, nameserver
from chatmail_migrate.lab.seed import RELEASES, seeded_accounts
from chatmail_migrate.relay import read_relay
from tests.helpers import domain_keys, host_key, listing, run_tool, run_tool_with_fault
from tests.relay_client import RelayClient, assert_relay_serves, pinned_context, relay_certificate
from tests.test_migrate import assert_migrated, journal
from tests.test_safety import unchanged

OPENDKIM_SOCKET = "/var/spool/postfix/opendkim/opendkim.sock"
CASES = {
    "1.6.0": SeedParams(version="1.6.0"),
    "1.7.0": SeedParams(version="1.7.0"),
    "1.8.0": SeedParams(version="1.8.0"),
    "1.9.0": SeedParams(version="1.9.0", mailboxes_dir="/srv/chatmail/relay.lab.example"),
    "1.10.0-external-tls": SeedParams(version="1.10.0", tls_external=True),
    "1.11.0-self-signed": SeedParams(version="1.11.0"),
    "1.12.0": SeedParams(version="1.12.0"),
    "1.10.0-upgraded-from-1.7.0-nocreate": SeedParams(
        version="1.10.0", upgraded_from="1.7.0", nocreate=True
    ),
}
assert {p.version for p in CASES.values()} == set(RELEASES)


def migrate_switching_dns(lab: Lab, state_dir: Path, pause: float = 0, **env: str):
    """``migrate --yes`` as an operator runs it (no --old-host: the mail domain, looked up
    at the lab's authoritative nameservers), the test changing DNS during the wait."""

    def change_dns(proc):
        time.sleep(pause)
        assert proc.poll() is None, "switch-dns must wait until the record changes"
        nameserver.update(lab, a=[lab.address("new")])

    return run_tool_with_fault(
        lab,
        ["migrate", "--new-host", "new", "--yes"],
        state_dir=state_dir,
        when="waiting for DNS",
        fault=change_dns,
        **env,
    )


def keys_arrived_at(record: dict) -> float:
    """When the DKIM key opendkim now reads reached new: install carried the secrets,
    or (when they changed on old since, or install did not carry them) copy-data."""
    events = record["events"]
    carried = [e for e in events if e["event"] == "secrets-carried"]
    if carried and not any(e["event"] == "secrets-changed" for e in events):
        return datetime.strptime(carried[-1]["time"], "%Y-%m-%d %H:%M:%S%z").timestamp()
    copy = record["steps"]["copy-data"]
    return copy["started_ts"] + copy["seconds"]


def assert_opendkim_signs_with_copied_state(lab: Lab, keys_at: float) -> None:
    """opendkim on new runs chatmail's config (its socket in Postfix's spool), started
    after the copied key arrived, and signs outgoing mail for the domain."""
    pid = lab.ssh("new", "cat /run/opendkim/opendkim.pid").stdout.strip()
    age = float(lab.ssh("new", f"ps -o etimes= -p {pid}").stdout)
    assert time.time() - age >= keys_at - 1, "opendkim must start after its key arrived"
    assert lab.ssh("new", f"test -S {OPENDKIM_SOCKET}", check=False).returncode == 0
    message = f"From: probe@{lab.domain}\nTo: someone@unreachable.invalid\nSubject: probe\n\nhi\n"
    lab.ssh("new", f"sendmail -f probe@{lab.domain} someone@unreachable.invalid", input=message)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        queue = [json.loads(q) for q in lab.ssh("new", "postqueue -j").stdout.splitlines()]
        probe = [q for q in queue if q["sender"] == f"probe@{lab.domain}"]
        if probe:
            header = lab.ssh("new", f"postcat -hq {probe[0]['queue_id']}").stdout
            if "DKIM-Signature:" in header:
                break
        time.sleep(0.5)
    else:
        raise AssertionError("the probe was not queued with a DKIM signature in 30 s")
    assert f"d={lab.domain}" in header and "s=opendkim" in header, header


@pytest.mark.parametrize("case", list(CASES))
def test_release_migrates_unattended(make_lab, tmp_path: Path, case: str):
    params = CASES[case]
    domain = "_relay.lab.example" if case.endswith("self-signed") else ""
    lab = make_lab("cmrel", seed=params, domain=domain)
    relay = read_relay(lab.relay_dir)
    before = listing(lab, "old", relay.copy_paths())
    old_key, new_key = host_key(lab, "old"), host_key(lab, "new")
    assert domain_keys(lab.known_hosts, lab.domain) == [old_key]
    served = relay_certificate(lab, "old")
    # An operator's shell may export CMDEPLOY_STAGES: runs meant to deploy everything
    # (disable-mail, the pre-1.8 install) must not inherit it.
    pause = 2 if case == "1.7.0" else 0
    code, output = migrate_switching_dns(lab, tmp_path, pause, CMDEPLOY_STAGES="install")
    assert code == 0, output
    assert f"old host: {lab.domain} points at {lab.address('old')}" in output
    assert "all 2 nameservers answer the new values" in output
    assert "DKIM record opendkim._domainkey" in output
    if "/var/lib/acme" in before["entries"]:
        assert "CAA accounturi matches" in output
    assert_migrated(lab, before)
    record = journal(tmp_path, lab)
    assert record["old_host"] == lab.address("old")
    steps, plan = record["steps"], record["plan"]
    assert list(steps) == plan and len(plan) == 8
    for number, step in enumerate(plan, 1):
        assert f"[{number}/8] {step} done in" in output
    assert "mail was down for" in output
    # install carried the secrets and restarted opendkim on them; the window did not.
    assert "opendkim and nginx run on the carried keys and certificates" in output
    assert_opendkim_signs_with_copied_state(lab, keys_arrived_at(record))
    # New serves the moved accounts with old's certificate, signs with the published key.
    sender, recipient = seeded_accounts(lab, "new")[:2]
    client = RelayClient(lab.address("new"), lab.domain, pinned_context(served))
    assert_relay_serves(lab, client, sender, recipient)
    if relay.logs_in_to_mail_domain:
        # The stand-in logged in to the domain after the switch: the new host's key
        # was accepted because the tool had added it beside the old one's.
        assert output.count(f"[ssh] login to {lab.domain}") >= 3, output
    assert "is accepted with the old and the new host's key" in output
    assert domain_keys(lab.known_hosts, lab.domain) == [new_key], "only the new key stays"
    backups = list(lab.known_hosts.parent.glob("known_hosts.chatmail-migrate-*"))
    assert backups and domain_keys(backups[0], lab.domain) == [old_key]
    if params.nocreate:
        assert lab.ssh("new", "test -e /etc/chatmail-nocreate", check=False).returncode == 0
    if params.tls_external:
        carrying = [line for line in output.splitlines() if "  carrying " in line]
        assert "/etc/ssl/lab-external/fullchain.pem" in carrying[0], carrying
        # Links (as certbot's) arrive with what they point at.
        cert = "sha256sum /etc/ssl/lab-external/fullchain.pem"
        assert lab.ssh("old", cert).stdout == lab.ssh("new", cert).stdout
    if relay.self_signed:
        pem = "sha256sum /etc/ssl/certs/mailserver.pem"
        assert lab.ssh("old", pem).stdout == lab.ssh("new", pem).stdout


def test_ip_only_relay_is_refused_before_anything_changes(make_lab, tmp_path: Path):
    lab = make_lab("cmrel", seed=SeedParams(version="1.11.0", ip_only=True, accounts=3))
    result = run_tool(
        lab,
        "invoke",
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--yes",
        state_dir=tmp_path,
    )
    assert result.returncode != 0
    assert (
        f"FAIL  relay kind: mail_domain {lab.address('old')} is an IP address (IP-only relay)"
    ) in result.stdout
    assert "preflight: " in result.stderr and "nothing was changed" in result.stderr
    unchanged(lab, mailbox_dir=f"/home/vmail/mail/{lab.address('old')}")


def test_docker_relay_is_refused_before_anything_changes(make_lab, tmp_path: Path):
    lab = make_lab("cmrel", seed=SeedParams(accounts=3))
    # chatmail/docker keeps the relay's state in volumes (and chatmail.ini in the container).
    volume = "/var/lib/docker/volumes/chatmail_dkim/_data"
    lab.ssh("old", f"mkdir -p {volume} && cp -a /etc/dkimkeys/opendkim.private {volume}/")
    result = run_tool(
        lab,
        "invoke",
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--yes",
        state_dir=tmp_path,
    )
    assert result.returncode != 0
    assert f"FAIL  old is a relay: old runs chatmail in Docker ({volume}/opendkim.private)" in (
        result.stdout
    )
    unchanged(lab)
