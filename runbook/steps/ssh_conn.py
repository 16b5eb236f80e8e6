"""One SSH connection of an ``ssh`` step: paramiko's ``SSHClient``, set up as OpenSSH would
from ``~/.ssh/config`` (then ``/etc/ssh/ssh_config``): ``HostName``, ``User``, ``Port``,
``IdentityFile`` (added to the keys tried), ``ProxyCommand``.  ``ProxyJump`` and the
inventory's jump hosts are built by :mod:`runbook.steps.ssh` as chains of these connections.

This was fabric's ``Connection`` until the benchmark (bench/ssh_fanout.py) showed what it cost
for what runbook used of it (the config lookup and ``client.connect``): importing fabric brings
invoke, asyncio and unittest.mock (~40 ms on every run's first connection, which all the other
hosts' threads wait for), and each ``Connection`` builds an invoke ``Config`` (~1–2.6 ms of CPU
per host, on the two cores that the hosts' handshakes and sshd share).  Host keys are checked by
:func:`runbook.steps.ssh._secure` (known_hosts only; never paramiko's ``AutoAddPolicy``, which
fabric set by default).

Imported only when an ``ssh`` step runs (paramiko is heavy).
"""

from __future__ import annotations

import getpass
import io
import re
import sys
import threading
from pathlib import Path
from typing import Any


def _import_paramiko():
    """paramiko, without the invoke library that its config module imports for ``Match exec`` alone
    (~50 ms of every run's start; :func:`ssh_config` hands it invoke when a config has ``Match exec``)."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        import paramiko
        return paramiko
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` fails: paramiko.config records it
    try:
        import paramiko
    finally:
        del sys.modules["invoke"]
    return paramiko


paramiko = _import_paramiko()
_MATCH_EXEC = re.compile(r"^[ \t]*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)

USER_CONFIG = Path("~/.ssh/config")
SYSTEM_CONFIG = Path("/etc/ssh/ssh_config")

_lock = threading.Lock()
_parsed: tuple[tuple, paramiko.SSHConfig] | None = None


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def ssh_config() -> paramiko.SSHConfig:
    """The user's ~/.ssh/config, then the system's (the first value found wins, as in OpenSSH),
    parsed once while neither file changes.  A file that cannot be read counts as absent."""
    global _parsed
    paths = [USER_CONFIG.expanduser(), SYSTEM_CONFIG]
    stamp = tuple(_stamp(p) for p in paths)
    with _lock:
        if _parsed is not None and _parsed[0] == stamp:
            return _parsed[1]
        config = paramiko.SSHConfig()
        for path, st in zip(paths, stamp):
            if st is None:
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if _MATCH_EXEC.search(text) and getattr(paramiko.config, "invoke", None) is None:
                import invoke  # paramiko runs `Match exec` commands with it (see _import_paramiko)

                paramiko.config.invoke = invoke
            config.parse(io.StringIO(text))
        _parsed = (stamp, config)
        return config


class _Transport(paramiko.Transport):
    """paramiko's transport offering AES-GCM first (then paramiko's own order): an AEAD cipher,
    authenticated inside OpenSSL, where paramiko's default aes128-ctr + hmac-sha2-256 computes and
    compares every packet's MAC in Python (~10 % of a fan-out's client CPU, bench/ssh_fanout.py).
    OpenSSH has offered it since 6.2 (2013); a server without it gets paramiko's usual choice."""

    _preferred_ciphers = tuple(c for c in paramiko.Transport._preferred_ciphers if "-gcm@" in c) + tuple(
        c for c in paramiko.Transport._preferred_ciphers if "-gcm@" not in c)


class Connection:
    """A connection to ``host`` (an address or a ``Host`` alias of the ssh config); ``user`` and
    ``port`` given here win over the config's.  ``gateway``: a :class:`Connection` to tunnel
    through (a jump host, opened first) or a ``ProxyCommand`` line; None for a direct socket
    (``connect_kwargs["sock"]`` when the caller made one)."""

    def __init__(self, host: str, *, user: str | None = None, port: int | None = None,
                 connect_timeout: float | None = None, connect_kwargs: dict[str, Any] | None = None):
        self.original_host = host
        self.ssh_config = ssh_config().lookup(host)
        self.host = self.ssh_config.get("hostname", host)
        self.user = user or self.ssh_config.get("user") or getpass.getuser()
        self.port = int(port or self.ssh_config.get("port", 22))
        self.connect_timeout = connect_timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        keys = list(self.connect_kwargs.get("key_filename") or []) + list(self.ssh_config.get("identityfile", []))
        if keys:
            self.connect_kwargs["key_filename"] = keys
        self.gateway: Connection | str | None = None
        self.client = paramiko.SSHClient()
        self.transport: paramiko.Transport | None = None

    @property
    def proxy_command(self) -> str | None:
        """The config's ``ProxyCommand`` for this host (``none`` is none), tokens expanded."""
        cmd = self.ssh_config.get("proxycommand")
        return cmd if cmd and cmd.lower() != "none" else None

    @property
    def is_connected(self) -> bool:
        return bool(self.transport is not None and self.transport.active)

    def open(self) -> None:
        kwargs = dict(self.connect_kwargs, username=self.user, hostname=self.host, port=self.port)
        made = None  # a channel or a ProxyCommand made here, closed here if the connection fails
        if "sock" not in kwargs and isinstance(self.gateway, Connection):
            # the jump host is open (runbook.steps.ssh opens the chain from its first hop)
            made = kwargs["sock"] = self.gateway.transport.open_channel(  # type: ignore[union-attr]
                "direct-tcpip", (self.host, self.port), ("", 0), timeout=self.connect_timeout)
        elif "sock" not in kwargs and isinstance(self.gateway, str):
            made = kwargs["sock"] = paramiko.ProxyCommand(self.gateway)
        if self.connect_timeout:
            kwargs["timeout"] = self.connect_timeout
        try:
            self.client.connect(transport_factory=_Transport, **kwargs)
        except BaseException:
            if made is not None:
                made.close()
            raise
        self.transport = self.client.get_transport()

    def close(self) -> None:
        self.client.close()  # its transport, and a ProxyCommand's process with it
        self.transport = None

    def __repr__(self) -> str:
        return f"<Connection {self.user}@{self.host}:{self.port}{' via ' + repr(self.gateway) if self.gateway else ''}>"

