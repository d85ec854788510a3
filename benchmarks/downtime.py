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
churn's own time (made inside disable-mail by the hook) is taken out. cmdeploy's own
time inside the downtime comes from the command log (the stand-in's here; a real
``cmdeploy run`` takes minutes).

``--files N,M,...`` seeds one lab per size (entries, accounts derived from
``--messages``; keep ``--size`` small for a million) and prints every downtime step's
median time for A, B and C side by side, so the growth with the relay shows. The
end is one PASS/FAIL line per target of issue 14, with its measured value: B's
downtime <= 1.10 x A's (each cache regime), C's <= 0.30 x A's, at >= 900,000 entries
C's downtime without cmdeploy <= 15 s, and the tool's peak memory < 100 MB (the
largest process the runs left, i.e. the tool). Writes every run as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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


def cmdeploy(lab: Lab, host: str, *extra: str) -> None:
    env = {**os.environ, **lab.env()}
    subprocess.run([env["CMDEPLOY"], "run", *extra, "--ssh-host", host], cwd=lab.relay_dir,
                   env=env, check=True, capture_output=True)  # fmt: skip


# Where reset() moves new's copies: on ext4 mounted with ``discard`` (this machine's),
# every file created in the minutes after a mass deletion costs about 5x the kernel
# time (160k entries: tar x 5 s fresh, 28 s right after ``rm -rf`` of the same tree).
# A real new host is fresh, so runs must not follow a deletion; the lab's teardown
# deletes what was moved here, after the measurements.
ASIDE = "/var/lib/chatmail-bench-aside"


def reset(lab: Lab) -> None:
    """New back to an empty host with the relay's users; mail on again on old."""
    moves = " ".join(shlex.quote(p) for p in [*DEFAULT_COPY_PATHS, "/var/lib/chatmail-migrate"])
    lab.ssh(
        "new",
        "systemctl disable --now postfix dovecot 2>/dev/null; "
        f'aside={ASIDE}/$(date +%s%N); for p in {moves}; do [ -e "$p" ] || continue; '
        'mkdir -p "$aside$(dirname "$p")" && mv "$p" "$aside$p"; done',
    )
    cmdeploy(lab, "old")


