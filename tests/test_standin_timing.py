"""The cmdeploy stand-in's duration knob and run log (CHATMAIL_LAB_CMDEPLOY_SECONDS,
CHATMAIL_LAB_CMDEPLOY_LOG), without a lab: its logins and DNS check answer at once,
and "the host" is a local shell that notes when the deploy reached it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from chatmail_migrate.lab import cmdeploy_standin


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run the stand-in from a relay checkout in ``tmp_path`` (no git tag: relay 1.7);
    returns (run, arrivals): ``run(*args)`` its exit code, ``arrivals()`` the epoch
    times at which each run's deploy script reached the host."""
    (tmp_path / "chatmail.ini").write_text("[params]\nmail_domain = relay.lab.example\n")
    arrived = tmp_path / "arrived"
    done = subprocess.CompletedProcess([], 0, stdout="invite\n", stderr="")
    monkeypatch.setattr(cmdeploy_standin, "login_to_domain", lambda *_: done)
    monkeypatch.setattr(cmdeploy_standin, "login_to_ssh_host", lambda *_: done)
    monkeypatch.setattr(cmdeploy_standin, "check_dns", lambda *_: True)
    # "ssh ... root@HOST 'sh -s'" becomes a shell that writes down the time the
    # script arrived (root@HOST and "sh -s" land in its unused $1 and $2).
    host = 'date +%s.%N >> "$0"; cat > /dev/null'
    monkeypatch.setattr(cmdeploy_standin, "pyinfra_ssh", lambda: ["sh", "-c", host, str(arrived)])
    monkeypatch.chdir(tmp_path)
    for name in ("CMDEPLOY_STAGES", "CHATMAIL_LAB_CMDEPLOY_FAIL"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> int:
        return cmdeploy_standin.main(["run", *args])

    def arrivals() -> list[float]:
        return [float(t) for t in arrived.read_text().split()] if arrived.exists() else []

    return run, arrivals


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_run_spends_the_knobs_seconds_before_its_deploy_reaches_the_host(
    standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run, arrivals = standin
    log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("CHATMAIL_LAB_CMDEPLOY_LOG", str(log))
    monkeypatch.setenv("CHATMAIL_LAB_CMDEPLOY_SECONDS", "1.5")
    monkeypatch.setenv("CMDEPLOY_STAGES", "install,configure")
    assert run("--disable-mail", "--ssh-host", "old") == 0
    monkeypatch.setenv("CHATMAIL_LAB_CMDEPLOY_SECONDS", "0")
    monkeypatch.delenv("CMDEPLOY_STAGES")
    assert run("--ssh-host", "new") == 0

    slow, fast = log_lines(log)
    first, second = arrivals()
    # The knob's time passes before anything reaches the host, and only with the knob.
    assert first - slow["start"] >= 1.5
    assert slow["end"] >= first
    assert second - fast["start"] < 1.0
    assert fast["start"] >= slow["end"]
    assert {k: slow[k] for k in ("ssh_host", "release", "disable_mail", "cmdeploy_stages")} == {
        "ssh_host": "old",
        "release": "1.7.0",
        "disable_mail": True,
        "cmdeploy_stages": "install,configure",
    }
    assert (slow["exit"], slow["modelled_seconds"]) == (0, 1.5)
    assert {k: fast[k] for k in ("ssh_host", "disable_mail", "cmdeploy_stages", "exit")} == {
        "ssh_host": "new",
        "disable_mail": False,
        "cmdeploy_stages": None,
        "exit": 0,
    }


def test_a_failed_run_is_logged_too_and_without_the_log_nothing_is_written(
    standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run, arrivals = standin
    log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("CHATMAIL_LAB_CMDEPLOY_SECONDS", "0")
    monkeypatch.setenv("CHATMAIL_LAB_CMDEPLOY_FAIL", "before")
    assert run("--ssh-host", "new") == 1
    assert not log.exists()
    monkeypatch.setenv("CHATMAIL_LAB_CMDEPLOY_LOG", str(log))
    assert run("--ssh-host", "new") == 1
    [failed] = log_lines(log)
    assert (failed["exit"], failed["ssh_host"]) == (1, "new")
    assert failed["end"] >= failed["start"]
    assert arrivals() == [], "a run failing before its deploy sends nothing"


def test_a_knob_that_is_not_a_number_of_seconds_stops_the_run(
    standin, monkeypatch: pytest.MonkeyPatch
):
    run, arrivals = standin
    for value in ("soon", "-1"):
        monkeypatch.setenv("CHATMAIL_LAB_CMDEPLOY_SECONDS", value)
        with pytest.raises(SystemExit):
            run("--ssh-host", "new")
    assert arrivals() == []
