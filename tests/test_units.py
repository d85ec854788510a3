"""Pure logic: settings resolution, command construction, journal, mirror lookup."""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import paramiko
import pytest
from invoke import Config, Context

from chatmail_migrate import lock, nameservers
from chatmail_migrate.checks import live_relay
from chatmail_migrate.checks import tree as checks_tree
from chatmail_migrate.cli import tasks
from chatmail_migrate.cmdeploy import cmdeploy_host
from chatmail_migrate.errors import HostKeyError
from chatmail_migrate.hosts import addresses, commands, copy_commands, copy_key, ownership_commands
from chatmail_migrate.hosts.connect import connect
from chatmail_migrate.hosts.host_keys import KnownHostsPolicy
from chatmail_migrate.hostspec import same_host, split_host
from chatmail_migrate.journal import Journal
from chatmail_migrate.lab.rootfs import LabError, debian_mirror
from chatmail_migrate.relay import DEFAULT_COPY_PATHS
from chatmail_migrate.run import host_lock, rollback
from chatmail_migrate.run import plan as run_plan
from chatmail_migrate.settings import DEFAULTS, Settings, SettingsError, resolve
from chatmail_migrate.steps import switch_dns
from chatmail_migrate.steps.services import secrets_read_since_carried


@pytest.fixture
def relay(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "chatmail.ini").write_text("[params]\nmail_domain = chat.example.org\n")
    for var in ("CHATMAIL_RELAY_DIR", "CMDEPLOY", "CHATMAIL_MIGRATE_SSH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


def context(**section) -> Context:
    config = Config(defaults={**DEFAULTS})
    for key, value in section.items():
        config.chatmail_migrate[key] = value
    return Context(config=config)


class FabConnection(Context):
    """What a task gets under ``fab -H``: a context with ``original_host``."""

    def __init__(self, host: str, **section):
        super().__init__(config=context(**section).config)
        self.original_host = host


def test_old_host_defaults_to_mail_domain_like_cmdeploy(relay: Path):
    s = resolve(context(), relay_dir=str(relay))
    assert s.old_host == "chat.example.org"
    assert s.cmdeploy == [str(relay / "scripts" / "cmdeploy")]
    assert s.user == "root"


def test_precedence_flag_then_fab_host_then_config(relay: Path):
    c = FabConnection("fab-host", old_host="config-host")
    assert resolve(c, role="old", relay_dir=str(relay)).old_host == "fab-host"
    assert resolve(c, role="old", old_host="flag", relay_dir=str(relay)).old_host == "flag"
    # The -H host is the step's own host: for a new-host step it is the new host.
    s = resolve(c, role="new", relay_dir=str(relay))
    assert (s.old_host, s.new_host) == ("config-host", "fab-host")


def test_environment_settings(relay: Path, monkeypatch):
    monkeypatch.setenv("CHATMAIL_RELAY_DIR", str(relay))
    monkeypatch.setenv("CMDEPLOY", "/opt/my cmdeploy --flag")
    s = resolve(context())
    assert s.relay_dir == relay.resolve()
    assert s.cmdeploy == ["/opt/my", "cmdeploy", "--flag"]
    monkeypatch.setenv("CMDEPLOY", shlex.join(["/opt/my cmdeploy", "-v"]))
    assert resolve(context()).cmdeploy == ["/opt/my cmdeploy", "-v"]


def test_relay_dir_from_current_directory(relay: Path, monkeypatch):
    monkeypatch.chdir(relay)
    assert resolve(context()).mail_domain == "chat.example.org"


@pytest.mark.parametrize(
    "kwargs, fix",
    [
        ({"old_host": "same", "new_host": "same"}, "--new-host"),
        ({"relay_dir": "/nonexistent"}, "--relay-dir"),
    ],
)
def test_bad_settings(relay: Path, kwargs, fix):
    with pytest.raises(SettingsError, match=fix):  # names the flag that fixes it
        resolve(context(), **kwargs)


def test_need_names_the_missing_setting(relay: Path):
    s = resolve(context(), relay_dir=str(relay))
    with pytest.raises(SettingsError, match="--new-host"):
        s.need("new_host")
    assert s.need("old_host") is None  # a setting that is there: no error


def test_connections_default_to_root_and_honour_ssh_config(relay: Path, tmp_path: Path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host alias\n  HostName 192.0.2.7\n  Port 2222\n  User alice\n  ForwardAgent yes\n"
    )
    s = resolve(context(ssh_config=str(config)), relay_dir=str(relay))
    plain = connect(s, "plain.example.org")
    assert (plain.host, plain.port, plain.user) == ("plain.example.org", 22, "root")
    aliased = connect(s, "alias")
    assert (aliased.host, aliased.port, aliased.user) == ("192.0.2.7", 2222, "alice")
    assert aliased.forward_agent is False, "never forward the agent unless asked"
    assert connect(s, "bob@alias").user == "bob"
    assert connect(s, "alias", forward_agent=True).forward_agent is True


@pytest.mark.parametrize(
    "given, expected",
    [
        ("1.2.3.4", "1.2.3.4"),
        ("root@mail.example.org", "mail.example.org"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
    ],
)
def test_cmdeploy_gets_the_bare_host(given, expected):
    assert cmdeploy_host(given) == expected


@pytest.mark.parametrize("given", ["alias:2222", "user@host:22", "[2001:db8::1]:2222"])
def test_cmdeploy_refuses_a_port_it_would_drop(given):
    with pytest.raises(SettingsError, match=r"~/\.ssh/config"):  # the file to add a Host to
        cmdeploy_host(given)


def test_copy_script_is_checked_end_to_end_and_pins_the_key():
    script = copy_commands.copy_script(
        DEFAULT_COPY_PATHS,
        host="10.0.0.2",
        port=2222,
        user="root",
        host_key_line="chatmail-migrate-new-host ssh-ed25519 AAAAkey",
    )
    assert script.startswith("set -euo pipefail")
    assert "tar c -" not in script and "--file=-" in script
    assert "--acls --xattrs" in script and "--format=posix" in script
    assert "StrictHostKeyChecking=yes" in script and "BatchMode=yes" in script
    assert "-p 2222 root@10.0.0.2" in script
    assert "'chatmail-migrate-new-host ssh-ed25519 AAAAkey'" in script
    assert "home/vmail/mail var/lib/acme etc/dkimkeys run/echobot" in script
    # A receiver left over from a dead attempt is stopped before this one writes.
    assert script.index("chatmail-migrate-receive.pid") < script.index("exec tar --extract")
    assert "rm -rf" not in script.split("|")[1].split("exec")[0]
    replacing = copy_commands.copy_script(
        ["/home/vmail/mail"], host="h", port=22, user="root", host_key_line="k", replace=True
    )
    assert f"{copy_commands.removal_command(['/home/vmail/mail'])}; echo $$" in replacing
    # Without the relay's users on new: owners and ACLs listed on old beside the copy.
    assert "find /home/vmail/mail" in script and "getfacl" in script
    assert "meta/names" not in script


def test_copy_key_receiver_runs_exactly_what_the_copy_sends(tmp_path: Path):
    """The forced command of --copy-key ephemeral, run here with its exec replaced:
    the copy's own receivers pass, anything else is refused before it runs."""
    kwargs = dict(replace=True, sync_mailboxes=True, compress="zstd")
    target = dict(host="h", port=22, user="root", host_key_line="k", identity=copy_key.KEY)
    script = copy_commands.copy_script(DEFAULT_COPY_PATHS, **target, **kwargs)
    receives = copy_commands.copy_receives(DEFAULT_COPY_PATHS, **kwargs)
    tar, meta = receives.exact
    # What the receiver accepts is what the script sends, word for word.
    assert shlex.quote(tar) in script and shlex.quote(meta) in script
    assert f"-i {copy_key.KEY} -o IdentitiesOnly=yes" in script
    assert tar.endswith(
        "--warning=no-timestamp -- var/lib/acme etc/dkimkeys run/echobot "
        "var/lib/echobot var/spool/postfix etc/chatmail-nocreate'"
    )
    presync = copy_commands.presync_script(**target)
    assert presync.count(f"-i {copy_key.KEY} -o IdentitiesOnly=yes") == 1
    receiver = tmp_path / "receive"
    receiver.write_text(
        copy_key.receiver_script(receives).replace(
            'exec /bin/bash -c "$c"', "echo ACCEPTED; exit 0"
        )
    )
    rsync = f"{copy_commands.rsync_receive_command()} --server"
    tree = "/home/vmail/mail/"
    accepted = [
        tar,
        meta,
        f"{rsync} -lHogDtpXre.iLsfxCIvu --log-format=%i --delete -@-1 --mkpath . {tree}",
        f"{rsync} -lHogDtpXrze.iLsfxCIvu --log-format=X --compress-choice=zstd --delete "
        f"--modify-window=-1 --mkpath . {tree}",
        # The pre-sync with ACLs, and the final sync of what changed (seen from 3.2.7).
        f"{rsync} -lHogDtpAXre.iLsfxCIvu --log-format=%i --delete -@-1 --mkpath . {tree}",
        f"{rsync} -ldHogDtpAXRe.LsfxCIvu --no-r --log-format=%i --delete -@-1 --mkpath . {tree}",
    ]
    refused = [
        "",
        "id",
        "bash",
        copy_commands.TAR_EXTRACT,
        f"{tar}; id",
        f"{rsync} -lr . /etc/",
        f"{rsync} -lr . {tree}; id",
        f"{rsync} -lr --log-file=/etc/x . {tree}",
        f"{rsync} -lr --temp-dir=/etc . {tree}",
        f"{rsync} -lrT/etc . {tree}",
        f"{rsync} -lr\nid . {tree}",
        f"{rsync} --sender -lr . {tree}",
    ]
    for command, ok in [(c, True) for c in accepted] + [(c, False) for c in refused]:
        result = subprocess.run(
            ["bash", str(receiver)],
            env={"SSH_ORIGINAL_COMMAND": command, "PATH": "/bin"},
            capture_output=True,
            text=True,
        )
        if ok:
            assert (result.returncode, result.stdout) == (0, "ACCEPTED\n"), command
        else:
            assert result.returncode == 126 and "refused" in result.stderr, command
    # The key's line: restrict, from=, expiry on the host's clock, the forced command.
    line = copy_key.add_line_command("ssh-ed25519 AAAAx", 'restrict,from="10.0.0.1"', "/r", 120)
    assert 'restrict,from="10.0.0.1"' in line and "date -d '+120 minutes'" in line
    assert 'expiry-time="%s",command="%s"' in line and copy_key.MARK in line


def test_copy_key_line_added_renewed_and_removed_in_place(tmp_path: Path):
    """The shell that edits authorized_keys, run here on a file of a fake home: other
    lines kept as they are, only the copy key's expiry moved, then its line gone."""
    (tmp_path / "bin").mkdir()
    sshd = tmp_path / "bin" / "sshd"  # sshd -T, as a host would answer it
    sshd.write_text("#!/bin/sh\necho 'authorizedkeysfile %h/.ssh/authorized_keys'\n")
    sshd.chmod(0o755)
    keys = tmp_path / ".ssh" / "authorized_keys"
    keys.parent.mkdir()
    keys.write_text("ssh-ed25519 AAAAother other@x")  # no newline at its end
    env = {"HOME": str(tmp_path), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}

    def run(command: str) -> str:
        result = subprocess.run(
            ["bash", "-c", f"set -eu; {command}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    run(copy_key.add_line_command("ssh-ed25519 AAAAx", 'restrict,from="10.0.0.1"', "/r", 120))
    other, line = keys.read_text().splitlines()
    assert other == "ssh-ed25519 AAAAother other@x"
    assert line.startswith('restrict,from="10.0.0.1",expiry-time="')
    assert line.endswith(f'",command="/r" ssh-ed25519 AAAAx {copy_key.MARK}')
    keys.write_text(keys.read_text().replace(line.split('"')[3], "200001010000"))
    run(copy_key.renew_command())
    renewed = keys.read_text().splitlines()[1]
    assert renewed.split('"')[3] >= line.split('"')[3]  # two hours from now again
    out = run(copy_key.remove_line_command().replace(copy_key.RECEIVER, str(tmp_path / "r")))
    assert out.split() == ["stale"]
    assert keys.read_text() == "ssh-ed25519 AAAAother other@x\n"
    assert sorted(p.name for p in keys.parent.iterdir()) == ["authorized_keys"]


def test_copy_onto_a_host_with_the_relay_users_walks_nothing_beside_tar():
    kwargs = dict(host="h", port=22, user="root", host_key_line="k", owners_by_name=True)
    script = copy_commands.copy_script(DEFAULT_COPY_PATHS, **kwargs)
    # tar's twice-verbose index names every entry's owner: the only list made.
    assert "--verbose --verbose --index-file" in script
    assert "getfacl" not in script and "%U:%G" not in script and "getent" not in script
    assert 'awk \'!seen[$2]++ {print $2}\' "$idx" > "$meta/names"' in script
    assert "nice -n 19 find" in script  # the progress total only, niced
    synced = copy_commands.copy_script(
        DEFAULT_COPY_PATHS, **kwargs, sync_mailboxes=True, rsync_total=(4000, 4)
    )
    # rsync maps owners by name but carries no ACLs: read in the mailbox tree only.
    assert "--recursive /home/vmail/mail >" in synced
    # The final sync's progress total comes from the pre-sync, not from another walk.
    assert "total rsync 4000 4 presync" in synced and "find /home/vmail/mail" not in synced
    fix = ownership_commands.fix_ownership_script(["/home/vmail/mail"])
    fast, slow = fix.split("exit 0\nfi\n")
    assert fast.startswith(f"if [ -e {ownership_commands.NAMES_FILE} ]")
    assert "chown" not in fast and "getent passwd" in fast
    assert "chown -R vmail:" in slow and "python3" in slow
    check = ownership_commands.ownership_check_command(["/home/vmail/mail"])
    assert f"[ -e {ownership_commands.NAMES_FILE} ] || find" in check


def test_service_problems():
    on = commands.parse_service_states(
        "postfix active enabled\ndovecot active enabled\npostfix-instance running\n"
    )
    assert commands.service_problems(on, want_running=True) == []
    assert len(commands.service_problems(on, want_running=False)) == 3
    dead = commands.parse_service_states(
        "postfix active enabled\ndovecot active enabled\npostfix-instance stopped\n"
    )
    problems = commands.service_problems(dead, want_running=True)
    assert len(problems) == 1 and "postfix status" in problems[0]
    off = commands.parse_service_states(
        "postfix inactive disabled\ndovecot inactive disabled\npostfix-instance stopped\n"
    )
    assert commands.service_problems(off, want_running=False) == []
    assert len(commands.service_problems(off, want_running=True)) == 3


def test_postfix_check_renames_are_expected():
    lines = [
        "postsuper: Renamed to match inode number: 1 message",
        "postsuper: warning: QUEUE FILE NAMES WERE CHANGED TO MATCH INODE NUMBERS",
        "postfix/postfix-script: warning: not owned by postfix: /var/spool/postfix/x",
    ]
    assert commands.postfix_check_problems(lines) == lines[2:]


def test_migrate_plans_the_steps_in_documented_order():
    # Every release: install while old still serves, the rest in the seed's order.
    # The seed's order (migrating-to-a-new-host.rst), presync before it when asked.
    seed = [
        "disable-mail",
        "copy-data",
        "install",
        "fix-ownership",
        "verify",
        "switch-dns",
        "enable-mail",
    ]
    assert run_plan.seed_order() == seed
    assert [step.name for step in run_plan.STEPS] == ["presync", *seed]
    seed_order_without_install = [s for s in seed if s != "install"]
    assert run_plan.migrate_order(presync=False) == [
        "install",
        *seed_order_without_install,
        "converge",
    ]
    assert run_plan.migrate_order(presync=True) == [
        "presync",
        "install",
        "disable-mail",
        "copy-data",
        "fix-ownership",
        "verify",
        "switch-dns",
        "enable-mail",
        "converge",
    ]
    assert tasks.migrate.post == [] and tasks.migrate.pre == []


def test_journal_resume_and_standing(relay: Path):
    s = resolve(context(), relay_dir=str(relay), new_host="new")
    journal = Journal.for_settings(s)
    journal.adopt_hosts(s)
    journal.plan = run_plan.seed_order()  # as any run of a step does
    journal.record("disable-mail", 0, 1.0)
    journal.record("copy-data", 0, 2.0)
    again = Journal.for_settings(s)
    assert again.done_steps() == ["disable-mail", "copy-data"]
    assert again.next_step() == "install"
    # Mail is down with DNS still at old: the way back is named.
    assert "`rollback`" in again.where_things_stand()
    # The final sync's progress total: the last pre-sync's figures for this host.
    assert again.presync_total("new") is None
    again.note("presync-done", host="new", copies=[{"bytes_total": 9, "entries_total": 3}])
    again.note("presync-done", host="other", copies=[{"bytes_total": 1, "entries_total": 1}])
    assert Journal.for_settings(s).presync_total("new") == (9, 3)
    saved = again.path.read_bytes()
    with pytest.raises(SettingsError, match="--restart"):
        again.check_hosts(
            resolve(context(), relay_dir=str(relay), new_host="other"), lambda a, b: a == b
        )
    assert again.path.read_bytes() == saved and again.new_host == "new"
    again.check_hosts(resolve(context(), relay_dir=str(relay), new_host="new"), lambda a, b: a == b)


def test_debian_mirror_from_apt_sources(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CHATMAIL_LAB_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    with pytest.raises(LabError, match="CHATMAIL_LAB_MIRROR"):
        debian_mirror(tmp_path)
    (tmp_path / "sources.list").write_text("deb http://other.invalid/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://other.invalid/debian"


def test_verify_compares_queues_by_content_and_skips_sockets():
    def entry(path, kind="f", size=10, mtime=1, digest="a"):
        return {
            "p": path,
            "t": kind,
            "m": 0o600,
            "s": size,
            "mt": mtime,
            "u": "postfix",
            "g": "postfix",
            "h": digest,
        }

    old = {
        e["p"]: e
        for e in [
            entry("/var/spool/postfix/deferred/A/A1B2"),
            entry("/var/spool/postfix/public/pickup", kind="s"),
            entry("/home/vmail/mail/x/cur/m1", digest="m"),
        ]
    }
    renamed = {
        e["p"]: e
        for e in [
            entry("/var/spool/postfix/deferred/C/C3D4"),
            entry("/home/vmail/mail/x/cur/m1", digest="m"),
        ]
    }

    def listed(entries: dict) -> list[dict]:  # as a host lists them
        return sorted(entries.values(), key=lambda e: checks_tree.path_key(e["p"]))

    assert checks_tree.compare(listed(old), listed(renamed)).ok
    changed = dict(renamed)
    changed["/var/spool/postfix/deferred/C/C3D4"] = entry(
        "/var/spool/postfix/deferred/C/C3D4", digest="b"
    )
    changed["/home/vmail/mail/x/cur/m1"] = entry("/home/vmail/mail/x/cur/m1", size=11, digest="m")
    report = checks_tree.compare(listed(old), listed(changed))
    assert report.by_kind() == {"queue": 1, "size": 1}
    # Only on one side, wherever it falls in the order: missing or extra.
    gone = {p: e for p, e in renamed.items() if "/cur/" not in p}
    extra = {**renamed, "/home/vmail/mail/x/new/m9": entry("/home/vmail/mail/x/new/m9")}
    assert checks_tree.compare(listed(old), listed(gone)).by_kind() == {"missing": 1}
    assert checks_tree.compare(listed(old), listed(extra)).by_kind() == {"extra": 1}
    # postfix check on new renames a carried message to its inode: a hash directory
    # old lacks (defer/8) appears, empty. Not mail; a queue itself missing still is.
    hashed = {
        **renamed,
        "/var/spool/postfix/defer": entry("/var/spool/postfix/defer", kind="d"),
        "/var/spool/postfix/defer/8": entry("/var/spool/postfix/defer/8", kind="d"),
    }
    with_defer = {**old, "/var/spool/postfix/defer": entry("/var/spool/postfix/defer", kind="d")}
    assert checks_tree.compare(listed(with_defer), listed(hashed)).ok
    assert checks_tree.compare(listed(with_defer), listed(renamed)).by_kind() == {"missing": 1}


def test_verify_compares_acls_xattrs_and_hard_links():
    def entry(path, **extra):
        return {
            "p": path,
            "t": "f",
            "m": 0o600,
            "s": 10,
            "mt": 1,
            "u": "vmail",
            "g": "vmail",
            **extra,
        }

    acct = "/home/vmail/mail/d/a@d"
    old = [
        entry(f"{acct}/.Trash/cur/m1"),
        entry(f"{acct}/cur/m1", hl=f"{acct}/.Trash/cur/m1"),
        entry(f"{acct}/cur/m2", x={"user.seen": "0123456789ab"}),
        entry("/run/echobot/password", a="g::---,u:vmail:r--"),
        entry("/var/spool/postfix/deferred/A/A1", x={"user.q": "aa"}),
    ]
    same = checks_tree.compare(old, [dict(e) for e in old])
    assert same.ok
    # 5 files; the bytes of the 4 outside the queue (queue files are matched, not paired).
    assert (same.files, same.bytes, same.skipped, same.hashed) == (5, 40, 0, 0)
    assert {"a", "x", "hl"} <= set(same.keys)  # ACLs, xattrs and hard links compared
    assert "--checksum" in same.summary()  # content was not compared: the flag that does
    new = [
        entry(f"{acct}/.Trash/cur/m1"),
        entry(f"{acct}/cur/m1"),
        entry(f"{acct}/cur/m2", x={"user.seen": "0123456789ab", "user.more": "ffffffffffff"}),
        entry("/run/echobot/password"),
        entry("/var/spool/postfix/deferred/B/B2", x={"user.q": "aa"}),  # renamed by Postfix
    ]
    report = checks_tree.compare(old, new)
    assert report.by_kind() == {"ACL": 1, "hard links": 1, "xattrs": 1}
    assert not report.ok
    # Each difference names the file it is about.
    differing = [f"{acct}/cur/m1", f"{acct}/cur/m2", "/run/echobot/password"]
    assert [kind for kind, _ in report.differences] == ["hard links", "xattrs", "ACL"]
    assert all(
        path in message for (_, message), path in zip(report.differences, differing, strict=True)
    )
    # A queue file's xattrs are part of what matches it across the rename.
    new[-1] = entry("/var/spool/postfix/deferred/B/B2", x={"user.q": "bb"})
    assert checks_tree.compare(old, new).by_kind()["queue"] == 1
    # With every file's sha256 in the listings, the summary says content was compared.
    hashed = [{**e, "h": "0" * 64} for e in old]
    with_content = checks_tree.compare(hashed, [dict(e) for e in hashed])
    assert with_content.ok and with_content.hashed == with_content.files == 5
    assert "--checksum" not in with_content.summary()
    other_content = [{**e, "h": "1" * 64} if e["p"].endswith("/cur/m2") else e for e in hashed]
    assert checks_tree.compare(hashed, other_content).by_kind() == {"content": 1}


def test_verify_listing_has_acls_xattrs_and_hard_links(tmp_path: Path):
    import os
    import shutil
    import subprocess

    root = tmp_path / "tree"
    (root / "cur").mkdir(parents=True)
    (root / ".Trash" / "cur").mkdir(parents=True)
    message = root / "cur" / "m1"
    message.write_bytes(b"hello")
    os.link(message, root / ".Trash" / "cur" / "m1")
    outside = tmp_path / "outside"
    outside.write_bytes(b"linked from outside the tree")
    os.link(outside, root / "cur" / "m2")
    os.setxattr(root / "cur" / "m2", "user.lab", b"value")
    acls = bool(shutil.which("setfacl"))
    if acls:
        subprocess.run(["setfacl", "-m", "u:root:r,g:root:r", str(message)], check=True)
        subprocess.run(["setfacl", "-d", "-m", "u:root:rx", str(root / "cur")], check=True)

    def listed() -> dict[str, dict]:
        out = subprocess.run(
            ["python3", "-c", checks_tree.LISTING_PY, "1", str(root)],
            capture_output=True,
            check=True,
        ).stdout
        return {e["p"].removeprefix(str(root)): e for e in checks_tree.parse_listing(out)}

    before = listed()
    # The walk meets .Trash first: its name stands for the inode.
    assert "hl" not in before["/.Trash/cur/m1"]
    assert before["/cur/m1"]["hl"] == f"{root}/.Trash/cur/m1"
    assert "hl" not in before["/cur/m2"], "its partner lies outside the listed tree"
    assert before["/cur/m2"]["x"] == {"user.lab": hashlib.sha256(b"value").hexdigest()[:12]}
    assert "x" not in before["/cur/m1"] and "a" not in before["/cur/m2"]
    if acls:
        # Owner, mask and others are the mode; a default ACL is listed whole.
        assert before["/cur/m1"]["a"] == "g::r--,g:root:r--,u:root:r--"
        assert before["/cur/m1"]["a"] == before["/.Trash/cur/m1"]["a"]
        assert before["/cur"]["a"] == "d:g::r-x,d:m::r-x,d:o::r-x,d:u::rwx,d:u:root:r-x"
    ordered = list(before.values())
    # Two listings of the unchanged tree (as old's and new's are made): no difference.
    assert checks_tree.compare(ordered, list(listed().values())).ok

    # What a copy may lose: the link, the xattr, the ACL (mtimes kept, as a copy does).
    folder = (root / "cur").stat()
    copy = root / "cur" / "m1.copy"
    shutil.copyfile(message, copy)
    os.utime(copy, ns=(message.stat().st_atime_ns, message.stat().st_mtime_ns))
    os.chmod(copy, message.stat().st_mode & 0o7777)
    copy.replace(message)
    os.removexattr(root / "cur" / "m2", "user.lab")
    os.utime(root / "cur", ns=(folder.st_atime_ns, folder.st_mtime_ns))
    report = checks_tree.compare(ordered, list(listed().values()))
    assert report.by_kind() == {"hard links": 1, "xattrs": 1, **({"ACL": 1} if acls else {})}


def test_copy_progress_bar_on_terminal_and_lines_otherwise():
    import io

    from chatmail_migrate.hosts.progress import CopyProgress

    clock = iter([0.0, 1.0, 2.0, 5.0, 12.0, 13.0]).__next__
    plain = io.StringIO()
    p = CopyProgress(out=plain, tty=False, interval=10, clock=clock)
    for line in (
        "@chatmail-migrate total copy 1000000 100",
        "@chatmail-migrate progress copy 100000 10",  # t=1: no line yet (every 10 s)
        "@chatmail-migrate progress copy 200000 20",  # t=2
        "@chatmail-migrate progress copy 500000 50",  # t=5
        "@chatmail-migrate progress copy 900000 90",  # t=12: a line, with rate and ETA
        "@chatmail-migrate done copy 100",  # t=13
    ):
        assert p.feed(line)
    assert not p.feed("tar: something else")
    # One line for the total, one at t=12 (10 s after the start), one when done.
    lines = plain.getvalue().splitlines()
    assert len(lines) == 3
    assert "1.0 MB" in lines[0] and "100" in lines[0]
    # At t=12: 900 kB of 1 MB sent, 75 kB/s, the last 100 kB in a second or so.
    assert all(f in lines[1] for f in ("900.0 kB", "1.0 MB", "90 of 100", "75.0 kB/s", "0:01"))
    assert all(f in lines[2] for f in ("1.0 MB", "100", "13.0s", "76.9 kB/s"))
    assert "\r" not in plain.getvalue()
    assert p.summaries == [
        {
            "phase": "copy",
            "entries": 100,
            "bytes_total": 1000000,
            "entries_total": 100,
            "bytes_sent": 1000000,
            "seconds": 13.0,
        }
    ]

    term = io.StringIO()
    t = CopyProgress(out=term, tty=True, clock=iter([0.0, 2.0, 4.0]).__next__)
    t.feed("@chatmail-migrate total rsync 4000 4")
    t.feed("@chatmail-migrate progress rsync 2000 2")
    t.feed("@chatmail-migrate done rsync 3 2500")
    drawn = term.getvalue()
    # Redrawn in place (carriage return, erase line), half full at 2 of 4 kB.
    bar = drawn.split("\r\x1b[K")[2]
    assert bar.startswith("  [" + "#" * 12 + "-" * 12 + "]") and " 50% " in bar
    assert "2.0 kB of 4.0 kB" in bar and "0:02" in bar
    assert t.summaries == [
        {
            "phase": "rsync",
            "entries": 3,
            "bytes_total": 4000,
            "entries_total": 4,
            "bytes_sent": 2500,
            "seconds": 4.0,
        }
    ]

    # The final sync after a pre-sync shows the pre-sync's figures, walked no second time.
    known = io.StringIO()
    k = CopyProgress(out=known, tty=False, clock=iter([0.0, 1.0]).__next__)
    assert k.feed("@chatmail-migrate total rsync 4000 4 presync")
    assert (k.total_bytes, k.total_files) == (4000, 4)
    shown = known.getvalue().splitlines()
    assert len(shown) == 1 and "4.0 kB" in shown[0] and "pre-sync" in shown[0]


def test_journal_takes_new_hosts_until_a_step_is_done(relay: Path):
    # A migrate to "first" stopped at preflight: nothing done, so "second" may replace it.
    journal = Journal.for_settings(resolve(context(), relay_dir=str(relay), new_host="first"))
    journal.adopt_hosts(resolve(context(), relay_dir=str(relay), new_host="first"))
    journal.adopt_hosts(resolve(context(), relay_dir=str(relay), new_host="second"))
    assert journal.new_host == "second"
    journal.record("disable-mail", 0, 1.0)
    journal.adopt_hosts(resolve(context(), relay_dir=str(relay), new_host="third"))
    assert journal.new_host == "second", "once a step is done the hosts are the journal's"
    journal.record_rollback()
    assert journal.new_host is None, "after a rollback another new host may come"


@pytest.mark.parametrize(
    "typed, host, user, port",
    [
        ("relay.example", "relay.example", None, None),
        ("admin@relay.example:2222", "relay.example", "admin", 2222),
        ("2001:db8::2", "2001:db8::2", None, None),
        ("[2001:db8::2]", "2001:db8::2", None, None),
        ("root@[2001:db8::2]:2222", "2001:db8::2", "root", 2222),
        ("192.0.2.7:22", "192.0.2.7", None, 22),
    ],
)
def test_hosts_are_split_as_openssh_reads_them(typed, host, user, port):
    spec = split_host(typed)
    assert (spec.host, spec.user, spec.port) == (host, user, port)
    assert split_host(str(spec)) == spec
    conn = connect(resolve(context(), new_host=typed), typed)
    assert (conn.host, conn.port) == (host, port or 22)


def test_addresses_are_compared_as_addresses():
    assert same_host("2001:DB8:0:0::42", "[2001:db8::42]:22")
    assert not same_host("2001:db8::42", "[2001:db8::42]:2222")
    assert nameservers.canonical(["2001:DB8:0:0::42", "192.0.2.1"]) == {"2001:db8::42", "192.0.2.1"}
    settings = resolve(context(), new_host="n", new_addresses="2001:DB8:0:0::42, 192.0.2.9")
    assert settings.new_addresses == ["2001:db8::42", "192.0.2.9"]


def test_rsync_target_brackets_an_ipv6_address():
    lines = copy_commands.rsync_mailboxes(host="fd00::2", port=2222, user="root", compress=None)
    assert "root@[fd00::2]:/home/vmail/mail/" in "\n".join(lines)
    assert "-p 2222" in "\n".join(lines)


def _addr(local: str, ifname: str = "eth0", **flags) -> dict:
    return {"local": local, "ifname": ifname, **flags}


def test_dns_proposes_only_what_clients_reach():
    host = [
        _addr("10.0.0.5"),  # private
        _addr("192.88.99.5"),  # public
        _addr("172.17.0.1", "docker0"),
        _addr("2a01:4f8::5"),  # public
        _addr("2a01:4f8::dead", temporary=True),
        _addr("2a01:4f8::beef", "br-1a2b"),  # a docker network with global IPv6
        _addr("fd00::5"),  # ULA
    ]

    def named(left: list[str]) -> set[str]:
        """The host's addresses that a line of ``left`` names."""
        return {a["local"] for a in host if any(line.startswith(f"{a['local']} ") for line in left)}

    records, why, left = addresses.addresses_for_clients("10.0.0.5", host)
    assert records == {"A": ["192.88.99.5"], "AAAA": ["2a01:4f8::5"]}
    assert set(why) == {"192.88.99.5", "2a01:4f8::5"}
    # Every other address is left out with its reason, one line each.
    assert len(left) == 5
    assert named(left) == {"10.0.0.5", "172.17.0.1", "2a01:4f8::dead", "2a01:4f8::beef", "fd00::5"}
    assert any("172.17.0.1" in line and "docker0" in line for line in left)
    # Reached at a public address that no interface has (NAT): that one for IPv4.
    records, why, left = addresses.addresses_for_clients("9.9.9.9", host)
    assert records == {"A": ["9.9.9.9"], "AAAA": ["2a01:4f8::5"]}
    assert set(why) == {"9.9.9.9", "2a01:4f8::5"}
    assert "192.88.99.5" in named(left), "the interface's public IPv4 is left out"
    # A lab or LAN relay: nothing public, so the address the tool reached, with a warning.
    records, why, left = addresses.addresses_for_clients("10.0.0.5", [_addr("10.0.0.5")])
    assert records == {"A": ["10.0.0.5"], "AAAA": []}
    assert set(why) == {"10.0.0.5"}
    assert len(left) == 2, left  # the private address, and the warning
    records, _, left = addresses.addresses_for_clients(None, [_addr("10.0.0.5")])
    assert records == {"A": [], "AAAA": []} and len(left) == 1, "no warning: nothing proposed"


def test_dns_proposal_says_which_record_changes_and_why():
    def change(row: str) -> tuple[str, str, str, list[str], str]:
        """A row as (record type, name, what to do, the addresses in order, why)."""
        parsed = re.fullmatch(r"(\S+) +(\S+): (\w+) (.*) \((.*)\)", row)
        assert parsed, row
        rtype, name, verb, values, why = parsed.groups()
        return rtype, name, verb, re.findall(r"[^\s,]*\d[^\s,]*", values), why

    rows = switch_dns.proposed_changes(
        "chat.example.org",
        {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
        {"A": [], "AAAA": ["2001:DB8::2"]},
        {"2001:DB8::2": "WHY-NEW", "A": "WHY-NO-A"},
    )
    assert [change(row) for row in rows] == [
        ("A", "chat.example.org", "delete", ["192.0.2.1"], "WHY-NO-A"),
        ("AAAA", "chat.example.org", "replace", ["2001:db8::1", "2001:DB8::2"], "WHY-NEW"),
    ]
    rows = switch_dns.proposed_changes(
        "chat.example.org",
        {"A": [], "AAAA": ["2001:db8::2"]},
        {"A": ["192.0.2.9"], "AAAA": ["2001:DB8:0::2"]},
        dict.fromkeys(("192.0.2.9", "2001:DB8:0::2"), "WHY-GIVEN"),
    )
    assert [change(row) for row in rows] == [
        ("A", "chat.example.org", "add", ["192.0.2.9"], "WHY-GIVEN"),
        ("AAAA", "chat.example.org", "keep", ["2001:DB8:0::2"], "WHY-GIVEN"),
    ]


def test_deleting_every_a_record_needs_ipv6_only():
    s = Settings(mail_domain="chat.example.org")
    why = "new has no public IPv4"
    refused = addresses.ipv4_deletion_refused(s, ["192.0.2.1"], [], why)
    assert refused and "--new-address" in refused and "--ipv6-only" in refused  # either fixes it
    assert addresses.ipv4_deletion_refused(s, ["192.0.2.1"], ["192.0.2.2"], why) is None
    assert addresses.ipv4_deletion_refused(s, [], [], why) is None  # no A record to lose
    ipv6_only = dataclasses.replace(s, ipv6_only=True)
    assert addresses.ipv4_deletion_refused(ipv6_only, ["192.0.2.1"], [], why) is None
    with pytest.raises(SettingsError, match="--ipv6-only"):
        resolve(context(), new_host="n", new_addresses="192.0.2.9", ipv6_only=True)
    assert resolve(context(), new_host="n", new_addresses="2001:db8::9", ipv6_only=True).ipv6_only


def test_old_host_key_is_accepted_under_the_mail_domain(tmp_path: Path):
    key = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path / "k1")))
    other = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path / "k2")))
    known = tmp_path / "known_hosts"
    known.write_text(f"relay.example {key.get_name()} {key.get_base64()}\n")
    policy = KnownHostsPolicy(False, known, [known], known_as=("relay.example",))
    with pytest.raises(HostKeyError, match="--accept-new-host-keys"):
        policy.missing_host_key(None, "192.0.2.7", other)
    with pytest.raises(HostKeyError):  # on another port, the name's port-22 entry is no proof
        policy.missing_host_key(None, "[192.0.2.7]:2222", key)
    assert known.read_text().count("\n") == 1, "nothing recorded for a refused key"
    policy.missing_host_key(None, "192.0.2.7", key)  # accepted: no exception
    # Recorded for the address too, so cmdeploy's OpenSSH finds it there.
    assert known.read_text().splitlines()[1] == f"192.0.2.7 {key.get_name()} {key.get_base64()}"


def _ed25519(path: Path) -> Path:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_host_lock_holds_until_end_of_input_and_names_its_holder(tmp_path: Path):
    locks = tmp_path / "locks"

    def hold(text: str) -> subprocess.Popen:
        command = host_lock.hold_command(text, str(locks))
        return subprocess.Popen(
            shlex.split(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    first = hold("pid 1 of a@b, running `migrate`")
    assert first.stdout.readline() == "held\n"
    assert (locks.stat().st_mode & 0o777) == 0o700, "root's own: no user can take it"
    second = hold("pid 2")
    assert second.wait(10) == host_lock.BUSY and second.stdout.read() == ""
    shell, _, holder = (locks / "holder").read_text().partition(" ")
    assert holder == "pid 1 of a@b, running `migrate`\n" and int(shell) == first.pid
    first.stdin.close()  # the tool's channel closes: the lock goes with it
    first.wait(10)
    third = hold("pid 3")
    assert third.stdout.readline() == "held\n"
    # A holder stopped by name (pkill -f NAME) frees it too: no child keeps the file.
    subprocess.run(["pkill", "-f", f"{host_lock.NAME} pid 3"], check=True)
    third.wait(10)
    fourth = hold("pid 4")
    assert fourth.stdout.readline() == "held\n"
    fourth.stdin.close()
    fourth.wait(10)


def test_a_dead_run_is_taken_over_only_when_this_journal_recorded_its_id(tmp_path: Path):
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    dead = subprocess.Popen(["true"])
    dead.wait()
    journal = Journal(path=tmp_path / "j.json", mail_domain="relay.example")
    journal.events.append({"event": "run", "id": "00aa"})

    def holder(pid: int, who: str = me, run: str = "00aa") -> host_lock.Holder:
        line = f"4242 pid {pid} of {who} (run {run}) since 2026-11-30, running `invoke x`"
        parsed = host_lock.parse_holder(line)
        assert parsed is not None and parsed.shell == "4242" and parsed.run == run
        return parsed

    assert host_lock.dead_run_of(holder(dead.pid), journal)
    assert not host_lock.dead_run_of(holder(os.getpid()), journal), "alive"
    assert not host_lock.dead_run_of(holder(dead.pid, run="11bb"), journal), "not in the journal"
    assert not host_lock.dead_run_of(holder(dead.pid), None), "no journal"
    assert not host_lock.dead_run_of(holder(dead.pid, who="root@elsewhere"), journal)
    assert host_lock.parse_holder("4242 pid 1 of a@b since 2026-11-30, running `x`") is None
    assert host_lock.parse_holder("garbage") is None
    # What the tool writes, it reads back.
    mine = host_lock.parse_holder(f"4242 {lock.holder_text()}")
    assert mine is not None and mine.run == lock.RUN_ID and mine.pid == str(os.getpid())


def test_a_copy_runs_in_a_unit_named_after_its_run_and_only_that_unit_is_stopped():
    launch = copy_commands.copy_launcher("00aa")
    assert launch.startswith("systemd-run --unit=chatmail-migrate-copy-00aa.service --pipe --wait")
    assert "--setenv=SSH_AUTH_SOCK" in launch, "the forwarded agent reaches the copy"
    stop = copy_commands.stop_copy_command("00aa")
    assert stop.count("chatmail-migrate-copy-00aa.service") == 2 and "kill" not in stop
    # systemd counts a unit ended by SIGTERM as a success: a stopped copy must exit non-zero.
    stopped = subprocess.run(
        ["bash", "-c", f"{copy_commands.COPY_STOPPED}\nkill -TERM $$\nexit 0"], timeout=10
    )
    assert stopped.returncode == 143


def test_which_host_took_mail_is_read_from_its_marks():
    def facts(served=None, carried=None, changed=()):
        return live_relay.MailFacts([], served, carried, None, list(changed), [])

    assert not facts().took_mail
    assert facts(served=100.0).took_mail, "enable-mail started mail: not carried back yet"
    assert not facts(served=100.0, carried=200.0).took_mail
    assert facts(served=300.0, carried=200.0).took_mail, "served again after the carry back"
    changed = facts(changed=["postfix@- 1700000000 /home/vmail/mail/d/a@d/new"])
    assert changed.took_mail and not changed.carry_due, "folders alone are never mirrored"
    assert "/home/vmail/mail/d/a@d/new" in changed.took_mail_reason()  # what changed


def test_journal_remembers_when_new_served_and_the_rollback_s_new_host(relay: Path):
    journal = Journal.for_settings(resolve(context(), relay_dir=str(relay), new_host="new"))
    journal.adopt_hosts(resolve(context(), relay_dir=str(relay), new_host="new"))
    journal.record("disable-mail", 0, 1.0)
    assert journal.new_host_served("new") is None
    journal.note("new-served", host="new", since=1.0)
    served = journal.new_host_served("new")
    assert served is not None
    assert served in journal.where_things_stand()  # since when new may hold the newest mail
    journal.record_rollback()
    assert journal.last_new_host() == "new", "a second rollback still looks at new"
    journal.note("carried-back", host="new")
    assert journal.new_host_served("new") is None


def test_a_rollback_never_takes_its_old_host_from_dns(relay: Path):
    settings = resolve(context(), relay_dir=str(relay))
    assert settings.old_host_from_domain
    with pytest.raises(SettingsError, match="--old-host"):
        rollback.rollback_hosts(settings, None)


def test_a_journal_planning_unknown_steps_is_refused_in_one_line(tmp_path: Path):
    path = tmp_path / "chat.example.org.json"
    path.write_text(json.dumps({"mail_domain": "chat.example.org", "plan": ["teleport"]}))
    journal = Journal.load(path)
    with pytest.raises(SettingsError) as refused:
        run_plan.order_of(journal)
    assert "teleport" in str(refused.value) and "\n" not in str(refused.value)
    assert run_plan.order_of(None) == run_plan.seed_order()


def test_a_folder_renamed_since_the_threshold_is_excused_with_its_whole_subtree():
    # mv .Spam .Junk moves the ctimes of .Junk and of the account (the directory
    # renamed in); .Junk's children keep theirs.
    def entry(path, kind="d", ct=1):
        return {"p": path, "t": kind, "m": 0o700, "mt": 1, "u": "vmail", "g": "vmail", "ct": ct}

    base = "/home/vmail/mail/x"
    old = [
        entry(base, ct=50),
        entry(f"{base}/.Junk", ct=50),
        entry(f"{base}/.Junk/cur"),
        entry(f"{base}/.Junk/cur/m1", kind="f"),
    ]
    new = [entry(base), entry(f"{base}/.Spam"), entry(f"{base}/.Spam/cur")]
    since = checks_tree.compare(old, new, changed_since=(10, 10))
    assert since.ok and since.excused == 5
    # Unless they changed since: then the subtrees on one side only are differences.
    old[0], old[1] = entry(base, ct=5), entry(f"{base}/.Junk", ct=5)
    assert checks_tree.compare(old, new, changed_since=(10, 10)).by_kind() == {
        "missing": 3,
        "extra": 2,
    }


def test_after_the_move_only_the_mail_trees_may_change_and_queue_files_are_not_matched():
    def entry(path, kind="f", ct=1, s=1):
        return {
            "p": path,
            "t": kind,
            "m": 0o600,
            "mt": 1,
            "u": "vmail",
            "g": "vmail",
            "ct": ct,
            "s": s,
        }

    mail, cert = "/home/vmail/mail/x/cur/m1", "/var/lib/acme/certs/d/cert"
    deferred = "/var/spool/postfix/deferred/A/A1"
    old = [entry(mail), entry(deferred), entry(cert)]
    # On new, after it began serving (threshold 10): the message was flagged, the
    # deferred message retried (rewritten), and the certificate changed by hand.
    new = [entry(mail, ct=20, s=2), entry(deferred, ct=20, s=3), entry(cert, ct=20, s=2)]
    mail_trees = ("/home/vmail/mail",)
    after = checks_tree.compare(
        old, new, changed_since=(None, 10), changing=mail_trees, queues=False
    )
    assert after.by_kind() == {"size": 1} and after.excused == 1
    assert cert in after.summary() and "queue files not compared" in after.summary()
    # The queue compared as in the window: the rewritten deferred file is a difference.
    window = checks_tree.compare(old, new, changed_since=(None, 10), changing=mail_trees)
    assert window.by_kind() == {"size": 1, "queue": 1}


def test_the_cutover_restarts_opendkim_and_nginx_unless_install_did_on_the_same_secrets(
    tmp_path: Path,
):
    journal = Journal(path=tmp_path / "j.json", mail_domain="relay.example")
    assert not secrets_read_since_carried(journal, "new")  # nothing carried: restart
    journal.note("secrets-carried", host="new", paths=["/etc/dkimkeys"], digest="d")
    assert not secrets_read_since_carried(journal, "new")  # carried, not restarted
    journal.note("secrets-restarted", host="new")
    assert secrets_read_since_carried(journal, "new")
    assert not secrets_read_since_carried(journal, "other")  # another new host
    journal.note("secrets-changed", host="new")  # a certificate renewed on old since
    assert not secrets_read_since_carried(journal, "new")
    journal.note("secrets-carried", host="new", paths=["/etc/dkimkeys"], digest="e")
    journal.note("secrets-restarted", host="new")
    journal.events.append({"event": "restart"})  # --restart: whatever new holds now
    assert not secrets_read_since_carried(journal, "new")


def test_removing_an_earlier_attempt_keeps_sockets_only(tmp_path: Path):
    tree, lone = tmp_path / "spool", tmp_path / "file"
    (tree / "opendkim").mkdir(parents=True)
    (tree / "deferred" / "A").mkdir(parents=True)
    (tree / "deferred" / "A" / "A1").write_text("mail")
    lone.write_text("x")
    (tree / "link").symlink_to("/etc")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tree / "opendkim" / "opendkim.sock"))
    try:
        command = copy_commands.removal_command([str(tree), str(lone)])
        subprocess.run(["bash", "-c", command], check=True)
    finally:
        listener.close()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["spool", "spool/opendkim", "spool/opendkim/opendkim.sock"]
    assert Path("/etc").is_dir()
