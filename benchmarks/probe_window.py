"""The downtime benchmark's outside view: the lab's probe around each run (see
chatmail_migrate/lab/probe.py), the stand-in's run log beside it, and the lab's DNS
changed at once when a run switches it (as the issue's benchmark asks).

``probed(lab, sender)`` wraps one run: the probe starts on a relay serving on old
(after the sender got a message in), the stand-in logs each cmdeploy run to a file
of this run, and after the run the probe waits (up to a minute) for the window to
close, then stops. ``window_summary`` is what the tables print: the window as the
probe saw it, what users behind a resolver cache saw, whether both hosts served at
once, whether old's last message is on new, and the cmdeploy runs that overlap the
window (the issue: at 0 s per run, none may).

``sender``: ``live`` submits on old's 25 until old refuses (the issue's "mail still
arriving over SMTP until old stops"); ``before`` makes old refuse mail and deliver
its queue before the run (a message still in old's queue when Postfix stops trips
verify today: an empty defer/ hash directory on new, see tests/test_probe_lab.py);
``off`` sends nothing (the window then ends at new's first login).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from chatmail_migrate.lab import Lab, nameserver
from chatmail_migrate.lab.probe import Probe

SENDERS = ("live", "before", "off")
QUEUED = "cd /var/spool/postfix && find active incoming maildrop -type f"


def point_dns(lab: Lab, host: str) -> None:
    """The relay's A record on both nameservers, at once (the lab's operator)."""
    nameserver.update(lab, a=[lab.address(host)])


def mail_on_old_accepts(lab: Lab) -> None:
    """Undo ``before``'s refusal (reset() re-deploys old, which keeps main.cf's extras)."""
    lab.ssh("old", "postconf -X smtpd_client_restrictions && postfix reload", check=False)


def _wait(probe: Probe, done, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if done(probe.result()):
            return True
        time.sleep(0.25)
    return False


def _users_back(result: dict) -> bool:
    outages = result["client"]["outages"]
    return bool(outages) and "open" not in outages[-1]


def _refuse_and_deliver(lab: Lab, probe: Probe) -> None:
    lab.ssh("old", "postconf -e 'smtpd_client_restrictions = reject' && postfix reload")
    _wait(probe, lambda r: r["sender"]["first_refused_after"], 30)
    for _ in range(240):
        if not lab.ssh("old", f"postqueue -f; {QUEUED}", check=False).stdout.strip():
            return
        time.sleep(0.25)


def where_on_new(lab: Lab, message_id: str) -> str:
    """Where old's last message is on new when IMAP does not show it (a diagnosis by
    ssh, not part of the outside view): a queue file, or nowhere."""
    queues = "active incoming deferred hold maildrop"
    grep = f"cd /var/spool/postfix && grep -rlF '{message_id}' {queues} 2>/dev/null | head -1"
    found = lab.ssh("new", grep, check=False).stdout.strip()
    if not found:
        return "not in new's queue either"
    # Postfix's defer log (defer/X/ID beside deferred/X/ID) says why it waits.
    log = "defer/" + found.split("/", 1)[1] if found.startswith("deferred/") else ""
    why = (
        lab.ssh(
            "new",
            f"cd /var/spool/postfix && grep -m1 -o 'reason=.*' {log} 2>/dev/null",
            check=False,
        ).stdout.strip()
        if log
        else ""
    )
    return f"in new's queue: {found}" + (f" ({why})" if why else "")


@contextlib.contextmanager
def probed(
    lab: Lab, sender: str, client_ttl: float | None = None, window_wait: float = 60
) -> Iterator[dict]:
    """Probe one run; yields a dict that holds ``probe`` (the summary) afterwards, and
    sets CHATMAIL_LAB_CMDEPLOY_LOG for the run's cmdeploy calls. After the run it waits
    for the window to close and for the client view to reach mail again (its cache
    lets go of old's address within the TTL: ``client_ttl``, else the zone's)."""
    log = Path(tempfile.mkdtemp(prefix="bench-cmdeploy-")) / "runs.jsonl"
    before = os.environ.get("CHATMAIL_LAB_CMDEPLOY_LOG")
    os.environ["CHATMAIL_LAB_CMDEPLOY_LOG"] = str(log)
    probe = Probe.for_lab(lab, send=sender != "off", client_ttl=client_ttl).start()
    out: dict = {}
    try:
        _wait(probe, lambda r: r["ports"]["old"]["imap993"]["ok"] >= 1, 60)
        if sender != "off":
            _wait(probe, lambda r: r["sender"]["accepted"] >= 1, 60)
        if sender == "before":
            _refuse_and_deliver(lab, probe)
        yield out
        _wait(probe, lambda r: not r["window"]["open"], window_wait)
        ttl = client_ttl if client_ttl is not None else nameserver.records_of(lab)["ttl"]
        _wait(probe, _users_back, ttl + 60)
    finally:
        result = probe.stop()
        if before is None:
            os.environ.pop("CHATMAIL_LAB_CMDEPLOY_LOG", None)
        else:
            os.environ["CHATMAIL_LAB_CMDEPLOY_LOG"] = before
        runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        out["probe"] = window_summary(result, runs)
        last = result["window"]["last_accepted"]
        if last and result["window"]["last_accepted_on_new"] is False:
            out["probe"]["last_where"] = where_on_new(lab, last)
        if sender == "before":
            mail_on_old_accepts(lab)


def window_summary(result: dict, runs: list[dict]) -> dict:
    w = result["window"]
    start, end = w["old_last_login"], w["end"]
    overlapping = []
    if start is not None:
        until = end if end is not None else result["stopped"]
        overlapping = [
            f"{r.get('ssh_host')}{' --disable-mail' if r.get('disable_mail') else ''}"
            f"{' ' + r['cmdeploy_stages'] if r.get('cmdeploy_stages') else ''}"
            for r in runs
            if r["start"] < until and r["end"] > start
        ]
    client = (result.get("client") or {}).get("longest_outage") or {}
    return {
        "window": w["seconds"],
        "open": w["open"],
        # While open at the probe's stop: the window lasted at least this long.
        "at_least": w["so_far"],
        "both_served": w["both_served"],
        "last_on_new": w["last_accepted_on_new"],
        "per_port_gap": w["per_port_gap"],
        "users": client.get("seconds"),
        "users_open": bool(client.get("open")),
        "cmdeploy_runs": len(runs),
        "cmdeploy_in_window": overlapping,
    }
