"""The command-line surface: listings, help, dry runs and bad input (no lab needed)."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from chatmail_migrate.journal import Journal
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
    from chatmail_migrate.cli.collection import migration_collection

    helped = run("chatmail-migrate", "--help", "copy-data", cwd=Path("/"))
    assert helped.returncode == 0
    flags = [f"--{arg.names[0]}" for arg in arguments(migration_collection()["copy-data"])]
    assert "--new-host" in flags
    assert all(flag in helped.stdout for flag in flags), flags


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
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    assert not (tmp_path / "state").exists(), "a dry run writes no journal"


@pytest.mark.parametrize(
    "args, fix",
    [
        (["migrate"], "--new-host"),
        (["migrate", "--old-host", "a.example", "--new-host", "a.example"], "--new-host"),
        (["copy-data", "--old-host", "a.example"], "--new-host"),
        (["migrate", "--new-host", "b", "--relay-dir", "/nonexistent"], "--relay-dir"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, relay_dir: Path, args, fix):
    result = run("invoke", *args, env=cli_env(tmp_path, relay_dir))
    assert result.returncode == 2
    assert fix in result.stderr  # the flag that fixes it
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_missing_cmdeploy_is_reported_before_anything_runs(tmp_path: Path, relay_dir: Path):
    env = cli_env(tmp_path, relay_dir)
    env.pop("CMDEPLOY")
    result = run("invoke", "migrate", "--new-host", "b.example", env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(relay_dir / "scripts" / "cmdeploy") in result.stderr  # the program looked for
    assert not (tmp_path / "state").exists(), "refused before the journal is made"


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connecting there is refused


@pytest.mark.parametrize(
    "args, code, named",
    [
        # What is named: the value refused, or where to fix it.
        (["migrate", "--new-host=-oProxyCommand=x"], 2, "'-oProxyCommand=x'"),
        (["migrate", "--new-host", "bad host"], 2, "'bad host'"),
        (["migrate", "--new-host", "b.example", "--bogus"], 1, "--bogus"),
        # cmdeploy would drop the port and reach port 22, maybe another machine.
        (["migrate", "--new-host", "b.example:2222"], 2, "~/.ssh/config"),
        (["disable-mail", "--old-host", "[2001:db8::1]:2222"], 2, "~/.ssh/config"),
        (["copy-data", "--new-host", "b.example:70000"], 2, "'b.example:70000'"),
        (["switch-dns", "--new-address", "new.example"], 2, "--new-address"),
    ],
)
def test_malformed_input_is_refused(tmp_path: Path, relay_dir: Path, args, code, named):
    result = run("invoke", *args, env=cli_env(tmp_path, relay_dir))
    assert result.returncode == code
    assert named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == "" and not (tmp_path / "state").exists(), "nothing ran"


def test_chatmail_ini_without_mail_domain(tmp_path: Path, relay_dir: Path):
    (relay_dir / "chatmail.ini").write_text("[params]\nmax_user_send_per_minute = 60\n")
    result = run("invoke", "migrate", "--new-host", "b.example", env=cli_env(tmp_path, relay_dir))
    assert result.returncode == 2
    assert "mail_domain" in result.stderr  # the setting to add
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()


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
    recorded = journal.read_bytes()
    result = run(
        "invoke",
        "migrate",
        "--old-host",
        "a.example",
        "--new-host",
        "c.example",
        env=cli_env(tmp_path, relay_dir),
    )
    assert result.returncode == 2
    assert "--restart" in result.stderr  # the way to begin anew
    assert len(result.stderr.strip().splitlines()) == 1
    assert journal.read_bytes() == recorded, "the other migration's journal is left as it was"
    assert Journal.load(journal).new_host == "b.example"


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
    silent.close()
    assert result.returncode == 1
    verdicts = {
        name: status
        for status, name in re.findall(r"^(PASS|WARN|FAIL)  ([^:]+): ", result.stdout, re.M)
    }
    failed = {"cmdeploy", "ssh-agent", "ssh to old", "ssh to new"}
    assert {n for n, status in verdicts.items() if status == "FAIL"} == failed, verdicts
    assert len(result.stderr.strip().splitlines()) == 1
    # Nothing may run after a failed preflight: no step began, only cmdeploy --help ran.
    state = tmp_path / "state" / "chatmail-migrate"
    journal = Journal.load(state / "dry.example.org.json")
    assert journal.steps == {} and not any(e.get("event") == "started" for e in journal.events)
    ran = [
        line.split(" $ ", 1)[1]
        for line in (state / "dry.example.org.log").read_text().splitlines()
        if " $ " in line
    ]
    assert ran == ["false --help"]


def test_unexpected_errors_are_one_line_unless_debug(tmp_path: Path):
    relay = tmp_path / "relay"
    relay.mkdir()
    (relay / "chatmail.ini").write_text("[params]\nmail_domain = c.example\n")
    journal = tmp_path / "state" / "chatmail-migrate" / "c.example.json"
    journal.parent.mkdir(parents=True)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("CHATMAIL_MIGRATE_DEBUG", None)

    # A journal the tool cannot read: one line naming the file to fix, the file kept.
    for text in ("{not json", "[]"):  # not JSON; valid JSON of the wrong shape
        journal.write_text(text)
        broken = run("invoke", "status", "--relay-dir", str(relay), env=env)
        assert broken.returncode == 2, text
        lines = broken.stderr.strip().splitlines()
        assert len(lines) == 1 and str(journal) in lines[0], text
        assert journal.read_text() == text

    # A journal whose failure lacks what the tool wrote there: nothing it expects.
    journal.write_text(
        '{"mail_domain": "c.example", "plan": ["copy-data"], "events": [{"event": "failed"}]}'
    )
    plain = run("invoke", "status", "--relay-dir", str(relay), env=env)
    assert plain.returncode == 1
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in plain.stderr
    assert "--debug" in lines[0]  # the flag that shows the traceback
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


def arguments(task) -> list:
    """A task's arguments, leaving the task as it was: Invoke's get_arguments() pops
    each help text it hands out, so a second call anywhere in the process (another
    test) sees flags without help."""
    clone = copy.copy(task)
    clone.help = dict(task.help)
    return clone.get_arguments()


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
            for arg in arguments(t):
                assert "Example:" in (arg.help or ""), f"{t.name} --{arg.name}"
                checked += 1
    assert checked > 60


def test_each_task_takes_exactly_its_declared_flags_and_the_readme_lists_them():
    from chatmail_migrate.cli import flags
    from chatmail_migrate.cli.collection import migration_collection

    ns = migration_collection()
    for name in ns.task_names:
        task = ns[name]
        declared = {flag.name for flag in flags.flags_of(name)}
        assert {arg.name for arg in arguments(task)} == declared, name
    assert all(flag.help.count("Example:") == 1 for flag in flags.FLAGS)
    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    table = readme[readme.index("\nSettings\n") : readme.index("\nThe journal, the log")]
    for flag in flags.FLAGS:
        assert f"``{flag.option}``" in (table if flag.setting else readme), flag.option
    assert {f"--{o}" for o in re.findall(r"``--([a-z-]+)``", table)} - {
        flag.option for flag in flags.FLAGS
    } <= {"--debug"}


def test_only_the_flags_given_reach_the_settings():
    from chatmail_migrate.cli.flags import settings_from

    given = {"old_host": None, "new_host": "new", "wait": True, "presync": False}
    assert settings_from(given) == {"new_host": "new"}
    given = {"wait": False, "presync": True, "nameserver": "192.0.2.53", "restart": True}
    assert settings_from(given) == {"dns_wait": False, "presync": True, "nameservers": "192.0.2.53"}
