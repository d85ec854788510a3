"""invoke rehearse: a whole migration on the lab, from one command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatmail_migrate.lab import Lab, LabError, deltachat_users
from chatmail_migrate.lab.rehearse import _chatting

from .helpers import BIN, REPO, lab_name


def test_rehearse_runs_a_whole_migration_and_cleans_up(lab_available, tmp_path: Path):
    # Its own lab name: the README's rehearsal (test_readme) uses the default one.
    name = lab_name("rehrs")
    result = subprocess.run(
        [str(BIN / "invoke"), "rehearse", "--name", name, "--accounts", "20", "--messages", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    out = result.stdout
    assert "cmdeploy LAB STAND-IN" in out
    assert "(as the operator) relay.lab.example A →" in out
    assert "[7/7] enable-mail done in" in out
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
    assert Lab.load(name) is None, "the rehearsal's lab is taken down"


def test_rehearsal_fails_when_the_delta_chat_exchange_fails(capsys):
    def broken():
        raise LabError("Delta Chat: nothing came in 60s")

    assert _chatting(broken) is None
    assert _chatting(lambda: "shown") == "shown"
    assert capsys.readouterr().out == "rehearse: Delta Chat FAILED: nothing came in 60s\n"


def test_rehearsal_without_delta_chat_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "deltachat_rpc_client", None)  # import fails
    with pytest.raises(LabError, match=r"deltachat-rpc-client\) is missing: run ./bootstrap"):
        deltachat_users.require()
    monkeypatch.undo()
    monkeypatch.setattr(deltachat_users, "rpc_server", lambda: Path("/nonexistent/rpc-server"))
    with pytest.raises(LabError, match="/nonexistent/rpc-server is missing: run ./bootstrap"):
        deltachat_users.require()
