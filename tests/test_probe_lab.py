"""The outside probe against real lab hosts: around a whole ``migrate``, and around a new
host that greets and lets the account in before its data is there (which must not end
the window). The probe's arithmetic alone: tests/test_probe.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chatmail_migrate.lab import SeedParams, nameserver
from chatmail_migrate.lab.probe import Probe
from tests.helpers import start_tool

# Old's queue: messages a host took and has not delivered yet.
QUEUED = "cd /var/spool/postfix && find active incoming maildrop -type f"


def refuse_and_deliver(lab, probe: Probe) -> None:
    """Old refuses new mail (RCPT rejected) and delivers every message it took.

    Before migrate, so no probe message is still in old's queue when Postfix stops:
    one that is gets carried, and on new ``postfix check`` (postsuper, renaming it to
    its new inode) makes an empty hash directory in defer/ that old lacks; verify
    FAILs ("only on new: /var/spool/postfix/defer/7") and migrate rolls back. That is
    the tool's to fix (checks/tree.py compares queue hash directories); these tests
    measure the probe.
    """
    lab.ssh("old", "postconf -e 'smtpd_client_restrictions = reject' && postfix reload")
    wait_for(probe, lambda r: r["sender"]["first_refused_after"], "old refuses mail")
    last = probe.last_accepted()
    assert last is not None
    mailbox = f"/home/vmail/mail/{lab.domain}/{probe.account}"
    delivered = (
        f"grep -qrF '{last.message_id}' {mailbox}/new {mailbox}/cur && [ -z \"$({QUEUED})\" ]"
    )
    deadline = time.monotonic() + 60
    # postqueue -f: a message that arrived while reload restarted qmgr waits in
    # incoming/ for the next queue scan (minutes) otherwise.
    while lab.ssh("old", f"postqueue -f; {delivered}", check=False).returncode != 0:
        assert time.monotonic() < deadline, lab.ssh("old", QUEUED, check=False).stdout
        time.sleep(0.25)


def wait_for(probe: Probe, done: Callable[[dict], bool], what: str, limit: float = 60) -> dict:
    deadline = time.monotonic() + limit
    while True:
        result = probe.result()
        if done(result):
            return result
        assert time.monotonic() < deadline, f"{what}: {json.dumps(result['window'])}"
        time.sleep(0.25)


def spool(lab) -> str:
    """Postfix's queue on both hosts (with the log directories), to see what differs."""
    listing = "cd /var/spool/postfix && find [a-z]* -path '[bdfhimst]*' -newer pid -ls"
    return "\n".join(f"{h}:\n" + lab.ssh(h, listing, check=False).stdout for h in ("old", "new"))


def relative(result: dict, t: float | None) -> float | None:
    return None if t is None else round(t - result["started"], 2)


