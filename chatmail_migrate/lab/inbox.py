"""Reading a message from a lab relay's mailbox over IMAP, as the tests and the
rehearsal check what was delivered."""

from __future__ import annotations

import imaplib
import time


def fetch_from_inbox(conn: imaplib.IMAP4, message_id: str, wait: float) -> bytes | None:
    """The raw message with ``message_id`` in the logged-in user's INBOX, waiting up to
    ``wait`` seconds for its delivery; None if it did not come. Read-only and with
    BODY.PEEK: the message stays unseen for the user's own app."""
    deadline = time.monotonic() + wait
    while True:
        conn.select("INBOX", readonly=True)
        _, found = conn.search(None, "HEADER", "Message-ID", message_id)
        if found[0]:
            _, data = conn.fetch(found[0].split()[-1], "(BODY.PEEK[])")
            return data[0][1]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.3)
