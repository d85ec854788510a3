"""A mail client for lab relays, as a chatmail user's app talks to one: IMAP on 993 and
submission on 465, TLS checked against the relay's own certificate (pinned), reaching
the host by its lab address only. And a DKIM check as a receiving server does it, with
the key the lab's nameservers publish.
"""

from __future__ import annotations

import base64
import email.utils
import imaplib
import re
import smtplib
import socket
import ssl
import time
import uuid
from dataclasses import dataclass

import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from chatmail_migrate.lab import Lab
from chatmail_migrate.lab.cmdeploy_standin import Release, checkout_version, read_ini, tls_pair
from chatmail_migrate.lab.seed import account_password


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
            deadline = time.monotonic() + wait
            while True:
                conn.select("INBOX")
                _, found = conn.search(None, "HEADER", "Message-ID", message_id)
                if found[0]:
                    _, data = conn.fetch(found[0].split()[-1], "(BODY.PEEK[])")
                    return data[0][1]
                if time.monotonic() > deadline:
                    raise AssertionError(f"{message_id} not in {user}'s INBOX after {wait}s")
                time.sleep(0.3)
        finally:
            conn.logout()


# -- DKIM, as the receiving side checks it (RFC 6376; the relay signs relaxed/simple) --


def _headers_and_body(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: list[tuple[str, str]] = []
    for line in head.decode().split("\r\n"):
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + "\r\n" + line)
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return headers, body


def _relaxed(name: str, value: str) -> str:
    value = re.sub(r"[ \t]+", " ", value.replace("\r\n", "")).strip()
    return f"{name.strip().lower()}:{value}"


def dkim_tags(raw: bytes) -> dict[str, str]:
    """The tags of the message's (topmost) DKIM-Signature; {} when it has none."""
    headers, _ = _headers_and_body(raw)
    for name, value in headers:
        if name.strip().lower() == "dkim-signature":
            tags = (t.strip() for t in value.replace("\r\n", "").split(";") if t.strip())
            return {
                k.strip(): re.sub(r"\s+", "", v) for k, _, v in (t.partition("=") for t in tags)
            }
    return {}


def published_dkim_key(lab: Lab, selector: str, domain: str) -> str:
    """The p= of ``selector._domainkey.domain``, asked of the lab's first nameserver."""
    server = lab.nameservers().split(",")[0]
    query = dns.message.make_query(f"{selector}._domainkey.{domain}", dns.rdatatype.TXT)
    answer = dns.query.udp(query, server, timeout=5).answer
    text = "".join(b"".join(r.strings).decode() for rrset in answer for r in rrset)
    return dict(
        (k.strip(), v.strip()) for k, _, v in (t.partition("=") for t in text.split(";") if t)
    )["p"]


def dkim_verifies(raw: bytes, public_key_b64: str) -> bool:
    """Whether the first DKIM-Signature (rsa-sha256, relaxed/simple) verifies with the key."""
    tags = dkim_tags(raw)
    assert tags.get("a") == "rsa-sha256" and tags.get("c") == "relaxed/simple", tags
    headers, body = _headers_and_body(raw)
    # simple body: trailing empty lines removed, one CRLF at the end
    body = body.rstrip(b"\r\n") + b"\r\n" if body.strip(b"\r\n") else b"\r\n"
    digest = hashes.Hash(hashes.SHA256())
    digest.update(body)
    if base64.b64encode(digest.finalize()).decode() != tags["bh"]:
        return False
    # relaxed headers, each signed name taken from the bottom up
    remaining = list(headers)
    signed = []
    for name in tags["h"].split(":"):
        for i in range(len(remaining) - 1, -1, -1):
            if remaining[i][0].strip().lower() == name.strip().lower():
                signed.append(_relaxed(*remaining.pop(i)) + "\r\n")
                break
    own = next(v for n, v in headers if n.strip().lower() == "dkim-signature")
    own = re.sub(r"(\bb=)[^;]*", r"\1", own)
    data = ("".join(signed) + _relaxed("DKIM-Signature", own)).encode()
    key = serialization.load_der_public_key(base64.b64decode(public_key_b64))
    try:
        key.verify(base64.b64decode(tags["b"]), data, padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return False
    return True


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
