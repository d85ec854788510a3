"""A mail client for lab relays, as a chatmail user's app talks to one: IMAP on 993 and
submission on 465, TLS checked against the relay's own certificate (pinned), reaching
the host by its lab address only. And a DKIM check as a receiving server does it, with
the key the lab's nameservers publish.
"""

from __future__ import annotations

import email.utils
import imaplib
import smtplib
import socket
import ssl
import uuid
from dataclasses import dataclass

import pytest
from cryptography import x509

from chatmail_migrate.lab import Lab
from chatmail_migrate.lab.dkim import dkim_tags, dkim_verifies, published_dkim_key
from chatmail_migrate.lab.inbox import fetch_from_inbox
from chatmail_migrate.lab.seed import account_password
from chatmail_migrate.lab.standin_deploy import tls_pair
from chatmail_migrate.lab.standin_release import Release, checkout_version, read_ini


def relay_certificate(lab: Lab, host: str) -> str:
    """The PEM the relay on ``host`` serves, by the relay's own settings (release, ini)."""
    ini = read_ini(lab.relay_dir / "chatmail.ini")
    cert, _ = tls_pair(Release(checkout_version(lab.relay_dir)[0]), ini)
    return lab.ssh(host, f"cat {cert}").stdout


def pinned_context(pem: str) -> ssl.SSLContext:
    """Trust exactly this certificate (self-signed in the lab). Its names are checked
    when it has any: the self-signed pair and the lab's external one carry only a CN,
    which no client matches (pinning the certificate is the stronger check anyway)."""
    context = ssl.create_default_context(cadata=pem)
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        context.check_hostname = False
    return context


class _IMAP(imaplib.IMAP4_SSL):
    def __init__(self, address: str, name: str, context: ssl.SSLContext, timeout: float):
        self._address = address
        super().__init__(name, 993, ssl_context=context, timeout=timeout)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self._address, 993), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class _SMTP(smtplib.SMTP_SSL):
    def __init__(self, address: str, name: str, context: ssl.SSLContext, timeout: float):
        self._address = address
        super().__init__(name, 465, context=context, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((self._address, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self._host)


@dataclass
class RelayClient:
    """Talks to the relay named ``domain`` at the lab address ``address``."""

    address: str
    domain: str
    context: ssl.SSLContext
    timeout: float = 10

    def imap(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        conn = _IMAP(self.address, self.domain, self.context, self.timeout)
        conn.login(user, password)
        return conn

    def smtp(self) -> smtplib.SMTP_SSL:
        return _SMTP(self.address, self.domain, self.context, self.timeout)

    def send(self, user: str, password: str, to: str, subject: str) -> str:
        """Submit a message over 465 with SASL PLAIN; returns its Message-ID."""
        message_id = f"<{uuid.uuid4().hex}@{self.domain}>"
        message = (
            f"From: {user}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {message_id}\r\n"
            "Content-Type: text/plain\r\n\r\nsent through the lab relay\r\n"
        )
        with self.smtp() as smtp:
            smtp.login(user, password)
            smtp.sendmail(user, [to], message.encode())
        return message_id

    def fetch(self, user: str, password: str, message_id: str, wait: float = 30) -> bytes:
        """The raw message with ``message_id`` from ``user``'s INBOX, waiting for it."""
        conn = self.imap(user, password)
        try:
            raw = fetch_from_inbox(conn, message_id, wait)
        finally:
            conn.logout()
        assert raw is not None, f"{message_id} not in {user}'s INBOX after {wait}s"
        return raw


# -- what a working relay does --


def assert_relay_serves(lab: Lab, client: RelayClient, sender: str, recipient: str) -> bytes:
    """A message from ``sender`` to ``recipient`` goes through submission, is signed,
    and lands in the recipient's INBOX by LMTP; returns it as IMAP hands it out."""
    message_id = client.send(sender, account_password(sender), recipient, "lab relay works")
    raw = client.fetch(recipient, account_password(recipient), message_id)
    head = raw.partition(b"\r\n\r\n")[0].decode()
    assert f"Delivered-To: {recipient}" in head
    assert "with LMTP" in head, head
    assert "with ESMTPSA" in head, "submitted with SASL over TLS"
    tags = dkim_tags(raw)
    assert (tags.get("d"), tags.get("s")) == (lab.domain, "opendkim"), head
    assert dkim_verifies(raw, published_dkim_key(lab, "opendkim", lab.domain)), head
    return raw


def assert_refuses_strangers(client: RelayClient, user: str) -> None:
    """Wrong passwords and unauthenticated submission are refused (each wrong password
    costs Dovecot's two-second failure delay)."""
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.imap(user, "wrong-password")
    with client.smtp() as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login(user, "wrong-password")
    with client.smtp() as smtp, pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp.sendmail(user, [user], b"Subject: no login\r\n\r\nrefused\r\n")
