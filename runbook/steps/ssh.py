"""``ssh``: a command on one host, a list of hosts or an inventory group.

    - id: errors
      ssh: {hosts: api-servers, command: "tail -n 100 /var/log/app/api.log | grep ERROR", forks: 10}
      readonly: true

* Connections are fabric ``Connection`` objects (paramiko underneath),
  imported only when an ``ssh`` step runs; ``~/.ssh/config`` applies (Host
  aliases, User, Port, IdentityFile, ProxyJump), keys come from files and the
  ssh-agent, a jump host may come from the inventory.  One connection per host
  per run, reused by every later step on that host.
* Host keys are checked against known_hosts (the inventory's ``ssh.known_hosts``,
  else ``~/.ssh/known_hosts``).  An unknown or changed key fails the step with
  the host and the fingerprint; ``host_key_policy: accept-new`` (inventory) adds
  a new key — never a changed one — and the audit log records it.
* A step ``timeout`` stops the remote command too, even if runbook dies
  meanwhile: it runs under coreutils ``timeout``, which signals its whole
  process group on the remote host.  (Without a timeout, a command that writes
  nothing outlives a killed runbook: the connection closing does not stop it.)
  Before the command goes to a host, the audit log records the host and when
  its timeout will have ended it (``step_process``: ``hosts``, ``deadline``).
* Secrets never travel in the remote command line: they are written to the
  command's standard input and read into environment variables there.
* Per-host results: ``steps.ID.hosts["api-1"].stdout`` / ``.exit_code`` /
  ``.status`` / ``.duration``, plus ``ok``/``failed`` counts and
  ``failed_hosts``.  Any failed host fails the step (``on_failure`` applies).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.secrets import LazySecret, Secret
from runbook.steps import Action, StepResult
from runbook.steps.shell import Capture

SCHEMA = S.Obj(
    {
        "hosts": S.OneOf(
            ((str, S.Str(doc="a host or group name")), (list, S.List(S.Str(), min_items=1))),
            doc="an inventory host or group, or a list of them", expect_text="a host/group name or a list of them",
        ),
        "command": S.Str(doc="the command, run by the login shell on each host"),
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
RESULT_FIELDS = ("hosts", "ok_hosts", "failed_hosts", "skipped_hosts", "ok_count", "failed_count")
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


# --- rendering ----------------------------------------------------------------


@dataclass
class Target:
    name: str
    address: str  # what we connect to (an alias that ~/.ssh/config resolves stays an alias)
    port: int | None
    user: str | None
    jump: str | None
    # what ~/.ssh/config makes of it, for people (fabric applies the config itself when connecting)
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
    path = Path.home() / ".ssh" / "config"
    if not path.is_file():
        return {}
    from paramiko.config import SSHConfig

    try:
        found = SSHConfig.from_path(str(path)).lookup(host)
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
    wrapped = script != command or timeout is not None or body.get("sudo")
    if not wrapped:
        return command
    line = f"sh -c {shlex.quote(script)}"
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
    line = remote_command(body, command, list(secret_env), step.timeout, cwd, plain_env)
    inventory = getattr(r, "inventory", None)
    forks = body.get("forks") or (getattr(getattr(inventory, "ssh", None), "forks", None) if inventory else None) or DEFAULT_FORKS
    detail = {"command": line, "hosts": [t.__dict__ for t in targets], "forks": forks, "secret_vars": list(secret_env),
              "where": [t.describe() for t in targets]}
    return Action(summary=line, targets=[t.name for t in targets], detail=detail, env=secret_env)


# --- running --------------------------------------------------------------------


class HostKeyError(RunbookError):
    pass


def _fingerprint(key) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _policy(name: str, known_hosts: Path, accept_new: bool, ctx, judged: bool = True):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown host keys are refused (or, with accept-new, added and audited)."""

        def missing_host_key(self, client, hostname, key):
            fp = _fingerprint(key)
            if not accept_new:
                why = "" if judged else (" (known_hosts has wildcard or @marker lines, which runbook cannot judge, "
                                         "so it never adds keys to it)")
                raise HostKeyError(f"host '{name}' ({hostname}) offered an unknown {key.get_name()} host key {fp}: "
                                   f"it is not in {known_hosts}{why}; verify it and add it (ssh-keyscan), or set "
                                   f"host_key_policy: accept-new in the inventory")
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with open(known_hosts, "a", encoding="utf-8") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            ctx.event("host_key_added", host=name, address=hostname, key_type=key.get_name(), fingerprint=fp,
                      known_hosts=str(known_hosts))

    return Policy()


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


def _load_known_hosts(client, path: Path) -> bool:
    """Load plain known_hosts lines; returns False when the file has lines
    paramiko cannot judge (wildcard patterns, @revoked, @cert-authority)."""
    import paramiko

    simple = True
    if not path.is_file():
        return simple
    keys = client.get_host_keys()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@") or any(c in line.split()[0] for c in "*?!"):
            simple = False
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        except Exception:  # noqa: BLE001 - a line paramiko cannot read counts as one we cannot judge
            simple = False
            continue
        if entry is not None and entry.key is not None:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)
    return simple


