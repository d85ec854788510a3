"""What the operator asks of this machine and the hosts without moving anything:
status, the report, preflight and check-relay run by hand.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from chatmail_migrate import audit
from chatmail_migrate.checks import check_relay, host_checks, preflight
from chatmail_migrate.checks.check import Check
from chatmail_migrate.errors import MigrateError, SettingsError, Stopped
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal, now
from chatmail_migrate.lock import migration_lock
from chatmail_migrate.output import debugging, paint
from chatmail_migrate.run.plan import copies_left, order_of
from chatmail_migrate.settings import Settings


def report(journal: Journal, log: Path | None) -> str:
    """The final report of a migration, from its journal: plain text, no secrets."""
    lines = [
        f"chatmail-migrate report for {journal.mail_domain}",
        f"old host: {journal.old_host}   new host: {journal.new_host}   written: {now()}",
        "",
        "steps:",
    ]
    order = order_of(journal)
    for number, name in enumerate(order, 1):
        step = journal.steps.get(name)
        state = f"done in {step['seconds']:.1f}s ({step['finished']})" if step else "not done"
        lines.append(f"  [{number}/{len(order)}] {name:14} {state}")
    down = journal.downtime()
    if down is not None:
        lines.append(f"mail downtime: {down:.1f}s (disable-mail start to enable-mail end)")
    elif journal.done("disable-mail"):
        lines.append("mail downtime: mail is still DOWN (enable-mail not done)")
    else:
        lines.append("mail downtime: none yet (disable-mail not done)")

    for kind, title in (("presync-done", "pre-sync"), ("copied", "copy")):
        event = journal.last_event(kind)
        for copy in (event or {}).get("copies", []):
            lines.append(
                f"{title} ({copy['phase']}): {copy['entries']} entries, "
                f"{copy.get('bytes_sent', 0) / 1e6:.1f} MB sent of "
                f"{copy['bytes_total'] / 1e6:.1f} MB, {copy['seconds']}s"
            )
    skipped = {e["path"]: e["reason"] for e in journal.events if e.get("event") == "skipped"}
    for path, reason in skipped.items():
        lines.append(f"skipped: {path} ({reason})")
    # The window's verify, and the whole tree compared once mail ran on new (converge).
    checks = [e for e in journal.events if e.get("event") == "verified"]
    shown = [
        [e for e in checks if bool(e.get("after_move")) is after][-1:] for after in (False, True)
    ]
    for verified in [e for found in shown for e in found]:
        kind = "with --checksum" if verified.get("checksum") else "metadata"
        verdict = "passed" if verified["ok"] else "FAILED"
        lines.append(f"verify ({kind}): {verdict}: {verified['summary']}")
    if not checks:
        lines.append("verify: not run")
    dns = journal.last_event("dns-switched")
    if dns:
        records = ", ".join(f"{t} {' '.join(v)}" for t, v in dns.get("records", {}).items())
        waited = "every nameserver answered" if dns.get("waited") else "not waited for (--no-wait)"
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dns["caches_expire"]))
        lines.append(f"DNS: switched to {records}; {waited}; caches may hold the old until {until}")
    elif journal.last_event("dns-change-confirmed"):
        lines.append("DNS: change confirmed, but not every nameserver answered it yet")
    else:
        lines.append("DNS: still points at the old host")
    checked = journal.last_event("relay-checked")
    if checked:
        failed = checked.get("failed") or []
        lines.append(
            f"check-relay on {checked.get('host')}: "
            + (f"FAILED ({', '.join(failed)})" if failed else "passed")
        )
        lines += [f"  {line}" for line in checked.get("lines", [])]
    failures = [e for e in journal.events if e.get("event") == "failed"]
    if failures and journal.next_step():
        lines.append(f"last failure: {failures[-1]['step']}: {failures[-1]['message']}")
    lines.append(f"where things stand: {journal.where_things_stand()}")
    lines.append(f"journal: {journal.path}")
    if log:
        lines.append(f"command log: {log}")
    return "\n".join(lines) + "\n"


def write_report(settings: Settings, journal: Journal | None) -> None:
    """Write the final report from the journal, and say where it and the log are."""
    path = audit.report_path(settings)
    if journal is None or path is None or not journal.path.exists():
        return
    with open(audit.private_file(path, os.O_WRONLY | os.O_TRUNC), "w") as f:
        f.write(report(journal, audit.log_path(settings)))
    print(f"report: {path}\ncommand log: {audit.log_path(settings)}", flush=True)


def run_preflight(s: Settings, journal: Journal | None) -> None:
    """Every preflight check, one line each; any FAIL stops with nothing changed."""
    print(f"preflight {s.mail_domain}: {s.old_host} → {s.new_host}", flush=True)
    runner = Runner(s)
    started = time.monotonic()
    try:
        if s.dry:
            for role in ("old", "new"):
                runner.run(role, host_checks.facts_command(s.relay))
            print("dry run: checks not evaluated")
            return
        failed = []
        for check in preflight.run_checks(
            s, runner, force=s.force, journal=journal, copying=copies_left(journal)
        ):
            colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}[check.status]
            print(paint(f"{check.status:4}", colour) + check.line()[4:], flush=True)
            audit.note(s, f"preflight {check.line()}")
            if check.status == "FAIL":
                failed.append(check)
    except (MigrateError, SettingsError) as e:
        raise Stopped(f"preflight stopped: {e}", code=1) from None
    except Exception as e:
        if debugging():
            raise
        raise Stopped(f"preflight stopped: unexpected {type(e).__name__}: {e}", code=1) from None
    finally:
        runner.close()
    seconds = time.monotonic() - started
    if failed:
        raise Stopped(
            f"preflight: {len(failed)} check(s) failed, nothing was changed "
            f"({failed[0].name}: {failed[0].detail})",
            code=1,
        )
    print(f"preflight passed in {seconds:.1f}s")


def run_check_relay(
    s: Settings, journal: Journal | None, probe_account: str | None = None
) -> list[Check]:
    """check-relay's lines, PASS/WARN/FAIL, on the new host; returns the failed ones."""
    print(paint(f"check-relay {s.mail_domain} on {s.new_host}", "bold"), flush=True)
    runner = Runner(s)
    started = time.monotonic()
    try:
        lines = check_relay.check_relay(s, runner, journal, probe_account)
    except MigrateError as e:
        raise Stopped(f"check-relay stopped: {e}", code=1) from None
    finally:
        runner.close()
    if s.dry:
        print("dry run: checks not evaluated")
        return []
    for check in lines:
        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}[check.status]
        print(paint(f"{check.status:4}", colour) + check.line()[4:], flush=True)
    failed = [c for c in lines if c.status == "FAIL"]
    verdict = paint("FAILED", "red") if failed else paint("passed", "green")
    print(f"check-relay {verdict} in {time.monotonic() - started:.1f}s", flush=True)
    return failed


