"""The probe check-relay runs ON the new host, and old's queue listing at disable-mail.

Runs as root with Debian's python3 and its standard library only: checks/relay_state.py
sends this file as ``python3 -c SOURCE``, its parameters as JSON on stdin (with
--probe-account's password: never on a command line), and reads one JSON object from
its stdout. It sends no message and delivers nothing: LMTP is asked about recipients
and the transaction reset; OpenDKIM signs a test message through its milter socket,
which queues nothing; the only login is --probe-account's, to an account that exists.
Each check's answer is an object, ``{"error": ...}`` when it could not be made.
"""

import base64
import glob
import imaplib
import json
import os
import re
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import uuid


def run(*args, **kwargs):
    return subprocess.run(args, capture_output=True, **kwargs)


def queue_messages(limit):
    """The queue as postqueue lists it, each message with its Message-ID (postcat):
    Postfix renames queue files on another host, so the queue ID does not stay."""
    lines = run("postqueue", "-j", text=True, check=True).stdout.splitlines()
    items = [json.loads(line) for line in lines if line.strip()]
    messages = []
    for item in items[:limit]:
        headers = run("postcat", "-hq", item["queue_id"], text=True, errors="replace").stdout
        found = re.search(r"^message-id:[ \t]*(.*(?:\n[ \t].*)*)", headers, re.I | re.M)
        messages.append(
            {
                "id": item["queue_id"],
                "queue": item.get("queue_name", ""),
                "sender": item.get("sender", ""),
                "size": item.get("message_size", 0),
                "arrival": item.get("arrival_time", 0),
                "recipients": sorted(r.get("address", "") for r in item.get("recipients", [])),
                "message_id": " ".join(found.group(1).split()) if found else "",
            }
        )
    return {"total": len(items), "messages": messages}


p: dict = {}
out: dict = {}
tls = ssl.create_default_context()
tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # judged by the tool: fingerprint, names


def b64(der):
    return base64.b64encode(der).decode()


def postconf(*args):
    return run("postconf", *args, text=True).stdout


def probe(name, fn):
    try:
        out[name] = fn()
    except Exception as e:
        out[name] = {"error": f"{type(e).__name__}: {e}".strip()}


class IMAP(imaplib.IMAP4_SSL):  # the relay's name for SNI, its own listener
    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", 993), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=p["domain"])


class SMTPS(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection(("127.0.0.1", port), timeout)
        return self.context.wrap_socket(sock, server_hostname=p["domain"])


def imaps():
    conn = IMAP(p["domain"], 993, ssl_context=tls, timeout=10)
    try:
        return {"cert": b64(conn.sock.getpeercert(True)), "auth": "AUTH=PLAIN" in conn.capabilities}
    finally:
        conn.shutdown()


def smtps():
    with SMTPS(p["domain"], 465, context=tls, timeout=10) as conn:
        conn.ehlo("check-relay")
        mechs = conn.esmtp_features.get("auth", "").upper().split()
        return {"cert": b64(conn.sock.getpeercert(True)), "auth": "PLAIN" in mechs}


def https():
    sock = socket.create_connection(("127.0.0.1", 443), 10)
    with tls.wrap_socket(sock, server_hostname=p["domain"]) as conn:
        return {"cert": b64(conn.getpeercert(True))}


def smtp():
    with smtplib.SMTP(timeout=10) as conn:
        code, banner = conn.connect("127.0.0.1", 25)
        conn.ehlo("check-relay")
        result = {
            "code": code,
            "banner": banner.decode(errors="replace"),
            "starttls": conn.has_extn("starttls"),
        }
        if result["starttls"]:
            conn._host = p["domain"]  # the relay's name for SNI, as other servers send it
            try:
                conn.starttls(context=tls)
                result["cert"] = b64(conn.sock.getpeercert(True))
            except smtplib.SMTPResponseException as e:
                result["starttls_error"] = f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"
            except (OSError, smtplib.SMTPException) as e:
                result["starttls_error"] = f"{type(e).__name__}: {e}"
        return result


def spool_path(path):
    return path if path.startswith("/") else os.path.join(p["spool"], path)


def lmtp():
    transport = postconf("-hx", "virtual_transport").strip()
    kind, _, where = transport.partition(":")
    if kind != "lmtp":
        return {"error": f"virtual_transport is {transport!r}, not LMTP"}
    if where.startswith("unix:"):
        conn = smtplib.LMTP(spool_path(where[5:]), timeout=10)
    else:
        host, _, port = where.removeprefix("inet:").rpartition(":")
        conn = smtplib.LMTP(host.strip("[]"), int(port), timeout=10)
    with conn:
        conn.ehlo("check-relay")
        conn.mail("")
        known = conn.rcpt(p["account"])[0] if p["account"] else None
        unknown = conn.rcpt(f"check-relay-{uuid.uuid4().hex[:12]}@{p['domain']}")[0]
        conn.rset()  # no DATA: nothing is delivered
        return {"transport": transport, "known": known, "unknown": unknown}


def connect_socket(kind, where, timeout=5):
    """A milter socket in Postfix's (unix:, inet:) or OpenDKIM's (local:, inet:) terms."""
    if kind in ("unix", "local", ""):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        sock.connect(where)
        return sock
    if "@" in where:  # OpenDKIM: inet:PORT@HOST
        port, _, host = where.partition("@")
    else:
        host, _, port = where.rpartition(":")
    return socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout)


