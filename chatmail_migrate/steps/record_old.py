"""What old served, recorded at disable-mail for check-relay to compare."""

from __future__ import annotations

import json
import re
import shlex
import time

from chatmail_migrate.checks.relay_state import (
    _EMPTY_SHA256,
    PROBE,
    QUEUE_RECORD_LIMIT,
    capture_text,
    certificate_path,
    old_state_command,
    parse_live_state,
)
from chatmail_migrate.hosts.commands import parse_sections
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings


def record_old_state(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """Before disable-mail: what old runs and listens on while it still serves mail,
    the certificate it serves and the name its SMTP greeting gives."""
    result = runner.run("old", old_state_command(settings.relay), hide=True)
    if settings.dry or journal is None:
        return
    services, listening = parse_live_state(result.stdout)
    sections = parse_sections(result.stdout)
    # (Debian's postfix.service only starts the instance that runs: postfix@-.service.)
    mail_on = any(s.startswith(("postfix", "dovecot")) for s in services)
    if not mail_on and journal.services_before_disable():
        # disable-mail run again after mail already went off: keep the live record.
        print("  old host: mail is already off; keeping what was recorded while it ran")
        return
    sha = (sections.get("certificate") or [""])[0]
    certificate = None
    if re.fullmatch(r"[0-9a-f]{64}", sha) and sha != _EMPTY_SHA256:
        certificate = {
            "path": certificate_path(settings.relay),
            "sha256": sha,
            "recorded": time.time(),
        }
    myhostname = (sections.get("myhostname") or [""])[0]
    journal.record_services_before_disable(
        settings.old_host, services, listening, certificate=certificate, myhostname=myhostname
    )
    cert = f"certificate SHA-256 {sha[:16]}…" if certificate else "no certificate file"
    print(f"  old host runs {len(services)} services, listens on {', '.join(listening)}; {cert}")


def record_old_queue(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """After disable-mail (Postfix stopped: nothing joins the queue any more): every
    message in old's queue, for check-relay to find on new, queued or delivered."""
    params = json.dumps({"mode": "queue", "limit": QUEUE_RECORD_LIMIT}).encode()
    display = "python3 -c PROBE (old's queue: postqueue -j, postcat -hq ID for each Message-ID)"
    stdout = capture_text(runner, "old", f"python3 -c {shlex.quote(PROBE)}", params, display)
    if settings.dry or journal is None:
        return
    try:
        queue = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print("  old host's queue could not be listed: check-relay will not compare it")
        return
    journal.record_queue_at_disable(
        settings.old_host, queue["total"], queue["messages"], recorded=time.time()
    )
    shown = "" if queue["total"] <= QUEUE_RECORD_LIMIT else f" (the first {QUEUE_RECORD_LIMIT})"
    print(f"  old host's queue at disable-mail: {queue['total']} messages recorded{shown}")
