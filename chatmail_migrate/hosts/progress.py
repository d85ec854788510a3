"""Progress of a copy, read from the old host's report lines and shown to the operator.

The copy scripts (commands.py) print ``@chatmail-migrate total|progress|done``
lines; the data itself never passes through this machine. On a terminal the
progress is one redrawn bar; otherwise a plain line every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import time

from chatmail_migrate.hosts.commands import PROGRESS_TAG

LABELS = {
    "copy": "copy (tar)",
    "rsync": "mailboxes (rsync)",
}


SOURCES = {"presync": "as the pre-sync found it", "changed": "what changed since the pre-sync"}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


class CopyProgress:
    """Turns report lines into a bar (terminal) or periodic log lines (anything else)."""

    def __init__(self, out=None, tty: bool | None = None, interval: float = 10.0, clock=None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.interval = interval
        self.clock = clock or time.monotonic
        self.phase = ""
        self.total_bytes = self.total_files = 0
        self.bytes = self.files = 0
        self.started = self.last_line = 0.0
        self.summaries: list[dict] = []

    def feed(self, line: str) -> bool:
        """Handle one line of the copy's output; False when it is not a report line."""
        if not line.startswith(PROGRESS_TAG + " "):
            return False
        words = line.split()[1:]
        # "total PHASE BYTES ENTRIES presync|changed": the pre-sync's figures, or those
        # of what changed since, not measured now.
        source = SOURCES.get(words[-1], "") if len(words) == 5 else ""
        words = words[:-1] if source else words
        try:
            kind, phase, numbers = words[0], words[1], [int(w) for w in words[2:]]
        except (IndexError, ValueError):
            return True
        if kind == "total" and len(numbers) == 2:
            self.start(phase)
            self.measured(*numbers, source=source or "measured on the old host")
        elif kind == "progress" and len(numbers) == 2:
            self.start(phase)
            self.update(*numbers)
        elif kind == "done" and numbers:
            self.start(phase)
            self.finish(*numbers[:2])
        return True

    def start(self, phase: str) -> None:
        """A phase's first line (its total is measured beside the copy, so any line)."""
        if phase == self.phase:
            return
        self.phase, self.total_bytes, self.total_files = phase, 0, 0
        self.bytes = self.files = 0
        self.started = self.last_line = self.clock()

    def measured(
        self, total_bytes: int, total_files: int, source: str = "measured on the old host"
    ) -> None:
        self.total_bytes, self.total_files = total_bytes, total_files
        label = LABELS.get(self.phase, self.phase)
        bound = " at most" if self.phase == "rsync" else ""
        self._line(
            f"{label}:{bound} {human_bytes(total_bytes)} in {total_files:,} entries ({source})"
        )

    def update(self, done_bytes: int, done_files: int) -> None:
        self.bytes, self.files = max(self.bytes, done_bytes), max(self.files, done_files)
        now = self.clock()
        if self.tty:
            self._draw(now)
        elif now - self.last_line >= self.interval:
            self.last_line = now
            self._line(self._figures(now))

    def finish(self, files: int, sent_bytes: int | None = None) -> None:
        """The copier ended: ``files`` entries passed, ``sent_bytes`` (rsync) sent."""
        elapsed = max(self.clock() - self.started, 1e-6)
        self.files = files
        self.bytes = self.total_bytes if sent_bytes is None else sent_bytes
        summary = {
            "phase": self.phase,
            "entries": files,
            "bytes_total": self.total_bytes,
            "entries_total": self.total_files,
            "bytes_sent": self.bytes,
            "seconds": round(elapsed, 2),
        }
        self.summaries.append(summary)
        label = LABELS.get(self.phase, self.phase)
        if self.phase == "rsync":
            what = (
                f"{files:,} entries updated (of {self.total_files:,}), "
                f"{human_bytes(self.bytes)} of {human_bytes(self.total_bytes)}"
            )
        else:
            what = f"{human_bytes(self.total_bytes)}, {files:,} entries"
        rate = human_bytes(self.bytes / elapsed)
        self._line(f"{label}: done, {what} in {elapsed:.1f}s ({rate}/s)")
        self.phase = ""

    def _figures(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.bytes / elapsed
        label = LABELS.get(self.phase, self.phase)
        if not self.total_bytes:  # not measured yet
            return (
                f"{label}: {human_bytes(self.bytes)}, {self.files:,} entries, {human_bytes(rate)}/s"
            )
        text = (
            f"{label}: {human_bytes(self.bytes)} of {human_bytes(self.total_bytes)}, "
            f"{self.files:,} of {self.total_files:,} entries, {human_bytes(rate)}/s"
        )
        if rate > 0 and self.total_bytes > self.bytes:
            eta = (self.total_bytes - self.bytes) / rate
            text += f", ETA {human_seconds(eta)}" + (" or less" if self.phase == "rsync" else "")
        return text

    def _draw(self, now: float) -> None:
        width = 24
        part = min(self.bytes / self.total_bytes, 1.0) if self.total_bytes else 1.0
        bar = "#" * int(part * width) + "-" * (width - int(part * width))
        print(f"\r\033[K  [{bar}] {part:4.0%} {self._figures(now)}", end="", file=self.out)
        self.out.flush()

    def _line(self, text: str) -> None:
        prefix = "\r\033[K" if self.tty else ""
        print(f"{prefix}  {text}", file=self.out, flush=True)
