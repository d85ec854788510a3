"""The lab itself: hosts, SSH, agent forwarding, seeding, the stand-in, teardown."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import fabric
import pytest

from chatmail_migrate.lab import Lab, LabError, SeedParams, nameserver
from chatmail_migrate.lab.lab_state import HOST_NAMES
from tests.helpers import lab_name, mail_services, tool_env

# One lab for the module (seeded_lab): its tests stay on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("lab")


def test_ssh_as_root_to_every_host_with_fabric_and_openssh(seeded_lab: Lab):
    env_sock = seeded_lab.env()["SSH_AUTH_SOCK"]
    for host in HOST_NAMES:
        assert seeded_lab.ssh(host, "id -un").stdout.strip() == "root"
        config = fabric.Config(runtime_ssh_path=str(seeded_lab.ssh_config))
        old_sock = os.environ.get("SSH_AUTH_SOCK")
        os.environ["SSH_AUTH_SOCK"] = env_sock
        try:
            with fabric.Connection(host, config=config) as conn:
                result = conn.run("hostname; cat /etc/debian_version", hide=True, in_stream=False)
        finally:
            if old_sock is None:
                os.environ.pop("SSH_AUTH_SOCK")
            else:
                os.environ["SSH_AUTH_SOCK"] = old_sock
        name, version = result.stdout.split()
        assert name == host
        assert version.startswith("12.")


def test_hosts_are_distinct_machines(seeded_lab: Lab):
    ids = {seeded_lab.ssh(h, "cat /etc/machine-id").stdout for h in HOST_NAMES}
    keys = {seeded_lab.ssh(h, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout for h in HOST_NAMES}
    assert len(ids) == len(keys) == len(HOST_NAMES)


def test_known_hosts_pins_each_host_key(seeded_lab: Lab, tmp_path: Path):
    # A host presenting another key must be refused by the lab's ssh config.
    lines = seeded_lab.known_hosts.read_text().splitlines()
    swapped = [lines[1].split()[0] + " " + " ".join(lines[0].split()[1:])] + lines[1:2]
    bad = tmp_path / "known_hosts"
    bad.write_text("\n".join(swapped[:1]) + "\n")
    result = subprocess.run(
        ["ssh", "-F", str(seeded_lab.ssh_config), "-o", f"UserKnownHostsFile={bad}", "new", "true"],
        capture_output=True,
        text=True,
        env=tool_env(seeded_lab, tmp_path),
    )
    assert result.returncode == 255
    assert "host key" in result.stderr.lower()


def test_agent_forwarding_from_old_to_new(seeded_lab: Lab):
    new_key = next(
        line for line in seeded_lab.known_hosts.read_text().splitlines() if line.startswith("new,")
    )
    inner = (
        f"printf '%s\\n' '{new_key}' > /tmp/kh && ssh -o BatchMode=yes "
        f"-o UserKnownHostsFile=/tmp/kh root@{seeded_lab.address('new')} hostname"
    )
    with_agent = seeded_lab.ssh("old", inner, forward_agent=True, check=False)
    assert (with_agent.returncode, with_agent.stdout.strip()) == (0, "new")
    without = seeded_lab.ssh("old", inner, check=False)
    assert without.returncode == 255, "old must not reach new without the forwarded agent"


def test_seeded_relay_on_old(seeded_lab: Lab):
    domain = seeded_lab.domain
    stat = seeded_lab.ssh(
        "old",
        "stat -c '%U %G %a %n' /etc/dkimkeys/opendkim.private /var/lib/acme/accounts "
        f"/run/echobot/password /var/lib/echobot /home/vmail/mail/{domain}; "
        f"readlink /var/lib/acme/live/{domain}",
    ).stdout.splitlines()
    assert stat[0] == "opendkim opendkim 600 /etc/dkimkeys/opendkim.private"
    assert stat[1] == "root root 700 /var/lib/acme/accounts"
    # 0600 plus the ACL: the group bits show the ACL mask (r).
    assert stat[2].startswith("echobot echobot 640 ")
    assert stat[3].startswith("echobot echobot 700 ")
    assert stat[4].startswith("vmail vmail 700 ")
    assert stat[5].startswith("../certs/")
    acl = seeded_lab.ssh("old", "getfacl -cp /run/echobot/password").stdout
    assert "user:vmail:r--" in acl
    # 30 accounts with a password file and 8 messages each, mtimes spread over days.
    out = seeded_lab.ssh(
        "old",
        f"cd /home/vmail/mail/{domain} && ls -d *@{domain}/password | wc -l && "
        f"find . -path '*/cur/*' -o -path '*/new/*' -type f | wc -l && "
        f"find . -path '*/cur/*' -type f -printf '%TY-%Tm-%Td\\n' | sort -u | wc -l && "
        "find . ! -user vmail | wc -l",
    ).stdout.split()
    assert out[0] == "30"
    assert out[1] == str(30 * 8 + 1), "and one message hard-linked into a .Trash folder"
    assert int(out[2]) > 5, "message mtimes should spread over many days"
    assert out[3] == "0"
    queue = seeded_lab.ssh("old", "postqueue -j").stdout.splitlines()
    assert any(json.loads(q)["queue_name"] == "deferred" for q in queue)
    assert mail_services(seeded_lab, "old") == {
        "postfix": "active enabled",
        "dovecot": "active enabled",
    }
    assert seeded_lab.ssh("old", "cat /etc/chatmail-version").stdout.strip()


def test_new_host_users_have_other_ids_than_old(seeded_lab: Lab):
    def ids(host):
        return seeded_lab.ssh(host, "id -u vmail; id -g vmail; id -u echobot").stdout.split()

    old, new = ids("old"), ids("new")
    assert len(old) == len(new) == 3
    assert all(o != n for o, n in zip(old, new, strict=True))
    assert mail_services(seeded_lab, "new") == {
        "postfix": "inactive disabled",
        "dovecot": "inactive disabled",
    }


def test_bare_new_host_has_no_relay_users(make_lab):
    lab = make_lab(seed=SeedParams(accounts=2, messages=1, new_users="none"))
    assert lab.ssh("new", "id vmail", check=False).returncode == 1
    assert lab.ssh("new", "id echobot", check=False).returncode == 1


def _standin(lab: Lab, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    command = lab.env()["CMDEPLOY"]
    return subprocess.run(
        f"{command} {' '.join(args)}",
        shell=True,
        cwd=lab.relay_dir,
        capture_output=True,
        text=True,
        env=tool_env(lab, tmp_path, **env),
    )


def test_standin_turns_mail_off_and_on(seeded_lab: Lab, tmp_path: Path):
    off = _standin(seeded_lab, tmp_path, "run", "--disable-mail", "--ssh-host", "old")
    assert off.returncode == 0, off.stderr
    assert "STAND-IN" in off.stdout
    assert mail_services(seeded_lab, "old") == {
        "postfix": "inactive disabled",
        "dovecot": "inactive disabled",
    }
    on = _standin(seeded_lab, tmp_path, "run", "--ssh-host", seeded_lab.address("old"))
    assert on.returncode == 0, on.stderr
    assert mail_services(seeded_lab, "old") == {
        "postfix": "active enabled",
        "dovecot": "active enabled",
    }
    failing = _standin(
        seeded_lab, tmp_path, "run", "--ssh-host", "old", CHATMAIL_LAB_CMDEPLOY_FAIL="before@old"
    )
    assert failing.returncode == 1
    assert "on purpose" in failing.stderr


def test_standin_unreachable_host_fails_with_message(seeded_lab: Lab, tmp_path: Path):
    config = tmp_path / "ssh_config"
    # Relay 1.7 first logs in to the mail domain: that works, the deploy target does not.
    config.write_text(
        "Host nowhere\n  HostName 127.0.0.1\n  Port 1\n  BatchMode yes\n"
        f"Host *\n  UserKnownHostsFile {seeded_lab.known_hosts}\n"
    )
    result = _standin(
        seeded_lab, tmp_path, "run", "--ssh-host", "nowhere", CHATMAIL_LAB_SSH_CONFIG=str(config)
    )
    assert result.returncode == 1
    assert "cannot reach nowhere" in result.stderr


def test_standin_1_7_logs_in_to_the_mail_domain_where_dns_points(seeded_lab: Lab, tmp_path):
    # cmdeploy 1.7 logs in to mail_domain itself, whatever --ssh-host says: after the
    # DNS switch that is the new host, whose key known_hosts does not name for the domain.
    at_old = _standin(seeded_lab, tmp_path, "run", "--dry-run", "--ssh-host", "new")
    assert at_old.returncode == 0, at_old.stderr
    assert f"[ssh] login to {seeded_lab.domain}" in at_old.stdout
    nameserver.update(seeded_lab, a=[seeded_lab.address("new")])
    try:
        at_new = _standin(seeded_lab, tmp_path, "run", "--dry-run", "--ssh-host", "new")
    finally:
        nameserver.update(seeded_lab, a=[seeded_lab.address("old")])
    assert at_new.returncode == 1
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in at_new.stderr


def test_standin_stages_lose_restarts_and_check_external_tls(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(version="1.10.0", accounts=1, messages=1))
    chatmail_socket = "/var/spool/postfix/opendkim/opendkim.sock"

    def sockets() -> list[str]:
        found = lab.ssh("new", f"ls {chatmail_socket} /run/opendkim/opendkim.sock", check=False)
        return found.stdout.split()

    assert sockets() == ["/run/opendkim/opendkim.sock"], "Debian's default opendkim"
    for stages in ("install,configure", "activate"):
        run = _standin(lab, tmp_path, "run", "--ssh-host", "new", CMDEPLOY_STAGES=stages)
        assert run.returncode == 0, run.stderr
    # configure wrote chatmail's opendkim.conf, but the activate process never knew.
    assert sockets() == ["/run/opendkim/opendkim.sock"]
    lab.ssh("new", "rm /etc/opendkim.conf")
    whole = _standin(lab, tmp_path, "run", "--ssh-host", "new")
    assert whole.returncode == 0, whole.stderr
    assert sockets() == [chatmail_socket], "one process: configure's change is applied"
    lab.set_ini(tls_external_cert_and_key="/etc/ssl/ext/cert.pem /etc/ssl/ext/key.pem")
    external = _standin(lab, tmp_path, "run", "--ssh-host", "new")
    assert external.returncode == 1
    assert "External TLS file not found on server: /etc/ssl/ext/cert.pem" in external.stderr


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def _live(pid: int | None) -> bool:
    status = Path(f"/proc/{pid}/status")
    return bool(pid) and status.exists() and "State:\tZ" not in status.read_text()


def _processes_rooted_in(directory: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "root").startswith(str(directory)):
                    found.append(proc.name)
            except OSError:
                pass
    return found


def _lab_traces(lab: Lab) -> dict[str, list[str]]:
    """What of ``lab`` is visible on this machine: mounts, namespaces, links, processes."""
    locks = Path("/run/systemd/nspawn/locks")
    return {
        "mounts": [m for m in Path("/proc/mounts").read_text().splitlines() if str(lab.dir) in m],
        "netns": [n for n in _out("ip", "netns", "list").split() if n.startswith(f"{lab.name}-")],
        "links": [x for x in _out("ip", "-o", "link").splitlines() if f" {lab.name}" in x],
        "processes": _processes_rooted_in(lab.dir)
        + [str(p) for p in [lab.agent_pid, *(h.pid for h in lab.hosts.values())] if _live(p)],
        "cgroups": [c for h in lab.hosts.values() for c in h.cgroups if Path(c).exists()],
        "locks": [h.root_lock for h in lab.hosts.values() if (locks / h.root_lock).exists()],
        "state": [str(lab.dir)] if lab.dir.exists() else [],
    }


def test_second_lab_runs_beside_and_teardown_leaves_nothing(seeded_lab: Lab):
    second = Lab(name=lab_name("cmtdn"))
    if Lab.load(second.name):
        Lab.load(second.name).down()
    second.up(log=print)
    try:
        assert second.subnet != seeded_lab.subnet
        assert second.ssh("old", "hostname").stdout.strip() == "old"
        traces = _lab_traces(second)
        assert all(traces.values()), traces
    finally:
        second.down(log=print)
    assert _lab_traces(second) == {k: [] for k in traces}
    # The first lab is untouched by the second one's teardown.
    assert seeded_lab.ssh("old", "hostname").stdout.strip() == "old"


def test_teardown_after_half_failed_up(lab_available, monkeypatch):
    lab = Lab(name=lab_name("cmthf"))
    if Lab.load(lab.name):
        Lab.load(lab.name).down()
    booted: list[str] = []

    def fail_on_second_host(self, hostname, *args, **kwargs):
        if booted:
            raise LabError("injected boot failure")
        booted.append(hostname)
        return original(self, hostname, *args, **kwargs)

    original = Lab._boot_host
    monkeypatch.setattr(Lab, "_boot_host", fail_on_second_host)
    with pytest.raises(LabError, match="injected"):
        lab.up(log=print)
    assert booted == ["old"]
    assert lab.hosts["old"].pid  # something really was started, and then removed
    assert all(v == [] for v in _lab_traces(lab).values()), _lab_traces(lab)


def test_remote_helpers_that_replace_patchwork(seeded_lab: Lab, monkeypatch):
    from chatmail_migrate.hosts.runner import Runner, existing_paths, have_program, path_exists
    from chatmail_migrate.settings import Settings

    monkeypatch.setenv("SSH_AUTH_SOCK", str(seeded_lab.agent_sock))
    runner = Runner(Settings(old_host="old", ssh_config=str(seeded_lab.ssh_config)))
    try:
        assert path_exists(runner, "old", "/home/vmail/mail")
        assert not path_exists(runner, "old", "/no/such/path")
        assert have_program(runner, "old", "tar") and not have_program(runner, "old", "no-such")
        assert existing_paths(runner, "old", ["/etc/dkimkeys", "/nope"]) == ["/etc/dkimkeys"]
    finally:
        runner.close()
