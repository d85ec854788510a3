"""Delta Chat users of a lab relay: a real Delta Chat core (deltachat-rpc-server, the
app chatmail relays serve) chatting through the lab's hosts, before and after a move.

The core is configured with explicit servers, the hosts' lab addresses (clients reach
lab hosts by address only: nothing leaves the machine), and accepts the lab's
self-signed certificates: for the lab only. Real clients follow the switched A record
to the new host; here their servers are changed to new's address instead.

The tests and ``invoke rehearse`` share this. The core comes with the test extra
(``./bootstrap`` installs it); it is imported only when used.
"""

from __future__ import annotations

import imaplib
import queue
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chatmail_migrate.lab.dkim import dkim_tags, dkim_verifies, published_dkim_key
from chatmail_migrate.lab.inbox import fetch_from_inbox
from chatmail_migrate.lab.lab import Lab
from chatmail_migrate.lab.rootfs import LabError

if TYPE_CHECKING:
    from deltachat_rpc_client import Account, DeltaChat, Message

# The core's MessageState for a message the relay took.
OUT_DELIVERED = 26
INSTALL = "run ./bootstrap (it installs the test extra: .venv/bin/pip install -e '.[test]')"


def rpc_server() -> Path:
    """The core's server program of this environment (never one found on PATH)."""
    return Path(sys.executable).parent / "deltachat-rpc-server"


def require() -> None:
    """Fail in one line, before anything starts, when the core is not installed."""
    try:
        import deltachat_rpc_client  # noqa: F401
    except ImportError:
        raise LabError(f"Delta Chat's core (deltachat-rpc-client) is missing: {INSTALL}") from None
    if not rpc_server().is_file():
        raise LabError(f"{rpc_server()} is missing: {INSTALL}")


@contextmanager
def delta_chat(accounts_dir: Path) -> Iterator[DeltaChat]:
    """A running core keeping its profiles in ``accounts_dir``; stopped afterwards."""
    require()
    from deltachat_rpc_client import DeltaChat, Rpc

    with Rpc(accounts_dir=str(accounts_dir), rpc_server_path=str(rpc_server())) as rpc:
        yield DeltaChat(rpc)


def password(name: str) -> str:
    """The password a profile chose at its first login (the app's own choice, here
    predictable so the test can log in as the user too)."""
    return f"{name}-secret"


def transport(addr: str, secret: str, host: str) -> dict:
    """The relay's ports with TLS from the first byte, at a lab address."""
    return {
        "addr": addr,
        "password": secret,
        "imapServer": host,
        "imapPort": 993,
        "imapSecurity": "ssl",
        "smtpServer": host,
        "smtpPort": 465,
        "smtpSecurity": "ssl",
        "certificateChecks": "acceptInvalidCertificates",  # lab only: self-signed
    }


def profile(dc: DeltaChat, name: str, domain: str, host: str) -> Account:
    """A new profile whose first login creates its account, as chatmail's apps do."""
    account = dc.add_account()
    account.set_config("displayname", name)
    account.add_or_update_transport(transport(f"{name}@{domain}", password(name), host))
    account.bring_online()
    return account


def address(account: Account) -> str:
    [current] = account.list_transports()
    return current["addr"]


def follow_dns(account: Account, host: str) -> None:
    """The app reaches the relay at its new address (the switched A record). Only
    started: bring_online would drop the events of what arrives meanwhile."""
    [current] = account.list_transports()
    account.add_or_update_transport({**current, "imapServer": host, "smtpServer": host})
    account.start_io()
    # As apps do when the network changes: retry now, not when the core's back-off
    # after the failures of the downtime ends.
    account._rpc.maybe_network()


def texts_from(account: Account, sender: Account) -> list[str]:
    """What ``account`` holds from ``sender`` in their chat, in the app's order."""
    chat = account.create_chat(sender)
    them = chat.get_contacts()[0].id
    return [
        snapshot.text
        for snapshot in (m.get_snapshot() for m in chat.get_messages())
        if snapshot.from_id == them
    ]


def within(seconds: float, wait: Callable):
    """``wait()``'s result, or a failure after ``seconds``: the core's waits block
    forever, and a message that never comes must fail, not hang."""
    result: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: result.put(wait()), daemon=True).start()
    try:
        return result.get(timeout=seconds)
    except queue.Empty:
        raise LabError(f"Delta Chat: nothing came in {seconds:.0f}s") from None


def receive(account: Account, *texts: str, seconds: float = 60) -> list[Message]:
    """Wait until ``texts`` arrived, each once, in any order, end-to-end encrypted."""
    waiting, arrived = list(texts), []
    while waiting:
        snapshot = within(seconds, account.wait_for_incoming_msg).get_snapshot()
        if snapshot.text not in waiting:
            raise LabError(f"Delta Chat: {address(account)} got {snapshot.text!r}, not {waiting}")
        if not snapshot.show_padlock:
            raise LabError(f"Delta Chat: {snapshot.text!r} arrived unencrypted")
        waiting.remove(snapshot.text)
        arrived.append(snapshot.message)
    return arrived


