"""The outside probe's arithmetic and its looks, without a lab: what ends the window
(a login on new that sees old's last message; never a greeting, nor a login into a
mailbox the data has not reached), overlap, outages, and greetings read from servers
on loopback. The probe against real hosts: tests/test_probe_lab.py."""

from __future__ import annotations

import socket
import threading

from chatmail_migrate.lab.probe import CHECKS, Sample, Sent, port_summary, window
from chatmail_migrate.lab.probe_checks import greeting
from chatmail_migrate.lab.probe_client import CachedResolver, outages

LAST = Sent(9.0, 9.1, "<last@probe>", accepted=True)


def logins(*spans: tuple[float, bool, str | None, bool | None]) -> list[Sample]:
    """(end, ok, searched, seen) -> IMAP samples lasting 0.1 s."""
    return [Sample(end - 0.1, end, ok, "", searched, seen) for end, ok, searched, seen in spans]


def greets(*spans: tuple[float, bool]) -> list[Sample]:
    return [Sample(end - 0.05, end, ok) for end, ok in spans]


def hosts(old: dict, new: dict) -> dict:
    return {"old": old, "new": new}


def test_the_window_ends_at_the_first_login_on_new_that_sees_olds_last_message():
    old = {
        "imap993": logins((9.5, True, "<last@probe>", True), (10.0, True, None, None)),
        "smtp25": greets((9.0, True), (9.25, False)),
    }
    new = {
        # new greets and lets the account in from 12 s, but the data comes at 20 s.
        "smtp25": greets((11.0, False), (12.0, True)),
        "imap993": logins(
            (11.0, False, "<last@probe>", None),
            (13.0, True, "<last@probe>", False),
            (16.0, True, "<last@probe>", False),
            (20.0, True, "<last@probe>", True),
            (20.5, True, "<last@probe>", True),
        ),
    }
    w = window(hosts(old, new), LAST, None, now=30.0)
    assert w["seconds"] == 10.0
    assert (w["old_last_login"], w["new_first_login"], w["end"]) == (10.0, 13.0, 20.0)
    assert w["both_served"] is False
    assert w["last_accepted_on_new"] is True
    assert w["per_port_gap"] == {"imap993": 3.0, "smtp25": 3.0}


def test_a_login_that_saw_an_older_message_or_a_greeting_alone_leaves_it_open():
    old = {"imap993": logins((10.0, True, None, None))}
    new = {
        "smtp25": greets((12.0, True)),
        "smtps465": greets((12.0, True)),
        # Saw a message old took earlier; the last one is not there.
        "imap993": logins((13.0, True, "<earlier@probe>", True)),
    }
    w = window(hosts(old, new), LAST, None, now=25.0)
    assert w["open"] is True and w["seconds"] is None
    assert w["so_far"] == 15.0
    assert w["last_accepted_on_new"] is False
    # The probe's last look (at stop) found it: on new, the window still unmeasured.
    final = Sample(25.0, 25.1, True, "", "<last@probe>", True)
    w = window(hosts(old, new), LAST, final, now=25.0)
    assert (w["last_accepted_on_new"], w["open"]) == (True, True)


def test_new_letting_logins_in_before_old_stopped_is_both_served():
    old = {"imap993": logins((10.0, True, None, None))}
    new = {"imap993": logins((8.0, True, "<last@probe>", True), (11.0, True, "<last@probe>", True))}
    w = window(hosts(old, new), LAST, None, now=20.0)
    assert w["both_served"] is True
    # Not ended by the overlapping login: by the first one after old's last.
    assert w["end"] == 11.0 and w["seconds"] == 1.0
    assert w["per_port_gap"]["imap993"] == -2.0


def test_without_accepted_mail_any_login_on_new_ends_it():
    old = {"imap993": logins((10.0, True, None, None))}
    new = {"imap993": logins((12.0, True, None, None))}
    w = window(hosts(old, new), None, None, now=20.0)
    assert w["seconds"] == 2.0 and w["last_accepted_on_new"] is None


def test_outages_run_from_the_last_success_to_the_next_and_stay_open_at_the_end():
    samples = [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, True), (4, 5, False)]
    assert outages(samples, stopped=9) == [
        {"from": 1, "to": 4, "seconds": 3},
        {"from": 4, "to": 9, "seconds": 5, "open": True},
    ]
    assert outages([(0, 1, False), (1, 2, True)], stopped=3) == [{"from": 0, "to": 2, "seconds": 2}]


def test_port_summary_names_what_is_not_applicable_and_each_change():
    series = {"smtp25": greets((1.0, True), (2.0, False), (3.0, False), (4.0, True))}
    na = {"alpn443_imap": "not served"}
    out = port_summary(series, na, now=5.0)
    assert out["alpn443_imap"] == {"applicable": False, "why": "not served"}
    assert (out["smtp25"]["first_ok"], out["smtp25"]["last_ok"], out["smtp25"]["ok"]) == (
        1.0,
        4.0,
        2,
    )
    assert [c["ok"] for c in out["smtp25"]["changes"]] == [True, False, True]
    assert out["smtp25"]["longest_outage"]["seconds"] == 3.0
    assert set(out) == set(CHECKS)


def serve_once(reply: bytes) -> int:
    """A server on loopback that sends ``reply`` to its first client and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            if reply:
                conn.sendall(reply)
        server.close()

    threading.Thread(target=run, daemon=True).start()
    return server.getsockname()[1]


def test_a_greeting_counts_only_when_it_says_220():
    cases = {
        b"220 relay.lab.example ESMTP\r\n": True,
        b"220-relay.lab.example\r\n220 ESMTP\r\n": True,
        b"421 4.3.2 Service shutting down\r\n": False,
        b"554 5.7.1 no\r\n": False,
        b"": False,
    }
    for reply, ok in cases.items():
        port = serve_once(reply)
        assert greeting("127.0.0.1", port, "relay.lab.example", 2, tls=False).ok is ok, reply
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    look = greeting("127.0.0.1", port, "relay.lab.example", 2, tls=False)
    assert not look.ok and "ConnectionRefusedError" in look.detail


def test_the_resolver_cache_asks_again_only_once_the_ttl_ran_out(monkeypatch):
    import dns.message
    import dns.query
    import dns.rrset

    asked = []

    def udp(query, server, timeout):
        asked.append(server)
        reply = dns.message.make_response(query)
        address = "10.0.0.1" if len(asked) == 1 else "10.0.0.2"
        reply.answer.append(dns.rrset.from_text("relay.lab.example.", 300, "IN", "A", address))
        return reply

    monkeypatch.setattr(dns.query, "udp", udp)
    clock = [1000.0]
    monkeypatch.setattr("chatmail_migrate.lab.probe_client.time.time", lambda: clock[0])
    cache = CachedResolver("relay.lab.example", ["10.9.9.9"])
    assert cache.resolve() == "10.0.0.1"
    clock[0] += 299
    assert cache.resolve() == "10.0.0.1" and len(asked) == 1
    clock[0] += 2
    assert cache.resolve() == "10.0.0.2" and len(asked) == 2
