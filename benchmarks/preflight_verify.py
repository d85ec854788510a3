"""Time preflight and verify on lab relays of several sizes (run by hand, as root).

    python benchmarks/preflight_verify.py --accounts 1000 10000

For each size: bring up a lab, seed old, time ``preflight``, run ``migrate``, then
time ``verify`` and ``verify --checksum``; print one table at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chatmail_migrate.lab import Lab, SeedParams, seed_relay  # noqa: E402

INVOKE = str(Path(sys.executable).parent / "invoke")


def timed(lab: Lab, state: str, *args: str) -> float:
    env = {**os.environ, **lab.env(), "XDG_STATE_HOME": state}
    started = time.monotonic()
    result = subprocess.run([INVOKE, *args], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    rows = []
    for accounts in args.accounts:
        lab = Lab(name="cmbench")
        if Lab.load("cmbench"):
            Lab.load("cmbench").down()
        lab.up()
        try:
            seeded = seed_relay(
                lab, SeedParams(accounts=accounts, messages=args.messages, size=args.size)
            )
            with tempfile.TemporaryDirectory() as state:
                pre = timed(lab, state, "preflight", "--new-host", "new")
                timed(lab, state, "migrate", "--new-host", "new", "--yes", "--no-wait")
                ver = timed(lab, state, "verify", "--new-host", "new")
                ver_sum = timed(lab, state, "verify", "--new-host", "new", "--checksum")
            rows.append((accounts, seeded["mail_files"], seeded["mail_bytes"], pre, ver, ver_sum))
        finally:
            lab.down()
    line = "{:>9} {:>8} {:>7} {:>10} {:>8} {:>11}"
    print(line.format("accounts", "files", "MB", "preflight", "verify", "--checksum"))
    for accounts, files, size, pre, ver, ver_sum in rows:
        cells = (f"{size / 1e6:.1f}", f"{pre:.1f}s", f"{ver:.1f}s", f"{ver_sum:.1f}s")
        print(line.format(accounts, files, *cells))


if __name__ == "__main__":
    main()
