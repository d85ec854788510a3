"""LAB STAND-IN for the chatmail relay's ``cmdeploy``: not the real thing.

The real ``cmdeploy run`` deploys a whole relay with pyinfra and needs the
internet. Lab hosts have none, so the lab plugs in this script instead (through
``CMDEPLOY``). It takes the arguments the tool passes to ``cmdeploy``, is run
from the relay checkout holding ``chatmail.ini``, reads the release from the
checkout's git tag, and does to hosts, DNS lookups and known_hosts what that
release's ``cmdeploy run`` does (README, "Relay releases", has a row per behaviour
with the upstream file it comes from):

- up to 1.7 it logs in to ``mail_domain`` over OpenSSH itself, before deploying
  (DNS check) and after a deploy (echobot's invite link), whatever ``--ssh-host``
  says: at the address the lab's DNS gives now, checked against the operator's
  known_hosts; from 1.8 it logs in to ``--ssh-host`` first (execnet: OpenSSH with
  the operator's ssh config, an unknown key refused without a terminal);
- the deploy itself (pyinfra) accepts an unknown host key and appends it to the
  ssh config's UserKnownHostsFile, whatever StrictHostKeyChecking says; a changed
  key fails it;
- it checks the domain's A/AAAA and the mta-sts/www CNAMEs (``--skip-dns-check``
  from 1.8), asked of the lab's nameservers;
- stages (1.8+: ``CMDEPLOY_STAGES``, split on "," as upstream): install creates
  users (vmail; echobot up to 1.8), configure writes chatmail's opendkim config
  (socket in the Postfix spool), Postfix's milter settings and the DKIM key when
  missing, activate starts services and restarts only what *this process's*
  configure changed: run separately, activate restarts nothing;
- 1.10+: configure fails when tls_external_cert_and_key names a missing file, and
  makes the self-signed pair of ``_`` domains when missing; 1.11+: IP-only relays
  (no DKIM, self-signed pair);
- ``--disable-mail`` stops and disables postfix and dovecot; everything else runs;
- configure writes a working relay's Dovecot (IMAP on 993, LMTP for Postfix,
  accounts by the lab's doveauth, ``relay_auth.py``) and Postfix (its domain
  delivered by LMTP, submission on 465 with SASL), serving the release's
  certificate (``tls_pair``); activate makes acmetool's certificate when there is
  none and mail is to run (no ACME server here: self-signed).

For fault tests, ``CHATMAIL_LAB_CMDEPLOY_FAIL=before|after[@HOST][:enable]`` makes it
fail before touching the host or after doing its work (``:enable``: only a run that
turns mail on). For pre-sync tests and the
benchmark, ``CHATMAIL_LAB_BEFORE_DISABLE_MAIL`` is shell run on the host
``CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST``, once per boot of that host, in the first
``--disable-mail`` run: the last mail a live relay takes before its mail goes down.
That run is migrate's install on new (the cutover itself runs no cmdeploy) or the
seed's disable-mail on old.

For the benchmark, ``CHATMAIL_LAB_CMDEPLOY_SECONDS`` (float, default 0) is how long
a run spends before it sends its deploy to the host, i.e. before any service is
started, stopped or restarted: a real run's apt, file transfers and fact gathering
come first and take tens of seconds, which the stand-in otherwise skips. And
``CHATMAIL_LAB_CMDEPLOY_LOG`` names a file to which every run (a failed or dry one
too) appends one JSON line: its start and end (epoch seconds), ``--ssh-host``, the
release, ``--disable-mail``, ``CMDEPLOY_STAGES`` as given, the exit code; so a
probe's outage can be laid beside the runs.

This module is the command line (``main``: the arguments, the stages asked for, the
fault hooks, and the order of logins, checks and deploy); the release table and the
checkout's chatmail.ini are in ``standin_release.py``, the shell run on the host in
``standin_deploy.py``, DNS lookups and SSH logins in ``standin_dns.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from chatmail_migrate.lab.standin_deploy import deploy_script
from chatmail_migrate.lab.standin_dns import (
    check_dns,
    login_to_domain,
    login_to_ssh_host,
    pyinfra_ssh,
)
from chatmail_migrate.lab.standin_release import (
    ALL_STAGES,
    Release,
    checkout_version,
    read_ini,
)

SECONDS_ENV = "CHATMAIL_LAB_CMDEPLOY_SECONDS"
LOG_ENV = "CHATMAIL_LAB_CMDEPLOY_LOG"


def modelled_seconds() -> float:
    """How long a run stands for a real deploy's work before its services change."""
    value = os.environ.get(SECONDS_ENV, "").strip()
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        raise SystemExit(f"error: {SECONDS_ENV}={value!r} is not a number of seconds") from None
    if seconds < 0:
        raise SystemExit(f"error: {SECONDS_ENV}={value!r} must not be negative")
    return seconds


