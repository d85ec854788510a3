"""The journal: which steps of a relay's migration are done, kept on the operator's machine.

One JSON file per mail domain under the journal directory. ``migrate`` skips the
steps recorded as done, so a rerun after a failure resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chatmail_migrate.errors import SettingsError
from chatmail_migrate.settings import Settings


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S%z")


@dataclass
class Journal:
    path: Path
    mail_domain: str
    old_host: str | None = None
    new_host: str | None = None
    created: str = field(default_factory=now)
    steps: dict[str, dict] = field(default_factory=dict)
    # The order migrate runs the steps in (run/plan.py); empty until a run plans it.
    plan: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    @classmethod
    def for_settings(cls, settings: Settings) -> Journal | None:
        """The journal of ``settings.mail_domain`` (None without a relay checkout)."""
        if not settings.mail_domain:
            return None
        path = settings.journal_dir / f"{settings.mail_domain}.json"
        if path.exists():
            return cls.load(path)
        return cls(path=path, mail_domain=settings.mail_domain)

    @classmethod
    def load(cls, path: Path) -> Journal:
        """The journal in ``path``, or one line saying why it is none."""
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise SettingsError(
                f"journal {path} is not valid JSON ({e}): fix it, or move it away to start anew"
            ) from None
        return cls._from_json(path, data)

    @classmethod
    def _from_json(cls, path: Path, data) -> Journal:
        """A journal from its JSON, or one line saying what in it is not a journal."""
        shapes = {
            "mail_domain": str,
            "old_host": (str, type(None)),
            "new_host": (str, type(None)),
            "created": str,
            "steps": dict,
            "plan": list,
            "events": list,
        }
        problem = None
        if not isinstance(data, dict):
            problem = f"holds a {type(data).__name__}, not an object"
        elif "mail_domain" not in data:
            problem = "has no mail_domain"
        else:
            unknown = sorted(set(data) - set(shapes))
            wrong = [k for k, t in shapes.items() if k in data and not isinstance(data[k], t)]
            if unknown:
                problem = f"has unknown keys {', '.join(unknown)}"
            elif wrong:
                problem = f"has {', '.join(wrong)} of the wrong type"
            elif not all(isinstance(e, dict) for e in data.get("events", [])):
                problem = "has events that are not objects"
            elif not all(isinstance(name, str) for name in data.get("plan", [])):
                problem = "plans steps that are not names"
            elif not all(isinstance(v, dict) for v in data.get("steps", {}).values()):
                problem = "has steps that are not objects"
        if problem:
            raise SettingsError(
                f"journal {path} {problem}: it is not a chatmail-migrate journal; "
                "fix it, or move it away to start anew"
            )
        return cls(path=path, **data)

    def check_hosts(self, settings: Settings, same: Callable[[str, str], bool]) -> None:
        """Refuse to mix two migrations (other hosts) in one journal; ``same`` says
        whether two host strings reach one host (an alias and its ``ADDR:PORT``)."""
        for name in ("old_host", "new_host"):
            mine, theirs = getattr(self, name), getattr(settings, name)
            if self.steps and mine and theirs and not same(mine, theirs):
                raise SettingsError(
                    f"the journal {self.path} records a migration with {name.replace('_', ' ')} "
                    f"{mine}, not {theirs}; use the same hosts, or --restart to begin anew"
                )

    def spell_hosts_as(self, settings: Settings, same: Callable[[str, str], bool]) -> None:
        """Take this run's spelling of a host the journal names otherwise (the ssh
        config alias ``new`` for ``203.0.113.5:2222``), in its events too."""
        for name in ("old_host", "new_host"):
            mine, theirs = getattr(self, name), getattr(settings, name)
            if mine and theirs and mine != theirs and same(mine, theirs):
                setattr(self, name, theirs)
                for event in self.events:
                    if event.get("host") == mine:
                        event["host"] = theirs

    def adopt_hosts(self, settings: Settings) -> None:
        """Record this run's hosts: until a step is done they may still change (a
        migration that stopped at preflight, a new host rented after a rollback)."""
        if not self.steps:
            self.old_host = settings.old_host or self.old_host
            self.new_host = settings.new_host or self.new_host
        self.old_host = self.old_host or settings.old_host
        self.new_host = self.new_host or settings.new_host

    def done(self, step: str) -> bool:
        return "finished" in self.steps.get(step, {})

    def done_steps(self) -> list[str]:
        """In the planned order; in the order they were done when nothing was planned."""
        return [s for s in self.plan or self.steps if self.done(s)]

    def next_step(self) -> str | None:
        return next((s for s in self.plan if not self.done(s)), None)

    def record(self, step: str, started: float, seconds: float) -> None:
        self.steps[step] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S%z", time.localtime(started)),
            "started_ts": started,
            "finished": now(),
            "seconds": round(seconds, 2),
        }
        self.events.append({"time": now(), "step": step, "event": "done"})
        self.save()

    def record_start(self, step: str, host: str | None) -> None:
        self.events.append({"time": now(), "step": step, "event": "started", "host": host})
        self.save()

    def copy_attempted(self, new_host: str | None) -> bool:
        """Whether a copy to ``new_host`` was started before (its trees hold our data)."""
        return any(
            e.get("step") in ("copy-data", "presync")
            and e.get("event") == "started"
            and e.get("host") == new_host
            for e in self.events
        )

    def started_on(self, new_host: str | None) -> bool:
        """Whether this migration began writing to ``new_host`` (a copy, an install)."""
        return any(
            e.get("step") in ("copy-data", "presync", "install")
            and e.get("event") == "started"
            and e.get("host") == new_host
            for e in self.events
        )

    def started_anywhere(self) -> bool:
        """Whether this migration began writing to any new host (a copy, an install)."""
        return any(
            e.get("step") in ("copy-data", "presync", "install") and e.get("event") == "started"
            for e in self.events
        )

    def unfinished_carry_back(self) -> str | None:
        """When a carry back into old began that was never verified, if one was."""
        began = None
        for event in self.events:
            if event.get("event") == "carry-back-started":
                began = event["time"]
            elif event.get("event") == "carried-back":
                began = None
        return began

    def presynced(self, new_host: str | None) -> bool:
        """Whether a pre-sync to ``new_host`` finished: rsync can mirror onto its copy."""
        return any(
            e.get("event") == "presync-done" and e.get("host") == new_host for e in self.events
        )

    def downtime(self) -> float | None:
        """Seconds from disable-mail's start to enable-mail's end, once both are done."""
        first, last = self.steps.get("disable-mail"), self.steps.get("enable-mail")
        if not (first and last):
            return None
        return last["started_ts"] + last["seconds"] - first["started_ts"]

    def last_event(self, kind: str, host: str | None = None) -> dict | None:
        """The latest ``kind`` event (about ``host``, when given)."""
        return next(
            (
                e
                for e in reversed(self.events)
                if e.get("event") == kind and (host is None or e.get("host") == host)
            ),
            None,
        )

    def presync_total(self, new_host: str | None) -> tuple[int, int] | None:
        """The mailbox tree's (bytes, entries) the last pre-sync to ``new_host`` measured."""
        for event in reversed(self.events):
            if event.get("event") == "presync-done" and event.get("host") == new_host:
                for copy in event.get("copies", []):
                    if copy.get("entries_total"):
                        return copy.get("bytes_total", 0), copy["entries_total"]
                return None
        return None

    def record_services_before_disable(
        self, host: str | None, services: list[str], listening: list[str], **facts
    ) -> None:
        """What old ran and listened on just before disable-mail, and ``facts`` (the
        certificate it served, its SMTP greeting's name): check-relay expects the same
        of new."""
        self.note("before-disable-mail", host=host, services=services, listening=listening, **facts)

    def record_queue_at_disable(
        self, host: str | None, total: int, messages: list[dict], recorded: float
    ) -> None:
        """Old's mail queue once disable-mail stopped Postfix: check-relay finds each
        message on new, queued or delivered."""
        self.note(
            "queue-at-disable-mail", host=host, total=total, messages=messages, recorded=recorded
        )

    def queue_at_disable(self) -> dict | None:
        """The last record of old's queue at disable-mail."""
        return self.last_event("queue-at-disable-mail")

    def services_before_disable(self) -> dict | None:
        """The last record of old's services and TCP ports before disable-mail."""
        return next(
            (e for e in reversed(self.events) if e.get("event") == "before-disable-mail"), None
        )

    def record_rollback(self) -> None:
        """Mail runs on old again: everything from disable-mail on must be redone, maybe
        to another new host (the first one's disk was too small, say). The event keeps
        the new host: a rollback repeated later still looks at it."""
        rolled_back_from = self.new_host
        self.steps = {}
        self.new_host = None
        self.events.append({"time": now(), "event": "rollback", "host": rolled_back_from})
        self.save()

    def last_new_host(self) -> str | None:
        """This migration's new host, or the one the last rollback came back from."""
        if self.new_host:
            return self.new_host
        rollback = self.last_event("rollback")
        return rollback.get("host") if rollback else None

    def new_host_served(self, host: str | None) -> str | None:
        """When enable-mail first started mail on ``host``, if no rollback carried its
        mail back to old since: that host may hold mail no other host has."""
        since = None
        for event in self.events:
            if event.get("host") != host:
                continue
            if event.get("event") == "new-served" and since is None:
                since = event["time"]
            elif event.get("event") == "carried-back":
                since = None
        return since

    def finished(self) -> bool:
        """Whether the move is done: enable-mail ran on the new host (and no rollback since)."""
        return self.done("enable-mail")

    def note(self, event: str, **details) -> None:
        self.events.append({"time": now(), "event": event, **details})
        self.save()

    def dns_change_confirmed(self) -> bool:
        """Whether the operator changed DNS since the migration last (re)started."""
        return self.dns_change_confirmed_by() is not None

    def dns_change_confirmed_by(self) -> str | None:
        """Who said DNS was changed since the last (re)start: "operator" (typed done),
        "--yes" (nobody), "already" (the servers answered so); None: not asked yet."""
        for event in reversed(self.events):
            if event.get("event") in ("rollback", "restart"):
                return None
            if event.get("event") == "dns-change-confirmed":
                return event.get("by", "operator")  # journals before "by": a person
        return None

    def dns_records_asked(self) -> dict[str, list[str]] | None:
        """The A/AAAA values the operator was asked to publish, since the last (re)start."""
        for event in reversed(self.events):
            if event.get("event") in ("rollback", "restart"):
                return None
            if event.get("event") in ("dns-change-confirmed", "dns-switched"):
                return event.get("records")
        return None

    def dns_update_in_force(self) -> dict | None:
        """The last update this tool sent the zone (``dns-updated``) that no restore
        undid since: what a rollback sets back. Survives rollbacks and restarts: the
        records stay changed until the tool (or the operator) sets them back."""
        for event in reversed(self.events):
            if event.get("event") == "dns-restored":
                return None
            if event.get("event") == "dns-updated":
                return event
        return None

    def record_failure(self, step: str, message: str) -> None:
        self.events.append({"time": now(), "step": step, "event": "failed", "message": message})
        self.save()

    def reset(self) -> None:
        self.steps = {}
        self.old_host = self.new_host = None
        self.events.append({"time": now(), "event": "restart"})

    def archive(self) -> Path:
        """Set this journal aside (a finished move), under a name ``status`` skips."""
        kept = self.path.with_name(f"{self.path.name}.finished-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.replace(kept)
        return kept

    def save(self) -> None:
        # Account names, hosts and paths: the operator's alone, from the moment they exist.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {k: v for k, v in self.__dict__.items() if k != "path"}
        tmp = self.path.with_suffix(".tmp")
        # Durable: a crash (or a full disk) leaves the old journal or the new one, whole.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def where_things_stand(self) -> str:
        """One paragraph for the operator after a stop: what is done and what it means."""
        done = self.done_steps()
        parts = [f"Done: {', '.join(done) if done else 'nothing'}."]
        unfinished = self.unfinished_carry_back()
        if unfinished:
            parts.append(
                f"A carry back of the new host's mail into the old host began {unfinished} "
                "and did not finish: old's mailboxes and queue may be partly new's (new's are "
                "untouched); old stays off until `rollback` carries everything back again."
            )
            return " ".join(parts)
        served = self.new_host_served(self.new_host)
        if self.done("disable-mail") and not self.done("enable-mail") and served:
            parts.append(
                f"The new host may have taken mail since {served} (enable-mail was "
                "starting mail there when it failed), with mail off on the old host: the "
                "newest mail may be on the new host only. Rerun to finish there, or "
                "`rollback`, which carries that mail back to the old host before old "
                "serves again."
            )
        elif self.done("disable-mail") and not self.done("enable-mail"):
            parts.append(
                "Mail is DOWN: disabled on the old host and not yet enabled on the new one. "
                "The old host's data is untouched."
            )
            if not self.done("switch-dns") and not self.dns_change_confirmed():
                parts.append(
                    "DNS still points at the old host: `rollback` (cmdeploy run --ssh-host OLD) "
                    "brings the relay back as it was."
                )
            elif self.done("switch-dns"):
                parts.append(
                    "DNS already points at the new host, so nothing was rolled back: fix the "
                    "cause and rerun to finish on the new host, or point DNS back at the old "
                    "host and run `rollback`."
                )
            elif self.dns_change_confirmed():
                parts.append(
                    "You changed DNS, but not every nameserver answered the new address: "
                    "fix the records and rerun to finish on the new host, or point DNS back "
                    "at the old host and run `rollback`."
                )
        if self.finished() and self.next_step():
            parts.append(
                f"Mail runs on the new host {self.new_host}. The new host may have taken "
                f"mail since {served or 'enable-mail'}, so it holds the newest mail; what "
                "is left runs outside the downtime (rerun migrate to finish it; `rollback` "
                "would carry that mail back to the old host first)."
            )
        elif self.finished():
            parts.append(
                f"The move is finished: mail runs on the new host {self.new_host}, which "
                "holds the newest mail (`rollback` would carry it back to the old host)."
            )
        nxt = self.next_step()
        if nxt:
            parts.append(f"Next step: {nxt} (rerun migrate to resume at {nxt}).")
        return " ".join(parts)
