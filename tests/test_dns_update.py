"""switch-dns changing the records itself (--dns rfc2136), against real servers: the
lab's zone served by Knot on spare, a primary taking TSIG-signed updates (ns1) and a
secondary following it by NOTIFY and zone transfer (ns2)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmail_migrate import dns_settings, dns_update, nameservers
from chatmail_migrate.lab import Lab, SeedParams, knot, nameserver, seed_relay
from tests.helpers import lab_name, mail_services, run_tool, run_tool_with_fault

pytestmark = pytest.mark.xdist_group("dnsupdate")

MIGRATE = ["migrate", "--old-host", "old", "--new-host", "new", "--yes", "--dns", "rfc2136"]


@pytest.fixture
def lab(lab_available) -> Iterator[Lab]:
    """A seeded relay whose zone takes updates; each test gets its own."""
    stale = Lab.load(lab_name("cmupd"))
    if stale:
        stale.down()
    lab = Lab(name=lab_name("cmupd"))
    try:
        lab.up()
        seed_relay(lab, SeedParams(accounts=3, messages=2, version="1.10.0"))
        knot.serve_updatable(lab)
        yield lab
    finally:
        try:
            print(knot.logs(lab))
        except Exception:
            pass
        lab.down()


def tsig_env(lab: Lab, secret: str | None = None) -> dict[str, str]:
    key = dns_settings.tsig_from_file(knot.key_file(lab))
    return {dns_settings.ENV_TSIG: f"hmac-sha256:{key.name}:{secret or key.secret}"}


def addresses_at(lab: Lab, instance: str) -> list[str]:
    return knot.published(lab, instance, lab.domain + ".", "A")


def everything_written(state: Path, output: str) -> str:
    """The output, and every file the tool wrote (journal, command log, report)."""
    files = [p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()]
    return output + "\n".join(files)


def test_unattended_migrate_changes_the_records_itself_and_waits_for_the_lagging_secondary(
    lab: Lab, tmp_path: Path
):
    old, new = lab.address("old"), lab.address("new")
    secret = dns_settings.tsig_from_file(knot.key_file(lab)).secret
    knot.hold(lab, "ns2")  # the secondary lags until the tool has sent its update
    seen: dict[str, list[str]] = {}

    def lag_then_release(proc) -> None:
        def later() -> None:
            time.sleep(3)
            seen["ns1"], seen["ns2"] = addresses_at(lab, "ns1"), addresses_at(lab, "ns2")
            seen["running"] = [str(proc.poll() is None)]
            knot.release(lab, "ns2")

        threading.Thread(target=later).start()

    code, output = run_tool_with_fault(
        lab,
        [*MIGRATE, "--presync"],
        state_dir=tmp_path,
        when=f"updated A {lab.domain}.",
        fault=lag_then_release,
        **tsig_env(lab),
    )
    assert code == 0, output
    assert "PASS  DNS update:" in output
    # 3 s after the update: ns1 has it, ns2 does not yet, and the tool still waits.
    assert seen == {"ns1": [new], "ns2": [old], "running": ["True"]}
    assert "all 2 nameservers answer the new values" in output
    assert addresses_at(lab, "ns1") == addresses_at(lab, "ns2") == [new]
    # Nothing but the mail domain's address: its CNAMEs, DKIM, CAA as they were.
    assert knot.published(lab, "ns1", f"mta-sts.{lab.domain}.", "CNAME") == [f"{lab.domain}."]
    assert mail_services(lab, "new") == {"postfix": "active enabled", "dovecot": "active enabled"}
    journal = json.loads(next(tmp_path.rglob(f"{lab.domain}.json")).read_text())
    updated = [e for e in journal["events"] if e.get("event") == "dns-updated"]
    assert [c["before"] for c in updated[-1]["changes"]] == [[old]]
    assert [c["after"] for c in updated[-1]["changes"]] == [[new]]
    # The secret is nowhere: output, journal, command log, report.
    assert secret not in everything_written(tmp_path, output)


def test_a_wrong_key_is_refused_before_any_host_changes(lab: Lab, tmp_path: Path):
    old = lab.address("old")
    wrong = dns_settings.tsig_from_text("hmac-sha256:lab-update:" + "A" * 43 + "=").secret
    result = run_tool(lab, "invoke", *MIGRATE, state_dir=tmp_path, **tsig_env(lab, secret=wrong))
    assert result.returncode != 0
    assert "FAIL  DNS update:" in result.stdout + result.stderr
    assert "rejected the TSIG key lab-update." in result.stdout + result.stderr
    assert mail_services(lab, "old") == {"postfix": "active enabled", "dovecot": "active enabled"}
    assert addresses_at(lab, "ns1") == addresses_at(lab, "ns2") == [old]
    assert wrong not in everything_written(tmp_path, result.stdout + result.stderr)
    # No key at all: one line naming where it comes from, before any host is asked.
    result = run_tool(lab, "invoke", *MIGRATE, state_dir=tmp_path)
    assert result.returncode == 2
    assert dns_settings.ENV_TSIG in result.stderr and "--tsig-file" in result.stderr


def test_an_edit_made_meanwhile_is_never_overwritten(lab: Lab):
    """The update's prerequisite is what the tool read: someone else's change wins."""
    old, new = lab.address("old"), lab.address("new")
    key = dns_settings.tsig_from_file(knot.key_file(lab))
    primary = nameservers.Server("ns1", nameserver.ns_addresses(lab)["ns1"])
    changes = dns_update.plan_changes(lab.domain, primary, {"A": [old]}, {"A": [new]})
    assert [(c.rtype, c.before, c.after) for c in changes] == [("A", [old], [new])]
    knot.edit(lab, lab.domain, "A", ["192.0.2.7"])
    with pytest.raises(nameservers.DNSError, match="someone else edited the zone"):
        dns_update.send_update(primary, nameserver.ZONE + ".", changes, key)
    assert addresses_at(lab, "ns1") == ["192.0.2.7"]


def test_a_failure_after_the_switch_rolls_back_and_sets_the_records_back(lab: Lab, tmp_path: Path):
    """ns2 never follows (held): switch-dns times out after the update was sent; the
    automatic rollback brings mail back on old and the records back at the primary."""
    old, new = lab.address("old"), lab.address("new")
    knot.hold(lab, "ns2")
    result = run_tool(
        lab, "invoke", *MIGRATE, "--dns-timeout", "4", state_dir=tmp_path, **tsig_env(lab)
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"updated A {lab.domain}. at" in output
    assert "DNS set back at" in output and "Rolled back" in output
    assert addresses_at(lab, "ns1") == [old]
    assert mail_services(lab, "old") == {"postfix": "active enabled", "dovecot": "active enabled"}
    assert not mail_services(lab, "new")["postfix"].startswith("active")
    knot.release(lab, "ns2")
    knot.wait_in_step(lab)
    assert addresses_at(lab, "ns2") == [old]
    journal = json.loads(next(tmp_path.rglob(f"{lab.domain}.json")).read_text())
    kinds = [e.get("event") for e in journal["events"]]
    assert kinds.index("dns-updated") < kinds.index("dns-restored")
    assert new not in addresses_at(lab, "ns1")


# Pure logic: the key's forms, and what an update says.

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="


def test_the_key_comes_in_nsupdates_form_with_hmac_sha256_unless_it_says_otherwise():
    key = dns_settings.tsig_from_text(f"relay-update:{SECRET}")
    assert (key.name, key.algorithm, key.secret) == ("relay-update.", "hmac-sha256", SECRET)
    assert dns_settings.tsig_from_text(f"hmac-sha512:k:{SECRET}").algorithm == "hmac-sha512"
    assert dns_settings.tsig_from_text(f"sha384:k:{SECRET}").algorithm == "hmac-sha384"
    assert SECRET not in repr(key)
    for bad, says in (
        (f"k:not base64!{SECRET}", "not base64"),
        (f"hmac-sha3:k:{SECRET}", "algorithm"),
        ("k", re.escape("not [ALGORITHM:]NAME:SECRET")),
    ):
        with pytest.raises(dns_settings.SettingsError, match=says) as e:
            dns_settings.tsig_from_text(bad)
        assert SECRET not in str(e.value)


def test_the_key_file_is_read_as_tsig_keygen_writes_it(tmp_path: Path):
    path = tmp_path / "relay.key"
    path.write_text(f'key "relay-update" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n')
    key = dns_settings.tsig_from_file(path)
    assert (key.name, key.algorithm, key.secret, key.source) == (
        "relay-update.",
        "hmac-sha256",
        SECRET,
        str(path),
    )
    path.write_text("not a key\n")
    with pytest.raises(dns_settings.SettingsError, match="holds no key"):
        dns_settings.tsig_from_file(path)
    with pytest.raises(dns_settings.SettingsError, match="TSIG key file"):
        dns_settings.tsig_from_file(tmp_path / "missing.key")
    with pytest.raises(dns_settings.SettingsError, match=dns_settings.ENV_TSIG):
        dns_settings.load_tsig(None, env={})


def test_an_update_holds_what_was_read_as_its_prerequisite():
    key = dns_settings.tsig_from_text(f"k:{SECRET}")
    changes = [
        dns_update.RecordChange("relay.example.org.", "A", 300, ["192.0.2.1"], ["192.0.2.2"]),
        dns_update.RecordChange("relay.example.org.", "AAAA", 300, [], ["2001:db8::2"]),
        dns_update.RecordChange("www.relay.example.org.", "A", 60, ["192.0.2.1"], []),
    ]
    text = dns_update.update_message("example.org.", changes, key).to_text()
    prerequisite = text.split(";PREREQ")[1].split(";UPDATE")[0]
    update = text.split(";UPDATE")[1]
    assert "relay.example.org. 0 IN A 192.0.2.1" in prerequisite
    assert "relay.example.org. NONE AAAA" in prerequisite  # none may be there yet
    assert "relay.example.org. ANY A" in update  # replace: the RRset goes, then
    assert "relay.example.org. 300 IN A 192.0.2.2" in update
    assert "relay.example.org. 300 IN AAAA 2001:db8::2" in update
    assert "www.relay.example.org. ANY A" in update
    assert SECRET not in text
    assert [c.reverse().after for c in changes] == [["192.0.2.1"], [], ["192.0.2.1"]]
