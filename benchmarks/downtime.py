"""Downtime of a move, side by side on one lab (run by hand, as root; not a test).

    .venv/bin/python benchmarks/downtime.py --repeat 3      # ~1 GiB, 50,000 messages
    .venv/bin/python benchmarks/downtime.py --accounts 200 --messages 10   # a quick look
    .venv/bin/python benchmarks/downtime.py --files 16000,160000,1000000 --size 2048

Seeds old as a relay (default: 2,000 accounts x 25 messages of 21 KiB, relay 1.10),
then on the same hosts, one after the other:

- physical reference: reading the copied trees on old (``tar c | cat >/dev/null``)
  and raw ssh throughput old -> new (zeros through the same ssh, ``cat >/dev/null``);
- A: the seed's procedure by hand (its pipe with ``tar c`` fixed, cmdeploy, chowns);
- B: ``invoke migrate`` (default);
- C: ``invoke migrate --presync``, with 1% messages added and 0.5% deleted on old
  between the pre-sync and disable-mail (the lab's last-mail hook).

Both cache regimes are real (a relay's recent mail is in the page cache, old mail is
not): each round runs A, B and C with warm caches (the trees were just written or
read) and with caches dropped before the run (``--caches`` picks). Between runs new
is emptied and mail re-enabled on old. ``--repeat N`` interleaves N rounds and shows
medians. The downtime runs from disable-mail to the end of enable-mail; for C the
churn is made by the hook in the first stand-in run with --disable-mail (install's,
under migrate's cutover, before the downtime) and its own time is taken out where it
fell inside disable-mail. cmdeploy's own
time inside the downtime comes from the command log (the stand-in's here; a real
``cmdeploy run`` takes minutes).

``--files N,M,...`` seeds one lab per size (entries, accounts derived from
``--messages``; keep ``--size`` small for a million) and prints every downtime step's
median time for A, B and C side by side, so the growth with the relay shows. The
end is one PASS/FAIL line per target of issue 14, with its measured value: B's
downtime <= 1.10 x A's (each cache regime), C's <= 0.30 x A's, at >= 900,000 entries
C's downtime without cmdeploy <= 15 s, and the tool's peak memory < 100 MB (the
largest process the runs left, i.e. the tool). Writes every run as JSON.

From outside (issue 24): the lab's probe (``probe_window.py``) runs around every run
and its window (old's last IMAP login to new's first login that sees old's last
message) is printed beside the tool's own downtime, with what users behind a
resolver cache saw (the lab's DNS changes at once when a run switches it) and the
cmdeploy runs inside the window. ``--cmdeploy-seconds 0,60`` runs every variant with
each stand-in run lasting that much longer (CHATMAIL_LAB_CMDEPLOY_SECONDS, before it
touches a service), side by side; ``--probe-sender`` picks how mail reaches old
(``live`` until old refuses, ``before``: refused and delivered before the run, ``off``);
``--no-probe`` leaves the probe out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from downtime_tables import print_tables, run_line, targets  # noqa: E402
from host_memory import helpers_memory  # noqa: E402
from probe_window import SENDERS, point_dns, probed  # noqa: E402

from chatmail_migrate.journal import Journal  # noqa: E402
from chatmail_migrate.lab import Lab, SeedParams, seed_relay  # noqa: E402
from chatmail_migrate.relay import DEFAULT_COPY_PATHS  # noqa: E402

INVOKE = str(Path(sys.executable).parent / "invoke")
MAILDIR = "/home/vmail/mail"
# The operator accepted new's key long ago; the lab's old host has never seen it.
INNER_SSH = "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cmdeploy(lab: Lab, host: str, *extra: str, **env_extra: str) -> None:
    env = {**os.environ, **lab.env(), **env_extra}
    subprocess.run(
        [env["CMDEPLOY"], "run", *extra, "--ssh-host", host],
        cwd=lab.relay_dir,
        env=env,
        check=True,
        capture_output=True,
    )


# Where reset() moves new's copies: on ext4 mounted with ``discard`` (this machine's),
# every file created in the minutes after a mass deletion costs about 5x the kernel
# time (160k entries: tar x 5 s fresh, 28 s right after ``rm -rf`` of the same tree).
# A real new host is fresh, so runs must not follow a deletion; the lab's teardown
# deletes what was moved here, after the measurements.
ASIDE = "/var/lib/chatmail-bench-aside"


def reset(lab: Lab, known_hosts: str) -> None:
    """New back to an empty host with the relay's users; mail on again on old; DNS and
    the lab's known_hosts (``known_hosts``: as the lab wrote it) back at old."""
    moves = " ".join(shlex.quote(p) for p in [*DEFAULT_COPY_PATHS, "/var/lib/chatmail-migrate"])
    lab.ssh(
        "new",
        "systemctl disable --now postfix dovecot 2>/dev/null; "
        f'aside={ASIDE}/$(date +%s%N); for p in {moves}; do [ -e "$p" ] || continue; '
        'mkdir -p "$aside$(dirname "$p")" && mv "$p" "$aside$p"; done',
    )
    # Before the deploy: 1.6/1.7's cmdeploy logs in to the mail domain, which must lead
    # to old under old's key again (a run left it at new, with new's key).
    point_dns(lab, "old")
    lab.known_hosts.write_text(known_hosts)
    # Not a measured run: at the stand-in's own speed, whatever the pass models.
    cmdeploy(lab, "old", CHATMAIL_LAB_CMDEPLOY_SECONDS="0", CHATMAIL_LAB_CMDEPLOY_LOG="")
    # The last-mail hook runs once per boot of old (the stand-in's mark): once per run here.
    lab.ssh("old", "rm -f /run/chatmail-lab-last-mail.done")


