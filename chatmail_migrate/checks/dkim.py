"""DKIM as a receiving server checks it (RFC 6376): check-relay verifies a signature
the running OpenDKIM made against the key DNS publishes, and the lab's tests verify
what a relay sent. Simple and relaxed canonicalization; rsa-sha256, rsa-sha1 and
ed25519-sha256."""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa


def dkim_tags(value: str) -> dict[str, str]:
    """The tags of a DKIM-Signature or DKIM record, whitespace removed from values."""
    tags = {}
    for part in value.replace("\r", "").replace("\n", "").split(";"):
        name, sep, tag_value = part.partition("=")
        if sep:
            tags[name.strip()] = re.sub(r"\s+", "", tag_value)
    return tags


def _crlf(value: str) -> str:
    return re.sub(r"(?<!\r)\n", "\r\n", value)


def _canon_header(name: str, value: str, relaxed: bool) -> str:
    value = _crlf(value)
    if not relaxed:
        return f"{name}:{value}\r\n"
    value = re.sub(r"[ \t]+", " ", value.replace("\r\n", "")).strip()
    return f"{name.strip().lower()}:{value}\r\n"


def _canon_body(body: str, relaxed: bool) -> bytes:
    lines = _crlf(body).split("\r\n")
    if relaxed:
        lines = [re.sub(r"[ \t]+", " ", line).rstrip(" \t") for line in lines]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return b"" if relaxed else b"\r\n"
    return ("\r\n".join(lines) + "\r\n").encode()


def dkim_verify(headers: list[list[str]], body: str, signature: str, public_b64: str) -> str | None:
    """Whether ``signature`` (a DKIM-Signature value) signs the message ``headers`` +
    ``body`` with the key ``public_b64`` (a DKIM record's p=): None, or why not."""
    tags = dkim_tags(signature)
    header_c, _, body_c = tags.get("c", "simple/simple").partition("/")
    body_c = body_c or "simple"
    algorithm = tags.get("a", "")
    digest = hashlib.sha1 if algorithm == "rsa-sha1" else hashlib.sha256
    body_hash = base64.b64encode(digest(_canon_body(body, body_c == "relaxed")).digest()).decode()
    if body_hash != tags.get("bh"):
        return "its body hash does not match the message"
    remaining = [(n, v if v[:1] in (" ", "\t") else f" {v}") for n, v in headers]
    data = ""
    for name in tags.get("h", "").split(":"):
        for i in range(len(remaining) - 1, -1, -1):
            if remaining[i][0].strip().lower() == name.strip().lower():
                data += _canon_header(*remaining.pop(i), header_c == "relaxed")
                break
    own = re.sub(r"((?:^|;)\s*b\s*=)[^;]*", r"\1", signature)
    own = own if own[:1] in (" ", "\t") else f" {own}"
    data += _canon_header("DKIM-Signature", own, header_c == "relaxed").removesuffix("\r\n")
    try:
        signed = base64.b64decode(tags.get("b", ""))
        raw = base64.b64decode(public_b64)
        if algorithm == "ed25519-sha256":
            ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(
                signed, hashlib.sha256(data.encode()).digest()
            )
        else:
            key = serialization.load_der_public_key(raw)
            if not isinstance(key, rsa.RSAPublicKey):
                return f"the key is not an RSA key ({algorithm})"
            chosen = hashes.SHA1() if algorithm == "rsa-sha1" else hashes.SHA256()
            key.verify(signed, data.encode(), padding.PKCS1v15(), chosen)
    except InvalidSignature:
        return "it does not verify with that key"
    except ValueError as e:
        return f"the key or signature cannot be read ({e})"
    return None


def same_key(a: str, b: str) -> bool:
    """Two public keys (base64 DER, as DKIM records hold them) are the same key."""
    a, b = re.sub(r"\s+", "", a), re.sub(r"\s+", "", b)
    if a == b:
        return True
    try:
        load = serialization.load_der_public_key
        pa, pb = load(base64.b64decode(a)), load(base64.b64decode(b))
        return pa.public_numbers() == pb.public_numbers()  # type: ignore[union-attr]
    except (ValueError, AttributeError, TypeError):
        return False
