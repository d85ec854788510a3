"""The downtime benchmark's medians, tables and targets (downtime.py runs, this reads).

Runs are grouped by size, cache regime and the cmdeploy duration modelled
(``cmdeploy_s``); a run that failed (no cutover) has no downtime and is left out of
the medians (the round's line names it). Beside the tool's own downtime, each row
shows the probe's window (old's last login to new's first login seeing old's last
message), what users behind a resolver cache saw, and in how many runs a cmdeploy
run overlapped the window.
"""

from __future__ import annotations

import statistics

# Every step that can lie inside the downtime, A's and the tool's, in their order.
STEP_ORDER = [
    "disable-mail",
    "copy",
    "copy-data",
    "install",
    "chowns",
    "fix-ownership",
    "verify",
    "switch-dns",
    "enable-mail",
    "converge",
]
LABELS = {"A": "A: by hand", "B": "B: migrate", "C": "C: migrate --presync"}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_line(run: dict) -> str:
    if run.get("downtime") is None:
        return f"{run['variant']} FAILED"
    probe = run.get("probe") or {}
    seen = ""
    if probe.get("window") is not None:
        seen = f", probe {probe['window']:.1f}s"
    elif probe.get("at_least") is not None:
        # Open when the probe stopped: old's last message not readable on new yet.
        seen = f", probe >{probe['at_least']:.0f}s ({probe.get('last_where', 'open')})"
    return f"{run['variant']} {run['downtime']:.1f}s{seen}"


def probe_medians(probes: list[dict]) -> dict:
    """The probe's window and users' outage (None: not probed, or still open at the end
    of a run), and in how many runs a cmdeploy run overlapped the window."""
    windows = [p["window"] for p in probes]
    users = [p["users"] for p in probes]
    users_closed = probes and None not in users and not any(p["users_open"] for p in probes)
    # A window still open when the probe stopped is at least that long (a lower bound).
    bounds = [p["window"] if p["window"] is not None else p.get("at_least") for p in probes]
    return {
        "probe": median(windows) if probes and None not in windows else None,
        "probe_at_least": median(bounds) if probes and None not in bounds else None,
        "users": median(users) if users_closed else None,
        "in_window": sum(bool(p["cmdeploy_in_window"]) for p in probes),
        "probed": len(probes),
    }


def summarize(result: dict, caches: str, seconds: float = 0.0) -> dict[str, dict]:
    """Per variant: the medians of downtime, its parts and the steps inside it."""
    out: dict[str, dict] = {}
    for variant in "ABC":
        runs = [
            r
            for r in result["runs"]
            if (r["variant"], r["caches"], r.get("cmdeploy_s", 0.0)) == (variant, caches, seconds)
            and r.get("downtime") is not None
        ]
        if not runs:
            continue
        probes = [r["probe"] for r in runs if r.get("probe")]
        steps = sorted({s for r in runs for s in r["steps"]}, key=STEP_ORDER.index)
        out[variant] = {
            "downtime": median([r["downtime"] for r in runs]),
            "cmdeploy": median([r["cmdeploy"] for r in runs]),
            "without_cmdeploy": median([r["downtime"] - r["cmdeploy"] for r in runs]),
            "copy": median([r["copy"] for r in runs]),
            "steps": {s: median([r["steps"].get(s, 0.0) for r in runs]) for s in steps},
            "peak_kib": max((r.get("peak_kib", 0) for r in runs), default=0),
            "n": len(runs),
            **probe_medians(probes),
        }
    return out


def _cell(value: float | None, probed: int) -> str:
    if value is not None:
        return f"{value:.1f}"
    return "open" if probed else "-"


def print_tables(results: list[dict], caches: list[str], seconds: list[float]) -> None:
    for result in results:
        ref = result["physical"]
        print(
            f"\n{result['entries']:,} entries ({result['files']:,} mail files, "
            f"{result['bytes'] / 2**20:.0f} MiB); reading on old {ref['read_Bps'] / 2**20:.0f} "
            f"MiB/s, raw ssh {ref['ssh_Bps'] / 2**20:.0f} MiB/s, a warm stat of every entry "
            f"on old {ref.get('walk_s', 0):.1f} s; load average at the end "
            + " ".join(f"{x:.1f}" for x in result["load"])
        )
        fmt = "  {:34} {:>7} {:>6} {:>9} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}"
        print(
            fmt.format(
                "run (median)",
                "down s",
                "of A",
                "-cmdeploy",
                "copy s",
                "runs",
                "tool MiB",
                "probe s",
                "users s",
                "cmd∩win",
            )
        )
        for regime in caches:
            for sec in seconds:
                summary = summarize(result, regime, sec)
                a = summary.get("A", {}).get("downtime")
                for variant, s in summary.items():
                    print(
                        fmt.format(
                            f"{LABELS[variant]}, {regime}, cmdeploy +{sec:g}s",
                            f"{s['downtime']:.1f}",
                            f"{s['downtime'] / a:.2f}" if a else "-",
                            f"{s['without_cmdeploy']:.1f}",
                            f"{s['copy']:.1f}",
                            s["n"],
                            f"{s['peak_kib'] / 1024:.0f}" if s["peak_kib"] else "-",
                            _cell(s["probe"], s["probed"]),
                            _cell(s["users"], s["probed"]),
                            f"{s['in_window']}/{s['probed']}" if s["probed"] else "-",
                        )
                    )
        helpers = helpers_peaks(result["runs"])
        if helpers:
            print(
                "  the tool's helpers on each host, peak MiB (all at once; largest process): "
                + "; ".join(
                    f"{host} {h['peak_kib'] / 1024:.0f} ({h['largest_kib'] / 1024:.0f}: "
                    f"{h['largest'][:40]})"
                    for host, h in helpers.items()
                )
            )
    # The growth: every downtime step's median time at each size, per variant.
    for regime in caches:
        for sec in seconds:
            print(f"\ndowntime steps, seconds (medians, {regime} caches, cmdeploy +{sec:g}s)")
            sizes = [f"{r['entries'] // 1000}k" for r in results]
            cols = [f"{v}@{size}" for size in sizes for v in "ABC"]
            print("  {:14}".format("step") + "".join(f"{c:>10}" for c in cols))
            summaries = [summarize(r, regime, sec) for r in results]
            for step in STEP_ORDER + ["downtime", "cmdeploy", "probe"]:
                cells = []
                for summary in summaries:
                    for v in "ABC":
                        s = summary.get(v, {})
                        value = (
                            s.get(step)
                            if step in ("downtime", "cmdeploy", "probe")
                            else (s.get("steps", {}).get(step))
                        )
                        cells.append(f"{value:.1f}" if value is not None else "-")
                if any(c != "-" for c in cells):
                    print(f"  {step:14}" + "".join(f"{c:>10}" for c in cells))