def check_relay_by_hand(s: Settings, probe_account: str | None = None) -> None:
    """The check-relay task: the checks, recorded in the journal; FAILs exit 1."""
    with migration_lock(s):
        failed = run_check_relay(s, Journal.for_settings(s), probe_account)
    if failed:
        raise Stopped(
            f"check-relay: {len(failed)} check(s) failed ({failed[0].name}: {failed[0].detail})",
            code=1,
        )


def show_status(s: Settings) -> None:
    """Where each journaled migration stands, with its command log and report."""
    journals = [Journal.for_settings(s)] if s.mail_domain else []
    if not s.mail_domain and s.journal_dir.is_dir():
        for path in sorted(s.journal_dir.glob("*.json")):
            journals.append(Journal.for_settings(dataclasses.replace(s, mail_domain=path.stem)))
    journals = [j for j in journals if j and j.path.exists()]
    if not journals:
        print(f"no migration journaled in {s.journal_dir}")
        return
    for journal in journals:
        old, new = journal.old_host or "(not chosen)", journal.new_host or "(not chosen)"
        print(f"{journal.mail_domain}: {old} → {new} ({journal.path})")
        order = order_of(journal)
        for number, name in enumerate(order, 1):
            step = journal.steps.get(name)
            state = (
                f"done {step.get('finished', '?')} in {step.get('seconds', '?')}s"
                if step
                else "not done"
            )
            print(f"  [{number}/{len(order)}] {name:14} {state}")
        failures = [e for e in journal.events if e.get("event") == "failed"]
        if failures and journal.next_step():
            last = failures[-1]
            print(f"  last failure: {last['step']} at {last['time']}: {last['message']}")
        print(f"  {journal.where_things_stand()}")
        of_journal = dataclasses.replace(s, mail_domain=journal.mail_domain)
        for label, path in (
            ("command log", audit.log_path(of_journal)),
            ("report", audit.report_path(of_journal)),
        ):
            if path and path.exists():
                print(f"  {label}: {path}")
