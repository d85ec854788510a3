"""Whole migrations between lab hosts, with the cmdeploy stand-in."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chatmail_migrate.lab import Lab, SeedParams
from chatmail_migrate.relay import read_relay
from chatmail_migrate.run.plan import migrate_order, seed_order
from tests.helpers import compare_trees, listing, mail_services, run_tool

# migrate's order for relay 1.7 (the lab's default) without a pre-sync.
PLAN = migrate_order(presync=False)

MAIL_ON = {"postfix": "active enabled", "dovecot": "active enabled"}
MAIL_OFF = {"postfix": "inactive disabled", "dovecot": "inactive disabled"}


def journal(state_dir: Path, lab: Lab) -> dict:
    return json.loads((state_dir / "chatmail-migrate" / f"{lab.domain}.json").read_text())


def assert_migrated(lab: Lab, old_listing: dict) -> None:
    """New holds exactly old's data, owned right, with mail on; old has mail off.

    What must have come across depends on the relay's release (relay.py).
    """
    relay = read_relay(lab.relay_dir)
    new_listing = listing(lab, "new", relay.copy_paths())
    assert compare_trees(old_listing, new_listing) == []
    owners = lab.ssh(
        "new", f"stat -c '%U:%G %a %n' /etc/dkimkeys/opendkim.private {relay.mailbox_dir}"
    ).stdout.splitlines()
    assert owners[0] == "opendkim:opendkim 600 /etc/dkimkeys/opendkim.private"
    assert owners[1].startswith("vmail:vmail 700 ")
    if "/var/lib/acme" in old_listing["entries"]:
        acme = lab.ssh("new", "stat -c '%U:%G %a' /var/lib/acme/accounts").stdout.strip()
        assert acme == "root:root 700"
    echobot = "/var/lib/echobot /run/echobot/password"
    if relay.has_echobot:
        owners = lab.ssh("new", f"stat -c '%U:%G %a %n' {echobot}").stdout.splitlines()
        assert owners[0].startswith("echobot:echobot 700 ")
        assert owners[1].startswith("echobot:echobot ")
        assert "user:vmail:r--" in lab.ssh("new", "getfacl -cp /run/echobot/password").stdout
    else:
        assert lab.ssh("new", f"ls -d {echobot}", check=False).stdout == "", "not carried"
    orphans = lab.ssh(
        "new", f"find $(ls -d {' '.join(relay.copy_paths())} 2>/dev/null) -nouser -o -nogroup"
    ).stdout
    assert orphans == ""
    check = lab.ssh("new", "postfix check 2>&1").stdout
    assert check == "", check
    queue = [json.loads(q) for q in lab.ssh("new", "postqueue -j").stdout.splitlines()]
    assert [q["recipients"][0]["address"] for q in queue] == ["someone@unreachable.invalid"]
    assert mail_services(lab, "new") == MAIL_ON
    assert mail_services(lab, "old") == MAIL_OFF


def test_fab_steps_by_hand_onto_bare_new_host(make_lab, tmp_path: Path):
    # Bare new host: the relay's users do not exist when the data arrives, and
    # old's numeric ids name other users there (the lab's padding users).
    lab = make_lab(seed=SeedParams(accounts=10, messages=3, new_users="none"))
    before = listing(lab, "old")
    old, new = lab.address("old"), lab.address("new")
    for args in (
        ["-H", old, "disable-mail"],
        ["-H", old, "copy-data", "--new-host", new],
        ["-H", new, "install"],
        ["-H", new, "fix-ownership"],
        ["-H", old, "verify", "--new-host", new, "--checksum"],
        ["-H", new, "switch-dns", "--old-host", old, "--yes", "--no-wait"],
        ["-H", new, "enable-mail"],
    ):
        result = run_tool(lab, "fab", *args, state_dir=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "done in" in result.stdout
    assert_migrated(lab, before)
    assert list(journal(tmp_path, lab)["steps"]) == seed_order()


def test_failed_step_then_rerun_resumes(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=5, messages=2))
    before = listing(lab, "old")
    failed = run_tool(
        lab,
        "invoke",
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--yes",
        "--no-wait",
        "--no-rollback",
        state_dir=tmp_path,
        CHATMAIL_LAB_CMDEPLOY_FAIL="after@new:enable",
    )
    assert failed.returncode != 0
    # new's cmdeploy runs after the cutover (converge): mail already flows on new.
    assert "[8/8] converge FAILED" in failed.stderr
    # The cmdeploy failure names the command, its exit code and its last output.
    assert "run --ssh-host new` exited 1" in failed.stderr
    assert "failed after its work (on purpose)" in failed.stderr
    # new's services started before the failure: not "Mail is DOWN", mail may be on new.
    assert "The new host may have taken mail since" in failed.stderr
    assert "resume at converge" in failed.stderr
    done_first = journal(tmp_path, lab)["steps"]
    assert list(done_first) == PLAN[:-1]
    # The old host's data is untouched by the failure.
    after_failure = listing(lab, "old", ["/home/vmail/mail", "/var/lib/acme", "/etc/dkimkeys"])
    expected = {p: e for p, e in before["entries"].items() if p in after_failure["entries"]}
    assert expected == after_failure["entries"]

    status = run_tool(lab, "invoke", "status", state_dir=tmp_path)
    assert re.search(r"\[8/8\] converge +not done", status.stdout)
    assert "last failure: converge" in status.stdout

    # The rerun goes through fab -H: the old host is the -H host, as for any step.
    rerun = run_tool(
        lab,
        "fab",
        "-H",
        "old",
        "migrate",
        "--new-host",
        "new",
        "--yes",
        "--no-wait",
        state_dir=tmp_path,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming at converge" in rerun.stdout
    assert "[2/8] disable-mail: done" in rerun.stdout and "skipping" in rerun.stdout
    assert "[7/8] enable-mail: done" in rerun.stdout
    assert "tar --create" not in rerun.stdout
    steps = journal(tmp_path, lab)["steps"]
    for step in PLAN[:-1]:
        assert steps[step] == done_first[step]
    assert list(steps) == PLAN
    assert_migrated(lab, before)