def _secure(conn, name: str, settings: dict, ctx) -> None:
    """Host key checking for a fabric connection: known_hosts, never AutoAddPolicy."""
    client = conn.client
    system = Path("/etc/ssh/ssh_known_hosts")
    simple = _load_known_hosts(client, system) & _load_known_hosts(client, settings["known_hosts"])
    client.set_missing_host_key_policy(_policy(name, settings["known_hosts"], settings["accept_new"] and simple, ctx,
                                               simple))


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
    from fabric import Config, Connection

    gateway = False  # never fabric's own ProxyJump handling (fabric#1852, #2354): the hops are built here
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
        gateway = _connection(ctx, by_name[prev], settings, by_name, seen | {target["name"]})
    kwargs: dict[str, Any] = {"connect_timeout": settings["connect_timeout"],
                              "connect_kwargs": {"banner_timeout": settings["connect_timeout"],
                                                 "auth_timeout": settings["connect_timeout"]}}
    if settings["identity_file"]:
        kwargs["connect_kwargs"]["key_filename"] = [os.path.expanduser(str(settings["identity_file"]))]
    conn = Connection(target["address"], user=target.get("user"), port=target.get("port"), config=Config(),
                      gateway=gateway, **kwargs)
    if gateway is False and conn.ssh_config.get("proxycommand") and conn.ssh_config["proxycommand"].lower() != "none":
        conn.gateway = conn.ssh_config["proxycommand"]  # fabric runs a ProxyCommand itself
    elif gateway is False:
        # our own socket, with TCP_NODELAY: paramiko leaves Nagle on, and every command on an
        # open connection then waits ~40 ms for a delayed ACK (bench/ssh_fanout.py)
        import socket

        sock = socket.create_connection((conn.host, int(conn.port)), timeout=settings["connect_timeout"])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.connect_kwargs["sock"] = sock
    _secure(conn, target["name"], settings, ctx)
    try:
        conn.open()
    except BaseException:
        conn.close()
        sock = conn.connect_kwargs.get("sock")
        if sock is not None:
            sock.close()
        raise
    conn.transport.set_keepalive(30)
    ctx.connections[key] = conn
    return conn


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
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect to '{name}' ({where}): {exc.strerror}"
    return f"cannot connect to '{name}' ({where}): {type(exc).__name__}: {exc}"


def _run_on(conn, line: str, secrets: list[str], deadline: float | None, channels: set, stop: threading.Event,
            announce=lambda: None):
    """exit code (None if it died of a signal), stdout, stderr, timed out — over a plain session channel.
    ``announce()`` is called just before the command is sent."""
    import select

    try:
        chan = conn.transport.open_session(timeout=10)
    except Exception as exc:  # noqa: BLE001 - nothing was sent: safe to try again on a new connection
        raise _NotSent(exc) from exc
    channels.add(chan)
    try:
        chan.settimeout(0.2)
        announce()
        chan.exec_command(line)
        if secrets:
            chan.sendall("".join(s + "\n" for s in secrets).encode())
        chan.shutdown_write()
        out, err = Capture(MAX_CAPTURE, HEAD_KEEP), Capture(MAX_CAPTURE, HEAD_KEEP)
        while True:
            got = False
            while chan.recv_ready():
                out.add(chan.recv(65536))
                got = True
            while chan.recv_stderr_ready():
                err.add(chan.recv_stderr(65536))
                got = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if stop.is_set():
                raise KeyboardInterrupt
            if deadline is not None and time.monotonic() > deadline:
                return None, out.text(), err.text(), True
            if not got:
                select.select([chan], [], [], 0.05)
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

    def announce(name: str) -> None:
        """The audit record of what is about to run on a host, and until when at most.
        One record per host, at its send: with forks below the host count, or a slow connection,
        hosts start at different times, and a record written once for the step would understate
        the later ones' deadlines (procs.running_lines merges them again)."""
        until = None
        if ctx.timeout is not None:
            until = round(time.time() + _remote_secs(ctx.timeout) + KILL_AFTER + _DEADLINE_SLACK, 3)
        ctx.event("step_process", step=step.id, hosts=[name], deadline=until)

    def one(target: dict) -> None:
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
                                                    lambda: announce(name))
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
    pool = ThreadPoolExecutor(max_workers=forks, thread_name_prefix="ssh")
    try:
        futures = [pool.submit(one, h) for h in todo]
        for f in futures:
            f.result()
    except BaseException:  # Ctrl-C: stop the workers and close every open channel
        interrupted.set()
        for chan in list(channels):
            chan.close()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return _result(hosts, results)


class _NotSent(Exception):
    """The session could not be opened: the command never reached the host."""


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
                      error=f"failed on {len(failed)} of {len(ordered)} host{'s' if len(ordered) != 1 else ''}: {details}{tail}")


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