def run_tool(lab: Lab, state: str, *args: str, **extra: str) -> tuple[float, int]:
    """Run invoke; return its wall time and peak memory (KiB) of the tool's process tree."""
    env = {**os.environ, **lab.env(), "XDG_STATE_HOME": state, **extra}
    started = time.monotonic()
    proc = subprocess.Popen([INVOKE, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output = proc.communicate()[0]
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{output}")
    # The largest reaped descendant so far: the tool (the seeding ran as ssh clients).
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak


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
    lab.ssh("old", f"head -c {zeros} /dev/zero | ssh {INNER_SSH} root@{new} 'cat >/dev/null'",
            timeout=3600, forward_agent=True)  # fmt: skip
    ssh = time.monotonic() - started
    return {"read_s": read, "read_Bps": size / read, "ssh_Bps": zeros / ssh, "walk_s": walk}


def manual(lab: Lab, paths: list[str], caches: str = "dropped") -> dict:
    """The seed's procedure, step by step, as an operator types it."""
    new = lab.address("new")
    if caches == "dropped":
        drop_caches()
    steps = {}
    chowns = ["chown root: -R /var/lib/acme", "chown opendkim: -R /etc/dkimkeys",
              "chown vmail: -R /home/vmail/mail"]  # fmt: skip
    tar = f"tar c {' '.join(paths)} | ssh {INNER_SSH} root@{new} 'tar x -C /'"
    for step, action in (
        ("disable-mail", lambda: cmdeploy(lab, "old", "--disable-mail")),
        ("copy", lambda: lab.ssh("old", tar, timeout=3600, forward_agent=True)),
        ("install", lambda: cmdeploy(lab, "new", "--disable-mail")),
        ("chowns", lambda: lab.ssh("new", " && ".join(chowns))),
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


def tool_run(lab: Lab, name: str, args: argparse.Namespace, messages_total: int,
             caches: str) -> dict:  # fmt: skip
    """B (migrate) or C (migrate --presync, with churn): steps and downtime from its journal."""
    state = tempfile.mkdtemp(prefix=f"bench-{name}-")
    hook: dict[str, str] = {}
    extra = []
    if name == "C":
        extra = ["--presync"]
        hook = {"CHATMAIL_LAB_BEFORE_DISABLE_MAIL": last_mail(messages_total, args.size),
                "CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST": "old"}  # fmt: skip
    if caches == "dropped":
        drop_caches()
    wall, peak = run_tool(lab, state, "migrate", "--old-host", "old", "--new-host", "new",
                          "--yes", "--no-wait", *extra, **hook)  # fmt: skip
    result = {**from_journal(state, lab.domain), "wall": wall, "peak_kib": peak}
    log = Path(state, "chatmail-migrate", f"{lab.domain}.log")
    deploy = cmdeploy_seconds(log)
    churn = 0.0
    if name == "C":
        churn = float(lab.ssh("old", "cat /root/churn-seconds").stdout)
        # The churn ran inside disable-mail's cmdeploy: it is the relay's last mail, not
        # the migration's time.
        result["steps"]["disable-mail"] -= churn
        deploy["disable-mail"] = deploy.get("disable-mail", 0.0) - churn
        result["downtime"] -= churn
    result["churn"] = churn
    result["cmdeploy"] = sum(v for k, v in deploy.items() if k in result["steps"])
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_size(args: argparse.Namespace, accounts: int) -> dict:
    """Seed a lab with ``accounts`` accounts and run A, B, C interleaved, per cache regime."""
    stale = Lab.load(args.name)
    if stale:
        stale.down()
    lab = Lab(name=args.name)
    lab.up()
    try:
        params = SeedParams(
            accounts=accounts, messages=args.messages, size=args.size,
            version=args.relay_version,
        )  # fmt: skip
        started = time.monotonic()
        seeded = seed_relay(lab, params)
        seed_s = time.monotonic() - started
        listed = lab.ssh("old", "ls -d " + " ".join(DEFAULT_COPY_PATHS) + " 2>/dev/null || true")
        paths = listed.stdout.split()
        size = int(lab.ssh("old", f"du -sb --apparent-size {' '.join(paths)} | "
                           "awk '{s += $1} END {print s}'").stdout)  # fmt: skip
        entries = int(lab.ssh("old", f"find {' '.join(paths)} | wc -l").stdout)
        print(f"seeded in {seed_s:.0f}s: {entries} entries ({seeded['mail_files']} mail files), "
              f"{size / 2**20:.0f} MiB in {paths}", flush=True)  # fmt: skip
        ref = physical(lab, paths, size)
        reset(lab)
        runs: list[dict] = []
        messages_total = accounts * args.messages
        # Interleaved, so drifts of the machine touch every variant alike.
        for round_ in range(args.repeat):
            for caches in args.caches:
                record = {"round": round_, "caches": caches}
                runs.append({**record, "variant": "A", **manual(lab, paths, caches)})
                reset(lab)
                for name in "BC":
                    result = tool_run(lab, name, args, messages_total, caches)
                    runs.append({**record, "variant": name, **result})
                    reset(lab)
                print(
                    f"  round {round_ + 1} ({caches} caches): "
                    + ", ".join(f"{r['variant']} {r['downtime']:.1f}s" for r in runs[-3:]),
                    flush=True,
                )
    finally:
        lab.down()
    return {"accounts": accounts, "entries": entries, "files": seeded["mail_files"],
            "bytes": size, "seed_s": seed_s, "physical": ref, "runs": runs,
            "load": os.getloadavg()}  # fmt: skip


def summarize(result: dict, caches: str) -> dict[str, dict]:
    """Per variant: the medians of downtime, its parts and the steps inside it."""
    out: dict[str, dict] = {}
    for variant in "ABC":
        runs = [r for r in result["runs"] if r["variant"] == variant and r["caches"] == caches]
        if not runs:
            continue
        steps = sorted({s for r in runs for s in r["steps"]}, key=STEP_ORDER.index)
        out[variant] = {
            "downtime": median([r["downtime"] for r in runs]),
            "cmdeploy": median([r["cmdeploy"] for r in runs]),
            "without_cmdeploy": median([r["downtime"] - r["cmdeploy"] for r in runs]),
            "copy": median([r["copy"] for r in runs]),
            "steps": {s: median([r["steps"].get(s, 0.0) for r in runs]) for s in steps},
            "peak_kib": max((r.get("peak_kib", 0) for r in runs), default=0),
            "n": len(runs),
        }
    return out


# Every step that can lie inside the downtime, A's and the tool's, in their order.
STEP_ORDER = ["disable-mail", "copy", "copy-data", "install", "chowns", "fix-ownership",
              "verify", "switch-dns", "enable-mail"]  # fmt: skip
LABELS = {"A": "A: by hand", "B": "B: migrate", "C": "C: migrate --presync"}


def print_tables(results: list[dict], caches: list[str]) -> None:
    for result in results:
        ref = result["physical"]
        print(f"\n{result['entries']:,} entries ({result['files']:,} mail files, "
              f"{result['bytes'] / 2**20:.0f} MiB); reading on old {ref['read_Bps'] / 2**20:.0f} "
              f"MiB/s, raw ssh {ref['ssh_Bps'] / 2**20:.0f} MiB/s, a warm stat of every entry "
              f"on old {ref.get('walk_s', 0):.1f} s; load average at the end "
              + " ".join(f"{x:.1f}" for x in result["load"]))  # fmt: skip
        fmt = "  {:24} {:>8} {:>8} {:>9} {:>8} {:>7} {:>8}"
        print(fmt.format("run (median)", "down s", "of A", "-cmdeploy", "copy s", "runs",
                         "tool MiB"))  # fmt: skip
        for regime in caches:
            summary = summarize(result, regime)
            a = summary["A"]["downtime"]
            for variant, s in summary.items():
                print(
                    fmt.format(
                        f"{LABELS[variant]}, {regime}",
                        f"{s['downtime']:.1f}",
                        f"{s['downtime'] / a:.2f}",
                        f"{s['without_cmdeploy']:.1f}",
                        f"{s['copy']:.1f}",
                        s["n"],
                        f"{s['peak_kib'] / 1024:.0f}" if s["peak_kib"] else "-",
                    )
                )
    # The growth: every downtime step's median time at each size, per variant.
    for regime in caches:
        print(f"\ndowntime steps, seconds (medians, {regime} caches)")
        sizes = [f"{r['entries'] // 1000}k" for r in results]
        cols = [f"{v}@{size}" for size in sizes for v in "ABC"]
        print("  {:14}".format("step") + "".join(f"{c:>10}" for c in cols))
        summaries = [summarize(r, regime) for r in results]
        for step in STEP_ORDER + ["downtime", "cmdeploy"]:
            cells = []
            for summary in summaries:
                for v in "ABC":
                    s = summary.get(v, {})
                    value = s.get(step) if step in ("downtime", "cmdeploy") else s.get(
                        "steps", {}).get(step)  # fmt: skip
                    cells.append(f"{value:.1f}" if value is not None else "-")
            if any(c != "-" for c in cells):
                print(f"  {step:14}" + "".join(f"{c:>10}" for c in cells))


def targets(results: list[dict], caches: list[str]) -> dict[str, dict]:
    """The issue's targets, with the measured ratio (or seconds) beside each."""
    found: dict[str, dict] = {}
    base = results[0]
    for regime in caches:
        s = summarize(base, regime)
        ratio = s["B"]["downtime"] / s["A"]["downtime"]
        found[f"B downtime <= 1.10 x A ({regime} caches, {base['entries']:,} entries)"] = {
            "value": round(ratio, 2), "met": ratio <= 1.10}  # fmt: skip
        ratio = s["C"]["downtime"] / s["A"]["downtime"]
        found[f"C downtime <= 0.30 x A ({regime} caches, {base['entries']:,} entries)"] = {
            "value": round(ratio, 2), "met": ratio <= 0.30}  # fmt: skip
    big = max(results, key=lambda r: r["entries"])
    if big["entries"] >= 900_000:
        s = summarize(big, caches[0])
        seconds = s["C"]["without_cmdeploy"]
        found[f"C downtime without cmdeploy <= 15 s ({big['entries']:,} entries)"] = {
            "value": round(seconds, 1), "met": seconds <= 15}  # fmt: skip
    peak = max(r.get("peak_kib", 0) for result in results for r in result["runs"])
    found["tool peak memory < 100 MB"] = {
        "value": round(peak * 1024 / 1e6),
        "met": peak * 1024 < 100e6,
    }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=25)
    parser.add_argument("--size", type=int, default=21 * 1024)
    parser.add_argument(
        "--files", default="",
        help="comma-separated sizes in entries (e.g. 16000,160000,1000000): one lab each, "
        "accounts derived from --messages; the table of downtime steps by size",
    )  # fmt: skip
    parser.add_argument("--caches", default="warm,dropped",
                        help="warm, dropped, or both (comma-separated)")  # fmt: skip
    parser.add_argument("--relay-version", default="1.10.0")
    parser.add_argument("--out", default="benchmark-downtime.json")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of A, B, C (medians shown)")
    parser.add_argument("--name", default="cmbench", help="the lab's name (two labs side by side)")
    args = parser.parse_args()
    args.caches = [c for c in args.caches.split(",") if c]
    if os.geteuid() != 0:
        raise SystemExit("the benchmark boots the lab: run it as root")
    # An account holds its messages and 10 more entries (4 directories, 6 files).
    sizes = [max(int(n) // (args.messages + 10), 1) for n in args.files.split(",") if n]
    results = [run_size(args, accounts) for accounts in sizes or [args.accounts]]
    print_tables(results, args.caches)
    found = targets(results, args.caches)
    print()
    for target, t in found.items():
        print(f"{'PASS' if t['met'] else 'FAIL'}  {target}: {t['value']}")
    Path(args.out).write_text(json.dumps({"params": vars(args), "results": results,
                                          "targets": found}, indent=2) + "\n")  # fmt: skip
    print(f"results: {args.out}")
    missed = [target for target, t in found.items() if not t["met"]]
    if missed:
        raise SystemExit(f"{len(missed)} target(s) missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
