"""The lab's relay checkout on this machine: the chatmail.ini and git tag that the
tool and the stand-in read (its release is the tag, as upstream's checkout)."""

from __future__ import annotations

import subprocess

from chatmail_migrate.lab.lab_state import STANDIN_COMMAND, LabState

# What a new lab's checkout is tagged, until a seed or a test tags another.
DEFAULT_RELAY_VERSION = "1.7.0"


class LabRelayCheckout(LabState):
    """A part of ``Lab``, methods only (the fields are ``LabState``'s)."""

    def tag_relay_checkout(self, version: str) -> None:
        """Mark the lab's relay checkout as release ``version`` (a git tag, as upstream)."""

        def git(*args: str) -> None:
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(self.relay_dir),
                    "-c",
                    "user.name=lab",
                    "-c",
                    "user.email=lab@localhost",
                    *args,
                ],
                check=True,
                capture_output=True,
            )

        git("commit", "-q", "--allow-empty", "-m", f"lab relay {version}")
        git("tag", "-f", version)

    def _write_relay_dir(self) -> None:
        """A new checkout: a git repository with a chatmail.ini for the lab's domain."""
        self.relay_dir.mkdir(exist_ok=True)
        (self.relay_dir / "chatmail.ini").write_text(
            "# Lab relay checkout made by chatmail-migrate's lab: no real cmdeploy here,\n"
            f"# the lab's stand-in ({STANDIN_COMMAND}) is used instead.\n"
            "[params]\n"
            f"mail_domain = {self.domain}\n"
            "max_user_send_per_minute = 60\n"
            "max_mailbox_size = 100M\n"
            "delete_mails_after = 20\n"
            "delete_inactive_users_after = 90\n"
            "username_min_length = 9\n"
            "username_max_length = 9\n"
            "password_min_length = 9\n"
        )
        subprocess.run(["git", "init", "-q", str(self.relay_dir)], check=True)
        subprocess.run(["git", "-C", str(self.relay_dir), "add", "chatmail.ini"], check=True)
        self.tag_relay_checkout(DEFAULT_RELAY_VERSION)

    def set_ini(self, **params: str) -> None:
        """Set (or, with "", remove) keys of the relay checkout's chatmail.ini."""
        ini = self.relay_dir / "chatmail.ini"
        lines = [
            line
            for line in ini.read_text().splitlines()
            if line.partition("=")[0].strip() not in params
        ]
        lines += [f"{key} = {value}" for key, value in params.items() if value]
        ini.write_text("\n".join(lines) + "\n")
