"""Delta Chat, the app chatmail relays serve, across a move: a real Delta Chat core
(deltachat-rpc-server, offline: it talks only to the lab's hosts) keeps two users
chatting, end-to-end encrypted, before and after ``migrate``, and a message that
waited for an offline user on old reaches them from new, once.

The core is configured with explicit servers, the hosts' lab addresses (clients
reach lab hosts by address only), and accepts the lab's self-signed certificates:
for the lab only. Clients follow DNS to the new host; here their servers are
changed to new's address, as the switched A record does for real clients.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

from deltachat_rpc_client import Account, DeltaChat, EventType, Rpc

from chatmail_migrate.lab import SeedParams

from .helpers import BIN, run_tool


def transport(addr: str, password: str, host: str) -> dict:
    """The relay's ports with TLS from the first byte, at a lab address."""
    return {
        "addr": addr, "password": password,
        "imapServer": host, "imapPort": 993, "imapSecurity": "ssl",
        "smtpServer": host, "smtpPort": 465, "smtpSecurity": "ssl",
        "certificateChecks": "acceptInvalidCertificates",  # lab only: self-signed
    }  # fmt: skip


def profile(dc: DeltaChat, name: str, domain: str, host: str) -> Account:
    """A new profile whose first login creates its account, as chatmail's apps do."""
    account = dc.add_account()
    account.set_config("displayname", name)
    account.add_or_update_transport(transport(f"{name}@{domain}", f"{name}-secret", host))
    account.bring_online()
    return account


def follow_dns(account: Account, host: str) -> None:
    """The app reaches the relay at its new address (the switched A record). Only
    started: bring_online would drop the events of what arrives meanwhile."""
    [current] = account.list_transports()
    account.add_or_update_transport({**current, "imapServer": host, "smtpServer": host})
    account.start_io()


def texts_from(account: Account, sender: Account) -> list[str]:
    chat = account.create_chat(sender)
    return [
        m.get_snapshot().text
        for m in chat.get_messages()
        if m.get_snapshot().from_id == chat.get_contacts()[0].id
    ]


def within(seconds: float, wait: Callable):
    """``wait()``'s result, or a failure after ``seconds``: the core's waits block
    forever, and a message that never comes must fail the test, not hang it."""
    result: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: result.put(wait()), daemon=True).start()
    try:
        return result.get(timeout=seconds)
    except queue.Empty:
        raise AssertionError(f"nothing came in {seconds}s") from None


def receive(account: Account, text: str) -> None:
    message = within(60, account.wait_for_incoming_msg).get_snapshot()
    assert message.text == text
    assert message.show_padlock, "end-to-end encrypted"


def delivered(account: Account, message) -> None:
    """Wait until the relay took ``message`` from the sender's core."""

    def wait():
        while account.wait_for_event(EventType.MSG_DELIVERED).msg_id != message.id:
            pass

    within(60, wait)


def test_delta_chat_users_keep_chatting_across_the_move(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=2, messages=1))
    old, new = lab.address("old"), lab.address("new")
    server = str(BIN / "deltachat-rpc-server")
    with Rpc(accounts_dir=str(tmp_path / "deltachat"), rpc_server_path=server) as rpc:
        dc = DeltaChat(rpc)
        alice = profile(dc, "alice0001", lab.domain, old)
        bob = profile(dc, "bob000001", lab.domain, old)
        alice.create_chat(bob).send_text("before the move")
        receive(bob, "before the move")
        bob.create_chat(alice).send_text("reply before the move")
        receive(alice, "reply before the move")

        # Bob is offline while Alice writes: her message waits in his mailbox on old.
        bob.stop_io()
        delivered(alice, alice.create_chat(bob).send_text("while you were offline"))
        alice.stop_io()

        result = run_tool(lab, "invoke", "migrate", "--old-host", "old", "--new-host", "new",
                          "--yes", "--no-wait", state_dir=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr

        follow_dns(alice, new)
        follow_dns(bob, new)
        receive(bob, "while you were offline")
        alice.create_chat(bob).send_text("after the move")
        receive(bob, "after the move")
        bob.create_chat(alice).send_text("reply after the move")
        receive(alice, "reply after the move")
        # The moved mailbox kept its IMAP UIDs: nothing came twice, nothing was lost.
        assert texts_from(bob, alice) == [
            "before the move", "while you were offline", "after the move",
        ]  # fmt: skip
        assert texts_from(alice, bob) == ["reply before the move", "reply after the move"]
        # The accounts the app made at its first login on old are on new.
        accounts = lab.ssh("new", f"ls /home/vmail/mail/{lab.domain}").stdout.split()
        assert {f"alice0001@{lab.domain}", f"bob000001@{lab.domain}"} <= set(accounts)
