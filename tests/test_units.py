"""Pure logic: settings resolution, command construction, journal, mirror lookup."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from invoke import Config, Context

from chatmail_migrate import commands, migration, steps, verify
from chatmail_migrate.cmdeploy import cmdeploy_host
from chatmail_migrate.journal import STEPS, Journal, plan
from chatmail_migrate.lab.rootfs import LabError, debian_mirror
from chatmail_migrate.relay import DEFAULT_COPY_PATHS
from chatmail_migrate.remote import connect
from chatmail_migrate.settings import DEFAULTS, SettingsError, resolve


@pytest.fixture
def relay(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "chatmail.ini").write_text("[params]\nmail_domain = chat.example.org\n")
    for var in ("CHATMAIL_RELAY_DIR", "CMDEPLOY", "CHATMAIL_MIGRATE_SSH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


def context(**section) -> Context:
    config = Config(defaults={**DEFAULTS})
    for key, value in section.items():
        config.chatmail_migrate[key] = value
    return Context(config=config)


class FabConnection(Context):
    """What a task gets under ``fab -H``: a context with ``original_host``."""

    def __init__(self, host: str, **section):
        super().__init__(config=context(**section).config)
        self.original_host = host


def test_old_host_defaults_to_mail_domain_like_cmdeploy(relay: Path):
    s = resolve(context(), relay_dir=str(relay))
    assert s.old_host == "chat.example.org"
    assert s.cmdeploy == [str(relay / "scripts" / "cmdeploy")]
    assert s.user == "root"


def test_precedence_flag_then_fab_host_then_config(relay: Path):
    c = FabConnection("fab-host", old_host="config-host")
    assert resolve(c, role="old", relay_dir=str(relay)).old_host == "fab-host"
    assert resolve(c, role="old", old_host="flag", relay_dir=str(relay)).old_host == "flag"
    # The -H host is the step's own host: for a new-host step it is the new host.
    s = resolve(c, role="new", relay_dir=str(relay))
    assert (s.old_host, s.new_host) == ("config-host", "fab-host")


def test_environment_settings(relay: Path, monkeypatch):
    monkeypatch.setenv("CHATMAIL_RELAY_DIR", str(relay))
    monkeypatch.setenv("CMDEPLOY", "/opt/my cmdeploy --flag")
    s = resolve(context())
    assert s.relay_dir == relay.resolve()
    assert s.cmdeploy == ["/opt/my", "cmdeploy", "--flag"]
    monkeypatch.setenv("CMDEPLOY", shlex.join(["/opt/my cmdeploy", "-v"]))
    assert resolve(context()).cmdeploy == ["/opt/my cmdeploy", "-v"]


def test_relay_dir_from_current_directory(relay: Path, monkeypatch):
    monkeypatch.chdir(relay)
    assert resolve(context()).mail_domain == "chat.example.org"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"old_host": "same", "new_host": "same"}, "old and new host are both same"),
        ({"relay_dir": "/nonexistent"}, "holds no chatmail.ini"),
    ],
)
def test_bad_settings(relay: Path, kwargs, message):
    with pytest.raises(SettingsError, match=message):
        resolve(context(), **kwargs)


def test_need_names_the_missing_setting(relay: Path):
    s = resolve(context(), relay_dir=str(relay))
    with pytest.raises(SettingsError, match="no new host: give --new-host"):
        s.need("new_host")


def test_connections_default_to_root_and_honour_ssh_config(relay: Path, tmp_path: Path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host alias\n  HostName 192.0.2.7\n  Port 2222\n  User alice\n  ForwardAgent yes\n"
    )
    s = resolve(context(ssh_config=str(config)), relay_dir=str(relay))
    plain = connect(s, "plain.example.org")
    assert (plain.host, plain.port, plain.user) == ("plain.example.org", 22, "root")
    aliased = connect(s, "alias")
    assert (aliased.host, aliased.port, aliased.user) == ("192.0.2.7", 2222, "alice")
    assert aliased.forward_agent is False, "never forward the agent unless asked"
    assert connect(s, "bob@alias").user == "bob"
    assert connect(s, "alias", forward_agent=True).forward_agent is True


@pytest.mark.parametrize(
    "given, expected",
    [("1.2.3.4", "1.2.3.4"), ("root@mail.example.org", "mail.example.org"),
     ("2001:db8::1", "2001:db8::1"), ("[2001:db8::1]", "2001:db8::1")],
)  # fmt: skip
def test_cmdeploy_gets_the_bare_host(given, expected):
    assert cmdeploy_host(given) == expected


@pytest.mark.parametrize("given", ["alias:2222", "user@host:22", "[2001:db8::1]:2222"])
def test_cmdeploy_refuses_a_port_it_would_drop(given):
    with pytest.raises(SettingsError, match="cmdeploy cannot use a port; add a Host entry"):
        cmdeploy_host(given)


def test_copy_script_is_checked_end_to_end_and_pins_the_key():
    script = commands.copy_script(
        DEFAULT_COPY_PATHS, host="10.0.0.2", port=2222, user="root",
        host_key_line="chatmail-migrate-new-host ssh-ed25519 AAAAkey",
    )  # fmt: skip
    assert script.startswith("set -euo pipefail")
    assert "tar c -" not in script and "--file=-" in script
    assert "--acls --xattrs" in script and "--format=posix" in script
    assert "StrictHostKeyChecking=yes" in script and "BatchMode=yes" in script
    assert "-p 2222 root@10.0.0.2" in script
    assert "'chatmail-migrate-new-host ssh-ed25519 AAAAkey'" in script
    assert "home/vmail/mail var/lib/acme etc/dkimkeys run/echobot" in script
    # A receiver left over from a dead attempt is stopped before this one writes.
    assert script.index("chatmail-migrate-receive.pid") < script.index("exec tar --extract")
    assert "rm -rf" not in script.split("|")[1].split("exec")[0]
    replacing = commands.copy_script(
        ["/home/vmail/mail"], host="h", port=22, user="root", host_key_line="k", replace=True
    )
    assert "rm -rf /home/vmail/mail; echo $$" in replacing


def test_service_problems():
    on = commands.parse_service_states(
        "postfix active enabled\ndovecot active enabled\npostfix-instance running\n"
    )
    assert commands.service_problems(on, want_running=True) == []
    assert len(commands.service_problems(on, want_running=False)) == 3
    dead = commands.parse_service_states(
        "postfix active enabled\ndovecot active enabled\npostfix-instance stopped\n"
    )
    assert commands.service_problems(dead, want_running=True) == [
        "the Postfix instance is not running (postfix status)"
    ]


def test_postfix_check_renames_are_expected():
    lines = [
        "postsuper: Renamed to match inode number: 1 message",
        "postsuper: warning: QUEUE FILE NAMES WERE CHANGED TO MATCH INODE NUMBERS",
        "postfix/postfix-script: warning: not owned by postfix: /var/spool/postfix/x",
    ]
    assert commands.postfix_check_problems(lines) == lines[2:]


def test_migrate_plans_the_steps_in_documented_order():
    assert plan(presync=False, staged=False) == STEPS
    assert plan(presync=True, staged=False) == ["presync", *STEPS]
    # relay >= 1.8: install before the downtime, the rest in the seed's order
    assert plan(presync=True, staged=True) == [
        "presync", "install", "disable-mail", "copy-data", "fix-ownership", "verify",
        "switch-dns", "enable-mail",
    ]  # fmt: skip
    assert set(migration.STEP_ACTIONS) == {"presync", *STEPS}
    assert steps.migrate.post == [] and steps.migrate.pre == []


def test_journal_resume_and_standing(relay: Path):
    s = resolve(context(), relay_dir=str(relay), new_host="new")
    journal = Journal.for_settings(s)
    journal.adopt_hosts(s)
    journal.record("disable-mail", 0, 1.0)
    journal.record("copy-data", 0, 2.0)
    again = Journal.for_settings(s)
    assert again.done_steps() == ["disable-mail", "copy-data"]
    assert again.next_step() == "install"
    assert "Mail is DOWN" in again.where_things_stand()
    with pytest.raises(SettingsError, match="records a migration with new host new"):
        again.check_hosts(resolve(context(), relay_dir=str(relay), new_host="other"))


def test_debian_mirror_from_apt_sources(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CHATMAIL_LAB_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    with pytest.raises(LabError, match="CHATMAIL_LAB_MIRROR"):
        debian_mirror(tmp_path)
    (tmp_path / "sources.list").write_text("deb http://other.invalid/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://other.invalid/debian"


def test_verify_compares_queues_by_content_and_skips_sockets():
    def entry(path, kind="f", size=10, mtime=1, digest="a"):
        return {"p": path, "t": kind, "m": 0o600, "s": size, "mt": mtime, "u": "postfix",
                "g": "postfix", "h": digest}  # fmt: skip

    old = {e["p"]: e for e in [
        entry("/var/spool/postfix/deferred/A/A1B2"),
        entry("/var/spool/postfix/public/pickup", kind="s"),
        entry("/home/vmail/mail/x/cur/m1", digest="m"),
    ]}  # fmt: skip
    renamed = {e["p"]: e for e in [
        entry("/var/spool/postfix/deferred/C/C3D4"),
        entry("/home/vmail/mail/x/cur/m1", digest="m"),
    ]}  # fmt: skip

    def listed(entries: dict) -> list[dict]:  # as a host lists them
        return sorted(entries.values(), key=lambda e: verify.path_key(e["p"]))

    assert verify.compare(listed(old), listed(renamed)).ok
    changed = dict(renamed)
    changed["/var/spool/postfix/deferred/C/C3D4"] = entry("/var/spool/postfix/deferred/C/C3D4",
                                                          digest="b")  # fmt: skip
    changed["/home/vmail/mail/x/cur/m1"] = entry("/home/vmail/mail/x/cur/m1", size=11, digest="m")
    report = verify.compare(listed(old), listed(changed))
    assert report.by_kind() == {"queue": 1, "size": 1}
    # Only on one side, wherever it falls in the order: missing or extra.
    gone = {p: e for p, e in renamed.items() if "/cur/" not in p}
    extra = {**renamed, "/home/vmail/mail/x/new/m9": entry("/home/vmail/mail/x/new/m9")}
    assert verify.compare(listed(old), listed(gone)).by_kind() == {"missing": 1}
    assert verify.compare(listed(old), listed(extra)).by_kind() == {"extra": 1}


def test_copy_progress_bar_on_terminal_and_lines_otherwise():
    import io

    from chatmail_migrate.progress import CopyProgress

    clock = iter([0.0, 1.0, 2.0, 5.0, 12.0, 13.0]).__next__
    plain = io.StringIO()
    p = CopyProgress(out=plain, tty=False, interval=10, clock=clock)
    for line in (
        "@chatmail-migrate total copy 1000000 100",
        "@chatmail-migrate progress copy 100000 10",  # t=1: no line yet (every 10 s)
        "@chatmail-migrate progress copy 200000 20",  # t=2
        "@chatmail-migrate progress copy 500000 50",  # t=5
        "@chatmail-migrate progress copy 900000 90",  # t=12: a line, with rate and ETA
        "@chatmail-migrate done copy 100",  # t=13
    ):
        assert p.feed(line)
    assert not p.feed("tar: something else")
    lines = plain.getvalue().splitlines()
    assert lines[0] == "  copy (tar): 1.0 MB in 100 entries (measured on the old host)"
    assert lines[1] == ("  copy (tar): 900.0 kB of 1.0 MB, 90 of 100 entries, 75.0 kB/s, ETA 0:01")
    assert lines[2] == "  copy (tar): done, 1.0 MB, 100 entries in 13.0s (76.9 kB/s)"
    assert "\r" not in plain.getvalue()
    assert p.summaries == [
        {"phase": "copy", "entries": 100, "bytes_total": 1000000, "bytes_sent": 1000000,
         "seconds": 13.0}
    ]  # fmt: skip

    term = io.StringIO()
    t = CopyProgress(out=term, tty=True, clock=iter([0.0, 2.0, 4.0]).__next__)
    t.feed("@chatmail-migrate total rsync 4000 4")
    t.feed("@chatmail-migrate progress rsync 2000 2")
    t.feed("@chatmail-migrate done rsync 3 2500")
    drawn = term.getvalue()
    assert "\r\x1b[K  [############------------]  50% mailboxes (rsync): 2.0 kB of 4.0 kB" in drawn
    assert "ETA 0:02 or less" in drawn
    assert "done, 3 entries updated (of 4), 2.5 kB of 4.0 kB in 4.0s" in drawn


def test_journal_takes_new_hosts_until_a_step_is_done(relay: Path):
    # A migrate to "first" stopped at preflight: nothing done, so "second" may replace it.
    journal = Journal.for_settings(resolve(context(), relay_dir=str(relay), new_host="first"))
    journal.adopt_hosts(resolve(context(), relay_dir=str(relay), new_host="first"))
    journal.adopt_hosts(resolve(context(), relay_dir=str(relay), new_host="second"))
    assert journal.new_host == "second"
    journal.record("disable-mail", 0, 1.0)
    journal.adopt_hosts(resolve(context(), relay_dir=str(relay), new_host="third"))
    assert journal.new_host == "second", "once a step is done the hosts are the journal's"
    journal.record_rollback()
    assert journal.new_host is None, "after a rollback another new host may come"
