"""``ssh``: a command on one host, a list of hosts or an inventory group.

    - id: errors
      ssh: {hosts: api-servers, command: "tail -n 100 /var/log/app/api.log | grep ERROR", forks: 10}
      readonly: true

* Connections are paramiko clients (:mod:`runbook.steps.ssh_conn`),
  imported only when an ``ssh`` step runs; ``~/.ssh/config`` applies (Host
  aliases, HostName, User, Port, IdentityFile, ProxyJump, ProxyCommand), keys come from files and the
  ssh-agent, a jump host may come from the inventory.  One connection per host
  per run, reused by every later step on that host.
* Host keys are checked against known_hosts (the inventory's ``ssh.known_hosts``,
  else ``~/.ssh/known_hosts``, and ``/etc/ssh/ssh_known_hosts``).  An unknown or
  changed key fails the step with the host, the fingerprints and the known_hosts
  line; a key marked ``@revoked`` is refused wherever else it is listed; a host
  only a ``@cert-authority`` line could vouch for is refused (host certificates
  are not supported).  A jump host's key failure names the jump host.
  ``host_key_policy: accept-new`` (inventory) adds a new key — never a changed,
  revoked or CA-covered one — once: under a lock on known_hosts, one line and one
  audit record per new key, however many connections find it at once.
* Which shell runs the command: sshd hands it to the login user's shell (from
  /etc/passwd) as ``$SHELL -c COMMAND``.  When runbook wraps it — for ``cwd``,
  ``env``, secrets, ``sudo`` or a ``timeout`` — it runs under ``sh -c`` (POSIX
  sh: dash on Debian/Ubuntu) instead.  ``shell: bash`` (or ``shell: sh``) always
  runs it with ``bash -c`` (``sh -c``), wrapped or not; the command is passed as
  one single-quoted argument, so the login shell never parses it.
* A step ``timeout`` stops the remote command too, even if runbook dies
  meanwhile: it runs under coreutils ``timeout``, which signals its whole
  process group on the remote host.  (Without a timeout, a command that writes
  nothing outlives a killed runbook: the connection closing does not stop it.)
  Before the command goes to a host, the audit log records the host and when
  its timeout will have ended it (``step_process``: ``hosts``, ``deadline``).
* Secrets never travel in the remote command line: they are written to the
  command's standard input and read into environment variables there.
* Progress: on several hosts, the UI hears of each host as it answers
  (``host_finished``): a line per host in plain output, a progress bar in guided mode.
* Per-host results: ``steps.ID.hosts["api-1"].stdout`` / ``.exit_code`` /
  ``.status`` / ``.duration``, plus ``ok``/``failed`` counts and
  ``failed_hosts``.  Any failed host fails the step (``on_failure`` applies).
* Outputs are read on every host (``steps.ID.hosts["api-1"].outputs.NAME``); on
  a list of hosts or a group, each output says how the hosts' values combine
  (``aggregate: max``, …: runbook.outputs), and ``steps.ID.aggregates.NAME.host``
  names the host that gave a max or min.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.secrets import LazySecret, Secret
from runbook.text import plural
from runbook.steps import Action, StepResult
from runbook.steps.shell import Capture

SCHEMA = S.Obj(
    {
        "hosts": S.OneOf(
            ((str, S.Str(doc="a host or group name")), (list, S.List(S.Str(), min_items=1))),
            doc="an inventory host or group, or a list of them", expect_text="a host/group name or a list of them",
        ),
        "command": S.Str(doc="the command; which shell runs it: see shell"),
        "shell": S.Str(enum=("sh", "bash"), doc="run the command with sh -c or bash -c (default: the login shell, "
                                                 "or sh -c when cwd, env, secrets, sudo or a timeout wrap it)"),
        "sudo": S.Bool(doc="run with sudo -n (never prompts: a password requirement fails the step)"),
        "user": S.Str(doc="with sudo: run as this user (sudo -u)"),
        "cwd": S.Str(doc="working directory on the host"),
        "env": S.MapOf(S.Str(), key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", doc="environment variables for the command"),
        "forks": S.Int(minimum=1, maximum=1000, doc="how many hosts at once (default: inventory ssh.forks, else 10)"),
        "fail_fast": S.Bool(doc="stop starting new hosts after the first failure"),
    },
    required=("hosts", "command"),
    doc="Run a command over SSH",
)
DEFAULT_READONLY = False
FIXED_EFFECT = None
RESULT_FIELDS = ("hosts", "ok_hosts", "failed_hosts", "skipped_hosts", "ok_count", "failed_count", "aggregates")
SHOW_OUTPUT = "head"
COMMAND_SUMMARY = True  # the summary is the remote command line; detail["where"] the hosts
DEFAULT_FORKS = 10
MAX_CAPTURE = 1024 * 1024  # bytes kept per host and stream (head and tail)
HEAD_KEEP = 64 * 1024
SHOW_LINES = 200  # the per-host table is shown whole up to this many lines

# paramiko logs connection failures with tracebacks; ours are one line per host
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False
KILL_AFTER = 5  # seconds between TERM and KILL for a timed-out remote command
_DEADLINE_SLACK = 2  # seconds: the remote `timeout` starts a little after the command is sent
_PRE_ANNOUNCED = 1.0  # seconds a record written before the hosts' dispatch covers their sends (< _DEADLINE_SLACK)
_EOF_GRACE = 2.0  # seconds of silence after the exit status, waiting for the output's end (EOF)


def normalize(value) -> dict:
    body = dict(value)
    if isinstance(body.get("hosts"), str):
        body["hosts"] = [body["hosts"]]
    return body


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = [("command", body["command"], "shell")]
    out += [(f"hosts[{i}]", h, "text") for i, h in enumerate(body["hosts"])]
    for key in ("cwd", "user"):
        if key in body:
            out.append((key, body[key], "text"))
    out += [(f"env.{k}", v, "env") for k, v in (body.get("env") or {}).items()]
    return out


def edges(body: dict) -> list[tuple[str, str]]:
    return []


def inventory_targets(body: dict) -> list[tuple[str, str, str]]:
    return [("host", h, "hosts") for h in body["hosts"]]


def static_problems(step) -> list[tuple[str, str, str]]:
    if "user" in step.body and not step.body.get("sudo"):
        return [("user", "user applies with sudo (sudo -u USER); the login user comes from the inventory or ~/.ssh/config", "schema")]
    return []


def fanout(body: dict) -> bool | None:
    """False when the step may fan out over many hosts with no explicit bound."""
    many = len(body["hosts"]) > 1 or any(expr.is_template(h) for h in body["hosts"])
    if "forks" in body:
        return True
    return None if not many else False


def fans_out(body: dict, inventory) -> str:
    return _fan_out(body["hosts"], inventory)


def _fan_out(names: list[str], inventory) -> str:
    groups = getattr(inventory, "groups", None) or {}
    named = [n for n in names if n in groups]
    if named:
        return f"every host of group{'s' if len(named) > 1 else ''} {', '.join(named)}"
    if len(names) > 1:
        return f"{len(names)} hosts"
    return ""


def per_host(result) -> dict[str, dict] | None:
    return result.data.get("hosts")


# --- rendering ----------------------------------------------------------------


@dataclass
class Target:
    name: str
    address: str  # what we connect to (an alias that ~/.ssh/config resolves stays an alias)
    port: int | None
    user: str | None
    jump: str | None
    # what ~/.ssh/config makes of it, for people (ssh_conn applies the config itself when connecting)
    shown: str | None = None
    shown_user: str | None = None
    shown_port: str | None = None

    def describe(self) -> str:
        user, port = self.user or self.shown_user, self.port or self.shown_port
        where = f"{user + '@' if user else ''}{self.shown or self.address}{':' + str(port) if port else ''}"
        return f"{self.name} ({where}{' via ' + self.jump if self.jump else ''})"


def _targets(r, names: list[str]) -> list[Target]:
    for n in names:
        if not n.strip() or any(c.isspace() for c in n):
            raise RunbookError(f"invalid host name {n!r}")
    inventory = getattr(r, "inventory", None)
    if inventory is None:  # plain host names: ~/.ssh/config and the defaults apply
        targets = [Target(n, n, None, None, None) for n in dict.fromkeys(names)]
    else:
        hosts = inventory.resolve_hosts(names)
        targets = [Target(h.name, str(h.address), h.port, str(h.user) if h.user else None, h.jump_host) for h in hosts]
    if not targets:
        raise RunbookError(f"no hosts in {', '.join(names)}")
    return [_with_ssh_config(t) for t in targets]


def _with_ssh_config(t: Target) -> Target:
    """What ~/.ssh/config adds (HostName, Port, User, ProxyJump), as the connection will see it."""
    cfg = _ssh_config_lookup(t.address)
    if not cfg:
        return t
    jump = t.jump
    if jump is None and cfg.get("proxyjump") and cfg["proxyjump"].lower() != "none":
        hops = [h for h in cfg["proxyjump"].split(",") if _parse_hop(h.strip())["address"] not in (t.name, t.address)]
        jump = ",".join(hops) or None  # `Host * / ProxyJump bastion` must not make the bastion jump through itself
    return Target(t.name, t.address, t.port, t.user, jump, shown=cfg.get("hostname"), shown_user=cfg.get("user"),
                  shown_port=cfg.get("port"))


def _ssh_config_lookup(host: str) -> dict:
    """What the connection will take from the ssh config (ssh_conn's parse, read once), when the
    user has a ~/.ssh/config (else nothing, and paramiko is not imported for a plan)."""
    if not (Path.home() / ".ssh" / "config").is_file():
        return {}
    try:
        from runbook.steps.ssh_conn import ssh_config

        found = ssh_config().lookup(host)
    except Exception:  # noqa: BLE001 - a broken config is reported when connecting
        return {}
    return {k: v for k, v in found.items() if k in ("hostname", "port", "user", "proxyjump")}


def remote_command(body: dict, command: str, secret_vars: list[str], timeout: float | None, cwd: str | None,
                   env: dict[str, str]) -> str:
    """The exact line sent to each host."""
    parts = [f"cd {shlex.quote(cwd)}"] if cwd else []
    for v in secret_vars:  # read from standard input, never in the command line
        parts += [f"IFS= read -r {v}", f"export {v}"]
    parts += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    # every part must succeed before the command runs (a failed cd must not run it elsewhere)
    script = " && ".join(parts + [f"{{ {command}\n}}"]) if parts else command
    wrapped = script != command or timeout is not None or body.get("sudo") or body.get("shell")
    if not wrapped:
        return command  # the login shell (sshd runs it as `$SHELL -c COMMAND`)
    line = f"{body.get('shell') or 'sh'} -c {shlex.quote(script)}"
    if timeout is not None:
        line = f"timeout -k {KILL_AFTER} {_remote_secs(timeout)} {line}"
    if body.get("sudo"):
        line = "sudo -n " + (f"-u {shlex.quote(body['user'])} " if body.get("user") else "") + "-- " + line
    return line


def _remote_secs(timeout: float) -> int:
    """The remote ``timeout``'s duration: whole seconds, at least 1."""
    return max(1, int(timeout + 0.999))


def action(step, r) -> Action:
    body = step.body
    command, secret_env = r.shell(body["command"])
    names = [r.text(h) for h in body["hosts"]]
    targets = _targets(r, names)
    env = {k: r.value(v) for k, v in (body.get("env") or {}).items()}
    known = [s.lower() for s in (r.redactor.values() if getattr(r, "redactor", None) else [])]
    plain_env = {}
    for k, v in env.items():
        if isinstance(v, (Secret, LazySecret)) or any(s in str(v).lower() for s in known):
            secret_env[k] = v if isinstance(v, (Secret, LazySecret)) else Secret(str(v), k)  # over stdin
        else:
            plain_env[k] = str(v)
    cwd = r.text(body["cwd"]) if "cwd" in body else None
    inventory = getattr(r, "inventory", None)
    shell = body.get("shell") or getattr(getattr(inventory, "ssh", None), "shell", None)  # the step's, else the inventory's
    line = remote_command({**body, "shell": shell} if shell else body, command, list(secret_env), step.timeout, cwd,
                          plain_env)
    forks = body.get("forks") or (getattr(getattr(inventory, "ssh", None), "forks", None) if inventory else None) or DEFAULT_FORKS
    detail = {"command": line, "hosts": [t.__dict__ for t in targets], "forks": forks, "secret_vars": list(secret_env),
              "where": [t.describe() for t in targets]}
    return Action(summary=line, targets=[t.name for t in targets], detail=detail, env=secret_env,
                  fan_out=_fan_out(names, inventory) or (f"{len(targets)} hosts" if len(targets) > 1 else ""))


def details(action: Action) -> list[tuple[str, str]]:
    """The remote command line as sent, and where it goes."""
    d = action.detail
    rows = [("command", action.summary), ("on", "\n".join(d.get("where") or action.targets))]
    if len(action.targets) > 1:
        rows.append(("at once", f"{min(int(d.get('forks') or 1), len(action.targets))} of {len(action.targets)} hosts"))
    if d.get("secret_vars"):
        rows.append(("sent on stdin", ", ".join(d["secret_vars"]) + " (values not shown)"))
    return rows


def observed(step, result: StepResult) -> str | None:
    """The step's outputs, else each host's last line of output."""
    hosts = result.data.get("hosts") if isinstance(result.data, dict) else None
    if result.outputs or not hosts:
        from runbook.steps import base

        return base.observed(step, result)
    shown = []
    for name, r in hosts.items():
        lines = [line.strip() for line in str(r.get("stdout") or "").splitlines() if line.strip()]
        shown.append(f"{name}: {lines[-1] if lines else r.get('error') or r.get('status')}")
    return ", ".join(shown)


def output_sections(result: StepResult) -> list[tuple[str | None, str]]:
    """One part per host, labelled with its name and how it ended."""
    hosts = result.data.get("hosts") if isinstance(result.data, dict) else None
    if not hosts:
        from runbook.steps import base

        return base.output_sections(result)
    parts = []
    for name, r in hosts.items():
        label = f"{name} · {r.get('status')}" + (f" · exit {r['exit_code']}" if r.get("exit_code") is not None else "")
        if r.get("error") and r.get("status") != "ok" and r["error"] not in (f"exit {r.get('exit_code')}", f"exit code {r.get('exit_code')}"):
            label += f" · {r['error']}"  # not "exit 3 · exit code 3"
        parts.append((label, str(r.get("stdout") or "") + str(r.get("stderr") or "")))
    return parts


# --- running --------------------------------------------------------------------


class HostKeyError(RunbookError):
    pass


class JumpHostError(RunbookError):
    """A jump host could not be reached or failed its host key check (named as the jump host)."""


def _fingerprint(key) -> str:
    return _blob_fingerprint(key.asbytes())


def _blob_fingerprint(blob: bytes) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# --- known_hosts ------------------------------------------------------------------
# runbook reads known_hosts itself: paramiko's HostKeys.load skips @revoked and
# @cert-authority lines without a word (a revoked key listed elsewhere would pass).
# The client is given only the host's plain, unrevoked keys (so that paramiko still
# prefers a key type known_hosts has); any other key offered reaches _check_host_key
# before authentication — through the policy when none is listed, else through
# paramiko's BadHostKeyException (see _open).


@dataclass
class KnownLine:
    path: Path
    lineno: int
    marker: str | None  # None, "@revoked" or "@cert-authority" (or an unknown marker)
    names: str  # the host pattern field as written
    key_type: str
    blob: bytes | None  # the decoded key; None when the line cannot be read

    @property
    def where(self) -> str:
        return f"{self.path} line {self.lineno}"

    @property
    def wildcard(self) -> bool:
        return not self.names.startswith("|") and any(c in self.names for c in "*?!")

    def matches(self, host: str) -> bool:
        """OpenSSH's host pattern rules: comma-separated, ``*`` and ``?``, ``!`` negates, ``|1|`` hashed."""
        import base64
        import hashlib
        import hmac
        import re

        if self.names.startswith("|1|"):
            try:
                salt, digest = (base64.b64decode(p) for p in self.names[3:].split("|", 1))
            except Exception:  # noqa: BLE001 - a broken hash matches nothing
                return False
            return hmac.compare_digest(hmac.new(salt, host.encode(), hashlib.sha1).digest(), digest)
        found = False
        for pattern in self.names.split(","):
            negated = pattern.startswith("!")
            pattern = pattern[1:] if negated else pattern
            rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
            if re.fullmatch(rx, host.lower()):
                if negated:
                    return False
                found = True
        return found


def _read_known_hosts(path: Path) -> list[KnownLine]:
    import base64
    import binascii

    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if len(fields) < 3:
            out.append(KnownLine(path, n, marker, fields[0] if fields else "", "", None))
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except (binascii.Error, ValueError):
            blob = None
        out.append(KnownLine(path, n, marker, fields[0], fields[1], blob))
    return out


class _Verdict:
    """What the known_hosts files say about one key offered under one host name."""

    def __init__(self, lines: list[KnownLine], host: str, blob: bytes):
        self.revoked = [x for x in lines if x.marker == "@revoked" and x.blob == blob and x.matches(host)]
        self.authorities = [x for x in lines if x.marker == "@cert-authority" and x.matches(host)]
        plain = [x for x in lines if x.marker is None and x.blob is not None and not x.wildcard]
        self.listed = [x for x in plain if x.matches(host)]
        self.trusted = [x for x in self.listed if x.blob == blob]
        # lines runbook cannot judge: wildcard patterns, unreadable lines, unknown markers
        self.unjudged = [x for x in lines if (x.marker is None and (x.blob is None or x.wildcard))
                         or (x.marker not in (None, "@revoked", "@cert-authority"))]


def _check_host_key(name: str, host: str, key, files: list[Path], primary: Path, accept_new: bool, ctx) -> None:
    """Accept the key ``host`` offered, or raise HostKeyError: revoked, changed, unknown (or added with accept-new)."""
    blob, fp = key.asbytes(), _fingerprint(key)
    lines = [x for p in files for x in _read_known_hosts(p)]
    v = _Verdict(lines, host, blob)
    if v.revoked:
        x = v.revoked[0]
        raise HostKeyError(f"host key of '{name}' ({host}) is REVOKED: its {key.get_name()} key {fp} is marked "
                           f"@revoked in {x.where}; refusing to connect (the key may be stolen, or the host rebuilt "
                           f"— remove the @revoked line only once you know why it is there)")
    if v.trusted:
        return
    if v.listed:
        expected = "; ".join(f"{_blob_fingerprint(x.blob)} ({x.key_type}, {x.where})" for x in v.listed[:3])
        raise HostKeyError(f"host key of '{name}' ({host}) has CHANGED: known_hosts has {expected}, the host offered "
                           f"{key.get_name()} {fp}; this may be an attack — if the host was rebuilt, fix that line")
    if v.authorities:
        x = v.authorities[0]
        raise HostKeyError(f"host '{name}' ({host}) offered {key.get_name()} key {fp}, which only a certificate "
                           f"authority could vouch for ({x.where}: @cert-authority {x.names}); runbook does not "
                           f"support host certificates (@cert-authority lines): add the host's own key to "
                           f"{primary} (ssh-keyscan) after verifying it")
    if not accept_new or v.unjudged:
        why = "" if not v.unjudged else (f" (known_hosts has wildcard lines or lines it cannot read, e.g. "
                                         f"{v.unjudged[0].where}, which runbook cannot judge, so it never adds keys "
                                         f"to it)")
        raise HostKeyError(f"host '{name}' ({host}) offered an unknown {key.get_name()} host key {fp}: "
                           f"it is not in {primary}{why}; verify it and add it (ssh-keyscan), or set "
                           f"host_key_policy: accept-new in the inventory")
    _accept_new(name, host, key, files, primary, ctx)


_known_hosts_lock = threading.Lock()  # flock orders processes; this orders this process's threads


def _accept_new(name: str, host: str, key, files: list[Path], primary: Path, ctx) -> None:
    """Add a new key once: under a lock on known_hosts, check again (another connection — this run's
    or another runbook's — may have added it meanwhile), then append one line and audit it."""
    import fcntl

    primary.parent.mkdir(parents=True, exist_ok=True)
    with _known_hosts_lock, open(primary, "a+", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            lines = [x for p in files for x in _read_known_hosts(p)]
            v = _Verdict(lines, host, key.asbytes())
            if v.trusted and not v.revoked:
                return  # added meanwhile
            if v.revoked or v.listed or v.authorities or v.unjudged:
                return _check_host_key(name, host, key, files, primary, False, ctx)  # raises the right refusal
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(f.tell() - 1)
                last = f.read(1)
                f.seek(0, os.SEEK_END)
                if last != "\n":
                    f.write("\n")  # never glue our line onto an unterminated last line
            f.write(f"{host} {key.get_name()} {key.get_base64()}\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    ctx.event("host_key_added", host=name, address=host, key_type=key.get_name(), fingerprint=_fingerprint(key),
              known_hosts=str(primary))


def _policy(name: str, settings: dict, ctx):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Every server key comes here (the client holds no host keys): see _check_host_key."""

        def missing_host_key(self, client, hostname, key):
            _check_host_key(name, hostname, key, [_SYSTEM_KNOWN_HOSTS, settings["known_hosts"]],
                            settings["known_hosts"], settings["accept_new"], ctx)

    return Policy()


_SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


def _settings(ctx) -> dict:
    inv = ctx.inventory
    ssh = getattr(inv, "ssh", None)
    known = getattr(ssh, "known_hosts", None)
    return {
        "known_hosts": Path(os.path.expanduser(str(known))) if known else Path.home() / ".ssh" / "known_hosts",
        "accept_new": getattr(ssh, "host_key_policy", "strict") == "accept-new",
        "identity_file": getattr(ssh, "identity_file", None),
        "connect_timeout": max(1, math.ceil(getattr(ssh, "connect_timeout", None) or 10)),
    }


_connect_lock = threading.Lock()
_host_locks: dict[str, threading.Lock] = {}


def _lookup_name(conn) -> str:
    """The name paramiko checks the host key under (OpenSSH's too)."""
    return conn.host if int(conn.port or 22) == 22 else f"[{conn.host}]:{conn.port}"


def _secure(conn, name: str, settings: dict, ctx) -> None:
    """Host key checking for a connection: known_hosts, never AutoAddPolicy."""
    import paramiko

    host = _lookup_name(conn)
    lines = [x for p in (_SYSTEM_KNOWN_HOSTS, settings["known_hosts"]) for x in _read_known_hosts(p)]
    revoked = {x.blob for x in lines if x.marker == "@revoked" and x.blob and x.matches(host)}
    keys = conn.client.get_host_keys()
    for x in lines:
        if x.marker is None and x.blob and not x.wildcard and x.blob not in revoked and x.matches(host):
            try:
                key = paramiko.PKey.from_type_string(x.key_type, x.blob)
            except Exception:  # noqa: BLE001, S112 - a key type paramiko cannot use is never negotiated
                continue
            if key.get_name() not in (keys.lookup(host) or {}):
                keys.add(host, key.get_name(), key)
    conn.client.set_missing_host_key_policy(_policy(name, settings, ctx))


def _bad_host_key(target: dict, settings: dict, conn, exc, ctx) -> HostKeyError:
    """paramiko's BadHostKeyException, judged by _check_host_key (revoked? changed? which line?)."""
    files = [_SYSTEM_KNOWN_HOSTS, settings["known_hosts"]]
    try:
        _check_host_key(target["name"], _lookup_name(conn), exc.key, files, settings["known_hosts"], False, ctx)
    except HostKeyError as judged:
        return judged
    return HostKeyError(f"host key {_fingerprint(exc.key)} of '{target['name']}' ({_lookup_name(conn)}) is in "
                        f"known_hosts, but so is another {exc.key.get_name()} key for it, which runbook (paramiko) "
                        f"checked instead: remove the stale line")


def _parse_hop(hop: str) -> dict:
    """`user@host:port` of a ProxyJump hop."""
    user, _, rest = hop.rpartition("@")
    host, port = rest, None
    if rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = int(port_text) if port_text.isdigit() else None
    return {"name": hop, "address": host, "port": port, "user": user or None, "jump": None}


def _connection(ctx, target: dict, settings: dict, by_name: dict, seen: frozenset = frozenset()):
    """The run's connection to this host (one per host, shared by threads and steps)."""
    with _connect_lock:
        lock = _host_locks.setdefault(target["name"], threading.Lock())
    with lock:
        return _open(ctx, target, settings, by_name, seen)


def _is_open(ctx, name: str) -> bool:
    conn = ctx.connections.get(("ssh", name))
    return conn is not None and conn.is_connected


def _drop(ctx, name: str) -> None:
    conn = ctx.connections.pop(("ssh", name), None)
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


def _open(ctx, target: dict, settings: dict, by_name: dict, seen: frozenset):
    key = ("ssh", target["name"])
    conn = ctx.connections.get(key)
    if conn is not None and conn.is_connected and conn.transport is not None and conn.transport.is_active():
        return conn
    from runbook.steps.ssh_conn import Connection

    gateway = None  # the hops of a ProxyJump or an inventory jump host are built here, each a connection of the run
    jump = target.get("jump")
    if jump and jump.lower() != "none":
        prev = None
        for hop in [h.strip() for h in jump.split(",") if h.strip()]:
            hop_target = dict(by_name.get(hop) or _parse_hop(hop))
            if prev is not None:
                hop_target["jump"] = prev
            if hop_target["name"] == target["name"] or hop_target["name"] in seen:
                raise RunbookError(f"jump host loop: {' → '.join([*seen, target['name'], hop_target['name']])}")
            prev = hop_target["name"]
            by_name.setdefault(prev, hop_target)
        try:
            gateway = _connection(ctx, by_name[prev], settings, by_name, seen | {target["name"]})
        except JumpHostError:
            raise
        except Exception as exc:  # the jump host's failure, named as the jump host's
            raise JumpHostError(f"jump host '{prev}' (for '{target['name']}'): "
                                f"{_connect_error(by_name[prev], settings, exc)}") from exc
    connect_kwargs: dict[str, Any] = {"banner_timeout": settings["connect_timeout"],
                                      "auth_timeout": settings["connect_timeout"]}
    if settings["identity_file"]:
        path = os.path.expanduser(str(settings["identity_file"]))
        pkey = _identity(path)
        if pkey is not None:  # tried first, as paramiko tries the first key_filename
            connect_kwargs["pkey"] = pkey
        else:
            connect_kwargs["key_filename"] = [path]
    conn = Connection(target["address"], user=target.get("user"), port=target.get("port"),
                      connect_timeout=settings["connect_timeout"], connect_kwargs=connect_kwargs)
    if gateway is not None:
        conn.gateway = gateway
    elif conn.proxy_command:
        conn.gateway = conn.proxy_command
    else:
        # our own socket, with TCP_NODELAY: paramiko leaves Nagle on, and every command on an
        # open connection then waits ~40 ms for a delayed ACK (bench/ssh_fanout.py)
        import socket

        sock = socket.create_connection((conn.host, int(conn.port)), timeout=settings["connect_timeout"])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.connect_kwargs["sock"] = sock
    _secure(conn, target["name"], settings, ctx)
    import paramiko

    try:
        conn.open()
    except BaseException as exc:
        conn.close()
        sock = conn.connect_kwargs.get("sock")
        if sock is not None:
            sock.close()
        if isinstance(exc, paramiko.BadHostKeyException):
            raise _bad_host_key(target, settings, conn, exc, ctx) from exc
        raise
    conn.transport.set_keepalive(30)
    ctx.connections[key] = conn
    return conn


_identities: dict[str, tuple[tuple, Any]] = {}
_identities_lock = threading.Lock()


def _identity(path: str):
    """The inventory's identity file as a paramiko key, read once per process (while the file is
    unchanged) instead of three times per host: with ``key_filename`` paramiko parses the file as RSA,
    then ECDSA, then Ed25519, for every connection.  None when it is anything but a plain private
    key that loads without a passphrase (encrypted, with a certificate beside it, unreadable): then
    paramiko reads it as before, and says what is wrong in its own words."""
    import paramiko

    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _identities_lock:
        cached = _identities.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if os.path.isfile(path + "-cert.pub"):
            return None
        key = None
        for cls in (paramiko.RSAKey, paramiko.ECDSAKey, paramiko.Ed25519Key):  # paramiko's order
            try:
                key = cls.from_private_key_file(path)
                break
            except Exception:  # noqa: BLE001, S112 - not this type, encrypted or unreadable: paramiko decides
                continue
        _identities[path] = (stamp, key)
        return key


def _connect_error(target: dict, settings: dict, exc: BaseException) -> str:
    import socket

    import paramiko

    name = target["name"]
    where = f"{target['address']}:{target.get('port') or 22}"
    if isinstance(exc, RunbookError):  # ours already says it in one line (HostKeyError, jump loops)
        return str(exc)
    if isinstance(exc, paramiko.BadHostKeyException):
        return (f"host key of '{name}' ({where}) has CHANGED: expected {_fingerprint(exc.expected_key)}, got "
                f"{_fingerprint(exc.key)}; this may be an attack — if the host was rebuilt, fix known_hosts "
                f"({settings['known_hosts']})")
    if isinstance(exc, paramiko.AuthenticationException) or "No authentication methods available" in str(exc):
        tried = []
        if settings["identity_file"]:
            tried.append(f"key {settings['identity_file']}")
        tried.append("keys in ~/.ssh")
        if os.environ.get("SSH_AUTH_SOCK"):
            tried.append("ssh-agent")
        return f"authentication failed for {target.get('user') or '(default user)'}@{name} ({where}); tried: {', '.join(tried)}"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to '{name}' ({where}): connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot connect to '{name}': unknown host '{target['address']}' (DNS lookup failed)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"cannot connect to '{name}' ({where}): no answer within {settings['connect_timeout']}s"
    if isinstance(exc, paramiko.SSHException) and "Error reading SSH protocol banner" in str(exc):
        return f"cannot connect to '{name}' ({where}): no SSH banner (not an SSH server, or overloaded)"
    if isinstance(exc, OSError) and exc.strerror and exc.filename:  # e.g. a key file named by ~/.ssh/config
        return f"cannot connect to '{name}' ({where}): {exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect to '{name}' ({where}): {exc.strerror}"
    return f"cannot connect to '{name}' ({where}): {type(exc).__name__}: {exc}"


def _run_on(conn, line: str, secrets: list[str], deadline: float | None, channels: set, stop: threading.Event,
            announce=lambda: None):
    """exit code (None if it died of a signal), stdout, stderr, timed out — over a plain session channel.
    ``announce()`` is called just before the command is sent."""
    try:
        chan = conn.transport.open_session(timeout=10)
    except Exception as exc:  # noqa: BLE001 - nothing was sent: safe to try again on a new connection
        raise _NotSent(exc) from exc
    channels.add(chan)
    try:
        chan.settimeout(0.2)
        ready = _Either(chan)
        announce()
        chan.exec_command(line)
        if secrets:
            chan.sendall("".join(s + "\n" for s in secrets).encode())
        chan.shutdown_write()
        out, err = Capture(MAX_CAPTURE, HEAD_KEEP), Capture(MAX_CAPTURE, HEAD_KEEP)
        quiet_since = None  # when the exit status was there and no output came any more
        while True:
            got = False
            while chan.recv_ready():
                out.add(chan.recv(65536))
                got = True
            while chan.recv_stderr_ready():
                err.add(chan.recv_stderr(65536))
                got = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                # sshd may send the exit status before the last output (it has not read the command's
                # pipe yet): the output is whole at EOF. A background process that keeps the output
                # open holds EOF back; it is not waited for more than _EOF_GRACE seconds of silence.
                if chan.eof_received or chan.closed:
                    break
                now = time.monotonic()
                if got or quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= _EOF_GRACE:
                    break
            if stop.is_set():
                raise KeyboardInterrupt
            if deadline is not None and time.monotonic() > deadline:
                return None, out.text(), err.text(), True
            if not got:
                if chan.eof_received:
                    # Both streams are at their end and only the exit status is missing: wait for it. (The
                    # channel's buffers stay "ready" after EOF, so waiting on them would return at once: with
                    # 50 hosts, 50 threads spun on the GIL until sshd sent each exit status.)
                    chan.status_event.wait(0.05)  # set by the exit status and by the channel's close
                else:
                    ready.wait(0.05)
        code = chan.recv_exit_status()
        return (None if code == -1 else code), out.text(), err.text(), False
    finally:
        channels.discard(chan)
        chan.close()


def run(step, act: Action, ctx) -> StepResult:
    for v in act.env.values():
        if "\n" in str(v):
            return StepResult("failed", error="a secret or environment value passed to an ssh step may not contain a newline")
    settings = _settings(ctx)
    key_file = settings["identity_file"] and Path(os.path.expanduser(str(settings["identity_file"])))
    if key_file and not key_file.is_file():
        return StepResult("failed", error=f"the inventory's ssh.identity_file {key_file} does not exist"
                                          f"{' (it is a directory)' if key_file.is_dir() else ''}")
    hosts = act.detail["hosts"]
    by_name = {h["name"]: h for h in hosts}
    if ctx.inventory is not None:
        for h in ctx.inventory.hosts.values():
            by_name.setdefault(h.name, {"name": h.name, "address": str(h.address), "port": h.port,
                                        "user": str(h.user) if h.user else None, "jump": h.jump_host})
    secrets = [str(act.env[v]) for v in act.detail["secret_vars"]]
    started_at = time.monotonic()
    # the remote `timeout` stops the command; we wait a little longer for its answer
    deadline = started_at + ctx.timeout + KILL_AFTER + 5 if ctx.timeout is not None else None
    fail_fast = threading.Event()
    interrupted = threading.Event()
    channels: set = set()
    # a retry runs again only the hosts that did not succeed (until polls run them all)
    done: dict[str, dict] = act.detail.setdefault("_ok", {}) if step.until is None else {}
    results: dict[str, dict] = dict(done)

    def write_ahead(names: list[str]) -> None:
        """The audit record of what is about to run on these hosts, and until when at most.
        Written at their send, not once for the step: with forks below the host count, or a slow
        connection, hosts start at different times, and a record written once for the step would
        understate the later ones' deadlines (procs.running_lines merges them again)."""
        until = None
        if ctx.timeout is not None:
            until = round(time.time() + _remote_secs(ctx.timeout) + KILL_AFTER + _DEADLINE_SLACK, 3)
        ctx.event("step_process", step=step.id, hosts=names, deadline=until)

    announce = _GroupCommit(write_ahead)
    # live progress: the UI hears of each host as it answers (a fan-out of 50 shows more than the slowest)
    progress = getattr(ctx.ui, "host_finished", None) if len(hosts) > 1 else None
    answered = [len(done)]
    answered_lock = threading.Lock()

    def tell(name: str) -> None:
        if progress is None:
            return
        with answered_lock:
            answered[0] += 1
            n = answered[0]
        try:
            progress(step, name, results[name], n, len(hosts))
        except Exception:  # noqa: BLE001 - a display problem must not fail the host's result
            pass

    def one(target: dict) -> None:
        try:
            _one(target)
        finally:
            if target["name"] in results:
                tell(target["name"])

    def _one(target: dict) -> None:
        name = target["name"]
        began = time.monotonic()
        if fail_fast.is_set() or interrupted.is_set():
            results[name] = {"status": "skipped", "exit_code": None, "stdout": "", "stderr": "", "duration": 0.0,
                             "error": "not started (fail_fast)"}
            return
        code, out, err, timed_out, error = None, "", "", False, None
        for attempt in (1, 2):
            try:
                conn = _connection(ctx, target, settings, by_name)
            except Exception as exc:  # noqa: BLE001 - every connection failure is one line for this host
                error = ctx.redactor.text(_connect_error(target, settings, exc))
                break
            try:
                code, out, err, timed_out = _run_on(conn, act.detail["command"], secrets, deadline, channels, interrupted,
                                                    lambda: announced(name))
                error = None
                break
            except KeyboardInterrupt:
                error = "interrupted"
                break
            except _NotSent as exc:  # e.g. a half-open connection: the command never left
                error = f"cannot open a session: {type(exc.__cause__).__name__}: {exc.__cause__}"
                _drop(ctx, name)
                if attempt == 2:
                    break
            except Exception as exc:  # noqa: BLE001 - the command may have started: never run it twice
                error = f"{type(exc).__name__}: {exc}"
                _drop(ctx, name)
                break
        elapsed = time.monotonic() - began
        if error is not None:
            status = "failed"
        elif timed_out or (ctx.timeout is not None and time.monotonic() - started_at >= ctx.timeout and code in (None, 124, 137)):
            status, error = "timeout", f"timed out after {ctx.timeout:g}s; the remote command was stopped"
        elif code == 0:
            status = "ok"
        else:
            status = "failed"
            error = "killed by a signal" if code is None else f"exit code {code}"
            if step.body.get("sudo") and "a password is required" in err:
                error = "sudo needs a password on this host (runbook only uses sudo -n)"
        results[name] = {"status": status, "exit_code": code, "stdout": ctx.redactor.text(out),
                         "stderr": ctx.redactor.text(err), "duration": elapsed, "error": error}
        if status == "ok" and step.until is None:
            done[name] = results[name]
        if status != "ok" and step.body.get("fail_fast"):
            fail_fast.set()

    todo = [h for h in hosts if h["name"] not in done]
    forks = max(1, min(int(act.detail["forks"]), len(todo) or 1))
    # Hosts whose connections are open (a later step of the run) start at once: one record names them
    # all before they are dispatched, instead of the first host alone and then the others (two appends,
    # each a write, two fdatasyncs and a signature, on every host's path: ~35 ms a step on 50 hosts,
    # bench/ssh_fanout.py).  A host whose send comes later than _PRE_ANNOUNCED after that record is
    # recorded again, at its send, so that the record's deadline still bounds its command.
    early: dict[str, float] = {}
    ready = [h["name"] for h in todo[:forks] if _is_open(ctx, h["name"])]
    if len(ready) > 1:
        try:
            write_ahead(ready)
            early = dict.fromkeys(ready, time.monotonic())
        except Exception:  # noqa: BLE001 - each host's own record tries again, and fails the host if it fails
            early = {}

    def announced(name: str) -> None:
        at = early.pop(name, None)
        if at is None or time.monotonic() - at > _PRE_ANNOUNCED:
            announce(name)

    pool = _pool(ctx, forks)
    futures = []
    try:
        for h in todo:
            futures.append(pool.submit(one, h))  # one by one: an interrupt waits for those submitted
        for f in futures:
            f.result()
    except BaseException:  # Ctrl-C: stop the workers and close every open channel
        interrupted.set()
        for chan in list(channels):
            chan.close()
        for f in futures:
            f.cancel()
        wait(futures)
        raise
    return _result(hosts, results)


class _Pool(ThreadPoolExecutor):
    """The run's worker threads for ssh steps with this many forks, kept in ctx.connections and
    reused by every later step (closed with the connections at the run's end): starting 50 threads
    again for each step cost ~0.1-0.2 s per step on a busy 2-core machine (bench/ssh_fanout.py)."""

    def close(self) -> None:
        self.shutdown(wait=False, cancel_futures=True)


def _pool(ctx, forks: int) -> _Pool:
    key = ("ssh-pool", forks)  # never a host's key: those are ("ssh", name)
    pool = ctx.connections.get(key)
    if pool is None:
        pool = ctx.connections[key] = _Pool(max_workers=forks, thread_name_prefix="ssh")
    return pool


class _Either:
    """Wakes one waiter when either of a channel's two output buffers has data or is closed:
    paramiko's buffers set and clear an event of ours (``BufferedPipe.set_event``, what
    ``Channel.fileno`` does with an OS pipe for ``select``).  Without the pipe, the transport
    thread makes no system call per packet and the waiter none per wake-up."""

    def __init__(self, chan):
        self._cond = threading.Condition(threading.Lock())
        self._on = [False, False]
        chan.in_buffer.set_event(_Side(self, 0))
        chan.in_stderr_buffer.set_event(_Side(self, 1))

    def wait(self, timeout: float) -> None:
        with self._cond:
            if not (self._on[0] or self._on[1]):
                self._cond.wait(timeout)


class _Side:
    """One buffer's event (``set``/``clear`` are all paramiko calls) within an :class:`_Either`."""

    def __init__(self, either: _Either, i: int):
        self._either, self._i = either, i

    def set(self) -> None:
        e = self._either
        with e._cond:
            e._on[self._i] = True
            e._cond.notify_all()

    def clear(self) -> None:
        e = self._either
        with e._cond:
            e._on[self._i] = False

    def is_set(self) -> bool:
        return self._either._on[self._i]


class _NotSent(Exception):
    """The session could not be opened: the command never reached the host."""


class _GroupCommit:
    """``self(name)`` returns once a write-ahead record naming ``name`` is durable (or raises what
    writing it raised): the hosts whose threads call it while a record is being written go together
    into the next one.  Every host is still recorded before its command is sent, but N hosts ready
    at once cost a few appends (each a write, fdatasyncs, a signature) instead of N in a row: with
    one record per host, 50 hosts queued ~0.3 s on the audit log's lock before their commands could
    leave (bench/ssh_fanout.py).  A lone host is written at once, as before."""

    def __init__(self, write):
        self._write = write  # write(names): durable on return
        self._cond = threading.Condition()
        self._pending: list[list] = []  # [name, done, error] of the hosts waiting for the next record
        self._writing = False

    def __call__(self, name: str) -> None:
        ticket = [name, False, None]
        with self._cond:
            self._pending.append(ticket)
            while not ticket[1] and self._writing:
                self._cond.wait()
            if ticket[1]:  # written by another thread's record
                if ticket[2] is not None:
                    raise ticket[2]
                return
            batch, self._pending, self._writing = self._pending, [], True
        error = None
        try:
            self._write([t[0] for t in batch])
        except BaseException as exc:  # every host of the record fails: none of their commands is sent
            error = exc
        with self._cond:
            for t in batch:
                t[1], t[2] = True, error
            self._writing = False
            self._cond.notify_all()
        if error is not None:
            raise error


def _result(hosts: list[dict], results: dict[str, dict]) -> StepResult:
    ordered = {h["name"]: results[h["name"]] for h in hosts if h["name"] in results}
    ok = [n for n, r in ordered.items() if r["status"] == "ok"]
    skipped = [n for n, r in ordered.items() if r["status"] == "skipped"]
    failed = [n for n, r in ordered.items() if r["status"] not in ("ok", "skipped")]
    data = {"hosts": ordered, "ok_hosts": ok, "failed_hosts": failed, "skipped_hosts": skipped,
            "ok_count": len(ok), "failed_count": len(failed)}
    if len(ordered) == 1:
        (only,) = ordered.values()
        stdout, stderr = only["stdout"], only["stderr"]
    else:
        stdout, stderr = _table(ordered), ""
    if not failed and not skipped:
        return StepResult("ok", exit_code=0, stdout=stdout, stderr=stderr, data=data)
    ran = [r for r in ordered.values() if r["status"] not in ("ok", "skipped")]
    status = "timeout" if ran and all(r["status"] == "timeout" for r in ran) else "failed"
    details = ", ".join(f"{n} ({ordered[n]['error']})" for n in failed[:5]) + (f", and {len(failed) - 5} more" if len(failed) > 5 else "")
    codes = {r["exit_code"] for r in ran}
    tail = f"; {len(skipped)} not started (fail_fast)" if skipped else ""
    return StepResult(status, exit_code=codes.pop() if len(codes) == 1 else None, stdout=stdout, stderr=stderr, data=data,
                      error=f"failed on {len(failed)} of {plural(len(ordered), 'host')}: {details}{tail}")


def _table(results: dict[str, dict]) -> str:
    """One line per host, then each host's output (bounded)."""
    width = max(len(n) for n in results)
    lines = [f"{'HOST'.ljust(width)}  STATUS   EXIT  TIME"]
    for name, r in results.items():
        code = "-" if r["exit_code"] is None else str(r["exit_code"])
        lines.append(f"{name.ljust(width)}  {r['status']:<7}  {code:>4}  {r['duration']:.2f}s" + (f"  {r['error']}" if r["error"] and r["status"] != "ok" else ""))
    for name, r in results.items():
        text = (r["stdout"] + r["stderr"]).rstrip("\n")
        if text:
            rows = text.splitlines()
            shown = rows[-20:]
            lines.append(f"--- {name}" + (f" (last 20 of {len(rows)} lines)" if len(rows) > 20 else ""))
            lines.extend(shown)
    return "\n".join(lines) + "\n"
