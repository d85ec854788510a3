"""Runs ON a lab host, as Dovecot's checkpassword program: the lab's doveauth.

LAB STAND-IN, not chatmail's code. Upstream's doveauth (``chatmaild/doveauth.py``)
answers Dovecot's passdb/userdb over a dict socket; the lab gets the same behaviour
from Dovecot's built-in checkpassword driver, with no daemon to run:

- an account is the directory ``MAILBOXES_DIR/ADDRESS`` holding ``password``, a
  ``{SHA512-CRYPT}`` hash; a login checks the password against it and marks the
  login in that file's mtime (the relay expires accounts by it);
- a first login with an unknown address creates the account with the password it
  presents, unless ``/etc/chatmail-nocreate`` exists or the address or password
  breaks chatmail.ini's length rules;
- a lookup without password (``AUTHORIZED=1``: LMTP asking whether a recipient
  exists) answers only for existing accounts.

Protocol (qmail's checkpassword with Dovecot's extensions): ``user\\0password\\0``
on fd 3; on success exec argv[1] (Dovecot's checkpassword-reply); exit 1 for a
wrong password, 3 for an unknown user, 111 for a temporary failure. The stand-in
writes this file to ``/usr/local/lib/chatmail-lab/checkpassword`` with ``CONFIG``
(mail_domain, mailboxes_dir, length rules) filled in. Python 3.11's ``crypt``
module (Debian 12) makes and checks SHA512-CRYPT hashes.
"""

import os
import re
import sys
import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # removed only in Python 3.13
    import crypt

# Filled in by the stand-in's configure (cmdeploy_standin.py); these are its defaults.
CONFIG = globals().get("CONFIG") or {
    "mail_domain": "relay.lab.example",
    "mailboxes_dir": "/home/vmail/mail/relay.lab.example",
    "username_min_length": 9,
    "username_max_length": 9,
    "password_min_length": 9,
}
SCHEME = "{SHA512-CRYPT}"
NOCREATE = "/etc/chatmail-nocreate"
VALID_LOCALPART = re.compile(r"^[a-z0-9._-]+$")


def may_create(user: str, password: str) -> bool:
    """doveauth's is_allowed_to_create: registration open, lengths within the rules."""
    local, _, domain = user.partition("@")
    if os.path.exists(NOCREATE) or domain != CONFIG["mail_domain"]:
        return False
    if not CONFIG["username_min_length"] <= len(local) <= CONFIG["username_max_length"]:
        return False
    return len(password) >= CONFIG["password_min_length"] and bool(VALID_LOCALPART.match(local))


def main() -> int:
    with os.fdopen(3, "rb") as fd:
        fields = fd.read(4096).split(b"\0")
    user = fields[0].decode(errors="replace").lower()
    password = fields[1].decode(errors="replace") if len(fields) > 1 else ""
    lookup = os.environ.get("AUTHORIZED") in ("1", "2")
    if "/" in user or not user.endswith("@" + CONFIG["mail_domain"]):
        return 3
    home = os.path.join(CONFIG["mailboxes_dir"], user)
    path = os.path.join(home, "password")
    try:
        with open(path) as f:
            stored = f.read().strip()
    except FileNotFoundError:
        stored = None
    except OSError:
        return 111
    if lookup:
        if stored is None:
            return 3
    elif stored is None:
        if not may_create(user, password):
            return 1
        os.makedirs(home, mode=0o700, exist_ok=True)
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(f"{SCHEME}{hashed}\n")
        os.rename(tmp, path)
    else:
        hashed = stored.removeprefix(SCHEME)
        if not password or crypt.crypt(password, hashed) != hashed:
            return 1
        os.utime(path, (time.time(), time.time()))  # the last login, as lastlogin.py
    os.environ["USER"] = user
    os.environ["HOME"] = home
    if lookup:
        os.environ["AUTHORIZED"] = "2"  # Dovecot's extension: the lookup was answered
    os.execv(sys.argv[1], sys.argv[1:])
    return 111


if __name__ == "__main__":
    sys.exit(main())
