"""Real OpenSSH servers for the tests of the `ssh` step — never mocked, never skipped.

A pytest plugin (enable with ``pytest_plugins = ["sshserver"]`` in conftest.py, or
``-p sshserver`` with ``tests`` on PYTHONPATH). Every server is a throwaway
``sshd -D -e -f CONFIG`` (the installed OpenSSH server, ``/usr/sbin/sshd``)
listening on ``127.0.0.1`` on a free port, with its own generated ed25519 host
key, config, pid file, authorized keys and log in a temp directory. Fixtures:

``ssh_client_key`` (session)
    Path of a private ed25519 client key (no passphrase, mode 0600; the public
    key is next to it as ``<path>.pub``), authorized on ``sshd`` and ``sshd_bastion``.
``sshd`` (session)
    A server on which ``ssh_client_key`` may log in as the current OS user
    (``root`` in CI). ``AllowTcpForwarding no``.
``sshd_bastion`` (session, started when first requested)
    A second server, same key and user, with ``AllowTcpForwarding yes``: a jump
    host for ProxyJump / ``direct-tcpip`` tests.
``ssh_known_hosts`` (function)
    A fresh ``tmp_path/known_hosts`` trusting ``sshd`` — and ``sshd_bastion`` when
    it is running or requested by the same test — under their ``[127.0.0.1]:PORT``
    names. Append aliases with ``srv.known_hosts_line([...])``.

Server objects (``SshServer``) have ``host`` ("127.0.0.1"), ``port``, ``user``,
``base_dir``, ``config_path``, ``host_key_path``, ``host_public_key`` (the
``ssh-ed25519 AAAA…`` text), ``host_fingerprint`` (``SHA256:…`` as ``ssh-keygen -lf``
prints it), ``client_key_path``, ``known_hosts_path`` (a file trusting this server
as ``[127.0.0.1]:PORT``), ``log_path``, ``pid``, and methods
``known_hosts_line(names=None, bracket=True)``, ``ssh_options(identity=None,
known_hosts=None)`` (OpenSSH client arguments: ``-F /dev/null``, the key with
``IdentitiesOnly``, strict host key checking, batch mode, ``-p PORT``),
``destination`` (``user@127.0.0.1``), ``proxy_command(...)`` (an OpenSSH
``ProxyCommand`` that jumps through this server), ``paramiko_kwargs(...)``
(keyword arguments for ``paramiko.SSHClient.connect``), ``log_tail(lines=40)``,
``connections()`` (logins accepted so far: the number of ``Accepted <method> for``
lines in the log), ``pids()`` (the listener and all its live descendants),
``running`` and ``stop()``.

``start_sshd(tmpdir, *, allow_tcp_forwarding=False, max_startups="200:30:300",
max_sessions=64, authorized_keys=(), client_key=None, log_level="VERBOSE",
extra_config=())`` starts a server directly (in a new directory under ``tmpdir``);
the caller must ``.stop()`` it (an atexit hook is a last resort). ``stop()`` also
ends every process the server forked (connection handlers, login shells).

The login shell. sshd runs every command through the login user's shell from
/etc/passwd (``/bin/bash`` for root); the fixture cannot change it. bash sources
``~/.bashrc`` for commands run by sshd when it is a top-level shell (Debian builds
bash with SSH_SOURCE_BASHRC), and root's ~/.bashrc may be heavy (pyenv init…) or
chatty. The servers therefore set ``SetEnv SHLVL=1`` so that the session's bash is
not top-level and skips ~/.bashrc; commands see ``SHLVL=2``. Login shells
(``ssh -t`` interactive sessions) still read the profile files. ``PermitUserEnvironment
no`` keeps ~/.ssh/environment out; only ``LANG`` and ``LC_*`` are accepted from clients.

Requirements: the OpenSSH server (``.ci/run`` installs it where missing); as root
the ``sshd`` privilege-separation user and ``/run/sshd`` (created here, mode 0755,
when missing). With ``UsePAM no`` sshd refuses accounts whose password field
starts with ``!`` (locked): that is reported before starting. As a non-root user
sshd runs unprivileged and can only log that same user in, which is all we need.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

HOST = "127.0.0.1"
READY_TIMEOUT = 10.0  # seconds for sshd to accept TCP and send its banner
PRIVSEP_DIR = Path("/run/sshd")
SSHD_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin")
SSHD_ENV = "RUNBOOK_TEST_SSHD"  # optional override: absolute path of the sshd binary
_ACCEPTED = re.compile(r"\bAccepted \S+ for \S+ from ")


class SshServerError(RuntimeError):
    """A throwaway sshd could not be configured or started."""


class SshServer:
    def __init__(self, base_dir: Path, user: str, client_key_path: Path, sshd_path: str):
        self.host = HOST
        self.port = 0
        self.user = user
        self.base_dir = base_dir
        self.sshd_path = sshd_path
        self.config_path = base_dir / "sshd_config"
        self.host_key_path = base_dir / "ssh_host_ed25519_key"
        self.pid_file = base_dir / "sshd.pid"
        self.log_path = base_dir / "sshd.log"
        self.authorized_keys_dir = base_dir / "authorized_keys"
        self.known_hosts_path = base_dir / "known_hosts"
        self.client_key_path = client_key_path
        self.host_public_key = ""
        self._proc: subprocess.Popen | None = None
        self._log_fh = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SshServer {self.user}@{self.host}:{self.port} {state} {self.base_dir}>"

    # ------------------------------------------------------------------ identity

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def host_fingerprint(self) -> str:
        """``SHA256:<base64, unpadded>`` of the host key, exactly as ``ssh-keygen -lf`` prints it."""
        return fingerprint(self.host_public_key)

    def known_hosts_line(self, names=None, bracket: bool = True) -> str:
        """A known_hosts line (with newline) trusting this server's host key under ``names``.

        ``names`` is a host name or a list of them (default ``127.0.0.1``). With
        ``bracket`` each is written ``[name]:PORT`` — what clients look up for a
        non-22 port — unless it already starts with ``[``; ``bracket=False`` writes
        them verbatim (e.g. for an OpenSSH ``HostKeyAlias``).
        """
        if names is None:
            names = [self.host]
        elif isinstance(names, str):
            names = [names]
        out = []
        for n in names:
            out.append(n if (not bracket or n.startswith("[")) else f"[{n}]:{self.port}")
        if not out:
            raise ValueError("known_hosts_line needs at least one name")
        return f"{','.join(out)} {self.host_public_key}\n"

    # ------------------------------------------------------------------ clients

    def ssh_options(self, identity=None, known_hosts=None) -> list[str]:
        """OpenSSH client arguments for this server, up to (not including) the destination."""
        return [
            "-F", "/dev/null",
            "-i", str(identity or self.client_key_path),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
            "-p", str(self.port),
        ]

    def proxy_command(self, identity=None, known_hosts=None) -> str:
        """An OpenSSH ``ProxyCommand`` value that jumps through this server (``ssh -W %h:%p``)."""
        args = ["ssh", *self.ssh_options(identity, known_hosts), "-W", "%h:%p", self.destination]
        return " ".join(a if a == "%h:%p" else shlex.quote(a) for a in args)

    def paramiko_kwargs(self, identity=None, **overrides) -> dict:
        """Keyword arguments for ``paramiko.SSHClient().connect(**kw)`` with the client key only."""
        kw = {
            "hostname": self.host, "port": self.port, "username": self.user,
            "key_filename": str(identity or self.client_key_path),
            "look_for_keys": False, "allow_agent": False,
            "timeout": 10, "banner_timeout": 10, "auth_timeout": 10,
        }
        kw.update(overrides)
        return kw

    # ------------------------------------------------------------------ state

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def connections(self) -> int:
        """Logins the server accepted so far (``Accepted publickey for … from …`` log lines)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if _ACCEPTED.search(line))

    def pids(self) -> list[int]:
        """The listener's pid followed by those of all its live descendants."""
        if not self.running:
            return []
        return [self._proc.pid, *_descendants(self._proc.pid)]

    def stop(self) -> None:
        """Stop the listener and every process it forked; keeps the directory (log) around. Idempotent."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        try:
            if proc is not None and proc.poll() is None:
                _stop_tree(proc)
        finally:
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None


# --------------------------------------------------------------------------- helpers

_LIVE: set[SshServer] = set()  # running servers, for the atexit safety net
_BASTION: SshServer | None = None  # the session's sshd_bastion once started


@atexit.register
def _stop_leftovers() -> None:
    for srv in list(_LIVE):
        try:
            srv.stop()
        except Exception:
            pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def fingerprint(public_key: str) -> str:
    """``SHA256:…`` fingerprint of an OpenSSH public key line (``type base64 [comment]``)."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    st = _proc_stat(pid)
    if st is not None:
        return st[0] not in ("Z", "X")
    if Path("/proc/self/stat").exists():
        return False
    try:  # no procfs
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (from /proc; breadth first)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st is not None and st[0] not in ("Z", "X"):
            children.setdefault(st[1], []).append(int(name))
    out: list[int] = []
    todo = [root]
    while todo:
        for kid in children.get(todo.pop(0), []):
            if kid not in out:
                out.append(kid)
                todo.append(kid)
    return out


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_tree(proc: subprocess.Popen) -> None:
    """End the listener and everything below it, without losing forks to reparenting.

    Connection handlers call setsid(), so they are not in the listener's process
    group: freeze the listener and its descendants (SIGSTOP) until the set is
    stable, then SIGTERM + SIGCONT all of them, and SIGKILL what is left.
    """
    tree = [proc.pid]
    for _ in range(10):
        _signal(tree, signal.SIGSTOP)
        found = [proc.pid, *_descendants(proc.pid)]
        for pid in list(tree):  # reparented children of frozen handlers are found again below
            found += [p for p in _descendants(pid) if p not in found]
        new = [p for p in found if p not in tree]
        tree += new
        if not new:
            break
    _signal(tree, signal.SIGTERM)
    _signal(tree, signal.SIGCONT)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        proc.poll()
        if not any(_pid_alive(p) for p in tree):
            return
        time.sleep(0.02)
    _signal([p for p in tree if _pid_alive(p)], signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        proc.poll()
        if not any(_pid_alive(p) for p in tree):
            return
        time.sleep(0.02)


def find_sshd() -> str:
    """Absolute path of the OpenSSH server binary (sshd refuses to re-exec from a relative one)."""
    override = os.environ.get(SSHD_ENV)
    if override:
        if not (os.path.isabs(override) and os.access(override, os.X_OK)):
            raise SshServerError(f"{SSHD_ENV}={override!r} is not an absolute path to an executable")
        return override
    path = os.pathsep.join([*SSHD_DIRS, os.environ.get("PATH", "")])
    found = shutil.which("sshd", path=path)
    if not found:
        raise SshServerError(
            "no OpenSSH server (sshd) found in /usr/sbin, /usr/local/sbin or PATH; "
            "install openssh-server (`.ci/run` does so where it can)")
    return os.path.abspath(found)


def _clean_env() -> dict:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}


