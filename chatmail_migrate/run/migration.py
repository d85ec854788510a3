"""A migration: its resolved settings, journal, lock and plan, run step by step.

``migrate`` builds a :class:`Migration` whose plan is every step this relay needs,
in the order its release wants (that order is data, not Invoke's static pre/post
tasks); a step run by hand is the same object with a one-step plan. Only a whole
migration skips the steps its journal records as done, and rolls back when a step
fails before DNS was changed. What each step does is a plain function in
steps/ (run/plan.py names it); this module announces, times and journals it, and on failure says
where things stand.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from chatmail_migrate import audit, nameservers
from chatmail_migrate.cmdeploy import stages_supported
from chatmail_migrate.errors import MigrateError, SettingsError, Stopped
from chatmail_migrate.hosts.connect import same_endpoint
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.lock import migration_lock
from chatmail_migrate.output import debugging, paint
from chatmail_migrate.run import rollback
from chatmail_migrate.run.host_lock import HostLocks, LockHeld
from chatmail_migrate.run.plan import migrate_order, order_of, seed_order, step
from chatmail_migrate.run.rollback import try_new_host_lock
from chatmail_migrate.run.status import run_check_relay, run_preflight, write_report
from chatmail_migrate.settings import Settings


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
            order_of(journal)  # one line, before any step, for a journal naming unknown steps
        if not self.whole:
            if journal and not journal.plan:
                journal.plan = seed_order()  # steps by hand count in the seed's order
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
            raise Stopped(
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
        wanted = migrate_order(presync=self.settings.presync)
        if journal.done_steps() and journal.plan != wanted:
            if "converge" not in journal.plan and not journal.done("enable-mail"):
                # Begun by a version whose enable-mail deployed; this one's does not.
                journal.plan.append("converge")
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
        if journal.finished() and not journal.next_step():
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
                raise Stopped(
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
        planned = step(name, in_migrate=self.whole)
        order = order_of(journal)
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
                self.host_locks.hold(*planned.writes)
        except LockHeld as e:
            # Another run works on the host: neither this step nor a rollback may.
            stand = f"\n{journal.where_things_stand()}" if journal and journal.steps else ""
            raise Stopped(f"error: {name}: {e}{stand}", code=1) from None
        except MigrateError as e:
            # Not taken, twice (a host unreachable, its lock unusable): the step does not
            # begin; what earlier steps did is rolled back as after a failed step.
            if journal and not s.dry:
                journal.record_failure(name, f"not started: {e}")
            if self.whole:
                stand = self._after_failure(name, began=False)
            else:
                stand = journal.where_things_stand() if journal and journal.steps else ""
            raise Stopped(
                f"error: {name} not started: {e}" + (f"\n{stand}" if stand else ""), code=1
            ) from None
        print(
            paint(f"{number} {name} {planned.where(s)}", "bold"),
            flush=True,
        )
        audit.note(s, f"{number} {name} {planned.where(s)}: started")
        runner = Runner(s)
        started, clock = time.time(), time.monotonic()
        try:
            planned.run(s, runner, journal)
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
            raise Stopped(f"{failed} after {seconds:.1f}s: {message}\n{stand}", code) from None
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
        on = step(name, in_migrate=self.whole).on
        touched = {"old": ["old_host"], "new": ["new_host"]}.get(on, ["old_host", "new_host"])
        for key in touched:
            mine, theirs = getattr(journal, key), getattr(self.settings, key)
            if mine and theirs and mine != theirs:
                raise Stopped(
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
        points = nameservers.points_at_new(s, journal)
        # Records this tool changed itself (--dns rfc2136) it also sets back: the
        # rollback goes ahead, and restores them once new's mail is carried back.
        if journal.dns_update_in_force():
            points = False
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
            done = rollback.roll_back_hosts(
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
        order = order_of(journal)
        for number, name in enumerate(order, 1):
            done = journal.steps.get(name, {})
            seconds = f"{done['seconds']:8.1f}s" if "seconds" in done else "  (not done)"
            print(f"  [{number}/{len(order)}] {name:14} {seconds}")
        downtime = journal.downtime()
        if downtime is not None:
            print(f"  mail was down for {downtime:.1f}s (disable-mail start to enable-mail end)")
            print(
                f"  now raise the TTL of {journal.mail_domain}'s A/AAAA records again "
                "(14400-86400 s): short TTLs cost every client lookups"
            )
        print(f"  journal: {journal.path}")
