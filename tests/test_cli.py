"""The command-line surface: listings, help, dry runs and bad input (no lab needed)."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from chatmail_migrate.lab.lab_state import standin_command
from tests.helpers import BIN, REPO

MIGRATION_TASKS = sorted(
    [
        "disable-mail",
        "copy-data",
        "install",
        "fix-ownership",
        "verify",
        "switch-dns",
        "enable-mail",
        "check-relay",
        "preflight",
        "presync",
        "rollback",
        "migrate",
        "status",
    ]
)


def run(tool: str, *args: str, cwd: Path = REPO, env: dict | None = None):
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def listed(output: str) -> list[str]:
    return re.findall(r"^  ([a-z][\w.-]*)\s", output, re.M)


def test_fab_and_invoke_list_the_same_migration_tasks():
    fab, inv = run("fab", "--list"), run("invoke", "--list")
    assert fab.returncode == inv.returncode == 0
    assert listed(fab.stdout) == MIGRATION_TASKS
    assert [t for t in listed(inv.stdout) if t in MIGRATION_TASKS] == MIGRATION_TASKS
    assert {"lab.up", "lab.down", "lab.status", "lab.seed", "test"} <= set(listed(inv.stdout))


def test_console_script_works_from_root():
    result = run("chatmail-migrate", "--list", cwd=Path("/"))
    assert result.returncode == 0
    assert listed(result.stdout) == MIGRATION_TASKS
    helped = run("chatmail-migrate", "--help", "copy-data", cwd=Path("/"))
    assert "--new-host" in helped.stdout and "agent forwarded" in helped.stdout


@pytest.fixture
def relay_dir(tmp_path: Path) -> Path:
    relay = tmp_path / "relay"
    relay.mkdir()
    (relay / "chatmail.ini").write_text("[params]\nmail_domain = dry.example.org\n")
    return relay


def cli_env(tmp_path: Path, relay: Path, ssh_config: Path | None = None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATMAIL", "CMDEPLOY"))}
    env.update(
        XDG_STATE_HOME=str(tmp_path / "state"),
        CHATMAIL_RELAY_DIR=str(relay),
        CMDEPLOY=standin_command(),
        # Never the system's resolver in tests: a closed port on loopback.
        CHATMAIL_MIGRATE_NAMESERVERS="127.0.0.1:9",
    )
    if ssh_config:
        env["CHATMAIL_MIGRATE_SSH_CONFIG"] = str(ssh_config)
    return env


def test_dry_run_prints_every_command_and_connects_nowhere(tmp_path: Path, relay_dir: Path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    config = tmp_path / "ssh_config"
    config.write_text(f"Host dry-old dry-new\n  HostName 127.0.0.1\n  Port {port}\n  User root\n")
    env = cli_env(tmp_path, relay_dir, config)
    result = run(
        "invoke", "--dry", "migrate", "--old-host", "dry-old", "--new-host", "dry-new", env=env
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "run --disable-mail --ssh-host dry-old" in out
    assert "run --disable-mail --ssh-host dry-new" in out
    assert "run --ssh-host dry-new" in out
    assert "[old: dry-old] (agent forwarded) $ systemd-run --unit=chatmail-migrate-copy-" in out
    assert "tar --create" in out
    assert "set -euo pipefail" in out
    assert "[new: dry-new] $ bash" in out and "chown -R vmail: /home/vmail/mail" in out
    assert "systemctl is-active postfix" in out
    assert "dry run: nothing was changed" in out
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    assert not (tmp_path / "state").exists(), "a dry run writes no journal"


@pytest.mark.parametrize(
    "args, message",
    [
        (["migrate"], "no new host: give --new-host"),
        (["migrate", "--old-host", "a.example", "--new-host", "a.example"], "old and new host"),
        (["copy-data", "--old-host", "a.example"], "no new host"),
        (["migrate", "--new-host", "b", "--relay-dir", "/nonexistent"], "holds no chatmail.ini"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, relay_dir: Path, args, message):
    result = run("invoke", *args, env=cli_env(tmp_path, relay_dir))
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_missing_cmdeploy_is_reported_before_anything_runs(tmp_path: Path, relay_dir: Path):
    env = cli_env(tmp_path, relay_dir)
    env.pop("CMDEPLOY")
    result = run("invoke", "migrate", "--new-host", "b.example", env=env)
    assert result.returncode != 0
    assert "scripts/cmdeploy" in result.stderr and "not found" in result.stderr


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connecting there is refused


@pytest.mark.parametrize(
    "args, message",
    [
        (["migrate", "--new-host=-oProxyCommand=x"], "is not a host name or address"),
        (["migrate", "--new-host", "bad host"], "is not a host name or address"),
        (["migrate", "--new-host", "b.example", "--bogus"], "No idea what '--bogus' is"),
        # cmdeploy would drop the port and reach port 22, maybe another machine.
        (["migrate", "--new-host", "b.example:2222"], "b.example:2222: cmdeploy cannot use a port"),
        (["disable-mail", "--old-host", "[2001:db8::1]:2222"], "cmdeploy cannot use a port"),
        (["copy-data", "--new-host", "b.example:70000"], "the port must be 1-65535"),
        (["switch-dns", "--new-address", "new.example"], "is not an IP address"),
    ],
)
def test_malformed_input_is_refused(tmp_path: Path, relay_dir: Path, args, message):
    result = run("invoke", *args, env=cli_env(tmp_path, relay_dir))
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_chatmail_ini_without_mail_domain(tmp_path: Path, relay_dir: Path):
    (relay_dir / "chatmail.ini").write_text("[params]\nmax_user_send_per_minute = 60\n")
    result = run("invoke", "migrate", "--new-host", "b.example", env=cli_env(tmp_path, relay_dir))
    assert result.returncode != 0
    assert "no [params] mail_domain" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_journal_of_another_migration_is_refused(tmp_path: Path, relay_dir: Path):
    journal = tmp_path / "state" / "chatmail-migrate" / "dry.example.org.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(
        json.dumps(
            {
                "mail_domain": "dry.example.org",
                "old_host": "a.example",
                "new_host": "b.example",
                "steps": {"disable-mail": {"finished": "x", "seconds": 1, "started_ts": 0}},
            }
        )
    )
    result = run(
        "invoke",
        "migrate",
        "--old-host",
        "a.example",
        "--new-host",
        "c.example",
        env=cli_env(tmp_path, relay_dir),
    )
    assert result.returncode != 0
    assert "records a migration with new host b.example, not c.example" in result.stderr
    assert "--restart" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_hosts_and_failing_cmdeploy_fail_preflight(tmp_path: Path, relay_dir: Path):
    silent = socket.socket()  # accepts connections, never says a word: a timeout
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host silent\n  HostName 127.0.0.1\n  Port {silent.getsockname()[1]}\n"
        f"Host closed\n  HostName 127.0.0.1\n  Port {_refused_port()}\n"
    )
    env = cli_env(tmp_path, relay_dir, config)
    env["INVOKE_CHATMAIL_MIGRATE_CONNECT_TIMEOUT"] = "2"
    env["CMDEPLOY"] = "false"
    env.pop("SSH_AUTH_SOCK", None)
    result = run("invoke", "migrate", "--old-host", "silent", "--new-host", "closed", env=env)
    out = result.stdout
    assert result.returncode != 0
    assert "FAIL  cmdeploy: `false --help` exited 1" in out
    assert "FAIL  ssh-agent: no agent" in out
    assert "FAIL  ssh to old: silent did not answer in time (timed out)" in out
    assert "FAIL  ssh to new: closed refused the connection" in out
    assert result.stderr.startswith("preflight: 4 check(s) failed, nothing was changed")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "[1/7]" not in out, "nothing may run after a failed preflight"
    silent.close()


def test_unexpected_errors_are_one_line_unless_debug(tmp_path: Path):
    relay = tmp_path / "relay"
    relay.mkdir()
    (relay / "chatmail.ini").write_text("[params]\nmail_domain = c.example\n")
    journal = tmp_path / "state" / "chatmail-migrate" / "c.example.json"
    journal.parent.mkdir(parents=True)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("CHATMAIL_MIGRATE_DEBUG", None)

    journal.write_text("{not json")
    broken = run("invoke", "status", "--relay-dir", str(relay), env=env)
    assert broken.returncode == 2
    assert broken.stderr.strip().splitlines() == [
        f"error: journal {journal} is not valid JSON (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)): fix it, or move it away to start anew"
    ]

    journal.write_text("[]")  # valid JSON of the wrong shape: named in one line too
    shaped = run("invoke", "status", "--relay-dir", str(relay), env=env)
    assert shaped.returncode == 2
    assert shaped.stderr.strip().splitlines() == [
        f"error: journal {journal} holds a list, not an object: it is not a chatmail-migrate "
        "journal; fix it, or move it away to start anew"
    ]

    # A journal whose failure lacks what the tool wrote there: nothing it expects.
    journal.write_text('{"mail_domain": "c.example", "events": [{"event": "failed"}]}')
    plain = run("invoke", "status", "--relay-dir", str(relay), env=env)
    assert plain.returncode == 1
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected ")
    assert "--debug shows the traceback" in lines[0]
    debug = run("invoke", "--debug", "status", "--relay-dir", str(relay), env=env)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    from chatmail_migrate.output import paint

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert paint("PASS", "green", Terminal()) == "\033[32mPASS\033[0m"
    assert paint("PASS", "green", io.StringIO()) == "PASS"
    monkeypatch.setenv("NO_COLOR", "1")
    assert paint("PASS", "green", Terminal()) == "PASS"


def test_shell_completion_knows_the_tasks():
    for tool in ("invoke", "fab"):
        script = run(tool, "--print-completion-script", "bash")
        assert script.returncode == 0 and "complete -F" in script.stdout
    completed = run("invoke", "--complete", "--", "invoke", "pre")
    assert {"preflight", "presync"} <= set(completed.stdout.split())
    completed = run("fab", "--complete", "--", "fab", "mig")
    assert "migrate" in completed.stdout.split()
    completed = run("chatmail-migrate", "--complete", "--", "chatmail-migrate", "re")
    assert {"rollback"} <= set(completed.stdout.split())


def test_every_flag_of_every_task_is_explained_with_an_example():
    from invoke import Collection

    from chatmail_migrate.cli.collection import migration_collection
    from chatmail_migrate.lab.tasks import ns as lab_collection
    from chatmail_migrate.lab.tasks import rehearse

    def tasks(collection: Collection):
        yield from collection.tasks.values()
        for sub in collection.collections.values():
            yield from tasks(sub)

    checked = 0
    for collection in (migration_collection(), lab_collection, Collection(rehearse)):
        for t in tasks(collection):
            for arg in t.get_arguments():
                assert "Example:" in (arg.help or ""), f"{t.name} --{arg.name}"
                checked += 1
    assert checked > 60
