"""Every ``$`` command in README.rst, run as written against the lab, so the README cannot rot.

The example addresses become lab hosts (13.37.13.37 → old, 13.12.23.42 → new);
nothing is ever sent to them. Commands are taken from the README itself: change
it, and these tests run the new text.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from chatmail_migrate.lab import Lab, SeedParams, nameserver
from tests.helpers import BIN, REPO, compare_trees, listing, mail_services
from tests.test_migrate import MAIL_ON

README = REPO / "README.rst"
EXAMPLE_OLD, EXAMPLE_NEW = "13.37.13.37", "13.12.23.42"

# Labs named by the README ("cmlab", "rehearse"): never two of these at once.
pytestmark = pytest.mark.xdist_group("readme")


def console_blocks() -> list[tuple[str, list[str]]]:
    """(section title, commands) of each ``code-block:: console``, in README order."""
    lines = README.read_text().splitlines()
    blocks, section = [], ""
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1]) and line.strip():
            section = line.strip()
        if line.strip() == ".. code-block:: console":
            commands = []
            for body in lines[i + 1 :]:
                if body.strip() and not body.startswith(" " * (len(line) - len(line.lstrip()) + 1)):
                    break
                if body.strip().startswith("$ "):
                    commands.append(body.strip()[2:])
            blocks.append((section, commands))
    return blocks


def commands_of(section: str) -> list[list[str]]:
    return [commands for title, commands in console_blocks() if title == section]


def as_lab(command: str, lab: Lab) -> str:
    return command.replace(EXAMPLE_OLD, lab.address("old")).replace(EXAMPLE_NEW, lab.address("new"))


def shell(command: str, *, env: dict, cwd: Path = REPO, timeout: int = 900):
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(f"$ {command} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def base_env(state_dir: Path, lab: Lab | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATMAIL", "CMDEPLOY"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", XDG_STATE_HOME=str(state_dir))
    # Never the system's resolver in tests: the lab's nameservers, or a closed port.
    env["CHATMAIL_MIGRATE_NAMESERVERS"] = "127.0.0.1:9"
    if lab:
        env.update(lab.env())
    return env


def test_readme_commands_are_all_run_here():
    handled = {
        "Set-up",
        "Try it: a rehearsal",
        "The day of the move",
        "Tasks",
        "Tests and benchmarks",
    }
    blocks = console_blocks()
    assert {title for title, _ in blocks} == handled
    assert sum(len(c) for _, c in blocks) >= 35
    assert all(commands for _, commands in blocks)


def test_setup_and_completion(tmp_path: Path):
    (setup, completion) = commands_of("Set-up")
    ci = (REPO / ".ci" / "run").read_text()
    assert setup == ["./bootstrap"] and "./bootstrap" in ci  # CI runs it on a fresh machine
    for line in completion:
        program = line.split("/")[-1].split()[0]
        result = shell(f"set -e; {line}; complete -p {program}", env=base_env(tmp_path))
        assert result.returncode == 0 and f"-F _complete_{program} {program}" in result.stdout


def test_the_test_command_is_what_ci_runs():
    (tests,), _ = commands_of("Tests and benchmarks")
    assert tests == ".venv/bin/invoke test"
    assert tests in (REPO / ".ci" / "run").read_text()  # this very run


@pytest.mark.benchmark
def test_benchmarks(lab_available, tmp_path: Path):
    # Run by hand (`invoke test --benchmarks`), not in CI: minutes of a whole lab each.
    _, (downtime, preflight_verify) = commands_of("Tests and benchmarks")
    result = shell(downtime, env=base_env(tmp_path), timeout=1200)
    assert "A: by hand" in result.stdout and "C: migrate --presync" in result.stdout
    # The figures, as the benchmark wrote them; it exits 1 exactly when one is missed
    # (at this tiny size the ratio targets, set for a real relay, may be).
    out = Path(shlex.split(downtime)[shlex.split(downtime).index("--out") + 1])
    found = json.loads(out.read_text())["targets"]
    missed = [target for target, t in found.items() if not t["met"]]
    assert result.returncode == (1 if missed else 0), result.stderr
    memory = found["tool peak memory < 100 MB"]
    assert memory["met"] and 0 < memory["value"] < 100, memory
    result = shell(preflight_verify, env=base_env(tmp_path), timeout=1200)
    assert result.returncode == 0, result.stderr
    assert "preflight" in result.stdout and "--checksum" in result.stdout


def test_rehearsal_and_driving_the_lab(lab_available, tmp_path: Path):
    (rehearse,), lab_block = commands_of("Try it: a rehearsal")
    result = shell(rehearse, env=base_env(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cmdeploy LAB STAND-IN" in out
    assert "(as the operator) relay.lab.example A →" in out
    assert "[7/8] enable-mail done in" in out
    assert "no differences" in out and "content (sha256)" in out
    assert "rehearse: mail was down for" in out and "rehearse: PASSED" in out
    # migrate's check-relay, summed up; then Delta Chat users on new, after the move.
    assert "check-relay passed" in out
    [summary] = [line for line in out.splitlines() if line.startswith("rehearse: check-relay: ")]
    assert re.fullmatch(r"rehearse: check-relay: [1-9]\d* PASS, \d+ WARN, 0 FAIL", summary)
    assert "rehearse: Delta Chat: alice and bob chat on old; a message waits for bob" in out
    assert (
        "rehearse: Delta Chat: the message that waited on old for bob, offline, read on new; "
        "alice's 1 message(s) after the move delivered once, DKIM-signed with the key DNS "
        "publishes; bob's reply delivered" in out
    )
    assert out.index("check-relay passed") < out.index("rehearse: Delta Chat: the message")
    assert Lab.load("rehearse") is None, "the rehearsal's lab is taken down"
    stale = Lab.load("cmlab")
    if stale:
        stale.down()
    try:
        result = shell("set -e\n" + "\n".join(lab_block), env=base_env(tmp_path))
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "[1/9] presync done" in out and "CMDEPLOY_STAGES=activate" in out
        assert re.search(r"\[8/9\] enable-mail +done 20", out)  # status, from the journal
    finally:
        stale = Lab.load("cmlab")
        if stale:
            stale.down()


def _interactive(command: str, *, env: dict, cwd: Path, answer) -> tuple[int, str]:
    """Run ``command`` on a terminal; ``answer(output)`` returns what to type, or None."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        ["bash", "-c", command], cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            output += data
            reply = answer(output.decode(errors="replace"))
            if reply:
                os.write(leader, reply.encode())
        elif proc.poll() is not None:
            break
    os.close(leader)
    text = output.decode(errors="replace")
    print(f"$ {command}\n{text}")
    return proc.wait(timeout=60), text


