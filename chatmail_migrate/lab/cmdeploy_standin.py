"""LAB STAND-IN for the chatmail relay's ``cmdeploy``: not the real thing.

The real ``cmdeploy run`` deploys a whole relay with pyinfra and needs the
internet. Lab hosts have none, so the lab plugs in this script instead (through
``CMDEPLOY``). It takes the arguments the tool passes to ``cmdeploy``, is run
from the relay checkout holding ``chatmail.ini``, and does to the host over SSH
what the real one does to users and services:

- creates the relay's system users (vmail; echobot before relay 1.8), writes
  ``/etc/chatmail-version`` and, when missing, the DKIM key, as install does;
- ``--disable-mail``: stops and disables postfix and dovecot; without it:
  enables and (re)starts them. opendkim keeps running either way.
- honours ``CMDEPLOY_STAGES`` (install, configure, activate) for relay >= 1.8.

For fault tests, ``CHATMAIL_LAB_CMDEPLOY_FAIL=before|after[@HOST]`` makes it fail
before touching the host or after doing its work. For pre-sync tests and the
benchmark, ``CHATMAIL_LAB_BEFORE_DISABLE_MAIL`` is shell run on the host
``CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST`` just before ``--disable-mail`` stops the
mail there: the last mail a live relay takes.
"""

from __future__ import annotations

import argparse
import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

DEFAULT_VERSION = "1.7.0"
ALL_STAGES = ("install", "configure", "activate")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def relay_users(version: str) -> list[str]:
    return ["vmail"] + (["echobot"] if version_tuple(version) < (1, 8) else [])


def user_commands(users: list[str]) -> list[str]:
    """Create the relay's system users as its deploy does (when missing)."""
    commands = []
    for user in users:
        commands.append(
            f"id -u {user} >/dev/null 2>&1 || {{ getent group {user} >/dev/null || "
            f"groupadd --system {user}; useradd -d /home/{user} -g {user} -r -M {user}; }}"
        )
        commands.append(f"install -d -o {user} -g {user} /home/{user}")
    return commands


def install_script(domain: str, version: str, githash: str) -> str:
    """Shell run on the host for the install stage: users, version, DKIM key."""
    lines = ["set -e", *user_commands(relay_users(version))]
    lines += [
        # As the real deploy: the checkout's commit and its uncommitted diff.
        f"printf '%s\\n' {shlex.quote(githash)} > /etc/chatmail-version",
        "install -d -o opendkim -g opendkim -m 750 /etc/dkimkeys",
        "if [ ! -e /etc/dkimkeys/opendkim.private ]; then "
        f"opendkim-genkey -D /etc/dkimkeys -d {shlex.quote(domain)} -s opendkim && "
        "chown opendkim:opendkim /etc/dkimkeys/opendkim.* && "
        "chmod 600 /etc/dkimkeys/opendkim.private; fi",
    ]
    return "\n".join(lines) + "\n"


def checkout_version(relay_dir: Path) -> tuple[str, str]:
    """The relay release (from the checkout's git tag) and its commit hash."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(relay_dir), *args], capture_output=True, text=True
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    return git("describe", "--tags", "--abbrev=0") or DEFAULT_VERSION, git(
        "rev-parse", "HEAD"
    ) or "unknown"


def activate_script(disable_mail: bool) -> str:
    if disable_mail:
        mail = "systemctl disable --now postfix dovecot"
    else:
        mail = "systemctl enable postfix dovecot\nsystemctl restart postfix dovecot"
    return f"set -e\nsystemctl enable --now opendkim\n{mail}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatmail-lab-cmdeploy-standin",
        description="LAB STAND-IN for cmdeploy: not the real cmdeploy (see module docstring).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="deploy (users and services only) to a lab host")
    run.add_argument("--disable-mail", action="store_true")
    run.add_argument("--ssh-host")
    run.add_argument("--config", default=os.environ.get("CHATMAIL_INI", "chatmail.ini"))
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--skip-dns-check", action="store_true")
    run.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)

    print("cmdeploy LAB STAND-IN (not the real cmdeploy)", flush=True)
    ini_path = Path(args.config)
    if not ini_path.exists():
        print(
            f"error: {ini_path.resolve()} not found; run from the relay checkout", file=sys.stderr
        )
        return 1
    ini = configparser.ConfigParser()
    ini.read(ini_path)
    domain = ini["params"]["mail_domain"]
    host = args.ssh_host or domain
    version, githash = checkout_version(ini_path.resolve().parent)

    stages = list(ALL_STAGES)
    if version_tuple(version) >= (1, 8) and os.environ.get("CMDEPLOY_STAGES"):
        stages = [s.strip() for s in os.environ["CMDEPLOY_STAGES"].split(",") if s.strip()]
        unknown = set(stages) - set(ALL_STAGES)
        if unknown:
            print(f"error: unknown CMDEPLOY_STAGES {sorted(unknown)}", file=sys.stderr)
            return 1

    fail = os.environ.get("CHATMAIL_LAB_CMDEPLOY_FAIL", "")
    fail_mode, _, fail_host = fail.partition("@")
    if fail_host and fail_host != host:
        fail_mode = ""
    if fail_mode == "before":
        print(
            f"error: deploy to {host} failed (on purpose: CHATMAIL_LAB_CMDEPLOY_FAIL)",
            file=sys.stderr,
        )
        return 1

    script = ""
    hook_host = os.environ.get("CHATMAIL_LAB_BEFORE_DISABLE_MAIL_HOST")
    if (
        args.disable_mail
        and hook_host == host
        and os.environ.get("CHATMAIL_LAB_BEFORE_DISABLE_MAIL")
    ):
        script += os.environ["CHATMAIL_LAB_BEFORE_DISABLE_MAIL"].rstrip() + "\n"
    if "install" in stages:
        script += install_script(domain, version, githash)
    if "activate" in stages:
        script += activate_script(args.disable_mail)
    print(
        f"deploying relay {version} to {host}: stages {','.join(stages)}"
        f"{' (mail disabled)' if args.disable_mail else ''}",
        flush=True,
    )
    if args.dry_run:
        print(script)
        return 0

    ssh = ["ssh", "-o", "BatchMode=yes"]
    ssh_config = os.environ.get("CHATMAIL_LAB_SSH_CONFIG")
    if ssh_config:
        ssh += ["-F", ssh_config]
    result = subprocess.run([*ssh, f"root@{host}", "sh -s"], input=script, text=True)
    if result.returncode == 255:
        print(f"error: cannot reach {host} over SSH", file=sys.stderr)
        return 1
    if result.returncode != 0:
        print(f"error: deploy to {host} failed (exit {result.returncode})", file=sys.stderr)
        return 1
    if fail_mode == "after":
        print(f"error: deploy to {host} failed after its work (on purpose)", file=sys.stderr)
        return 1
    print(f"deploy to {host} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