def make_key(path, comment: str = "runbook-test") -> Path:
    """Generate an ed25519 key pair without passphrase at ``path`` (+ ``.pub``); mode 0600."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, Path(f"{path}.pub")):
        p.unlink(missing_ok=True)
    keygen = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
    try:
        res = subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                             env=_clean_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SshServerError(f"ssh-keygen failed: {e}") from e
    if res.returncode != 0:
        raise SshServerError(f"ssh-keygen failed (exit {res.returncode}): {res.stdout}{res.stderr}")
    os.chmod(path, 0o600)
    return path


def _public_key_text(entry) -> str:
    """An authorized_keys entry: a public key line, a ``.pub`` file, or a private key with ``.pub`` beside it."""
    if isinstance(entry, Path) or (isinstance(entry, str) and os.path.sep in entry and "\n" not in entry
                                   and not entry.startswith(("ssh-", "ecdsa-", "sk-"))):
        p = Path(entry)
        pub = p if p.suffix == ".pub" else Path(f"{p}.pub")
        return pub.read_text().strip()
    return str(entry).strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _quote(value) -> str:
    v = str(value)
    return f'"{v}"' if any(c.isspace() for c in v) else v


def _check_account(user: str) -> None:
    pw = pwd.getpwnam(user)
    shell = pw.pw_shell or "/bin/sh"
    if not os.access(shell, os.X_OK):
        raise SshServerError(f"login shell {shell!r} of {user!r} is not executable; sshd would refuse the login")
    hashed = None
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            if line.split(":", 1)[0] == user:
                hashed = line.split(":")[1]
                break
    except (OSError, IndexError):
        return  # not readable (non-root): sshd cannot read it either
    if hashed and hashed.startswith("!"):
        raise SshServerError(
            f"account {user!r} is locked (its /etc/shadow password starts with '!'); sshd with UsePAM no "
            f"refuses it. Unlock without setting a password: usermod -p '*' {user}")


def _ensure_privsep_dir() -> None:
    if os.geteuid() != 0:
        return
    try:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = PRIVSEP_DIR.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            os.chown(PRIVSEP_DIR, 0, 0)
            os.chmod(PRIVSEP_DIR, 0o755)
    except OSError as e:
        raise SshServerError(f"cannot create sshd's privilege separation directory {PRIVSEP_DIR}: {e}") from e
    try:
        pwd.getpwnam("sshd")
    except KeyError:
        raise SshServerError("running as root, and there is no `sshd` privilege separation user; "
                             "install openssh-server (it creates the user)") from None


# Options some sshd versions lack: dropped (or replaced) when `sshd -t` rejects them.
_OPTIONAL = {
    "PerSourcePenalties": None,  # 9.8+: would penalise 127.0.0.1 after refused logins / probes
    "SetEnv": None,  # 7.8+
    "KbdInteractiveAuthentication": "ChallengeResponseAuthentication",  # 8.7+
}
_UNSUPPORTED: set[str] = set()  # learnt per process from `sshd -t`


def _config_text(srv: SshServer, *, allow_tcp_forwarding: bool, max_startups: str, max_sessions: int,
                 log_level: str, extra_config) -> str:
    lines = [
        ("ListenAddress", HOST),
        ("Port", srv.port),
        ("AddressFamily", "inet"),
        ("HostKey", _quote(srv.host_key_path)),
        ("PidFile", _quote(srv.pid_file)),
        ("AuthorizedKeysFile", _quote(f"{srv.authorized_keys_dir}/%u")),
        ("AuthorizedPrincipalsFile", "none"),
        ("PubkeyAuthentication", "yes"),
        ("PasswordAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
        ("HostbasedAuthentication", "no"),
        ("PermitEmptyPasswords", "no"),
        ("PermitRootLogin", "prohibit-password"),
        ("UsePAM", "no"),
        ("StrictModes", "no"),
        ("UseDNS", "no"),
        ("LogLevel", log_level),
        ("MaxStartups", max_startups),
        ("MaxSessions", max_sessions),
        ("MaxAuthTries", 10),
        ("LoginGraceTime", 30),
        ("PerSourcePenalties", "no"),
        ("AllowTcpForwarding", "yes" if allow_tcp_forwarding else "no"),
        ("AllowAgentForwarding", "no"),
        ("X11Forwarding", "no"),
        ("PermitTunnel", "no"),
        ("GatewayPorts", "no"),
        ("PermitUserEnvironment", "no"),
        ("SetEnv", "SHLVL=1"),  # the session's bash is not top-level: it skips ~/.bashrc
        ("PrintMotd", "no"),
        ("PrintLastLog", "no"),
        ("AcceptEnv", "LANG LC_*"),
        ("Subsystem", "sftp internal-sftp"),
        *extra_config,
    ]
    out = ["# written by tests/sshserver.py"]
    for key, value in lines:
        if key in _UNSUPPORTED:
            alt = _OPTIONAL.get(key)
            if alt is None or alt in _UNSUPPORTED:
                continue
            key = alt
        out.append(f"{key} {value}")
    return "\n".join(out) + "\n"


def _validate_config(srv: SshServer, render) -> None:
    """``sshd -t``; learn which optional options this sshd lacks and rewrite without them."""
    for _ in range(len(_OPTIONAL) * 2 + 1):
        srv.config_path.write_text(render())
        try:
            res = subprocess.run([srv.sshd_path, "-t", "-f", str(srv.config_path)], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=30, env=_clean_env(), cwd=srv.base_dir)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SshServerError(f"`{srv.sshd_path} -t` failed: {e}") from e
        if res.returncode == 0:
            return
        err = res.stdout + res.stderr
        bad = [k for k in _OPTIONAL if k not in _UNSUPPORTED and re.search(
            rf"(Bad configuration option|Unsupported option|unsupported option)\W+{k}\b", err, re.I)]
        if not bad:
            raise SshServerError(f"sshd rejected its test config (exit {res.returncode}):\n{err}\n"
                                 f"--- {srv.config_path} ---\n{srv.config_path.read_text()}")
        _UNSUPPORTED.update(bad)
    raise SshServerError(f"could not produce an sshd config accepted by {srv.sshd_path}")


def _banner(port: int, timeout: float) -> bytes | None:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"SSH-"):
                try:  # answer politely so the server logs a plain pre-auth close
                    s.sendall(b"SSH-2.0-runbook_sshserver_probe\r\n")
                except OSError:
                    pass
                return data.split(b"\n", 1)[0].strip()
    except OSError:
        pass
    return None


def _launch(srv: SshServer) -> str:
    """Start sshd and wait for its banner. Returns "ok", or "port" when the port was taken."""
    srv._log_fh = open(srv.log_path, "ab", buffering=0)
    srv._proc = subprocess.Popen(
        [srv.sshd_path, "-D", "-e", "-f", str(srv.config_path)],
        stdin=subprocess.DEVNULL, stdout=srv._log_fh, stderr=srv._log_fh, env=_clean_env(),
        cwd=srv.base_dir, start_new_session=True, close_fds=True,
    )
    _LIVE.add(srv)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        rc = srv._proc.poll()
        if rc is not None:
            tail = srv.log_tail()
            srv.stop()
            if "Address already in use" in tail or "Cannot bind any address" in tail:
                return "port"
            raise SshServerError(f"sshd exited with status {rc} while starting on "
                                 f"{HOST}:{srv.port}\n--- sshd log tail ({srv.log_path}) ---\n{tail}")
        if _banner(srv.port, 1.0):
            return "ok"
        if time.monotonic() >= deadline:
            tail = srv.log_tail()
            srv.stop()
            raise SshServerError(f"sshd on {HOST}:{srv.port} did not answer an SSH banner within "
                                 f"{READY_TIMEOUT:.0f}s\n--- sshd log tail ({srv.log_path}) ---\n{tail}")
        time.sleep(0.05)


def start_sshd(tmpdir, *, allow_tcp_forwarding: bool = False, max_startups: str = "200:30:300",
               max_sessions: int = 64, authorized_keys=(), client_key=None, log_level: str = "VERBOSE",
               extra_config=()) -> SshServer:
    """Start a throwaway sshd on a free 127.0.0.1 port; the caller must ``.stop()`` it.

    Files go to a new directory under ``tmpdir``. ``client_key`` is the private key
    the tests log in with (generated there when None) and is always authorized;
    ``authorized_keys`` adds entries (public key lines, ``.pub`` paths, or private
    key paths with a ``.pub`` beside them). ``extra_config`` is a sequence of
    ``(keyword, value)`` pairs appended to sshd_config.
    """
    sshd_path = find_sshd()
    user = pwd.getpwuid(os.geteuid()).pw_name
    _check_account(user)
    _ensure_privsep_dir()
    parent = Path(tmpdir).absolute()
    parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="sshd-", dir=parent))
    os.chmod(base, 0o755)
    if client_key is None:
        client_key = make_key(base / "client_ed25519", comment=f"runbook-test-client@{base.name}")
    client_key = Path(client_key).absolute()
    srv = SshServer(base, user, client_key, sshd_path)

    make_key(srv.host_key_path, comment="runbook-test-sshd")
    srv.host_public_key = " ".join(Path(f"{srv.host_key_path}.pub").read_text().split()[:2])
    srv.authorized_keys_dir.mkdir(mode=0o755)
    keys = [_public_key_text(client_key), *(_public_key_text(k) for k in authorized_keys)]
    ak = srv.authorized_keys_dir / user
    ak.write_text("".join(k + "\n" for k in keys if k))
    os.chmod(ak, 0o600)

    def render() -> str:
        return _config_text(srv, allow_tcp_forwarding=allow_tcp_forwarding, max_startups=max_startups,
                            max_sessions=max_sessions, log_level=log_level, extra_config=extra_config)

    for attempt in range(3):  # the free port may be taken between probing and binding
        srv.port = _free_port()
        _validate_config(srv, render)
        try:
            outcome = _launch(srv)
        except BaseException:
            srv.stop()
            raise
        if outcome == "ok":
            break
        srv.log_path.rename(srv.log_path.with_suffix(f".attempt{attempt}.log"))
    else:
        raise SshServerError(f"could not find a free port for sshd:\n--- sshd log tail ---\n"
                             f"{_tail(srv.log_path.with_suffix('.attempt2.log'))}")
    srv.known_hosts_path.write_text(srv.known_hosts_line())
    return srv


def write_known_hosts(path, *servers: SshServer) -> Path:
    """Write ``path`` trusting each server under its ``[127.0.0.1]:PORT`` name; returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(s.known_hosts_line() for s in servers))
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory) -> Path:
    """Private ed25519 client key (no passphrase, 0600) authorized on `sshd` and `sshd_bastion`."""
    return make_key(tmp_path_factory.mktemp("ssh-client") / "id_ed25519", comment="runbook-test-client")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory, ssh_client_key):
    """A real sshd on 127.0.0.1 where `ssh_client_key` logs in as the current user."""
    srv = start_sshd(tmp_path_factory.mktemp("sshd"), client_key=ssh_client_key)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def sshd_bastion(tmp_path_factory, ssh_client_key):
    """A second real sshd with AllowTcpForwarding yes: a jump host."""
    global _BASTION
    srv = start_sshd(tmp_path_factory.mktemp("sshd-bastion"), client_key=ssh_client_key,
                     allow_tcp_forwarding=True)
    _BASTION = srv
    try:
        yield srv
    finally:
        _BASTION = None
        srv.stop()


@pytest.fixture
def ssh_known_hosts(tmp_path, request, sshd) -> Path:
    """A fresh known_hosts trusting `sshd` (and `sshd_bastion` when running/requested) as [127.0.0.1]:PORT."""
    servers = [sshd]
    if "sshd_bastion" in request.fixturenames:
        servers.append(request.getfixturevalue("sshd_bastion"))
    elif _BASTION is not None and _BASTION.running:
        servers.append(_BASTION)
    return write_known_hosts(tmp_path / "known_hosts", *servers)