def test_day_of_the_move(make_lab, tmp_path: Path):
    (preflight,), (migrate, status) = commands_of("The day of the move")
    lab = make_lab(seed=SeedParams(accounts=30, messages=5, version="1.10.0"))
    before = listing(lab, "old")
    env = base_env(tmp_path, lab)
    env.pop("CHATMAIL_RELAY_DIR")  # the operator works from the relay checkout
    result = shell(as_lab(preflight, lab), env=env, cwd=lab.relay_dir)
    assert result.returncode == 0, result.stdout
    assert "PASS  DNS TTL" in result.stdout and "FAIL" not in result.stdout

    typed = []

    def operator(output: str) -> str | None:
        """Answer the tool's two questions, as the operator would."""
        if "Type 'done'" in output and "done" not in typed:
            nameserver.update(lab, a=[lab.address("new")])  # the operator changes DNS
            typed.append("done")
            return "done\n"
        if "holds the old host's key" in output and "y" not in typed:
            typed.append("y")  # replace the domain's key in known_hosts
            return "y\n"
        return None

    code, out = _interactive(as_lab(migrate, lab), env=env, cwd=lab.relay_dir, answer=operator)
    assert code == 0, out
    assert typed == ["done", "y"] and "all 2 nameservers answer the new values" in out
    assert f"known_hosts: {lab.domain} now names only the new host's key" in out
    assert "\x1b[32mPASS\x1b[0m" in out  # colour on a terminal
    assert compare_trees(before, listing(lab, "new")) == []
    assert mail_services(lab, "new") == MAIL_ON
    result = shell(as_lab(status, lab), env=env, cwd=lab.relay_dir)
    assert result.returncode == 0 and "report:" in result.stdout


def test_tasks_by_hand(make_lab, tmp_path: Path):
    (commands,) = commands_of("Tasks")
    lab = make_lab(seed=SeedParams(accounts=8, messages=3))
    before = listing(lab, "old")
    env = base_env(tmp_path, lab)
    for command in commands:
        if "switch-dns" in command:
            nameserver.update(lab, a=[lab.address("new")])  # changed before --yes
        if " migrate " in command and "--dry" not in command:
            # After the rollbacks, as the tool says: DNS points back at the old host.
            nameserver.update(lab, a=[lab.address("old")])
        result = shell(as_lab(command, lab), env=env)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    assert compare_trees(before, listing(lab, "new")) == []
    assert mail_services(lab, "new") == MAIL_ON
