"""One look at one port of a relay host, from outside, as the probe (``probe.py``)
takes them many times a second: an IMAP login on 993, the SMTP greeting on 25 and
on 465, TLS with ALPN ``imap``/``smtp`` on 443, and a message submitted on 25.

Every look connects to an address, never to a name (the probe's host view asks each
host by address; its client view resolves the name itself), sends the mail domain as
SNI, and returns a ``Look`` instead of raising: a refused connection is a result.
Certificates are not checked: the probe measures whether a host serves, not whose
certificate it serves (check-relay does that), and the lab's are self-signed.
"""

from __future__ import annotations

import email.utils
import functools
import imaplib
import smtplib
import socket
import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class Look:
    ok: bool
    # Why it failed (or the reply that was not the one wanted); "" when ok.
    detail: str = ""
    # IMAP only: whether the message searched for is in INBOX (None: none searched).
    seen: bool | None = None


@functools.cache
def tls_context(alpn: str | None = None) -> ssl.SSLContext:
    """One context per ALPN, made once: loading the system's CA store for every look
    cost the probe a third of a core. Nothing is verified, so no CA is loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols([alpn])
    return context


def _why(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text}"[:200]


class _IMAP(imaplib.IMAP4_SSL):
    """IMAP over TLS at an address, with the mail domain as SNI."""

    def __init__(self, address: str, domain: str, timeout: float):
        self._address = address
        super().__init__(domain, 993, ssl_context=tls_context(), timeout=timeout)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self._address, 993), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_login(
    address: str,
    domain: str,
    user: str,
    password: str,
    timeout: float,
    message_id: str | None = None,
) -> Look:
    """Log in on 993; with ``message_id``, also say whether INBOX holds it."""
    try:
        conn = _IMAP(address, domain, timeout)
    except (OSError, imaplib.IMAP4.error) as e:
        return Look(False, _why(e))
    try:
        conn.login(user, password)
        seen = None
        if message_id:
            conn.select("INBOX", readonly=True)
            _, found = conn.search(None, "HEADER", "Message-ID", message_id)
            seen = bool(found and found[0])
        return Look(True, seen=seen)
    except (OSError, imaplib.IMAP4.error) as e:
        return Look(False, _why(e))
    finally:
        # No LOGOUT round trip: closing is enough, and keeps each look short.
        try:
            conn.shutdown()
        except OSError:
            pass


def _greeting(sock: socket.socket | ssl.SSLSocket) -> str:
    """The server's first reply, all lines of it ("220-..." continues)."""
    data = b""
    while len(data) < 8192:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        # A complete line that does not continue ("220-"): IMAP's "* OK" is one line.
        if any(line[3:4] != b"-" for line in data.split(b"\r\n")[:-1]):
            break
    return data.decode(errors="replace").strip()


def greeting(
    address: str, port: int, domain: str, timeout: float, *, tls: bool, alpn: str | None = None
) -> Look:
    """Connect (TLS from the first byte when ``tls``) and read the greeting: 220 for
    SMTP, ``* OK`` for IMAP (behind 443 with ALPN ``imap``)."""
    want = "* OK" if alpn == "imap" else "220 "
    try:
        with socket.create_connection((address, port), timeout) as raw:
            sock: socket.socket | ssl.SSLSocket = raw
            if tls:
                sock = tls_context(alpn).wrap_socket(raw, server_hostname=domain)
            text = _greeting(sock)
            try:
                sock.sendall(b"a LOGOUT\r\n" if want == "* OK" else b"QUIT\r\n")
            except OSError:
                pass
    except (OSError, ValueError) as e:
        return Look(False, _why(e))
    first = text.splitlines()[-1] if text else ""
    if first.startswith(want) or (want == "220 " and first == "220"):
        return Look(True)
    return Look(False, f"greeting {first[:120]!r}" if first else "closed without a greeting")


# A peer's address, not the relay's: the message comes from outside, as mail on 25 does.
SENDER = "probe@probe.lab.invalid"


def message(recipient: str, message_id: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: probe\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {message_id}\r\n"
        "Content-Type: text/plain\r\n\r\nsent by the lab's outside probe\r\n"
    ).encode()


def submit(address: str, recipient: str, message_id: str, timeout: float) -> Look:
    """Deliver a small message to ``recipient`` on port 25 as a peer server does
    (no login, no TLS); ok only when DATA is answered 250, i.e. the host took it."""
    try:
        with smtplib.SMTP(address, 25, local_hostname="probe.lab.invalid", timeout=timeout) as s:
            s.sendmail(SENDER, [recipient], message(recipient, message_id))
    except (OSError, smtplib.SMTPException) as e:
        return Look(False, _why(e))
    return Look(True)
