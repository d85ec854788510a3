"""DKIM of a message a lab relay sent, checked with the key the lab's nameservers
publish: the proof that mail leaving a lab relay is signed by the relay's own key
(the verifying is the tool's own, :mod:`chatmail_migrate.dkim`)."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rdatatype

from chatmail_migrate.checks.dkim import dkim_tags as signature_tags
from chatmail_migrate.checks.dkim import dkim_verify
from chatmail_migrate.lab.lab import Lab


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


def dkim_tags(raw: bytes) -> dict[str, str]:
    """The tags of the message's (topmost) DKIM-Signature; {} when it has none."""
    headers, _ = _headers_and_body(raw)
    for name, value in headers:
        if name.strip().lower() == "dkim-signature":
            return signature_tags(value)
    return {}


def published_dkim_key(lab: Lab, selector: str, domain: str) -> str:
    """The p= of ``selector._domainkey.domain``, asked of the lab's first nameserver."""
    server = lab.nameservers().split(",")[0]
    query = dns.message.make_query(f"{selector}._domainkey.{domain}", dns.rdatatype.TXT)
    answer = dns.query.udp(query, server, timeout=5).answer
    text = "".join(b"".join(r.strings).decode() for rrset in answer for r in rrset)
    return signature_tags(text)["p"]


def dkim_verifies(raw: bytes, public_key_b64: str) -> bool:
    """Whether the first DKIM-Signature, made as the relay signs (rsa-sha256,
    relaxed/simple), verifies with the key."""
    tags = dkim_tags(raw)
    if tags.get("a") != "rsa-sha256" or tags.get("c") != "relaxed/simple":
        return False  # not how the relay signs (or no signature at all)
    headers, body = _headers_and_body(raw)
    signature = next(v for n, v in headers if n.strip().lower() == "dkim-signature")
    others = [[n, v] for n, v in headers]
    return dkim_verify(others, body.decode(), signature, public_key_b64) is None
