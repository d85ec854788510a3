"""The audit log: every command the tool runs, on which host, when, how long, how it ended.

One plain-text file per mail domain beside the journal (``<domain>.log``), appended
to by every task. Nothing secret goes in: commands never carry key material or
passwords, and long base64 runs (public host keys) are shortened anyway.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TextIO

from chatmail_migrate.settings import Settings

# Base64 of 40+ characters: host keys in known_hosts lines, never worth logging whole.
KEY_RE = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def log_path(settings: Settings) -> Path | None:
    if not settings.mail_domain:
        return None
    return settings.journal_dir / f"{settings.mail_domain}.log"


def report_path(settings: Settings) -> Path | None:
    if not settings.mail_domain:
        return None
    return settings.journal_dir / f"{settings.mail_domain}-report.txt"


def private_file(path: Path, flags: int) -> int:
    """Open ``path``, made 0600 in a 0700 directory if new: it names accounts and hosts."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(path, flags | os.O_CREAT, 0o600)


def _append(path: Path) -> TextIO:
    return open(private_file(path, os.O_WRONLY | os.O_APPEND), "a")


def redact(text: str) -> str:
    return KEY_RE.sub(lambda m: f"<key …{m.group()[-8:]}>", text)


def record(
    settings: Settings, where: str, command: str, started: float, seconds: float, exit_code: int
) -> None:
    """Append one command to the log (not under --dry: nothing ran)."""
    path = log_path(settings)
    if path is None or settings.dry:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    lines = redact(command).strip().splitlines() or [""]
    text = f"{stamp} {where} exit={exit_code} {seconds:.2f}s $ {lines[0]}\n"
    text += "".join(f"    | {line}\n" for line in lines[1:])
    with _append(path) as f:
        f.write(text)


def note(settings: Settings, message: str) -> None:
    """A line that is not a command: a step starting or ending, a decision."""
    path = log_path(settings)
    if path is None or settings.dry:
        return
    with _append(path) as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} -- {redact(message)}\n")
