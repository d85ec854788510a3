"""invoke rehearse: how it reports a failed Delta Chat exchange and a missing core.

The rehearsal itself runs in test_readme, as the README gives it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chatmail_migrate.lab import LabError, deltachat_users
from chatmail_migrate.lab.rehearse import _chatting


def test_rehearsal_fails_when_the_delta_chat_exchange_fails(capsys):
    def broken():
        raise LabError("Delta Chat: nothing came in 60s")

    assert _chatting(broken) is None
    said = capsys.readouterr().out
    assert len(said.splitlines()) == 1 and "nothing came in 60s" in said  # why, in one line
    assert _chatting(lambda: "shown") == "shown"
    assert capsys.readouterr().out == "", "a part that works says nothing"


def test_rehearsal_without_delta_chat_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "deltachat_rpc_client", None)  # import fails
    monkeypatch.setattr(deltachat_users, "rpc_server", lambda: Path(sys.executable))  # a file
    with pytest.raises(LabError, match=r"\./bootstrap"):  # what installs it
        deltachat_users.require()
    monkeypatch.undo()
    monkeypatch.setattr(deltachat_users, "rpc_server", lambda: Path("/nonexistent/rpc-server"))
    with pytest.raises(LabError, match="/nonexistent/rpc-server"):  # the program missing
        deltachat_users.require()
