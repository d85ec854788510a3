"""One check's result, as preflight and check-relay print it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    status: str  # PASS, WARN or FAIL
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:4}  {self.name}: {self.detail}"