def milters():
    names = postconf("-hx", "smtpd_milters", "non_smtpd_milters").split()
    names += [line.split("=", 1)[1] for line in postconf("-P").splitlines() if "milters =" in line]
    result = {}
    for name in {m.strip(",") for n in names for m in n.split(",") if m.strip(",")}:
        kind, _, where = name.partition(":")
        item = {}
        if kind == "unix":
            where = spool_path(where)
            item = {"path": where, "exists": os.path.exists(where)}
        try:
            connect_socket(kind, where.removeprefix("inet:")).close()
            item["answer"] = "ok"
        except OSError as e:
            item["answer"] = str(e)
        result[name] = item
    return result


def cert_file():
    pem = open(p["cert"]).read()
    return {
        "der": b64(ssl.PEM_cert_to_DER_cert(pem[: pem.index("-----END CERTIFICATE-----") + 25]))
    }


def accounts():
    found = sorted(glob.glob(os.path.join(glob.escape(p["mailboxes"]), "*@*", "password")))
    first = os.path.basename(os.path.dirname(found[0])) if found else ""
    return {"count": len(found), "first": first}


LOG_FROM = re.compile(r"postfix/qmgr\[\d+\]: (\w+): from=<([^>]*)>, size=(\d+)")
LOG_TO = re.compile(r"postfix/[\w/-]+\[\d+\]: (\w+): to=<([^>]*)>.*, status=(\w+)")


def deliveries():
    """What Postfix on this host did with messages of these senders since the move:
    qmgr's from= lines and the delivery agents' to= lines (journal and mail.log)."""
    senders = set(p["senders"])
    text = run(
        "journalctl",
        "-q",
        "--no-pager",
        "-o",
        "short-unix",
        f"--since=@{int(p['log_since'])}",
        "SYSLOG_FACILITY=2",
        text=True,
        errors="replace",
    ).stdout
    lines = text.splitlines()
    for path in ("/var/log/mail.log", "/var/log/maillog"):
        if os.path.exists(path):
            lines += open(path, errors="replace").read().splitlines()
    found, to = {}, set()
    for line in lines:
        m = LOG_FROM.search(line)
        if m and m.group(2) in senders:
            found[m.group(1)] = [m.group(1), m.group(2), int(m.group(3))]
        m = LOG_TO.search(line)
        if m:
            to.add((m.group(1), m.group(2).lower(), m.group(3)))
    return {"from": sorted(found.values()), "to": sorted([list(t) for t in to if t[0] in found])}


def opendkim_conf():
    conf = {}
    for line in open("/etc/opendkim.conf"):
        words = line.split("#", 1)[0].split(None, 1)
        if len(words) == 2:
            conf[words[0].lower()] = words[1].strip()
    return conf


