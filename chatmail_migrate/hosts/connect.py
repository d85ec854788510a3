"""Connections to the hosts, as the operator's ssh config describes them."""

from __future__ import annotations

import errno
import socket

import fabric
import paramiko
import paramiko.agent

from chatmail_migrate.errors import HostKeyError
from chatmail_migrate.hosts.host_keys import fingerprint, trust_known_hosts
from chatmail_migrate.hostspec import canonical_address, split_host
from chatmail_migrate.settings import Settings


def connect(
    settings: Settings, host: str, *, forward_agent: bool = False, known_as: tuple[str, ...] = ()
) -> fabric.Connection:
    """A Connection honouring the ssh config, with root as the default user.

    ``forward_agent`` is always set explicitly, so a ``ForwardAgent yes`` in the
    operator's ssh config never forwards the agent to a session that does not need it.
    Jump hosts (``ProxyJump``) are checked against known_hosts like the host itself:
    Fabric would accept any key they present.
    """
    config = fabric.Config(runtime_ssh_path=settings.ssh_config)
    config.user = settings.user  # ssh config's User and user@host still win
    timeout = settings.connect_timeout
    spec = split_host(host)
    kwargs = {"banner_timeout": timeout, "auth_timeout": timeout, **settings.connect_kwargs}
    conn = fabric.Connection(
        spec.host,
        user=spec.user,
        port=spec.port,
        config=config,
        forward_agent=forward_agent,
        connect_timeout=timeout,
        connect_kwargs=kwargs,
    )
    trust_known_hosts(conn, settings.accept_new_host_keys, known_as, ssh_config=settings.ssh_config)
    target, jump = conn, conn.gateway
    while isinstance(jump, fabric.Connection):
        jump.connect_timeout = timeout
        jump.connect_kwargs = {**jump.connect_kwargs, **kwargs}
        what = f"jump host (ProxyJump of {target.host}) "
        trust_known_hosts(
            jump, settings.accept_new_host_keys, what=what, ssh_config=settings.ssh_config
        )
        target, jump = jump, jump.gateway
    return conn


def same_endpoint(settings: Settings, a: str, b: str) -> bool:
    """Whether two host strings reach one host once the ssh config is applied."""

    def endpoint(host: str) -> tuple[str, int, str]:
        conn = connect(settings, host)
        return canonical_address(conn.host), conn.port, conn.user

    return a == b or endpoint(a) == endpoint(b)


def describe_connect_error(host: str, e: BaseException) -> str:
    """One line naming what went wrong when connecting, and how to fix it."""
    if isinstance(e, HostKeyError):
        return str(e)
    if isinstance(e, paramiko.BadHostKeyException):
        return (
            f"HOST KEY CHANGED for {host}: known_hosts has {fingerprint(e.expected_key)}, the "
            f"host presents {fingerprint(e.key)}. Someone may be intercepting; if the host was "
            f"reinstalled, check the new fingerprint, then ssh-keygen -R {e.hostname}"
        )
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {host}: {e.strerror}; check the name (and HostName in ssh config)"
    if isinstance(e, paramiko.AuthenticationException):
        return (
            f"authentication to {host} failed ({e}): check the user (root by default) and "
            "that your agent holds a key the host accepts (ssh-add -l)"
        )
    text = str(e).lower()
    if isinstance(e, TimeoutError) or any(
        t in text for t in ("timed out", "banner", "no existing session")
    ):
        return f"{host} did not answer in time (timed out): check the address and firewall"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return f"{host} refused the connection ({e}): is sshd running, is the port right?"
    if isinstance(e, ConnectionRefusedError):
        return f"{host} refused the connection: is sshd running, is the port right?"
    if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{host} is unreachable ({e.strerror}): check the address and routes"
    return f"cannot connect to {host}: {type(e).__name__}: {e}"