def helpers_peaks(runs: list[dict]) -> dict[str, dict]:
    """Per host, the run whose helpers took the most memory at once (host_memory.py)."""
    peaks: dict[str, dict] = {}
    for run in runs:
        for host, h in (run.get("helpers") or {}).items():
            if h["peak_kib"] > peaks.get(host, {"peak_kib": -1})["peak_kib"]:
                peaks[host] = h
    return peaks


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 2) if x is not None and y else None


def _target(found: dict, name: str, value: float | None, limit: float) -> None:
    found[name] = {"value": value, "met": value is not None and value <= limit}


def targets(results: list[dict], caches: list[str], seconds: list[float]) -> dict[str, dict]:
    """The issues' targets, with the measured ratio (or seconds) beside each."""
    found: dict[str, dict] = {}
    base, first = results[0], seconds[0]
    for regime in caches:
        s = summarize(base, regime, first)
        a = s.get("A", {}).get("downtime")
        where = f"{regime} caches, {base['entries']:,} entries, cmdeploy +{first:g}s"
        if a is None:
            continue
        _target(
            found,
            f"B downtime <= 1.10 x A ({where})",
            _ratio(s.get("B", {}).get("downtime"), a),
            1.10,
        )
        _target(
            found,
            f"C downtime <= 0.30 x A ({where})",
            _ratio(s.get("C", {}).get("downtime"), a),
            0.30,
        )
    big = max(results, key=lambda r: r["entries"])
    if big["entries"] >= 900_000:
        s = summarize(big, caches[0], first)
        _target(
            found,
            f"C downtime without cmdeploy <= 15 s ({big['entries']:,} entries)",
            s.get("C", {}).get("without_cmdeploy"),
            15,
        )
        if s.get("C", {}).get("probe_at_least") is not None:
            where = f"{big['entries']:,} entries, {caches[0]} caches, cmdeploy +{first:g}s"
            c = s["C"]
            _target(found, f"C window <= 15 s (probe, {where})", c["probe"], 15)
    peak = max((r.get("peak_kib", 0) for result in results for r in result["runs"]), default=0)
    _target(found, "tool peak memory < 100 MB", round(peak * 1024 / 1e6), 99.999)
    runs_all = [r for result in results for r in result["runs"]]
    for host, h in helpers_peaks(runs_all).items():
        _target(
            found,
            f"the tool's helpers on {host}: peak memory < 200 MB (all at once)",
            round(h["peak_kib"] * 1024 / 1e6),
            199.999,
        )
    # Issue 24, from outside.
    runs = [r for result in results for r in result["runs"] if r.get("probe")]
    if not runs:
        return found
    _target(
        found,
        "probe: never both hosts served (runs where they did)",
        sum(bool(r["probe"]["both_served"]) for r in runs),
        0,
    )
    _target(
        found,
        "probe: old's last accepted message on new (B, C runs where it is not)",
        sum(r["probe"]["last_on_new"] is False for r in runs if r["variant"] in "BC"),
        0,
    )
    failed = sum(r.get("downtime") is None for result in results for r in result["runs"])
    _target(found, "runs without a cutover (failed)", failed, 0)
    if 0 in seconds:
        zero = [r for r in runs if r.get("cmdeploy_s") == 0 and r["variant"] in "BC"]
        _target(
            found,
            "no cmdeploy run inside the probe's window at +0s (B, C runs with one)",
            sum(bool(r["probe"]["cmdeploy_in_window"]) for r in zero),
            0,
        )
    if 60 in seconds:
        for regime in caches:
            s = summarize(base, regime, 60)
            a = s.get("A", {}).get("probe")
            c, b = s.get("C", {}).get("probe"), s.get("B", {}).get("probe")
            where = f"probe, {regime} caches, cmdeploy +60s"
            if a is None and s.get("A", {}).get("probe_at_least") is not None:
                # By hand nothing flushes new's queue: old's last message waits there
                # for Postfix's retry, and A's window is still open when the probe stops.
                a = s["A"]["probe_at_least"]
                where += f"; A still open, at least {a:.0f} s: the ratios are upper bounds"
            if "C" in s:
                _target(found, f"C window <= 10 s ({where})", c, 10)
            if "A" in s and "C" in s:
                _target(found, f"C window <= 0.10 x A ({where})", _ratio(c, a), 0.10)
            if "A" in s and "B" in s:
                _target(found, f"B window <= 0.50 x A ({where})", _ratio(b, a), 0.50)
    return found
