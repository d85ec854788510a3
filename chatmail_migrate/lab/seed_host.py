"""Runs ON a lab host (Debian's python3, stdlib only): fills it like a 1.7 relay.

Sent over one SSH session as ``python3 - PARAMS_JSON``; prints a JSON summary.
Everything is derived from a seeded random generator, so a seeding is repeatable.
"""

import base64
import hashlib
import json
import os
import pwd
import random
import shutil
import subprocess
import sys
import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # removed only in Python 3.13
    import crypt

DAY = 86400


def account_password(addr):
    """A seeded account's password: known to tests and to you, derived from the address
    (the lab's doveauth, relay_auth.py, checks it against the SHA512-CRYPT hash)."""
    return "lab-" + hashlib.sha256(addr.encode()).hexdigest()[:12]


def chown(path, user):
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def write(path, data, user=None, mode=None, mtime=None):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    if user:
        chown(path, user)
    if mode is not None:
        os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def mkdir(path, user=None, mode=0o700):
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if user:
        chown(path, user)


def seed_mailboxes(p, rng, now):
    domain = p["domain"]
    base = p["mailboxes_dir"]
    mkdir(os.path.dirname(base), "vmail")
    mkdir(base, "vmail")
    mkdir(f"{base}/pending_notifications", "vmail")
    # Encrypted mail is incompressible: bodies are slices of one random pool.
    pool = base64.encodebytes(rng.randbytes(max(p["size"], 4096) * 3 // 4 + 4096))
    files = size = 0
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    first_messages = []
    for _ in range(p["accounts"]):
        local = "".join(rng.choice(alphabet) for _ in range(9))
        addr = f"{local}@{domain}"
        acct = f"{base}/{addr}"
        mkdir(acct, "vmail")
        for sub in ("cur", "new", "tmp"):
            mkdir(f"{acct}/{sub}", "vmail")
        last_login = now - rng.randint(0, p["inactive_days"] - 1) * DAY - rng.randint(0, DAY)
        salt = "".join(rng.choice(alphabet) for _ in range(16))
        hashed = crypt.crypt(account_password(addr), f"$6${salt}")
        write(f"{acct}/password", f"{{SHA512-CRYPT}}{hashed}\n", "vmail", 0o600, last_login)
        total = 0
        for _ in range(p["messages"]):
            mtime = now - rng.randint(0, p["mail_days"] * DAY)
            off = rng.randint(0, len(pool) - p["size"] - 1)
            header = (
                f"From: {addr}\r\nTo: {addr}\r\nSubject: [...]\r\n"
                f"Message-ID: <{rng.getrandbits(64):x}@{domain}>\r\n"
                "Content-Type: multipart/encrypted\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
            ).encode()
            body = header + pool[off : off + max(0, p["size"] - len(header))]
            sz = len(body)
            uniq = f"M{rng.randint(0, 999999)}P{rng.randint(100, 99999)}"
            name = f"{mtime}.{uniq}.{p['hostname']},S={sz},W={sz}"
            seen = rng.random() < 0.8
            path = f"{acct}/cur/{name}:2,S" if seen else f"{acct}/new/{name}"
            write(path, body, "vmail", 0o600, mtime)
            if not first_messages or first_messages[0].startswith(acct + "/"):
                first_messages.append(path)
            files += 1
            size += sz
            total += sz
        write(f"{acct}/maildirsize", f"0S\n{total} {p['messages']}\n", "vmail", 0o600)
        write(f"{acct}/dovecot-uidlist", f"3 V{int(now)} N{p['messages'] + 1}\n", "vmail", 0o600)
        write(f"{acct}/dovecot.index.log", rng.randbytes(256), "vmail", 0o600)
        write(f"{acct}/metadata.json", "{}", "vmail", 0o600)
        write(f"{acct}/enforceE2EEincoming", "", "vmail", 0o600)
        files += 6
        if rng.random() < 0.1:
            token = base64.b16encode(rng.randbytes(16)).decode().lower()
            write(
                f"{base}/pending_notifications/{rng.getrandbits(128):032x}",
                f"{addr}\n{now}\n{token}\n",
                "vmail",
                0o600,
            )
            files += 1
    if first_messages:
        files += dovecot_extras(first_messages)
    return files, size


def dovecot_extras(messages):
    """What Dovecot leaves in an account that the copy must keep: a message copied to
    another folder as a hard link (its Maildir copies link), and a user xattr."""
    acct = os.path.dirname(os.path.dirname(messages[0]))
    trash = f"{acct}/.Trash"
    mkdir(trash, "vmail")
    for sub in ("cur", "new", "tmp"):
        mkdir(f"{trash}/{sub}", "vmail")
    write(f"{trash}/maildirfolder", "", "vmail", 0o600)
    name = os.path.basename(messages[0])
    os.link(messages[0], f"{trash}/cur/{name if ':2,' in name else name + ':2,S'}")
    os.setxattr(messages[-1], "user.lab.seeded", b"kept by the copy")
    return 2


def seed_dkim(domain):
    """Complete the DKIM setup around the key the (stand-in) deploy generated."""
    mkdir("/etc/dkimkeys", "opendkim", 0o750)
    write(
        "/etc/dkimkeys/KeyTable",
        f"opendkim._domainkey.{domain} {domain}:opendkim:/etc/dkimkeys/opendkim.private\n",
        "opendkim",
        0o644,
    )
    write(
        "/etc/dkimkeys/SigningTable",
        f"*@{domain} opendkim._domainkey.{domain}\n",
        "opendkim",
        0o644,
    )
    for name in ("opendkim.private", "opendkim.txt"):
        chown(f"/etc/dkimkeys/{name}", "opendkim")
    os.chmod("/etc/dkimkeys/opendkim.private", 0o600)


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def ec_key(path):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    os.chmod(path, 0o600)


def seed_acme(domain, rng):
    """An acmetool-shaped state tree: account, key, certificate, live symlinks."""
    root = "/var/lib/acme"
    shutil.rmtree(root, ignore_errors=True)
    mkdir(root, mode=0o755)
    for sub, mode in (
        ("accounts", 0o700),
        ("keys", 0o700),
        ("certs", 0o755),
        ("live", 0o755),
        ("desired", 0o755),
        ("conf", 0o755),
        ("tmp", 0o700),
    ):
        mkdir(f"{root}/{sub}", mode=mode)
    account = (
        f"{root}/accounts/acme-v02.api.letsencrypt.org%2fdirectory/{rng.getrandbits(160):040x}"
    )
    mkdir(account, mode=0o700)
    ec_key(f"{account}/privkey")
    write(
        f"{account}/url",
        f"https://acme-v02.api.letsencrypt.org/acme/acct/{rng.randint(10**8, 10**9)}\n",
    )
    keyid = f"{rng.getrandbits(160):040x}"
    certid = f"{rng.getrandbits(160):040x}"
    mkdir(f"{root}/keys/{keyid}", mode=0o700)
    ec_key(f"{root}/keys/{keyid}/privkey")
    cdir = f"{root}/certs/{certid}"
    mkdir(cdir, mode=0o755)
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        f"{root}/keys/{keyid}/privkey",
        "-subj",
        f"/CN={domain}",
        "-days",
        "90",
        "-out",
        f"{cdir}/cert",
        "-addext",
        f"subjectAltName=DNS:{domain},DNS:mta-sts.{domain},DNS:www.{domain}",
    )
    shutil.copy(f"{cdir}/cert", f"{cdir}/fullchain")
    write(f"{cdir}/chain", "")
    write(f"{cdir}/url", f"https://acme-v02.api.letsencrypt.org/acme/cert/{certid}\n")
    os.symlink(f"../../keys/{keyid}/privkey", f"{cdir}/privkey")
    for name in (domain, f"mta-sts.{domain}", f"www.{domain}"):
        os.symlink(f"../certs/{certid}", f"{root}/live/{name}")
    write(
        f"{root}/desired/{domain}",
        f"satisfy:\n  names:\n  - {domain}\n  - mta-sts.{domain}\n  - www.{domain}\n",
    )
    write(
        f"{root}/conf/target",
        "request:\n  provider: https://acme-v02.api.letsencrypt.org/directory\n",
    )


def seed_echobot(rng):
    mkdir("/var/lib/echobot", "echobot", 0o700)
    write("/var/lib/echobot/accounts.toml", "selected_account = 1\n", "echobot", 0o600)
    write("/var/lib/echobot/dc.db", rng.randbytes(8192), "echobot", 0o600)
    # What cmdeploy 1.7 prints after a deploy, read through the mail domain.
    write(
        "/var/lib/echobot/invite-link.txt", "https://i.delta.chat/#lab-echobot\n", "echobot", 0o644
    )
    mkdir("/run/echobot", "echobot", 0o755)
    digest = base64.b64encode(rng.randbytes(64)).decode().rstrip("=")
    write("/run/echobot/password", f"{{SHA512-CRYPT}}$6$echobotsalt${digest}", "echobot", 0o600)
    # vmail's doveauth reads the bot's password: the relay grants it by ACL.
    subprocess.run(["setfacl", "-m", "u:vmail:r", "/run/echobot/password"], check=True)


def queue_deferred(domain):
    """Leave one message deferred in Postfix's queue (its recipient is unreachable)."""
    msg = (
        f"From: echo@{domain}\nTo: someone@unreachable.invalid\nSubject: queued\n\n"
        "This message waits in the deferred queue.\n"
    )
    subprocess.run(
        ["sendmail", "-f", f"echo@{domain}", "someone@unreachable.invalid"],
        input=msg.encode(),
        check=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
        if any(json.loads(line).get("queue_name") == "deferred" for line in out.splitlines()):
            return
        subprocess.run(["postqueue", "-f"], capture_output=True)
        time.sleep(0.5)
    raise SystemExit("seed: the queued message did not reach the deferred queue in 30s")


def main():
    p = json.loads(sys.argv[1])
    rng = random.Random(p["seed"])
    now = int(time.time())
    with open("/etc/mailname", "w") as f:
        f.write(p["domain"] + "\n")
    files, size = seed_mailboxes(p, rng, now)
    if p["dkim"]:
        seed_dkim(p["domain"])
    if p["acme"]:
        seed_acme(p["domain"], rng)
    if p["echobot"]:
        seed_echobot(rng)
    queue_deferred(p["domain"])
    print(json.dumps({"mail_files": files, "mail_bytes": size}))


if __name__ == "__main__":
    main()