@pytest.mark.parametrize("version", ["1.7.0", "1.10.0"])
def test_probe_measures_the_window_of_migrate_from_outside(make_lab, tmp_path: Path, version):
    # 1.7 deploys whole (install before the window, with mail off); 1.10 in stages.
    lab = make_lab(seed=SeedParams(accounts=3, messages=2, dns_ttl=5, version=version))
    runs = tmp_path / "cmdeploy-runs.jsonl"
    probe = Probe.for_lab(lab).start()
    try:
        wait_for(probe, lambda r: r["sender"]["accepted"] >= 3, "old takes the probe's mail")
        wait_for(probe, lambda r: r["ports"]["old"]["imap993"]["ok"] >= 2, "old lets it in")
        refuse_and_deliver(lab, probe)
        # As the operator: migrate, and the DNS change when switch-dns asks for it.
        proc = start_tool(
            lab,
            "invoke",
            "migrate",
            "--old-host",
            "old",
            "--new-host",
            "new",
            "--yes",
            state_dir=tmp_path,
            CHATMAIL_LAB_CMDEPLOY_SECONDS="1",
            CHATMAIL_LAB_CMDEPLOY_LOG=str(runs),
        )
        assert proc.stdout is not None
        output, switched = [], False
        for line in proc.stdout:
            output.append(line)
            if "waiting for DNS" in line and not switched:
                switched = True
                nameserver.update(lab, a=[lab.address("new")])
        code = proc.wait(timeout=900)
        out = "".join(output)
        print(out)
        # Dovecot starts before Postfix, as upstream's deploy and the cutover start them:
        # the probe reaching 465 meanwhile never finds Postfix without its auth socket.
        if code != 0:
            print(spool(lab))
        assert code == 0, out[-3000:]
        wait_for(probe, lambda r: not r["window"]["open"], "new lets in and shows old's last")
        # The client view: its cache (TTL 5 s) lets go of old's address after the switch.
        wait_for(
            probe,
            lambda r: r["client"]["outages"] and "open" not in r["client"]["outages"][-1],
            "a user's app reaches mail again",
        )
    finally:
        result = probe.stop()
    print(json.dumps(result, indent=1))
    w = result["window"]
    assert 0 < w["seconds"] < 900
    assert w["both_served"] is False
    assert w["last_accepted_on_new"] is True
    assert result["sender"]["first_refused_after"] is not None, "old refused in the end"
    # Each port came back on new after old's last success there, none before.
    assert set(w["per_port_gap"]) >= {"imap993", "smtp25", "smtps465"}
    assert all(gap > 0 for gap in w["per_port_gap"].values()), w["per_port_gap"]
    # 443: the stand-in configures no nginx, so the probe says so instead of failing.
    assert result["ports"]["old"]["alpn443_imap"]["applicable"] is False
    # Users behind a resolver cache: out at least from old's last to new's first login.
    client = result["client"]
    longest = client["longest_outage"]
    assert "open" not in longest
    assert longest["seconds"] >= w["per_port_gap"]["imap993"] - 1.0
    assert [a["address"] for a in client["addresses"]] == [lab.address("old"), lab.address("new")]

    # The stand-in's run log: every run took the modelled second, and says what it was.
    logged = [json.loads(line) for line in runs.read_text().splitlines()]
    assert all(r["end"] - r["start"] >= 1.0 and r["exit"] == 0 for r in logged), logged
    assert {(r["ssh_host"], r["disable_mail"]) for r in logged} >= {("old", True), ("new", False)}
    assert {r["release"] for r in logged} == {version}
    # Issue 24: no cmdeploy run inside the window users saw (old's last login to new's
    # first login that shows old's last message): install before it, converge after.
    inside = [r for r in logged if r["start"] < w["end"] and r["end"] > w["old_last_login"]]
    assert inside == [], (w, logged)
    assert any(r["ssh_host"] == "new" and r["start"] >= w["end"] for r in logged), logged
    print(
        f"probe: window {w['seconds']:.2f}s; per port (new's first - old's last) "
        + ", ".join(f"{k} {v:.2f}s" for k, v in w["per_port_gap"].items())
        + f"; users behind a {longest['seconds']:.2f}s outage; cmdeploy runs "
        + ", ".join(
            f"{r['ssh_host']}{' --disable-mail' if r['disable_mail'] else ''} "
            f"{relative(result, r['start'])}..{relative(result, r['end'])}"
            for r in logged
        )
        + f"; old's last login at {relative(result, w['old_last_login'])}, window end at "
        f"{relative(result, w['end'])}"
    )


def test_a_new_host_that_greets_before_its_data_is_there_does_not_end_the_window(make_lab):
    lab = make_lab(seed=SeedParams(accounts=3, messages=2))
    probe = Probe.for_lab(lab, client=False, sender_grace=2).start()
    try:
        wait_for(probe, lambda r: r["sender"]["accepted"] >= 3, "old takes the probe's mail")
        wait_for(probe, lambda r: r["ports"]["old"]["imap993"]["ok"] >= 2, "old lets it in")
        # Old refuses new mail, delivers what it holds, then stops serving.
        refuse_and_deliver(lab, probe)
        mailbox = f"/home/vmail/mail/{lab.domain}/{probe.account}"
        lab.ssh("old", "systemctl disable --now postfix dovecot")
        # New serves before the data is there: a whole deploy starts Postfix and Dovecot
        # on an empty mailbox tree (the probe's first login makes an empty account).
        env = {**os.environ, **lab.env()}
        deploy = subprocess.run(
            f"{env['CMDEPLOY']} run --ssh-host new",
            shell=True,
            cwd=lab.relay_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        wait_for(
            probe,
            lambda r: all(r["ports"]["new"][c]["ok"] >= 2 for c in ("imap993", "smtp25")),
            "new greets and lets the account in",
        )
        time.sleep(2)
        early = probe.result()["window"]
        assert early["open"] is True, early
        assert early["new_first_login"] is not None
        assert early["last_accepted_on_new"] is False
        # Now the data: old's mailbox of the account onto new.
        copied = time.time()
        inner = "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        lab.ssh(
            "old",
            f"tar -C / -cf - {mailbox.lstrip('/')} | ssh {inner} root@{lab.address('new')} "
            f"'tar -C / -xf - && chown -R vmail:vmail {mailbox}'",
            forward_agent=True,
        )
        wait_for(probe, lambda r: not r["window"]["open"], "new shows old's last message", 30)
    finally:
        result = probe.stop()
    print(json.dumps(result["window"], indent=1))
    w = result["window"]
    assert w["end"] > copied, "the window ended only once the data was there"
    assert w["end"] - w["new_first_login"] > 2, "not at new's first login"
    assert w["both_served"] is False
    assert w["last_accepted_on_new"] is True
    assert result["ports"]["new"]["smtp25"]["first_ok"] < copied
    assert w["seconds"] > w["per_port_gap"]["smtp25"] + 2