def accept_new_key_for_domain(lab: Lab) -> None:
    """What the operator does by hand once DNS points at new, before cmdeploy up to 1.7
    logs in to the mail domain: ``ssh-keygen -R DOMAIN`` and new's key accepted."""
    subprocess.run(
        ["ssh-keygen", "-R", lab.domain, "-f", str(lab.known_hosts)],
        check=True,
        capture_output=True,
    )
    keys = lab.ssh("new", "cat /etc/ssh/ssh_host_*_key.pub").stdout.splitlines()
    with lab.known_hosts.open("a") as known:
        known.writelines(f"{lab.domain} {' '.join(k.split()[:2])}\n" for k in keys if k)


def run_tool(lab: Lab, state: str, *args: str, **extra: str) -> tuple[float, int, int, str]:
    """Run invoke, changing the lab's DNS when its switch-dns step starts; return its wall
    time, peak memory (KiB) of the tool's process tree, exit code and output."""
    env = {**os.environ, **lab.env(), "XDG_STATE_HOME": state, **extra}
    started = time.monotonic()
    proc = subprocess.Popen(
        [INVOKE, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines, switched = [], False
    for line in proc.stdout:
        lines.append(line)
        if not switched and re.search(r"\] switch-dns ", line):
            switched = True
            point_dns(lab, "new")
    code = proc.wait()
    wall = time.monotonic() - started
    # The largest reaped descendant so far: the tool (the seeding ran as ssh clients).
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak, code, "".join(lines)


def from_journal(state: str, domain: str) -> dict:
    journal = Journal.load(Path(state, "chatmail-migrate", f"{domain}.json"))
    steps = journal.steps
    first = steps["disable-mail"]
    inside = [n for n in journal.plan if steps[n]["started_ts"] >= first["started_ts"]]
    copies = journal.last_event("copied")["copies"]
    return {
        "downtime": journal.downtime(),
        "copy": steps["copy-data"]["seconds"],
        "steps": {n: steps[n]["seconds"] for n in inside},
        "presync": steps.get("presync", {}).get("seconds"),
        "bytes": sum(c.get("bytes_sent", 0) for c in copies),
        "phases": copies,
    }


def physical(lab: Lab, paths: list[str], size: int) -> dict:
    rel = " ".join(p.lstrip("/") for p in paths)
    drop_caches()
    started = time.monotonic()
    lab.ssh("old", f"tar --create --file=- --directory=/ {rel} | cat > /dev/null", timeout=3600)
    read = time.monotonic() - started
    # The floor of any pass over every entry (rsync's comparison, verify's listing):
    # one stat per entry with the metadata in cache, as right after the read above.
    started = time.monotonic()
    lab.ssh("old", f"cd / && find {rel} -printf '%s %T@\\n' > /dev/null", timeout=3600)
    walk = time.monotonic() - started
    new = lab.address("new")
    zeros = max(size, 256 * 2**20)
    started = time.monotonic()
    lab.ssh(
        "old",
        f"head -c {zeros} /dev/zero | ssh {INNER_SSH} root@{new} 'cat >/dev/null'",
        timeout=3600,
        forward_agent=True,
    )
    ssh = time.monotonic() - started
    return {"read_s": read, "read_Bps": size / read, "ssh_Bps": zeros / ssh, "walk_s": walk}


def manual(lab: Lab, paths: list[str], caches: str = "dropped") -> dict:
    """The seed's procedure, step by step, as an operator types it."""
    new = lab.address("new")
    if caches == "dropped":
        drop_caches()
    steps = {}
    chowns = [
        "chown root: -R /var/lib/acme",
        "chown opendkim: -R /etc/dkimkeys",
        "chown vmail: -R /home/vmail/mail",
    ]
    tar = f"tar c {' '.join(paths)} | ssh {INNER_SSH} root@{new} 'tar x -C /'"
    for step, action in (
        ("disable-mail", lambda: cmdeploy(lab, "old", "--disable-mail")),
        ("copy", lambda: lab.ssh("old", tar, timeout=3600, forward_agent=True)),
        ("install", lambda: cmdeploy(lab, "new", "--disable-mail")),
        ("chowns", lambda: lab.ssh("new", " && ".join(chowns))),
        ("switch-dns", lambda: (point_dns(lab, "new"), accept_new_key_for_domain(lab))),
        ("enable-mail", lambda: cmdeploy(lab, "new")),
    ):
        started = time.monotonic()
        action()
        steps[step] = time.monotonic() - started
    return {
        "downtime": sum(steps.values()),
        "copy": steps["copy"],
        "steps": steps,
        "cmdeploy": steps["disable-mail"] + steps["install"] + steps["enable-mail"],
    }


# Run on old by the lab's last-mail hook, inside disable-mail: the churn is made in
# one process and its own time written down, so it is taken out of the downtime.
CHURN_PY = r"""
import glob, os, pwd, sys, time
started = time.monotonic()
root, new, gone, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
vmail = pwd.getpwnam("vmail")
accounts = sorted(glob.glob(os.path.join(root, "*", "*@*")))
body = os.urandom(size)
stamp = time.time_ns()
for i in range(new):
    # New names each run, as deliveries have: a name written again would be a message
    # rewritten in place, which Dovecot never does (and a final sync of what changed
    # since the pre-sync does not look for).
    path = os.path.join(accounts[i % len(accounts)], "new", "%d.M%d.late:2," % (stamp, i))
    with open(path, "wb") as f:
        f.write(body)
    os.chown(path, vmail.pw_uid, vmail.pw_gid)
removed = 0
for account in accounts:
    for path in sorted(glob.glob(os.path.join(account, "cur", "*")))[:1]:
        if removed < gone:
            os.unlink(path)
            removed += 1
with open("/root/churn-seconds", "w") as f:
    f.write("%.3f\n" % (time.monotonic() - started))
"""


def last_mail(messages_total: int, size: int) -> str:
    """Shell for the lab's last-mail hook: 1% of messages added, 0.5% deleted."""
    new, gone = max(messages_total // 100, 1), max(messages_total // 200, 1)
    return f"python3 -c {shlex.quote(CHURN_PY)} {MAILDIR} {new} {gone} {size}"


def cmdeploy_seconds(log: Path) -> dict[str, float]:
    """cmdeploy's own time per step, from the command log ([local ...] lines)."""
    seconds: dict[str, float] = {}
    step = ""
    for line in log.read_text().splitlines():
        started = re.search(r" -- \[\d+/\d+\] (\S+) .*: started$", line)
        if started:
            step = started.group(1)
        ran = re.match(r"\S+ \[local [^]]*\] exit=-?\d+ ([\d.]+)s ", line)
        if ran and step:
            seconds[step] = seconds.get(step, 0.0) + float(ran.group(1))
    return seconds


def tool_run(
    lab: Lab, name: str, args: argparse.Namespace, messages_total: int, caches: str
) -> dict:
    """B (migrate) or C (migrate --presync, with churn): steps and downtime from its journal."""
    state = tempfile.mkdtemp(prefix=f"bench-{name}-")
    hook: dict[str, str] = {}
    extra = []
    if name == "C":
        extra = ["--presync"]
        hook = {
            "CHATMAIL_LAB_BEFORE_DISABLE_MAIL": last_mail(messages_total, args.size),
            "CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST": "old",
        }
    if caches == "dropped":
        drop_caches()
    with helpers_memory(lab.name) as helpers:
        wall, peak, code, output = run_tool(
            lab,
            state,
            "migrate",
            "--old-host",
            "old",
            "--new-host",
            "new",
            "--yes",
            "--no-wait",
            *extra,
            **hook,
        )
    failed = [line for line in output.splitlines() if line.startswith("FAIL")]
    if code != 0 and "enable-mail done in" not in output:
        # No cutover (verify failed and rolled back, say): no downtime to compare.
        print(f"  {name}: migrate failed (exit {code}):\n" + output[-1500:], flush=True)
        return {"failed": output[-3000:], "exit": code, "downtime": None}
    # Mail runs on new; check-relay (after enable-mail) may still FAIL: kept beside.
    result = {
        **from_journal(state, lab.domain),
        "wall": wall,
        "peak_kib": peak,
        "helpers": helpers,
        "exit": code,
        "check_relay_failed": failed,
    }
    log = Path(state, "chatmail-migrate", f"{lab.domain}.log")
    deploy = cmdeploy_seconds(log)
    churn = 0.0
    if name == "C":
        churn = float(lab.ssh("old", "cat /root/churn-seconds").stdout)
        # The hook runs in the first stand-in run with --disable-mail: disable-mail's
        # deploy where it has one (the churn is the relay's last mail, not the
        # migration's time), else install's, before the downtime (migrate's cutover).
        if deploy.get("disable-mail"):
            result["steps"]["disable-mail"] -= churn
            deploy["disable-mail"] -= churn
            result["downtime"] -= churn
    result["churn"] = churn
    # Inside the downtime only: converge's deploys come after enable-mail.
    down = [k for k in result["steps"] if k != "converge"]
    result["cmdeploy"] = sum(v for k, v in deploy.items() if k in down)
    return result


@contextlib.contextmanager
def watched(lab: Lab, args: argparse.Namespace):
    """The probe around one run (``--no-probe``: nothing)."""
    if args.no_probe:
        yield {}
        return
    with probed(lab, args.probe_sender, args.client_ttl, args.window_wait) as seen:
        yield seen


def run_size(args: argparse.Namespace, accounts: int) -> dict:
    """Seed a lab with ``accounts`` accounts and run A, B, C interleaved, per cache regime."""
    stale = Lab.load(args.name)
    if stale:
        stale.down()
    lab = Lab(name=args.name)
    lab.up()
    try:
        params = SeedParams(
            accounts=accounts,
            messages=args.messages,
            size=args.size,
            version=args.relay_version,
        )
        started = time.monotonic()
        seeded = seed_relay(lab, params)
        seed_s = time.monotonic() - started
        listed = lab.ssh("old", "ls -d " + " ".join(DEFAULT_COPY_PATHS) + " 2>/dev/null || true")
        paths = listed.stdout.split()
        size = int(
            lab.ssh(
                "old",
                f"du -sb --apparent-size {' '.join(paths)} | awk '{{s += $1}} END {{print s}}'",
            ).stdout
        )
        entries = int(lab.ssh("old", f"find {' '.join(paths)} | wc -l").stdout)
        print(
            f"seeded in {seed_s:.0f}s: {entries} entries ({seeded['mail_files']} mail files), "
            f"{size / 2**20:.0f} MiB in {paths}",
            flush=True,
        )
        ref = physical(lab, paths, size)
        known_hosts = lab.known_hosts.read_text()
        reset(lab, known_hosts)
        runs: list[dict] = []
        messages_total = accounts * args.messages
        # Interleaved, so drifts of the machine touch every variant alike.
        for round_ in range(args.repeat):
            for caches, seconds in [(c, s) for c in args.caches for s in args.cmdeploy_seconds]:
                # Every stand-in run of this pass spends this long before its services.
                os.environ["CHATMAIL_LAB_CMDEPLOY_SECONDS"] = f"{seconds:g}"
                record = {"round": round_, "caches": caches, "cmdeploy_s": seconds}
                for name in args.variants:
                    with watched(lab, args) as seen:
                        if name == "A":
                            result = manual(lab, paths, caches)
                        else:
                            result = tool_run(lab, name, args, messages_total, caches)
                    runs.append({**record, "variant": name, **result, **seen})
                    reset(lab, known_hosts)
                print(
                    f"  round {round_ + 1} ({caches} caches, cmdeploy +{seconds:g}s): "
                    + ", ".join(run_line(r) for r in runs[-len(args.variants) :]),
                    flush=True,
                )
    finally:
        os.environ.pop("CHATMAIL_LAB_CMDEPLOY_SECONDS", None)
        lab.down()
    return {
        "accounts": accounts,
        "entries": entries,
        "files": seeded["mail_files"],
        "bytes": size,
        "seed_s": seed_s,
        "physical": ref,
        "runs": runs,
        "load": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=25)
    parser.add_argument("--size", type=int, default=21 * 1024)
    parser.add_argument(
        "--files",
        default="",
        help="comma-separated sizes in entries (e.g. 16000,160000,1000000): one lab each, "
        "accounts derived from --messages; the table of downtime steps by size",
    )
    parser.add_argument(
        "--caches", default="warm,dropped", help="warm, dropped, or both (comma-separated)"
    )
    parser.add_argument("--relay-version", default="1.10.0")
    parser.add_argument("--out", default="benchmark-downtime.json")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of A, B, C (medians shown)")
    parser.add_argument(
        "--variants",
        default="ABC",
        help="which runs, of A (by hand), B (migrate), C (migrate --presync); e.g. C for "
        "the million-entry window alone (the ratios to A are then left out)",
    )
    parser.add_argument("--name", default="cmbench", help="the lab's name (two labs side by side)")
    parser.add_argument(
        "--cmdeploy-seconds",
        default="0",
        help="comma-separated seconds each stand-in cmdeploy run spends before touching a "
        "service (e.g. 0,60: every variant with each, side by side)",
    )
    parser.add_argument(
        "--probe-sender",
        choices=SENDERS,
        default="live",
        help="mail to old's port 25 in each run (probe_window.py)",
    )
    parser.add_argument("--no-probe", action="store_true", help="no outside probe")
    parser.add_argument(
        "--window-wait",
        type=float,
        default=60,
        help="seconds a run waits for the probe's window to close",
    )
    parser.add_argument(
        "--client-ttl", type=float, help="seconds the probe's resolver cache keeps an answer"
    )
    args = parser.parse_args()
    args.caches = [c for c in args.caches.split(",") if c]
    if not args.variants or set(args.variants) - set("ABC"):
        parser.error("--variants: letters of A, B and C, e.g. --variants BC")
    args.cmdeploy_seconds = [float(x) for x in args.cmdeploy_seconds.split(",") if x]
    if os.geteuid() != 0:
        raise SystemExit("the benchmark boots the lab: run it as root")
    # An account holds its messages and 10 more entries (4 directories, 6 files).
    sizes = [max(int(n) // (args.messages + 10), 1) for n in args.files.split(",") if n]
    results = [run_size(args, accounts) for accounts in sizes or [args.accounts]]
    print_tables(results, args.caches, args.cmdeploy_seconds)
    found = targets(results, args.caches, args.cmdeploy_seconds)
    print()
    for target, t in found.items():
        print(f"{'PASS' if t['met'] else 'FAIL'}  {target}: {t['value']}")
    Path(args.out).write_text(
        json.dumps({"params": vars(args), "results": results, "targets": found}, indent=2) + "\n"
    )
    print(f"results: {args.out}")
    missed = [target for target, t in found.items() if not t["met"]]
    if missed:
        raise SystemExit(f"{len(missed)} target(s) missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