def delivered(account: Account, message: Message, seconds: float = 60) -> None:
    """Wait until the relay took ``message`` from the sender's core."""
    from deltachat_rpc_client import EventType

    def wait():
        while account.wait_for_event(EventType.MSG_DELIVERED).msg_id != message.id:
            pass

    within(seconds, wait)


def message_id(message: Message) -> str:
    """The message's Message-ID header, as the core wrote it."""
    info = message.account._rpc.get_message_info_object(message.account.id, message.id)
    return f"<{info['rfc724Mid']}>"


def raw_message(lab: Lab, host: str, user: str, secret: str, mid: str, wait: float = 30) -> bytes:
    """The message ``mid`` as ``user`` reads it over IMAP on ``host`` (INBOX), waiting
    for its delivery. Read before the user's own app fetches it: the app removes what
    it fetched from the server."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # lab only, as above
    conn = imaplib.IMAP4_SSL(lab.address(host), 993, ssl_context=context, timeout=10)
    try:
        conn.login(user, secret)
        raw = fetch_from_inbox(conn, mid, wait)
        if raw is None:
            raise LabError(f"Delta Chat: {mid} is not in {user}'s INBOX on {host}")
        return raw
    finally:
        conn.logout()


def signed_by_relay(lab: Lab, raw: bytes) -> bool:
    """Signed for the relay's domain, verifying with the key its DNS publishes."""
    tags = dkim_tags(raw)
    if tags.get("d") != lab.domain or "s" not in tags:
        return False
    return dkim_verifies(raw, published_dkim_key(lab, tags["s"], lab.domain))


# -- the exchange, before and after a move (the rehearsal's; the tests' with a message
# written during the migration) --


@dataclass
class Users:
    alice: Account
    bob: Account
    # What Bob holds from Alice, in order; the last one waits for him, offline, on old.
    before: list[str]


def chat_on_old(lab: Lab, dc: DeltaChat) -> Users:
    """Two new profiles chat on old; then Bob goes offline and Alice writes him a
    message that waits in his mailbox on old: the move must carry it."""
    old = lab.address("old")
    alice = profile(dc, "alice0001", lab.domain, old)
    bob = profile(dc, "bob000001", lab.domain, old)
    alice.create_chat(bob).send_text("before the move")
    receive(bob, "before the move")
    bob.create_chat(alice).send_text("reply before the move")
    receive(alice, "reply before the move")
    bob.stop_io()
    delivered(alice, alice.create_chat(bob).send_text("while you were offline"))
    alice.stop_io()
    return Users(alice, bob, ["before the move", "while you were offline"])


def chat_on_new(lab: Lab, users: Users, during: Message | None = None) -> str:
    """Both follow DNS to new. Alice writes first, Bob still offline, so that her
    messages can be read raw in his mailbox on new, logging in with his password:
    each is signed with the key the relay's DNS publishes. ``during``, written while
    the migration ran, is sent by her app now if it could not be then. Bob then reads
    what waited for him, each once, and they keep chatting. Returns what was shown;
    raises LabError on anything else."""
    alice, bob, new = users.alice, users.bob, lab.address("new")
    follow_dns(alice, new)
    sent = [during] if during else []
    for message in sent:
        if message.get_snapshot().state != OUT_DELIVERED:
            delivered(alice, message)
    sent.append(alice.create_chat(bob).send_text("after the move"))
    delivered(alice, sent[-1])
    for message in sent:
        raw = raw_message(lab, "new", address(bob), password("bob000001"), message_id(message))
        if not signed_by_relay(lab, raw):
            raise LabError(
                f"Delta Chat: {message.get_snapshot().text!r} in Bob's mailbox on new is not "
                "DKIM-signed with the key DNS publishes"
            )
    texts = [m.get_snapshot().text for m in sent]
    follow_dns(bob, new)
    receive(bob, users.before[-1], *texts)
    bob.create_chat(alice).send_text("reply after the move")
    receive(alice, "reply after the move")
    for reader, writer, expected in (
        (bob, alice, [*users.before, *texts]),
        (alice, bob, ["reply before the move", "reply after the move"]),
    ):
        if texts_from(reader, writer) != expected:
            raise LabError(
                f"Delta Chat: {address(reader)} holds {texts_from(reader, writer)} from "
                f"{address(writer)}, expected {expected} (each once, in order)"
            )
    return (
        "the message that waited on old for bob, offline, read on new; alice's "
        f"{len(texts)} message(s) after the move delivered once, DKIM-signed with the key "
        "DNS publishes; bob's reply delivered; nothing lost or doubled"
    )
