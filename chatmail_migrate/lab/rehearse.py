"""A whole migration rehearsed on the lab: the real ``migrate`` code path, with the
cmdeploy stand-in, the lab's nameservers, and the rehearsal playing the operator who
switches DNS when step 6 asks for it. Two Delta Chat users chat on old before and on
new after; check-relay's verdict (migrate runs it last) is summed up from the journal."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from chatmail_migrate.journal import Journal
from chatmail_migrate.lab import deltachat_users, nameserver
from chatmail_migrate.lab.lab import Lab
from chatmail_migrate.lab.rootfs import LabError
from chatmail_migrate.lab.seed import SeedParams, seed_relay

TOOL = [sys.executable, "-m", "chatmail_migrate"]
T = TypeVar("T")


def _run(lab: Lab, env: dict, *args: str, on_line=None) -> int:
    """Run the tool as an operator would, its output streaming through."""
    proc = subprocess.Popen(
        [*TOOL, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if on_line:
            on_line(line)
    return proc.wait()


def _chatting(part: Callable[[], T]) -> T | None:
    """A part of the Delta Chat exchange, or None after saying in one line why it failed
    (the core's own errors included: the rehearsal then fails, it does not stop)."""
    try:
        return part()
    except Exception as e:
        detail = str(e) if isinstance(e, LabError) else f"{type(e).__name__}: {e}"
        detail = detail.removeprefix("Delta Chat: ")
        print(f"rehearse: Delta Chat FAILED: {detail}")
        return None


def _migrate(lab: Lab, state: str) -> int:
    """migrate as the operator runs it, then verify --checksum; prints the downtime and
    check-relay's verdict."""
    env = {**os.environ, **lab.env(), "XDG_STATE_HOME": state}
    switched = []

    def operator(line: str) -> None:
        if "waiting for DNS" in line and not switched:
            switched.append(True)
            nameserver.update(lab, a=[lab.address("new")])
            print(f"rehearse: (as the operator) {lab.domain} A → {lab.address('new')}")

    code = _run(lab, env, "migrate", "--new-host", "new", "--yes", on_line=operator)
    if code == 0:
        code = _run(lab, env, "verify", "--new-host", "new", "--checksum")
    journal = Journal.load(Path(state, "chatmail-migrate", f"{lab.domain}.json"))
    down = journal.downtime()
    if down is not None:
        print(f"rehearse: mail was down for {down:.1f}s")
    checked = journal.last_event("relay-checked")
    if checked:
        counts = Counter(line.split()[0] for line in checked.get("lines", []))
        print(
            "rehearse: check-relay: "
            + ", ".join(f"{counts[status]} {status}" for status in ("PASS", "WARN", "FAIL"))
        )
    elif code == 0:
        print("rehearse: check-relay did not run")
        code = 1
    return code


def rehearse(params: SeedParams, *, name: str = "rehearse", keep: bool = False) -> int:
    if os.geteuid() != 0:
        raise LabError("rehearse needs root (it boots the lab): run it as root")
    deltachat_users.require()
    started = time.monotonic()
    stale = Lab.load(name)
    if stale:
        stale.down()
    lab = Lab(name=name)
    code = 1
    try:
        lab.up()
        seeded = seed_relay(lab, params)
        print(
            f"rehearse: old holds relay {params.version} for {lab.domain}: {params.accounts} "
            f"accounts, {seeded['mail_files']} files, {seeded['mail_bytes'] / 1e6:.1f} MB"
        )
        state = tempfile.mkdtemp(prefix="chatmail-rehearse-")
        with deltachat_users.delta_chat(Path(state, "deltachat")) as dc:
            users = _chatting(lambda: deltachat_users.chat_on_old(lab, dc))
            if users:
                print(
                    "rehearse: Delta Chat: alice and bob chat on old; a message waits for "
                    "bob, offline"
                )
                code = _migrate(lab, state)
            if code == 0:
                shown = _chatting(lambda: deltachat_users.chat_on_new(lab, users))
                if shown:
                    print(f"rehearse: Delta Chat: {shown}")
                else:
                    code = 1
        print(
            f"rehearse: {'PASSED' if code == 0 else 'FAILED'} in "
            f"{time.monotonic() - started:.0f}s; journal {state}"
        )
    finally:
        if keep:
            print(
                f"rehearse: lab {lab.name} kept: ssh -F {lab.ssh_config} old (or new, spare); "
                f'eval "$(invoke lab.env --name {lab.name})"; invoke lab.down --name {lab.name}'
            )
        else:
            lab.down()
    return code
