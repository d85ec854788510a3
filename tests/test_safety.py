"""preflight, host keys, agent forwarding, verify and rollback against the lab.

Every refused run must leave both hosts as they were."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chatmail_migrate.hosts.connect import connect
from chatmail_migrate.lab import Lab, SeedParams
from chatmail_migrate.settings import Settings
from tests.helpers import BIN, domain_keys, host_key, mail_services, run_tool, tool_env
from tests.test_migrate import MAIL_ON, assert_migrated, listing

# One lab for the module (seeded_lab): its tests stay on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("safety")


def unchanged(lab: Lab, mailbox_dir: str = "") -> None:
    assert mail_services(lab, "old") == MAIL_ON
    mailbox_dir = mailbox_dir or f"/home/vmail/mail/{lab.domain}"
    assert lab.ssh("new", f"test -e {mailbox_dir}", check=False).returncode == 1


def preflight(lab: Lab, tmp_path: Path, *args: str, **env):
    return run_tool(lab, "invoke", "preflight", *args, state_dir=tmp_path, **env)


def test_preflight_passes_on_a_healthy_lab(seeded_lab: Lab, tmp_path: Path):
    result = preflight(seeded_lab, tmp_path, "--new-host", "new")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line[:4] in ("PASS", "WARN", "FAIL")]
    assert all(line.startswith("PASS") for line in lines), lines
    names = [line.split(":")[0][6:] for line in lines]
    for name in (
        "cmdeploy",
        "ssh-agent",
        "ssh to old",
        "ssh to new",
        "distinct hosts",
        "old is a relay",
        "new runs Debian 12",
        "programs on old",
        "programs on new",
        "old reaches new",
        "free space on new",
        "new holds no mailboxes",
    ):
        assert name in names
    assert "relay 1.7.0 (commit" in result.stdout
    unchanged(seeded_lab)


def test_wrong_user_is_an_auth_failure(seeded_lab: Lab, tmp_path: Path):
    result = preflight(seeded_lab, tmp_path, "--old-host", "nobody@old", "--new-host", "new")
    assert result.returncode != 0
    assert "FAIL  ssh to old: authentication to nobody@old failed" in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    unchanged(seeded_lab)


def test_no_agent_fails_before_anything_changes(seeded_lab: Lab, tmp_path: Path):
    result = run_tool(
        seeded_lab,
        "invoke",
        "migrate",
        "--new-host",
        "new",
        "--yes",
        state_dir=tmp_path,
        SSH_AUTH_SOCK="",
    )
    assert result.returncode != 0
    assert "FAIL  ssh-agent: no agent" in result.stdout
    assert "FAIL  old reaches new" in result.stdout
    assert "[1/8]" not in result.stdout
    unchanged(seeded_lab)


def test_same_machine_under_two_names_is_refused(seeded_lab: Lab, tmp_path: Path):
    result = preflight(
        seeded_lab, tmp_path, "--old-host", "old", "--new-host", seeded_lab.address("old")
    )
    assert result.returncode != 0
    assert "FAIL  distinct hosts: old and new are the same machine" in result.stdout
    unchanged(seeded_lab)


def test_unresolvable_host(seeded_lab: Lab, tmp_path: Path):
    # In a network namespace of its own with nothing but loopback, the name lookup
    # cannot leave this machine.
    env = tool_env(seeded_lab, tmp_path)
    result = subprocess.run(
        [
            "unshare",
            "--net",
            str(BIN / "invoke"),
            "preflight",
            "--old-host",
            "no-such-host.invalid",
            "--new-host",
            "also-not-there.invalid",
        ],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "FAIL  ssh to old: cannot resolve no-such-host.invalid" in result.stdout
    unchanged(seeded_lab)


def _config_with_known_hosts(lab: Lab, tmp_path: Path, known_hosts: Path) -> Path:
    config = tmp_path / "ssh_config"
    config.write_text(lab.ssh_config.read_text().replace(str(lab.known_hosts), str(known_hosts)))
    return config


def test_unknown_host_keys_are_refused_or_recorded(seeded_lab: Lab, tmp_path: Path):
    known = tmp_path / "known_hosts"
    config = _config_with_known_hosts(seeded_lab, tmp_path, known)
    env = {"CHATMAIL_MIGRATE_SSH_CONFIG": str(config)}
    refused = preflight(seeded_lab, tmp_path, "--old-host", "old", "--new-host", "new", **env)
    assert refused.returncode != 0
    assert f"FAIL  ssh to old: host key of {seeded_lab.address('old')} (ssh-ed25519 SHA256:" in (
        refused.stdout
    )
    assert "--accept-new-host-keys" in refused.stdout
    assert not known.exists()
    accepted = preflight(
        seeded_lab,
        tmp_path,
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--accept-new-host-keys",
        **env,
    )
    assert accepted.returncode == 0, accepted.stdout
    assert "recorded new host key" in accepted.stdout
    recorded = known.read_text().splitlines()
    assert len(recorded) == 2
    again = preflight(seeded_lab, tmp_path, "--old-host", "old", "--new-host", "new", **env)
    assert again.returncode == 0 and "recorded" not in again.stdout
    unchanged(seeded_lab)


def test_changed_host_key_is_never_accepted(seeded_lab: Lab, tmp_path: Path):
    lines = seeded_lab.known_hosts.read_text().splitlines()
    old_line = next(line for line in lines if line.startswith("old,"))
    new_key = next(line for line in lines if line.startswith("new,")).split(" ", 1)[1]
    known = tmp_path / "known_hosts"
    # old's names, with new's key: what a man in the middle (or a reinstall) looks like.
    known.write_text("\n".join([old_line.split(" ")[0] + " " + new_key, *lines[1:]]) + "\n")
    config = _config_with_known_hosts(seeded_lab, tmp_path, known)
    result = preflight(
        seeded_lab,
        tmp_path,
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--accept-new-host-keys",
        CHATMAIL_MIGRATE_SSH_CONFIG=str(config),
    )
    assert result.returncode != 0
    assert "FAIL  ssh to old: HOST KEY CHANGED for old" in result.stdout
    assert "ssh-keygen -R" in result.stdout
    unchanged(seeded_lab)


def test_agent_is_forwarded_only_when_asked(seeded_lab: Lab, tmp_path: Path, monkeypatch):
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n    ForwardAgent yes\n\n" + seeded_lab.ssh_config.read_text())
    monkeypatch.setenv("SSH_AUTH_SOCK", str(seeded_lab.agent_sock))
    settings = Settings(ssh_config=str(config))
    for forward, expected in ((False, ""), (True, "/tmp/ssh-")):
        with connect(settings, "old", forward_agent=forward) as conn:
            sock = conn.run("echo $SSH_AUTH_SOCK", hide=True, in_stream=False).stdout.strip()
        assert sock.startswith(expected) and bool(sock) == forward


def test_new_host_holding_mailboxes_needs_force(seeded_lab: Lab, tmp_path: Path):
    mailbox = f"/home/vmail/mail/{seeded_lab.domain}/someone@{seeded_lab.domain}"
    seeded_lab.ssh("new", f"mkdir -p {mailbox}")
    try:
        refused = preflight(seeded_lab, tmp_path, "--new-host", "new")
        assert refused.returncode != 0
        assert "FAIL  new holds no mailboxes: new already holds 1 mailboxes" in refused.stdout
        forced = preflight(seeded_lab, tmp_path, "--new-host", "new", "--force")
        assert forced.returncode == 0
        assert "WARN  new holds no mailboxes: 1 there; --force: copy-data replaces them" in (
            forced.stdout
        )
    finally:
        seeded_lab.ssh("new", "rm -rf /home/vmail/mail")


def test_verify_by_hand_and_rollback_by_hand(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=8, messages=3))
    before = listing(lab, "old")
    # Hosts swapped, from a directory without chatmail.ini (so no journal): the
    # "new" host is the live relay, whose keys and mail the copy would overwrite.
    swapped = run_tool(
        lab,
        "chatmail-migrate",
        "-H",
        "new",
        "copy-data",
        "--new-host",
        "old",
        "--force",
        state_dir=tmp_path,
        cwd=tmp_path,
        CHATMAIL_RELAY_DIR="",
    )
    assert swapped.returncode == 1
    assert "copy-data refused: old runs postfix and dovecot, so it serves mail" in (swapped.stderr)
    migrate = ["migrate", "--new-host", "new", "--yes", "--no-wait", "--checksum"]
    done = run_tool(lab, "invoke", *migrate, state_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "content (sha256)" in done.stdout
    assert_migrated(lab, before)
    # The same copy again from shell history, after the move: new is the live relay.
    for step in (
        ["copy-data", "--new-host", "new", "--force"],
        ["presync", "--new-host", "new"],
    ):  # old: the journal's
        again = run_tool(lab, "invoke", *step, state_dir=tmp_path)
        assert again.returncode == 1
        assert f"{step[0]} refused: new runs postfix and dovecot" in again.stderr
    assert_migrated(lab, before)
    args = ["verify", "--new-host", "new"]  # the old host: the journal's
    assert run_tool(lab, "invoke", *args, state_dir=tmp_path).returncode == 0
    # Same size, same mtime, other bytes: only --checksum sees it.
    path = lab.ssh("new", "find /var/lib/acme/certs -name cert | head -n1").stdout.strip()
    lab.ssh(
        "new",
        f"cp -p {path} /tmp/c && printf B | dd of={path} bs=1 seek=100 conv=notrunc "
        f"2>/dev/null && touch -r /tmp/c {path}",
    )
    assert run_tool(lab, "invoke", *args, state_dir=tmp_path).returncode == 0
    checked = run_tool(lab, "invoke", *args, "--checksum", state_dir=tmp_path)
    assert checked.returncode != 0
    assert f"{path}: content" in checked.stderr
    assert "1 difference (1 content)" in checked.stderr

    # --no-wait and nobody changed DNS: the domain keeps both hosts' keys.
    assert "keeps both hosts' keys: not every authoritative nameserver answers" in done.stdout
    assert len(domain_keys(lab.known_hosts, lab.domain)) == 2
    back = run_tool(lab, "invoke", "rollback", state_dir=tmp_path)  # the journal's old host
    assert back.returncode == 0, back.stderr
    assert "DNS was switched to the new host: point it back at the old host too" in back.stdout
    assert mail_services(lab, "old") == MAIL_ON
    assert domain_keys(lab.known_hosts, lab.domain) == [host_key(lab, "old")]
