"""A migration: its resolved settings, journal, lock and plan, run step by step.

``migrate`` builds a :class:`Migration` whose plan is every step this relay needs,
in the order its release wants (that order is data, not Invoke's static pre/post
tasks); a step run by hand is the same object with a one-step plan. Only a whole
migration skips the steps its journal records as done, and rolls back when a step
fails before DNS was changed. What each step does is a plain function of
actions.py; this module announces, times and journals it, and on failure says
where things stand.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from invoke import Exit

from . import actions, audit, check_relay, dnscheck, recovery, switch_dns
from . import preflight as checks
from .cli import debugging, paint
from .cmdeploy import cmdeploy_host, stages_supported
from .errors import MigrateError, SettingsError
from .host_lock import HostLocks, LockHeld
from .journal import STEPS, Journal, plan, report
from .lock import migration_lock
from .remote import Runner, connect, same_endpoint
from .settings import Settings, check_cmdeploy, resolve

# What each step does: a plain function of (settings, runner, journal).
STEP_ACTIONS: dict[str, Callable[..., None]] = {
    "presync": actions.presync_old_to_new,
    "disable-mail": actions.disable_mail_on_old,
    "copy-data": actions.copy_data_old_to_new,
    "install": actions.install_on_new,
    "fix-ownership": actions.fix_ownership_on_new,
    "verify": actions.verify_trees,
    "switch-dns": switch_dns.switch_dns_records,
    "enable-mail": actions.enable_mail_on_new,
}
# Which host each step works on, for its announcement.
ROLES = {
    "presync": "old → new",
    "disable-mail": "old",
    "copy-data": "old → new",
    "install": "new",
    "fix-ownership": "new",
    "verify": "old ↔ new",
    "switch-dns": "DNS",
    "enable-mail": "new",
}
# The hosts each step writes to: it holds their locks (host_lock.py) until the run ends.
WRITES = {
    "presync": ("old", "new"),  # the rsync runs on old
    "disable-mail": ("old",),
    "copy-data": ("old", "new"),
    "install": ("new",),
    "fix-ownership": ("new",),
    "verify": (),
    "switch-dns": (),
    "enable-mail": ("new",),
}
# What each step needs, checked before it touches anything or writes the journal.
NEEDS = {
    "presync": ("old_host", "new_host", "relay_dir"),
    "disable-mail": ("old_host", "relay_dir"),
    "copy-data": ("old_host", "new_host"),
    "install": ("old_host", "new_host", "relay_dir"),  # old: the secrets before 1.8
    "fix-ownership": ("new_host",),
    "verify": ("old_host", "new_host"),
    "switch-dns": ("old_host", "new_host", "relay_dir"),
    "enable-mail": ("new_host", "relay_dir"),
}
# The host each step runs cmdeploy against (checked for a port cmdeploy would drop).
DEPLOYS_TO = {"disable-mail": ("old_host",), "install": ("new_host",), "enable-mail": ("new_host",)}
# Which host ``fab -H`` names for each step run by hand: the step's own host.
FAB_HOST_ROLE = {
    name: "old" if name in ("presync", "disable-mail", "copy-data", "verify") else "new"
    for name in STEP_ACTIONS
}


def task_settings(c, role: str | None, needs=(), deploys_to=(), **flags) -> Settings:
    """Resolve and check a task's settings; bad input exits with one line, nothing touched.

    ``deploys_to``: the hosts (``old_host``/``new_host``) the task runs cmdeploy against.
    """
    settings = resolve(c, role=role, **flags)
    settings.need(*needs)
    if deploys_to:
        check_cmdeploy(settings)
        for name in deploys_to:
            cmdeploy_host(getattr(settings, name))  # refuses a port it would drop
    if "old_host" in needs:
        settings = pin_old_host(settings)
    return settings


def pin_old_host(settings: Settings) -> Settings:
    """Turn the default old host (the mail domain) into the address DNS gives now.

    Asked of the authoritative servers, once: after the switch the name points at
    the new host. A ``Host`` entry for the domain in the ssh config is kept as is.
    """
    if not settings.old_host_from_domain or settings.dry:
        return settings
    domain = settings.mail_domain or ""
    if connect(settings, domain).host != domain:
        return settings
    try:
        address = dnscheck.resolve_host(domain, dnscheck.parse_nameservers(settings.nameservers))
    except MigrateError as e:
        raise SettingsError(f"cannot find the old host by DNS: {e}; give --old-host") from None
    print(f"old host: {domain} points at {address} (asked its authoritative nameservers)")
    return dataclasses.replace(settings, old_host=address, old_host_from_domain=False)


def where(name: str, s: Settings) -> str:
    return {
        "old": f"on {s.old_host}",
        "new": f"on {s.new_host}",
        "old → new": f"{s.old_host} → {s.new_host}",
        "old ↔ new": f"{s.old_host} ↔ {s.new_host}",
        "DNS": f"{s.mail_domain or ''}: {s.old_host} → {s.new_host}",
    }[ROLES[name]]


@dataclass
class Migration:
    settings: Settings
    plan: list[str]
    # A whole migration (migrate): skips journaled steps, may roll back on failure.
    whole: bool = False
    restart: bool = False
    # Read from disk once the relay's lock is held (another run may have just written it).
    journal: Journal | None = None
    # The locks on the hosts the steps write to, from other machines' runs too.
    host_locks: HostLocks | None = None

    @classmethod
    def one_step(cls, settings: Settings, name: str) -> Migration:
        return cls(settings, [name])

    @classmethod
    def whole_relay(cls, settings: Settings, *, restart: bool) -> Migration:
        """Every step this relay needs; a journaled migration resumes in its own order."""
        return cls(settings, [], whole=True, restart=restart)

    def _load_journal(self) -> None:
        self.journal = journal = Journal.for_settings(self.settings)
        if journal:
            journal.spell_hosts_as(self.settings, lambda a, b: same_endpoint(self.settings, a, b))
        if not self.whole:
            return
        assert journal is not None  # migrate needs relay_dir, hence a mail domain
        s = self.settings
        if (
            journal.finished()
            and journal.new_host
            and s.old_host
            and same_endpoint(s, s.old_host, journal.new_host)
            and not s.dry
        ):
            # Moving again, from the host the last move went to: that move is history.
            kept = journal.archive()
            print(f"the move to {journal.new_host} finished; its journal is kept as {kept}")
            self.journal = journal = Journal(path=journal.path, mail_domain=journal.mail_domain)
        if journal.finished() and self.restart:
            raise Exit(
                f"error: migrate --restart refused: the move of {journal.mail_domain} to "
                f"{journal.new_host} finished ({journal.steps['enable-mail'].get('finished')}) "
                "and mail runs there; to move again, migrate from it (--old-host "
                f"{journal.new_host} --new-host OTHER); to go back, `rollback` (it carries "
                "back the mail the new host took)",
                code=2,
            )
        if self.restart:
            journal.reset()
        journal.check_hosts(self.settings, lambda a, b: same_endpoint(self.settings, a, b))
        wanted = plan(presync=self.settings.presync)
        if journal.done_steps() and journal.plan != wanted:
            print(f"resuming in the order this migration began: {', '.join(journal.plan)}")
        else:
            journal.plan = wanted
        self.plan = journal.plan

    # -- running ------------------------------------------------------------
    def run(self) -> None:
        """The plan, holding the relay's lock: one migration of a relay at a time."""
        with migration_lock(self.settings):
            self._load_journal()
            self.host_locks = HostLocks(self.settings, self.journal)
            try:
                self._run()
            finally:
                self.host_locks.release()

    def _run(self) -> None:
        if not self.whole:
            for name in self.plan:
                self.run_step(name)
            return
        s, journal = self.settings, self.journal
        assert journal is not None
        if journal.finished():
            print(
                f"migrate {s.mail_domain}: the move to {journal.new_host} finished "
                f"{journal.steps['enable-mail'].get('finished')}; nothing to do "
                "(`status` shows it; to move again, migrate from the new host)"
            )
            return
        if not s.dry:
            journal.adopt_hosts(s)
            journal.save()
            if self.host_locks:
                self.host_locks.record_run()  # before any step, failure or rollback
        print(
            f"migrate {s.mail_domain}: {s.old_host} → {s.new_host}"
            + (" (dry run)" if s.dry else "")
        )
        print(f"journal: {journal.path}")
        print(f"plan: {', '.join(self.plan)}")
        if not s.dry:
            print(f"command log: {audit.log_path(s)}; report at the end: {audit.report_path(s)}")
            audit.note(s, f"migrate {s.mail_domain}: {s.old_host} → {s.new_host}, plan {self.plan}")
        staged, why = stages_supported(s)
        if staged:
            print(f"cmdeploy stages ({why}): install on new before mail goes down, activate last")
        if journal.done_steps() and not s.dry:
            print(
                f"resuming at {journal.next_step()}: already done "
                f"{', '.join(journal.done_steps())} (--restart starts over)"
            )
        try:
            run_preflight(s, journal)
            for name in self.plan:
                self.run_step(name)
            failed = run_check_relay(s, journal)
            self.summary()
            if failed:
                raise Exit(
                    f"check-relay: {len(failed)} check(s) failed on the new host {s.new_host} "
                    f"({failed[0].name}: {failed[0].detail}). Mail runs there and nothing was "
                    "rolled back: fix it and run check-relay again, or point DNS back at the "
                    "old host and run `rollback`.",
                    code=1,
                )
        finally:
            if not s.dry:
                write_report(s, journal)

    def run_step(self, name: str) -> None:
        """Announce, time and journal one step; on failure say exactly where things stand."""
        s, journal = self.settings, self.journal
        order = journal.plan if journal else STEPS
        number = f"[{order.index(name) + 1}/{len(order)}]" if name in order else f"[{name}]"
        self._check_journal_hosts(name)
        # A pre-sync is worth repeating, until the downtime has begun.
        done = journal and journal.done("disable-mail" if name == "presync" else name)
        if done and self.whole and not s.dry:
            when = journal.steps.get(name, {}).get("finished", "before the downtime")
            print(f"{number} {name}: done {when} (journal), skipping")
            return
        try:
            if self.host_locks:
                self.host_locks.hold(*WRITES[name])
        except LockHeld as e:
            # Another run works on the host: neither this step nor a rollback may.
            stand = f"\n{journal.where_things_stand()}" if journal and journal.steps else ""
            raise Exit(f"error: {name}: {e}{stand}", code=1) from None
        except MigrateError as e:
            # Not taken, twice (a host unreachable, its lock unusable): the step does not
            # begin; what earlier steps did is rolled back as after a failed step.
            if journal and not s.dry:
                journal.record_failure(name, f"not started: {e}")
            if self.whole:
                stand = self._after_failure(name, began=False)
            else:
                stand = journal.where_things_stand() if journal and journal.steps else ""
            raise Exit(f"error: {name} not started: {e}" + (f"\n{stand}" if stand else ""),
                       code=1) from None  # fmt: skip
        print(paint(f"{number} {name} {where(name, s)}", "bold"), flush=True)
        audit.note(s, f"{number} {name} {where(name, s)}: started")
        runner = Runner(s)
        started, clock = time.time(), time.monotonic()
        try:
            STEP_ACTIONS[name](s, runner, journal)
        except (Exception, KeyboardInterrupt) as e:
            if debugging() and not isinstance(e, KeyboardInterrupt):
                raise
            runner.close()
            if isinstance(e, KeyboardInterrupt):
                message, code = "interrupted", 130
            elif isinstance(e, (MigrateError, SettingsError)):
                message, code = str(e), 1
            else:
                message = f"unexpected {type(e).__name__}: {e} (--debug shows the traceback)"
                code = 1
            if journal and not s.dry:
                journal.record_failure(name, message)
            stand = self._after_failure(name)
            seconds = time.monotonic() - clock
            audit.note(s, f"{number} {name} FAILED after {seconds:.1f}s: {message}")
            failed = paint(f"{number} {name} FAILED", "red", sys.stderr)
            raise Exit(f"{failed} after {seconds:.1f}s: {message}\n{stand}", code) from None
        finally:
            runner.close()
        seconds = time.monotonic() - clock
        if journal and not s.dry:
            journal.adopt_hosts(s)
            journal.record(name, started, seconds)
        audit.note(s, f"{number} {name} done in {seconds:.1f}s")
        print(f"{number} {name} {paint('done', 'green')} in {seconds:.1f}s", flush=True)

    def _check_journal_hosts(self, name: str) -> None:
        journal = self.journal
        if not (journal and journal.steps):
            return
        touched = {"old": ["old_host"], "new": ["new_host"]}.get(
            ROLES[name], ["old_host", "new_host"]
        )
        for key in touched:
            mine, theirs = getattr(journal, key), getattr(self.settings, key)
            if mine and theirs and mine != theirs:
                raise Exit(
                    f"{name}: the journal {journal.path} records {key.replace('_', ' ')} {mine}, "
                    f"not {theirs}; give --{key.replace('_', '-')} {mine}, or start anew with "
                    "migrate --restart",
                    code=2,
                )

    def _after_failure(self, name: str, began: bool = True) -> str:
        """Roll back a whole migration while DNS still points at old; say where things stand.

        ``began``: whether step ``name`` began (it may have turned something off)."""
        s, journal = self.settings, self.journal
        if not journal or s.dry:
            return ""
        mail_off = journal.done("disable-mail") or (began and name == "disable-mail")
        if not (self.whole and mail_off):
            return journal.where_things_stand()
        # Asked of the authoritative servers now: a --yes or a timed-out wait is not
        # proof that anything changed, and a record changed early is. Only your own
        # 'done' counts as a change that may still reach the servers.
        points = dnscheck.points_at_new(s, journal)
        if points is True:
            return (
                "Not rolling back: DNS already points at the new host. "
                + journal.where_things_stand()
            )
        if points is None:
            return (
                "Not rolling back: some authoritative nameservers (or all, if they could "
                "not be asked) may already send clients to the new host. "
                + journal.where_things_stand()
            )
        if journal.dns_change_confirmed_by() == "operator":
            return (
                "Not rolling back: you confirmed the DNS change, though no authoritative "
                "nameserver answers the new address yet; finish the records and rerun, or "
                "point them back at the old host and run `rollback`. "
                + journal.where_things_stand()
            )
        if not s.rollback:
            return "--no-rollback: mail stays off on the old host. " + journal.where_things_stand()
        try:
            if self.host_locks:
                self.host_locks.hold("old")
        except LockHeld as e:
            return f"Not rolling back: {e}. " + journal.where_things_stand()
        except MigrateError as e:
            return (
                f"ROLLBACK NOT STARTED: {e}. Mail is DOWN on the old host: fix that, then run "
                "`rollback`."
            )
        print("rolling back: re-enabling mail on the old host (--no-rollback turns this off)")
        runner = Runner(s)
        try:
            if self.host_locks:
                try_new_host_lock(self.host_locks)  # new's mail may be carried back
            served = journal.new_host_served(s.new_host) or name == "enable-mail"
            done = recovery.roll_back_hosts(
                s, runner, journal, unreachable_new_never_served=not served
            )
        except (MigrateError, SettingsError) as e:
            return (
                f"ROLLBACK FAILED: {e}. Mail is DOWN on the old host (and on the new one "
                "once the rollback stopped it there): fix that, then run `rollback`, which "
                "carries back what the new host took before old serves."
            )
        finally:
            runner.close()
        journal.record_rollback()
        undo = ""
        if journal.dns_change_confirmed_by() == "--yes":
            undo = " If you did change the DNS records, point them back at the old host."
        data = (
            "with the mail the new host took carried back"
            if done.carried_back
            else "whose data was never changed"
        )
        return (
            f"Rolled back: mail runs on the old host again, {data}. Fix the cause, then "
            "rerun migrate: it starts over and replaces the new host's copy."
            + undo
            + "".join(f" Still to do: {line}." for line in done.left)
        )

    def summary(self) -> None:
        """The table of steps, durations and mail downtime that ends ``migrate``."""
        s, journal = self.settings, self.journal
        if s.dry:
            print("dry run: nothing was changed, nothing journaled")
            return
        if journal is None:
            return
        print(f"migration of {journal.mail_domain}: {journal.old_host} → {journal.new_host}")
        for number, name in enumerate(journal.plan, 1):
            step = journal.steps.get(name, {})
            seconds = f"{step['seconds']:8.1f}s" if "seconds" in step else "  (not done)"
            print(f"  [{number}/{len(journal.plan)}] {name:14} {seconds}")
        downtime = journal.downtime()
        if downtime is not None:
            print(f"  mail was down for {downtime:.1f}s (disable-mail start to enable-mail end)")
            print(
                f"  now raise the TTL of {journal.mail_domain}'s A/AAAA records again "
                "(14400-86400 s): short TTLs cost every client lookups"
            )
        print(f"  journal: {journal.path}")


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
                runner.run(role, checks.facts_command(s.relay))
            print("dry run: checks not evaluated")
            return
        failed = []
        for check in checks.run_checks(s, runner, force=s.force, journal=journal):
            colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}[check.status]
            print(paint(f"{check.status:4}", colour) + check.line()[4:], flush=True)
            audit.note(s, f"preflight {check.line()}")
            if check.status == "FAIL":
                failed.append(check)
    except (MigrateError, SettingsError) as e:
        raise Exit(f"preflight stopped: {e}", code=1) from None
    except Exception as e:
        if debugging():
            raise
        raise Exit(f"preflight stopped: unexpected {type(e).__name__}: {e}", code=1) from None
    finally:
        runner.close()
    seconds = time.monotonic() - started
    if failed:
        raise Exit(
            f"preflight: {len(failed)} check(s) failed, nothing was changed "
            f"({failed[0].name}: {failed[0].detail})",
            code=1,
        )
    print(f"preflight passed in {seconds:.1f}s")


