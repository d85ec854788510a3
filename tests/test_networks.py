"""The networks operators have: a new host with several addresses, IPv6 only, sshd on
another port behind a jump host, and an old host known by the mail domain's name."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from chatmail_migrate.lab import Lab, SeedParams, nameserver
from tests.helpers import listing, run_tool, run_tool_with_fault
from tests.test_migrate import assert_migrated, journal
from tests.test_safety import unchanged


def public_looking(lab: Lab) -> str:
    """A globally routable address for this lab's new host (kept on the lab's bridge by
    a host route, so nothing sent to it leaves this machine)."""
    third = ipaddress.ip_network(lab.subnet).network_address.packed[2]
    return f"192.88.99.{third % 254 + 1}"


def public_looking6(lab: Lab) -> str:
    """A global IPv6 address for the new host, derived from ``public_looking``: in
    3ffe::/16 (the 6bone's, returned and unallocated), which every Python's ipaddress
    calls global. 6to4 (2002::/16) was not: Debian 12's Python 3.11.2 calls it private,
    later ones global, so a test built on it passed or failed by interpreter."""
    public = ipaddress.IPv4Address(public_looking(lab))
    return str(ipaddress.IPv6Address((0x3FFE << 112) | (int(public) << 80) | 1))


def test_switch_dns_proposes_only_the_address_clients_reach(make_lab, tmp_path: Path):
    lab = make_lab("cmnet", seed=SeedParams(version="1.8.0", accounts=3))
    public = public_looking(lab)
    lab.add_address("new", f"{public}/32")
    lab.add_address("new", "192.168.77.2/24")
    lab.add_guest_bridge("new", "docker0", "172.17.0.1/16")
    # A global IPv6 address being retired: clients must not get it.
    retired = public_looking6(lab)
    lab.add_address("new", f"{retired}/64", "eth0", "preferred_lft", "0")
    before = listing(lab, "old")

    def operator_changes_dns(proc):
        assert proc.poll() is None, "switch-dns must wait until the record changes"
        nameserver.update(lab, a=[public])

    code, output = run_tool_with_fault(
        lab,
        ["migrate", "--old-host", "old", "--new-host", "new", "--yes", "--dns-timeout", "60"],
        state_dir=tmp_path,
        when="waiting for DNS",
        fault=operator_changes_dns,
    )
    assert code == 0, output
    row = next(line for line in output.splitlines() if line.split()[:2] == ["A", f"{lab.domain}:"])
    assert " ".join(row.split()) == (
        f"A {lab.domain}: replace {lab.address('old')} with {public} (public on new's eth0)"
    ), row
    assert "AAAA" not in output.split("Change these records")[1].split("waiting for DNS")[0]
    for why in (
        f"{lab.address('new')} (private)",
        "192.168.77.2 (private)",
        "172.17.0.1 (on docker0, a container bridge)",
        f"{retired} (deprecated)",
        f"{lab.address6('new')} (private)",
    ):
        assert f"not proposed: {why}" in output
    assert "all 2 nameservers answer the new values" in output
    assert journal(tmp_path, lab)["steps"]["enable-mail"]
    assert_migrated(lab, before)


def test_ipv6_only_migration_with_presync(make_lab, tmp_path: Path):
    lab = make_lab("cmnet", seed=SeedParams(accounts=4, messages=3))  # relay 1.7: ssh to domain
    old6, new6 = lab.address6("old"), lab.address6("new")
    prefix = ipaddress.ip_network(lab.subnet6)
    # The zone serves only AAAA for the relay, and its nameservers have IPv6 addresses
    # this workstation cannot reach (no one in the lab has them): as from an IPv4-only one.
    nameserver.update(
        lab, a=[], aaaa=[old6], ns_aaaa={"ns1": str(prefix[0x35]), "ns2": str(prefix[0x36])}
    )
    before = listing(lab, "old")
    # Written as operators may type it: upper case, zeros spelled out.
    typed = ipaddress.IPv6Address(new6).exploded.upper()

    def operator_changes_dns(proc):
        assert proc.poll() is None
        nameserver.update(lab, aaaa=[new6])

    code, output = run_tool_with_fault(
        lab,
        [
            "migrate",
            "--old-host",
            old6,
            "--new-host",
            f"[{new6}]",
            "--presync",
            "--yes",
            "--new-address",
            typed,
            "--dns-timeout",
            "60",
        ],
        state_dir=tmp_path,
        when="waiting for DNS",
        fault=operator_changes_dns,
    )
    assert code == 0, output
    assert f"WARN  DNS: nameserver ns1.lab.example ({prefix[0x35]})" in output
    assert "all 2 nameservers answer the new values" in output
    assert_migrated(lab, before)
    assert any(e["event"] == "presync-done" for e in journal(tmp_path, lab)["events"])
    # Every login on new came over IPv6: the tool's, cmdeploy's, and old's (rsync, tar).
    logins = lab.ssh("new", "journalctl -q -o cat _COMM=sshd | grep Accepted").stdout
    assert f"from {old6} " in logins, logins
    assert f"from {lab.address('old')} " not in logins, logins


def operator_ssh(lab: Lab, tmp_path: Path, *, jump_known: bool) -> dict[str, str]:
    """An operator's ~/.ssh: the lab's config with its own known_hosts, where the old
    relay is known by its name only (they always typed ``ssh root@DOMAIN``)."""
    known = tmp_path / "known_hosts"
    lines = []
    for line in lab.known_hosts.read_text().splitlines():
        names, key = line.split(" ", 1)
        if lab.domain in names.split(","):
            names = lab.domain
        elif lab.address("spare") in names and not jump_known:
            continue
        lines.append(f"{names} {key}")
    known.write_text("\n".join(lines) + "\n")
    config = tmp_path / "ssh_config"
    config.write_text(lab.ssh_config.read_text().replace(str(lab.known_hosts), str(known)))
    return {"CHATMAIL_MIGRATE_SSH_CONFIG": str(config), "CHATMAIL_LAB_SSH_CONFIG": str(config)}


def test_port_jump_host_and_old_host_known_by_name(make_lab, tmp_path: Path):
    # 1.8: no login to the mail domain (up to 1.7 that goes to port 22 of DNS's address).
    lab = make_lab("cmnet", seed=SeedParams(version="1.8.0", accounts=3, messages=2))
    before = listing(lab, "old")
    # New listens on 2222 only, and takes logins only through the jump host and from old.
    lab.move_ssh("new", 2222, allow_from=(lab.address("spare"), lab.address("old")), jump="spare")
    new = f"{lab.address('new')}:2222"

    # The jump host's key is unknown: refused in one line, before anything changes.
    env = operator_ssh(lab, tmp_path, jump_known=False)
    result = run_tool(lab, "invoke", "presync", "--new-host", new, state_dir=tmp_path, **env)
    assert result.returncode != 0
    first, *rest = result.stderr.strip().splitlines()
    assert f"host key of jump host (ProxyJump of {lab.address('new')}) {lab.address('spare')}" in (
        first
    )
    assert first.startswith("error: presync not started: new host: host key of jump host")
    assert rest == [], "refused before the step began, nothing done: one line"
    unchanged(lab)

    # New lets in only the jump host: old's own ssh, which goes direct, cannot reach it.
    lab.move_ssh("new", 2222, allow_from=(lab.address("spare"),), jump="spare")
    env = operator_ssh(lab, tmp_path, jump_known=True)
    result = run_tool(lab, "invoke", "preflight", "--new-host", "new", state_dir=tmp_path, **env)
    assert result.returncode != 0
    fail = next(line for line in result.stdout.splitlines() if line.startswith("FAIL"))
    assert fail.startswith(f"FAIL  old reaches new: ssh root@{lab.address('new')}:2222 from old"), (
        fail
    )
    assert f"(this machine goes through {lab.address('spare')}; old goes direct)" in fail
    unchanged(lab)
    lab.move_ssh("new", 2222, allow_from=(lab.address("spare"), lab.address("old")), jump="spare")

    # Known: the tool reaches new through spare on 2222, old by the address DNS gives
    # (no --old-host), accepted under the domain's name; old's own ssh uses 2222.
    env = operator_ssh(lab, tmp_path, jump_known=True)
    result = run_tool(lab, "invoke", "presync", "--new-host", new, state_dir=tmp_path, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"old host: {lab.domain} points at {lab.address('old')}" in result.stdout
    assert f"host key of {lab.address('old')} is the one known_hosts has for {lab.domain}: " in (
        result.stdout
    )
    assert "--accept-new-host-keys" not in result.stdout + result.stderr
    count = f"find /home/vmail/mail/{lab.domain} -type f | wc -l"
    assert lab.ssh("new", count).stdout == lab.ssh("old", count).stdout
    logins = lab.ssh("new", "journalctl -q -o cat _COMM=sshd | grep Accepted").stdout
    assert f"from {lab.address('old')} port" in logins
    assert f"from {lab.address('spare')} port" in logins

    # The whole move, new named by an ssh config alias (cmdeploy takes no port). Through
    # the jump host the tool cannot see the address clients reach: --new-address.
    def operator_changes_dns(proc):
        nameserver.update(lab, a=[lab.address("new")])

    code, output = run_tool_with_fault(
        lab,
        ["migrate", "--new-host", "new", "--presync", "--yes", "--new-address", lab.address("new")],
        state_dir=tmp_path,
        when="waiting for DNS",
        fault=operator_changes_dns,
        **env,
    )
    assert code == 0, output
    assert_migrated(lab, before)
    # cmdeploy's own ssh to old's address found the key the tool recorded for it.
    known = Path(env["CHATMAIL_MIGRATE_SSH_CONFIG"]).with_name("known_hosts").read_text()
    assert f"\n{lab.address('old')} ssh-ed25519 " in known


def test_relay_17_with_new_sshd_on_another_port_is_refused_before_mail_goes_down(
    make_lab, tmp_path: Path
):
    # Relay 1.7's cmdeploy logs in with `ssh root@DOMAIN` (port 22 here: the operator's
    # config has no Host entry for the domain); after the DNS switch that is new, whose
    # sshd listens on 2222 only. Found by trying that login, before anything changes.
    lab = make_lab("cmnet", seed=SeedParams(accounts=2, messages=1))
    lab.move_ssh("new", 2222)
    result = run_tool(
        lab,
        "invoke",
        "migrate",
        "--new-host",
        "new",
        "--yes",
        "--dns-timeout",
        "60",
        state_dir=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    fail = next(line for line in output.splitlines() if line.startswith("FAIL"))
    assert fail.startswith(f"FAIL  login to {lab.domain} (cmdeploy 1.7.0): "), fail
    assert f"`ssh root@{lab.domain}`" in fail and f"{lab.address('new')}: " in fail, fail
    assert "upgrade the relay to 1.8+" in fail
    assert "preflight: 1 check(s) failed, nothing was changed" in output
    unchanged(lab)

    # Once new's sshd answers on 22 as well, the same login passes.
    lab.ssh(
        "new",
        "printf 'Port 22\\nPort 2222\\n' > /etc/ssh/sshd_config.d/lab-net.conf"
        " && systemctl reload ssh",
    )
    result = run_tool(lab, "invoke", "preflight", "--new-host", "new", state_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS  login to {lab.domain} (cmdeploy 1.7.0): `ssh root@{lab.domain}` reaches new" in (
        result.stdout
    )

    # An operator whose ssh config gives the domain a HostName (old's address): cmdeploy
    # logs in there whatever DNS says, so new's port does not matter; the move completes,
    # with a warning that the HostName must follow the relay before old is gone.
    lab.move_ssh("new", 2222)
    config = tmp_path / "ssh_config"
    pin = f"Host {lab.domain}\n    HostName {lab.address('old')}\n"
    config.write_text(pin + f"    IdentityAgent {lab.agent_sock}\n" + lab.ssh_config.read_text())
    env = {"CHATMAIL_MIGRATE_SSH_CONFIG": str(config), "CHATMAIL_LAB_SSH_CONFIG": str(config)}
    before = listing(lab, "old")

    def operator_changes_dns(proc):
        nameserver.update(lab, a=[lab.address("new")])

    code, output = run_tool_with_fault(
        lab,
        ["migrate", "--new-host", "new", "--yes", "--dns-timeout", "60"],
        state_dir=tmp_path / "pinned",
        when="waiting for DNS",
        fault=operator_changes_dns,
        **env,
    )
    assert code == 0, output
    assert (
        f"WARN  login to {lab.domain} (cmdeploy 1.7.0): your ssh config's HostName sends "
        f"`ssh root@{lab.domain}` to the old host {lab.address('old')}"
    ) in output
    assert_migrated(lab, before)


def test_only_ipv4_record_is_not_deleted_without_ipv6_only(make_lab, tmp_path: Path):
    # 1.8: no login to the mail domain, whose A record this test takes away.
    lab = make_lab("cmnet", seed=SeedParams(version="1.8.0", accounts=3, messages=2))
    # New's IPv4 is the lab's private one; its only public address is an IPv6 one
    # (public_looking6: global to every Python's ipaddress, routed only onto the lab).
    public6 = public_looking6(lab)
    lab.add_address("new", f"{public6}/64")
    assert nameserver.records_of(lab)["a"] == [lab.address("old")]
    old_a = lab.address("old")
    before = listing(lab, "old")

    # preflight and migrate refuse in one line, before anything changes.
    result = run_tool(lab, "invoke", "preflight", "--new-host", "new", state_dir=tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, fails
    assert f"{lab.domain}'s A record ({old_a})" in fails[0], fails[0]
    assert "--new-address" in fails[0] and "--ipv6-only" in fails[0], fails[0]
    result = run_tool(
        lab,
        "invoke",
        "migrate",
        "--new-host",
        "new",
        "--yes",
        "--dns-timeout",
        "30",
        state_dir=tmp_path / "refused",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert [line for line in output.splitlines() if line.startswith("FAIL")] == fails
    assert "preflight: 1 check(s) failed, nothing was changed" in output
    unchanged(lab)
    assert listing(lab, "old") == before
    # switch-dns by hand refuses too, before it proposes anything or asks for 'done'.
    result = run_tool(
        lab,
        "invoke",
        "switch-dns",
        "--new-host",
        "new",
        "--yes",
        "--dns-timeout",
        "30",
        state_dir=tmp_path / "by-hand",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"switch-dns refused: new has no public IPv4, so {lab.domain}'s A record" in output
    assert "Change these records" not in output and "known_hosts" not in output
    unchanged(lab)

    # With --ipv6-only: every row says which record changes and why.
    def operator_changes_dns(proc):
        assert proc.poll() is None, "switch-dns must wait until the records change"
        nameserver.update(lab, a=[], aaaa=[public6])

    code, output = run_tool_with_fault(
        lab,
        ["migrate", "--new-host", "new", "--yes", "--ipv6-only", "--dns-timeout", "60"],
        state_dir=tmp_path,
        when="waiting for DNS",
        fault=operator_changes_dns,
    )
    assert code == 0, output
    rows = [
        " ".join(line.split()) for line in output.split("Change these records")[1].splitlines()[1:3]
    ]
    assert rows == [
        f"A {lab.domain}: delete {old_a} (new has no public IPv4: --ipv6-only)",
        f"AAAA {lab.domain}: add {public6} (public on new's eth0)",
    ], rows
    assert f"not proposed: {lab.address('new')} (private)" in output
    assert "all 2 nameservers answer the new values" in output
    assert_migrated(lab, before)