def log_run(record: dict) -> None:
    """One JSON line per run, written with one append (runs may overlap)."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatmail-lab-cmdeploy-standin",
        description="LAB STAND-IN for cmdeploy: not the real cmdeploy (see module docstring).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="deploy (users, opendkim, services) to a lab host")
    run.add_argument("--disable-mail", action="store_true")
    run.add_argument("--ssh-host")
    run.add_argument("--config", default=os.environ.get("CHATMAIL_INI", "chatmail.ini"))
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--skip-dns-check", action="store_true")
    run.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    seconds = modelled_seconds()
    record = {
        "start": time.time(),
        "ssh_host": args.ssh_host,
        "disable_mail": args.disable_mail,
        "dry_run": args.dry_run,
        "cmdeploy_stages": os.environ.get("CMDEPLOY_STAGES"),
        "modelled_seconds": seconds,
        "release": None,
    }
    code = 1
    try:
        code = run_command(args, seconds, record)
    finally:
        record.update(end=time.time(), exit=code)
        log_run(record)
    return code


def run_command(args: argparse.Namespace, seconds: float, record: dict) -> int:
    """``cmdeploy run``: logins, DNS check, then the deploy (after ``seconds``)."""
    print("cmdeploy LAB STAND-IN (not the real cmdeploy)", flush=True)
    ini_path = Path(args.config)
    if not ini_path.exists():
        print(
            f"error: {ini_path.resolve()} not found; run from the relay checkout", file=sys.stderr
        )
        return 1
    ini = read_ini(ini_path)
    domain = ini.mail_domain
    host = args.ssh_host or domain
    record["host"] = host
    version, githash = checkout_version(ini_path.resolve().parent)
    record["release"] = version
    release = Release(version)
    if args.skip_dns_check and not release.staged:
        print("cmdeploy run: error: unrecognized arguments: --skip-dns-check", file=sys.stderr)
        return 2

    stages = list(ALL_STAGES)
    if release.staged and os.environ.get("CMDEPLOY_STAGES"):
        stages = os.environ["CMDEPLOY_STAGES"].split(",")
        unknown = set(stages) - set(ALL_STAGES)
        if unknown:
            print(f"error: unknown CMDEPLOY_STAGES {sorted(unknown)}", file=sys.stderr)
            return 1

    fail, _, only = os.environ.get("CHATMAIL_LAB_CMDEPLOY_FAIL", "").partition(":")
    fail_mode, _, fail_host = fail.partition("@")
    # ":enable": only the run that turns mail on (enable-mail), not install's.
    if (fail_host and fail_host != host) or (only == "enable" and args.disable_mail):
        fail_mode = ""
    if fail_mode == "before":
        print(
            f"error: deploy to {host} failed (on purpose: CHATMAIL_LAB_CMDEPLOY_FAIL)",
            file=sys.stderr,
        )
        return 1

    # Before deploying (a dry run too): the DNS check, on the host it logs in to itself.
    if release.logs_in_to_mail_domain and not ini.ip_only:
        login = login_to_domain(domain, "true")
        if login.returncode != 0:
            print(login.stderr.strip(), file=sys.stderr)
            print(f"execnet.gateway_base.HostNotFound: root@{domain}", file=sys.stderr)
            return 1
    if release.logs_in_to_ssh_host:
        login = login_to_ssh_host(host)
        if login.returncode != 0:
            print(login.stderr.strip(), file=sys.stderr)
            print(f"execnet.gateway_base.HostNotFound: root@{host}", file=sys.stderr)
            return 1
    if not (args.skip_dns_check or ini.ip_only) and not check_dns(domain):
        return 1
    if args.dry_run:
        print(f"dry run: relay {version} to {host}, stages {','.join(stages)}")
        return 0

    if args.disable_mail and not run_last_mail_hook():
        return 1
    script = deploy_script(release, ini, githash, stages, args.disable_mail)
    if seconds:
        # A real deploy's apt, uploads and fact gathering, before any service changes.
        print(f"(lab: modelling {seconds:g}s of a real deploy's work)", flush=True)
        time.sleep(seconds)
    print(
        f"deploying relay {version} to {host}: stages {','.join(stages)}"
        f"{' (mail disabled)' if args.disable_mail else ''}",
        flush=True,
    )
    # As pyinfra: an unknown host key is accepted and recorded (standin_dns.pyinfra_ssh).
    result = subprocess.run([*pyinfra_ssh(), f"root@{host}", "sh -s"], input=script, text=True)
    if result.returncode == 255:
        print(f"error: cannot reach {host} over SSH", file=sys.stderr)
        return 1
    if result.returncode != 0:
        print(f"error: deploy to {host} failed (exit {result.returncode})", file=sys.stderr)
        return 1
    if fail_mode == "after":
        print(f"error: deploy to {host} failed after its work (on purpose)", file=sys.stderr)
        return 1
    # After a deploy, 1.7 shows the echobot's invite link, read through the domain.
    if release.shows_echobot_invite:
        print("\nYou can try out the relay by talking to this echo bot: ", flush=True)
        link = login_to_domain(domain, "cat /var/lib/echobot/invite-link.txt")
        if link.returncode != 0:
            print(link.stderr.strip(), file=sys.stderr)
            print(
                "Traceback: remote command failed: cat /var/lib/echobot/invite-link.txt",
                file=sys.stderr,
            )
            return 1
        print(link.stdout.strip())
    print(f"deploy to {host} done", flush=True)
    return 0


LAST_MAIL_DONE = "/run/chatmail-lab-last-mail.done"


def run_last_mail_hook() -> bool:
    """The lab's last mail, on its host, once per boot (``/run`` forgets at reboot)."""
    host = os.environ.get("CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST")
    script = os.environ.get("CHATMAIL_LAB_BEFORE_DISABLE_MAIL")
    if not (host and script):
        return True
    wrapped = (
        f"[ -e {LAST_MAIL_DONE} ] && exit 0\n({script.rstrip()}\n) && touch {LAST_MAIL_DONE}\n"
    )
    result = subprocess.run([*pyinfra_ssh(), f"root@{host}", "sh -es"], input=wrapped, text=True)
    if result.returncode != 0:
        print(f"error: the lab's last-mail hook failed on {host}", file=sys.stderr)
    return result.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