def run_check_relay(
    s: Settings, journal: Journal | None, probe_account: str | None = None
) -> list[checks.Check]:
    """check-relay's lines, PASS/WARN/FAIL, on the new host; returns the failed ones."""
    print(paint(f"check-relay {s.mail_domain} on {s.new_host}", "bold"), flush=True)
    runner = Runner(s)
    started = time.monotonic()
    try:
        lines = check_relay.check_relay(s, runner, journal, probe_account)
    except MigrateError as e:
        raise Exit(f"check-relay stopped: {e}", code=1) from None
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
        raise Exit(
            f"check-relay: {len(failed)} check(s) failed ({failed[0].name}: {failed[0].detail})",
            code=1,
        )


def roll_back(s: Settings, *, new_host_gone: bool = False) -> None:
    """Mail on the old host again, with what the new host took carried back first;
    recorded in the journal (the next migrate starts over). Decided from the hosts,
    safe to repeat. ``new_host_gone``: the operator says the new host is gone for good."""
    journal = Journal.for_settings(s)
    s = rollback_hosts(s, journal, new_host_gone=new_host_gone)
    print(
        f"rollback: mail back on {s.old_host}"
        + (f"; the new host {s.new_host} is looked at first" if s.new_host else ""),
        flush=True,
    )
    runner = Runner(s)
    locks = HostLocks(s)
    try:
        with migration_lock(s):
            journal = Journal.for_settings(s)
            locks.journal = journal  # a dead run of this journal may be taken over
            try:
                # Both: mail may be carried back from new. An unreachable new host is
                # judged by the rollback itself (it refuses when new took mail).
                locks.hold("old")
                if s.new_host:
                    try_new_host_lock(locks)
            except LockHeld as e:
                raise Exit(f"rollback not started, nothing changed: {e}", code=1) from None
            if journal and journal.done("switch-dns"):
                print("note: DNS was switched to the new host: point it back at the old host too")
            done = recovery.roll_back_hosts(s, runner, journal, new_host_gone=new_host_gone)
            if journal and not s.dry:
                journal.adopt_hosts(s)
                journal.record_rollback()
    except (MigrateError, SettingsError) as e:
        raise Exit(f"rollback FAILED: {e}", code=1) from None
    finally:
        locks.release()
        runner.close()
    carried = "; the mail the new host took was carried back" if done.carried_back else ""
    print(
        f"rollback done: mail runs on the old host {s.old_host}{carried}; a new migrate starts over"
    )
    for line in done.left:
        print(f"  still to do: {line}")