def started(pid):
    """When the process started (epoch seconds), from /proc."""
    ticks = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
    btime = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def milter_sign(where, domain):
    """Ask OpenDKIM to sign a test message through its milter socket (the milter
    protocol, version 6, as Postfix speaks it); nothing is queued or sent."""
    kind, _, rest = where.partition(":")
    if not rest:
        kind, rest = "local", where
    sock = connect_socket(kind, rest, 10)

    def packet(cmd, data=b""):
        sock.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

    def exact(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the milter closed the connection")
            data += chunk
        return data

    def read():
        data = exact(struct.unpack(">I", exact(4))[0])
        return data[:1], data[1:]

    def z(*words):
        return b"".join(w.encode() + b"\0" for w in words)

    packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
    cmd, data = read()
    if cmd != b"O":
        raise OSError(f"the milter answered {cmd!r} to option negotiation")
    flags = struct.unpack(">III", data[:12])[2]

    def step(cmd, data, skip, no_reply, macros=None):
        if macros:
            packet(b"D", cmd + z(*[w for pair in macros.items() for w in pair]))
        if flags & skip:
            return
        packet(cmd, data)
        if not flags & no_reply:
            answer, _ = read()
            if answer != b"c":
                raise OSError(f"the milter answered {answer!r} to {cmd!r}")

    sender = f"postmaster@{domain}"
    # MTA ORIGINATING (chatmail's opendkim.conf) signs for this daemon name.
    step(
        b"C",
        z("localhost") + b"4" + struct.pack(">H", 0) + z("127.0.0.1"),
        0x1,
        0x1000,
        {"j": domain, "{daemon_name}": "ORIGINATING"},
    )
    step(b"H", z("check-relay"), 0x2, 0x2000)
    step(b"M", z(f"<{sender}>"), 0x4, 0x4000, {"i": "CHECKRELAY"})
    step(b"R", z(f"<{sender}>"), 0x8, 0x8000)
    lead = " " if flags & 0x100000 else ""
    headers = [
        ["From", f"<{sender}>"],
        ["To", f"<{sender}>"],
        ["Subject", "check-relay: a DKIM signing test, never sent"],
        ["Date", "Thu, 01 Jan 2026 00:00:00 +0000"],
        ["Message-ID", f"<check-relay-{uuid.uuid4().hex[:12]}@{domain}>"],
    ]
    for name, value in headers:
        step(b"L", z(name, lead + value), 0x20, 0x80)
    step(b"N", b"", 0x40, 0x40000)
    body = "check-relay: a DKIM signing test, never sent\r\n"
    step(b"B", body.encode(), 0x10, 0x80000)
    packet(b"E")
    added = []
    while True:
        cmd, data = read()
        if cmd in (b"h", b"i"):
            fields = data[4:] if cmd == b"i" else data
            name, value = fields.split(b"\0")[:2]
            added.append([name.decode(), value.decode()])
        elif cmd not in (b"p", b"m", b"q", b"+", b"-", b"e", b"f", b"2", b"b"):
            break
    for cmd in (b"A", b"Q"):
        packet(cmd)
    sock.close()
    return {"headers": headers, "body": body, "added": added, "reply": cmd.decode(errors="replace")}


def dkim():
    conf = opendkim_conf()
    keys = []
    table = conf.get("keytable", "")
    if table:
        kind, _, path = table.rpartition(":")
        if kind not in ("", "file", "refile"):
            return {"error": f"KeyTable {table}: a database check-relay does not read"}
        for line in open(path):
            words = line.split("#", 1)[0].split(None, 1)
            if len(words) == 2 and words[1].count(":") >= 2:
                domain, selector, key = words[1].strip().split(":", 2)
                keys.append({"domain": domain, "selector": selector, "path": key, "in": path})
    elif conf.get("keyfile"):
        keys.append(
            {
                "domain": conf.get("domain", ""),
                "selector": conf.get("selector", ""),
                "path": conf["keyfile"],
                "in": "/etc/opendkim.conf",
            }
        )
    for key in keys:
        if not key["path"].startswith("/"):
            key["error"] = "the key is given inline, not as a file"
            continue
        der = run("openssl", "pkey", "-in", key["path"], "-pubout", "-outform", "DER")
        if der.returncode:
            why = der.stderr.decode(errors="replace").strip().splitlines()
            key["error"] = why[0] if why else f"openssl exited {der.returncode}"
            continue
        key["public"] = b64(der.stdout)
        key["changed"] = os.stat(key["path"]).st_ctime
    result = {"keys": keys, "socket": conf.get("socket", "")}
    pid = run("systemctl", "show", "-p", "MainPID", "--value", "opendkim", text=True).stdout
    if pid.strip() not in ("", "0"):
        result["started"] = started(int(pid))
    # ctime: when the file last changed on this host (a copy cannot set it, unlike mtime).
    read_at_start = ("/etc/opendkim.conf", table.rpartition(":")[2])
    result["config_changed"] = max(os.stat(path).st_ctime for path in read_at_start if path)
    if result["socket"]:
        try:
            result["signed"] = milter_sign(result["socket"], p["domain"])
        except Exception as e:
            result["signed"] = {"error": f"{type(e).__name__}: {e}".strip()}
    return result


def probe_account():
    address = p["probe_account"]
    if not os.path.isfile(os.path.join(p["mailboxes"], address, "password")):
        # A first login creates the account: none is tried.
        return {"error": f"no account {address} on this host: not logged in"}
    conn = IMAP(p["domain"], 993, ssl_context=tls, timeout=10)
    try:
        conn.login(address, p["password"])
        _, listing = conn.list()
        names = [
            line.decode(errors="replace").rsplit(" ", 1)[-1].strip('"') for line in listing if line
        ]
        _, status = conn.status("INBOX", "(MESSAGES)")
        count = re.search(rb"MESSAGES (\d+)", status[0] or b"")
        return {"mailboxes": names, "inbox": int(count.group(1)) if count else None}
    except imaplib.IMAP4.error as e:
        why = e.args[0] if e.args else e
        why = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        return {"error": f"login refused: {why}", "refused": True}
    finally:
        try:
            conn.logout()
        except Exception:
            pass


def main():
    params = json.load(sys.stdin)
    if params.get("mode") == "queue":
        print(json.dumps(queue_messages(params["limit"])))
        return
    p.update(params)
    p["spool"] = postconf("-h", "queue_directory").strip() or "/var/spool/postfix"
    probe("accounts", accounts)
    p["account"] = out["accounts"].get("first", "")
    for name, fn in (
        ("imaps", imaps),
        ("smtps", smtps),
        ("https", https),
        ("smtp", smtp),
        ("lmtp", lmtp),
        ("milters", milters),
        ("cert_file", cert_file),
        ("queue", lambda: queue_messages(p["queue_limit"])),
    ):
        probe(name, fn)
    if not p.get("ip_only"):
        probe("dkim", dkim)
    if p.get("senders"):
        probe("deliveries", deliveries)
    if p.get("probe_account"):
        probe("probe_account", probe_account)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
