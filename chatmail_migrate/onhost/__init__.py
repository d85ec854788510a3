"""What runs on the hosts as Python: real files here, sent to the host's python3.

A relay has Debian's python3 and nothing else we could rely on, so each script uses
the standard library only and is sent inline (``python3 -c``), never installed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def script(name: str) -> str:
    """The text of ``onhost/NAME.py``, as python3 -c takes it."""
    return (Path(__file__).parent / f"{name}.py").read_text()