def try_new_host_lock(locks: HostLocks) -> None:
    """The new host's lock for a rollback; another run's lock refuses (LockHeld)."""
    try:
        locks.hold("new")
    except LockHeld:
        raise
    except MigrateError as e:
        print(f"  no lock on the new host ({e}): the rollback judges it by what it can reach")


def rollback_hosts(
    s: Settings, journal: Journal | None, *, new_host_gone: bool = False
) -> Settings:
    """The hosts a rollback works on: the flags, else the journal's; never DNS's.

    After the switch the mail domain names the new host: a rollback that took its old
    host from DNS would deploy on the live new relay and leave the real old host off.
    The new host is needed too (it may serve, or hold mail to carry back), unless the
    journal shows no copy began, or the operator says it is gone.
    """
    if s.old_host_from_domain:
        if not (journal and journal.old_host):
            raise SettingsError(
                f"rollback: no journal here names {s.mail_domain}'s old host, and DNS may "
                "already point the domain at the new one: give --old-host OLD --new-host NEW"
            )
        s = dataclasses.replace(s, old_host=journal.old_host, old_host_from_domain=False)
    new_host = s.new_host or (journal.last_new_host() if journal else None)
    if not new_host and not new_host_gone:
        if not (journal and journal.path.exists()) or journal.started_anywhere():
            raise SettingsError(
                "rollback: give --new-host NEW, the host mail was being moved to (it may "
                "serve, or hold mail to carry back), or --new-host-gone if it is gone for good"
            )
        print("  no copy to a new host began (journal): only the old host is looked at")
    if new_host and same_endpoint(s, new_host, s.old_host or ""):
        raise SettingsError(f"rollback: --new-host {new_host} is the old host; give the other")
    check_cmdeploy(s)
    cmdeploy_host(s.old_host or "")
    return dataclasses.replace(s, new_host=new_host)


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
        for number, name in enumerate(journal.plan, 1):
            step = journal.steps.get(name)
            state = (
                f"done {step.get('finished', '?')} in {step.get('seconds', '?')}s"
                if step
                else "not done"
            )
            print(f"  [{number}/{len(journal.plan)}] {name:14} {state}")
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
