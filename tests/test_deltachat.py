"""Delta Chat, the app chatmail relays serve, across a move with ``--presync``: a real
Delta Chat core (deltachat-rpc-server, offline: it talks only to the lab's hosts)
keeps two users chatting, end-to-end encrypted, before and after ``migrate``. A
message that waited for an offline user on old, and one sent while the migration
ran, reach him from new, each once; the same accounts with the same passwords log
in on new, and what is sent there is signed with the relay's published DKIM key.

The helpers (profiles with explicit lab servers and relaxed certificate checks, for
the lab only; following DNS) are the rehearsal's too: chatmail_migrate.lab.deltachat_users.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from chatmail_migrate.lab import SeedParams
from chatmail_migrate.lab.deltachat_users import (
    OUT_DELIVERED,
    address,
    chat_on_new,
    chat_on_old,
    delivered,
    delta_chat,
    message_id,
    password,
    raw_message,
)
from tests.helpers import run_tool_with_fault

# The core's MessageState of a message still in the app (OUT_DELIVERED: the relay took it).
OUT_PENDING = 20

# Where in the migration Alice writes, and what that proves:
CASES = {
    # 1.7 deploys whole with mail off on old: her app cannot reach the relay, keeps
    # the message, and sends it to new once it follows DNS.
    "1.7.0-written-while-mail-is-down": ("1.7.0", "disable-mail done in"),
    # 1.10 installs new while old serves: the message lands in Bob's mailbox on old
    # after the pre-sync copied it, so only the final copy can carry it.
    "1.10.0-delivered-after-the-presync": ("1.10.0", "presync done in"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_delta_chat_users_keep_chatting_across_a_presync_move(make_lab, tmp_path: Path, case):
    version, moment = CASES[case]
    lab = make_lab(seed=SeedParams(accounts=2, messages=1, version=version))
    during = f"written during the migration ({case})"
    with delta_chat(tmp_path / "deltachat") as dc:
        # They chat on old; Bob goes offline and a message waits for him there.
        users = chat_on_old(lab, dc)
        alice, bob = users.alice, users.bob
        alice.start_io()
        written = []

        def write(proc) -> None:
            if moment == "presync done in":
                # The tool waits (stopped) until the message is in Bob's INBOX on old,
                # so it lands between the pre-sync and mail going down, whatever the
                # timing.
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    written.append(alice.create_chat(bob).send_text(during))
                    delivered(alice, written[0])
                    mid = message_id(written[0])
                    raw_message(lab, "old", address(bob), password("bob000001"), mid)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
            else:
                written.append(alice.create_chat(bob).send_text(during))

        code, out = run_tool_with_fault(
            lab,
            [
                "migrate",
                "--old-host",
                "old",
                "--new-host",
                "new",
                "--presync",
                "--yes",
                "--no-wait",
            ],
            state_dir=tmp_path,
            when=moment,
            fault=write,
        )
        assert code == 0, out
        assert "check-relay passed" in out
        state = written[0].get_snapshot().state
        assert state == (OUT_DELIVERED if moment == "presync done in" else OUT_PENDING), state

        # On new: Bob reads both, each once, after the earlier ones; what Alice sent
        # there is signed with the relay's published key; they keep chatting.
        chat_on_new(lab, users, during=written[0])
        # The accounts the app made at its first login on old are on new.
        accounts = lab.ssh("new", f"ls /home/vmail/mail/{lab.domain}").stdout.split()
        assert {address(alice), address(bob)} <= set(accounts)
