"""What ``--dns rfc2136`` needs from the operator, read before any host is touched:
the mode, and the TSIG key, from ``$CHATMAIL_MIGRATE_TSIG`` (``[ALGORITHM:]NAME:SECRET``,
as ``nsupdate -y`` takes it) or a key file (``--tsig-file``, as ``tsig-keygen`` writes
it), never a flag value. The secret is never printed, logged or journaled: a key's
``repr`` leaves it out, and errors name where the key came from, not what it holds.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import dns.tsig

from chatmail_migrate.errors import SettingsError

# How switch-dns gets the records changed: asked of the operator, or sent by the tool.
DNS_MODES = ("manual", "rfc2136")

ENV_TSIG = "CHATMAIL_MIGRATE_TSIG"

# nsupdate's own default (hmac-md5) is not ours.
DEFAULT_ALGORITHM = "hmac-sha256"
ALGORITHMS = {
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-md5": dns.tsig.HMAC_MD5,
}


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str = field(repr=False)
    # Where it came from ($CHATMAIL_MIGRATE_TSIG or the file): what errors name.
    source: str = ""

    def for_dnspython(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, ALGORITHMS[self.algorithm])


def _checked_key(name: str, algorithm: str, secret: str, source: str) -> TsigKey:
    algorithm = (algorithm or DEFAULT_ALGORITHM).lower().removeprefix("hmac:")
    if not algorithm.startswith("hmac-"):
        algorithm = f"hmac-{algorithm}"
    if algorithm not in ALGORITHMS:
        raise SettingsError(
            f"the TSIG key in {source} names algorithm {algorithm!r}; use one of "
            f"{', '.join(ALGORITHMS)} (default {DEFAULT_ALGORITHM})"
        )
    if not name:
        raise SettingsError(f"the TSIG key in {source} has no name: give NAME:SECRET")
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(
            f"the TSIG key in {source}: its secret is not base64 (as tsig-keygen writes it)"
        ) from None
    return TsigKey(name.rstrip(".") + ".", algorithm, secret, source)


def tsig_from_text(text: str, source: str = f"${ENV_TSIG}") -> TsigKey:
    """``[ALGORITHM:]NAME:SECRET``, as ``nsupdate -y`` takes it."""
    parts = text.strip().split(":")
    if len(parts) == 2:
        return _checked_key(parts[0], DEFAULT_ALGORITHM, parts[1], source)
    if len(parts) == 3:
        return _checked_key(parts[1], parts[0], parts[2], source)
    raise SettingsError(
        f"{source} is not [ALGORITHM:]NAME:SECRET (e.g. hmac-sha256:relay-update:BASE64)"
    )


KEY_FILE_RE = re.compile(
    r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>[^}]*)\}\s*;', re.IGNORECASE | re.DOTALL
)


def tsig_from_file(path: Path) -> TsigKey:
    """The first key of a file as ``tsig-keygen`` (or ``ddns-confgen``) writes it."""
    source = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"TSIG key file {path}: {e.strerror or e}") from None
    found = KEY_FILE_RE.search(text)
    if not found:
        raise SettingsError(
            f'TSIG key file {path} holds no key "NAME" {{ algorithm ...; secret "..."; }};'
            " make one with tsig-keygen"
        )
    body = found.group("body")
    algorithm = re.search(r"algorithm\s+\"?([\w-]+)\"?\s*;", body)
    secret = re.search(r"secret\s+\"([^\"]+)\"\s*;", body)
    if not secret:
        raise SettingsError(f'TSIG key file {path}: its key has no secret "...";')
    return _checked_key(
        found.group("name"), algorithm.group(1) if algorithm else "", secret.group(1), source
    )


def load_tsig(tsig_file: str | None, env=os.environ) -> TsigKey:
    """The key from ``--tsig-file``, else from the environment; a clear error without."""
    if tsig_file:
        return tsig_from_file(Path(tsig_file).expanduser())
    if env.get(ENV_TSIG):
        return tsig_from_text(env[ENV_TSIG])
    raise SettingsError(
        f"--dns rfc2136 needs a TSIG key: set {ENV_TSIG}=[ALGORITHM:]NAME:SECRET or give "
        "--tsig-file FILE (as tsig-keygen writes it)"
    )


def check_server_address(text: str) -> None:
    """``ADDR[:PORT]`` (IPv6 as ``[ADDR]:PORT``), as ``--dns-server`` takes it."""
    address, port = text, "53"
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif text.count(":") == 1:
        address, _, port = text.partition(":")
    try:
        ipaddress.ip_address(address)
        if not 0 < int(port) < 65536:
            raise ValueError(port)
    except ValueError:
        raise SettingsError(
            f"--dns-server {text!r} is not ADDR[:PORT]; e.g. --dns-server 192.0.2.53 or "
            "--dns-server [2001:db8::53]:53"
        ) from None
