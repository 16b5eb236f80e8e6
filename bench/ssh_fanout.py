"""Benchmark: the ``ssh`` step fanned out to many hosts, against a bare-paramiko process (the floor).

    python bench/ssh_fanout.py [--hosts 50] [--scale 100,200] [--runs 5] [--with-ansible] [--no-openssh]
                               [--breakdown] [--profile] [--keep]

One throwaway OpenSSH server is started on 127.0.0.1 with ``tests/sshserver.py``
(``start_sshd``: its own host key, client key and known_hosts; MaxStartups raised to
4x:30:8x the largest host count, so that sshd never drops a handshake).  The
inventory names it N times (``web-000`` …), so every client opens N separate SSH
connections, as it would to N machines (the sshd log's logins are counted per run).

The reference of every target is **the floor, measured in the same run**: a fresh
``python`` process (interpreter start and ``import paramiko`` included) with one
thread and one ``paramiko.SSHClient`` per host (``RejectPolicy``, the same
known_hosts, the same key, ``TCP_NODELAY`` as runbook sets it), which runs the same
command(s) on every host over its kept connections — a command starts on the
hosts once the previous one has ended on all of them, as the steps of a runbook
do — and prints every host's exit code and output, which this script checks for
every host (``uptime`` prints ``load average``, ``df`` a ``Filesystem`` header…).
runbook's run is checked the same way, from its audit log: every step's
``step_result`` must hold every host's status, exit code and output, and every
host must have its ``step_process`` record.

Variants, run once untimed (warm-up), then RUNS times interleaved; medians:

1. ``uptime`` on HOSTS aliases: ``python -m runbook run`` (fresh process) of a
   one-step runbook (``forks: HOSTS``) vs the floor.   Target: ≤ 1.2x the floor.
2. Five diagnose steps (uptime; df -h /; free -m; cat /proc/loadavg; ls /tmp | head)
   vs the floor running the same five commands.        Target: ≤ 1.15x the floor.
3. Scale: the one-step runbook on each of --scale (default 100 and 200) aliases,
   beside the floor at the same size; peak RSS of runbook's process (``wait4``).
   Targets: the largest ≤ 4.5x the HOSTS-alias time (default: 200 vs 50), peak RSS ≤ 250 MB.

Informational: HOSTS plain OpenSSH clients started at once (``--no-openssh`` to
skip), also with ``-o KexAlgorithms=curve25519-sha256@libssh.org``, the key
exchange paramiko negotiates with this sshd (OpenSSH >= 9.0 picks the slower
post-quantum sntrup761x25519 with itself); with ``--with-ansible``, ``ansible``
ad hoc and a five-task ``ansible-playbook`` (pipelining, host keys checked,
ControlPersist, one ControlPath per alias; installs ``ansible-core`` with pip when
missing — for this benchmark only, not a runbook dependency).

Also printed per variant: the client's CPU and peak RSS (``wait4``), the server's
CPU (the sshd listener's own and reaped children's time from /proc) — on this
machine both ends share the same cores — and the logins sshd accepted.

``--breakdown`` (automatic when a target is missed): where the time of one run
goes, by timestamps in a fresh process that runs ``runbook run`` in process
with the ssh step's and audit log's functions wrapped in timers (connection
set-up, commands, audit appends and their fdatasyncs, rendering, the UI,
threads), at HOSTS and at the largest --scale size.  ``--profile``: cProfile of
every thread (and py-spy, when installed).

The audit log goes to a temporary folder (RUNBOOK_AUDIT_DIR, its keys beside it);
``python -m runbook`` may write .pyc files (as on a user's machine) but under that
folder (PYTHONPYCACHEPREFIX); the sshd is stopped at the end.  Exit 0 when every
target is met, 1 when one is missed.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import io
import json
import os
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# keep bench/ and tests/ free of __pycache__; the children this script starts to time or profile runbook in
# process write theirs under the temporary folder (PYTHONPYCACHEPREFIX), as `python -m runbook` does
sys.dont_write_bytecode = not os.environ.get("PYTHONPYCACHEPREFIX")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, child_env, machine, median, run_rusage, runbook_cmd, verdict  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))

TARGET_ONE = 1.2  # one step on HOSTS aliases: at most this many times the floor
TARGET_FIVE = 1.15  # five steps: at most this many times the floor doing the same five commands
TARGET_SCALE = 4.5  # one step on the largest --scale size: at most this many times the HOSTS-alias time
TARGET_RSS_MB = 250  # peak RSS of runbook's process at the largest size
DIAGNOSE = [  # (step id, command, what every host's output must contain)
    ("uptime", "uptime", r"load average"),
    ("disk", "df -h /", r"^Filesystem"),
    ("memory", "free -m", r"^\s*total\b.*\nMem:"),
    ("load", "cat /proc/loadavg", r"^\d+\.\d+ \d+\.\d+ \d+\.\d+ \d+/\d+ \d+\n$"),
    ("tmp", "ls /tmp | head", r""),  # anything, exit 0
]
PR_SET_CHILD_SUBREAPER = 36
# OpenSSH >= 9.0 negotiates the post-quantum hybrid sntrup761x25519-sha512 with itself (~50 ms of client CPU
# per connection here); paramiko has no sntrup761 and falls back to curve25519 with an OpenSSH < 9.9 server
# (its mlkem768x25519-sha256 needs 9.9+). The informational "x25519" OpenSSH row pins OpenSSH to paramiko's choice.
LIKE_KEX = "curve25519-sha256@libssh.org"

FLOOR_SRC = r'''
import time
started = time.time()
import json, socket, sys, threading
import paramiko
imported = time.time()

cfg = json.load(sys.stdin)
names, commands = cfg["names"], cfg["commands"]
key = paramiko.Ed25519Key.from_private_key_file(cfg["key"])  # the same key, read once
barrier = threading.Barrier(len(names))  # a command starts on every host once the last one ended (as steps do)
results = {}
connected = []

def one(name):
    out = []
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(cfg["known_hosts"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection((cfg["address"], cfg["port"]), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(cfg["address"], port=cfg["port"], username=cfg["user"], pkey=key, sock=sock, timeout=30,
                       banner_timeout=30, auth_timeout=30, allow_agent=False, look_for_keys=False)
        connected.append(time.time())
        for command in commands:
            _, stdout, stderr = client.exec_command(command)
            text, err = stdout.read().decode(), stderr.read().decode()
            out.append([stdout.channel.recv_exit_status(), text, err])
            barrier.wait()
    except Exception as exc:
        out.append([None, "", f"{type(exc).__name__}: {exc}"])
        barrier.abort()
    finally:
        client.close()
        results[name] = out

threads = [threading.Thread(target=one, args=(n,)) for n in names]
for t in threads:
    t.start()
for t in threads:
    t.join()
json.dump(results, sys.stdout)
json.dump({"started": started, "imported": imported, "connected": max(connected, default=None), "done": time.time()},
          sys.stderr)  # the floor's own timeline, for the breakdown
'''


# ----------------------------------------------------------------------------- process accounting


def _become_subreaper() -> bool:
    """Orphans of our children (ssh ControlPersist masters) are re-parented to us, so we can reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _our_children(comm: str | None = None) -> list[int]:
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        head, rest = stat.rsplit(")", 1)
        fields = rest.split()
        if int(fields[1]) == me and (comm is None or head.split("(", 1)[1] == comm):
            out.append(int(name))
    return out


def _reap_orphaned_ssh() -> int:
    """Stop and reap the ssh processes re-parented to us (ControlPersist masters): their CPU joins RUSAGE_CHILDREN."""
    pids = _our_children("ssh")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return len(pids)


def _server_cpu(pid: int) -> float:
    """CPU seconds of the sshd listener and every process it reaped (connection handlers, sessions, commands)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

class Sample:
    def __init__(self, wall: float, cpu: float, info: dict | None = None):
        self.wall, self.cpu, self.info = wall, cpu, info or {}


def _check_text(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.M) is not None


# ----------------------------------------------------------------------------- files


def names_for(n: int) -> list[str]:
    return [f"web-{i:03d}" for i in range(n)]


def write_runbook_files(d: Path, srv, sizes: list[int]) -> dict[str, Path]:
    """An inventory (group ``web``) and a one-step runbook per size; the five-step runbook on the first size."""
    files = {}
    for n in sizes:
        names = names_for(n)
        hosts = {h: {"address": srv.host, "port": srv.port, "user": srv.user} for h in names}
        inv = {"ssh": {"known_hosts": str(srv.known_hosts_path), "identity_file": str(srv.client_key_path),
                       "connect_timeout": 30},
               "hosts": hosts, "groups": {"web": {"hosts": names}}}
        (d / f"inv-{n}.yaml").write_text(json.dumps(inv, indent=1))
        files[f"inv-{n}"] = d / f"inv-{n}.yaml"
        one = (f"name: ssh-fanout-one\ntitle: uptime everywhere\nstages:\n  diagnose:\n"
               f"    - id: uptime\n      ssh: {{hosts: web, command: uptime, forks: {n}}}\n      readonly: true\n")
        (d / f"one-{n}.yaml").write_text(one)
        files[f"one-{n}"] = d / f"one-{n}.yaml"
    n = sizes[0]
    five = ["name: ssh-fanout-diagnose", "title: five-step diagnose", "stages:", "  diagnose:"]
    for sid, cmd, _ in DIAGNOSE:
        five += [f"    - id: {sid}", f"      ssh: {{hosts: web, command: {json.dumps(cmd)}, forks: {n}}}",
                 "      readonly: true"]
    (d / f"five-{n}.yaml").write_text("\n".join(five) + "\n")
    files[f"five-{n}"] = d / f"five-{n}.yaml"
    return files


def write_ansible_files(d: Path, srv, names: list[str], python: str) -> dict[str, Path]:
    common = (f"-o UserKnownHostsFile={srv.known_hosts_path} -o GlobalKnownHostsFile=/dev/null "
              "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
    lines = ["all:", "  vars:", f"    ansible_user: {srv.user}", f"    ansible_ssh_private_key_file: {srv.client_key_path}",
             f"    ansible_ssh_common_args: {json.dumps(common)}", f"    ansible_python_interpreter: {python}",
             "  hosts:"]
    for n in names:
        # Ansible's default ControlPath hashes (host, port, user): the aliases would share one
        # master connection. One ControlPath per alias makes them behave like separate machines.
        lines += [f"    {n}:", f"      ansible_host: {srv.host}", f"      ansible_port: {srv.port}",
                  f'      ansible_control_path: "%(directory)s/{n}"']
    (d / "hosts.yaml").write_text("\n".join(lines) + "\n")
    play = ["- hosts: all", "  gather_facts: false", "  tasks:"]
    for sid, cmd in DIAGNOSE:
        module = "ansible.builtin.shell" if "|" in cmd else "ansible.builtin.command"
        play += [f"    - name: {sid}", f"      {module}: {json.dumps(cmd)}"]
    (d / "diagnose.yml").write_text("\n".join(play) + "\n")
    (d / "ansible.cfg").write_text("# empty: ansible's defaults (settings come from the environment)\n")
    return {"inv": d / "hosts.yaml", "play": d / "diagnose.yml", "cfg": d / "ansible.cfg"}



# ----------------------------------------------------------------------------- variants


class Bench:
    def __init__(self, tmp: Path, srv, n: int, sizes: list[int], ansible_bin: Path | None):
        self.tmp, self.srv, self.n = tmp, srv, n
        self.rb = write_runbook_files(tmp, srv, sizes)
        self.ansible_bin = ansible_bin
        self.names = names_for(n)
        self.an = write_ansible_files(tmp, srv, self.names, _remote_python()) if ansible_bin else None
        self.audit_root = tmp / "audit"
        self.seq = 0

    def env(self, audit_dir: Path | None = None) -> dict:
        """The children's environment (runbook and the floor alike): .pyc files allowed (as on a user's
        machine) but written under the temporary folder; the audit log and its keys in AUDIT_DIR."""
        env = child_env(PYTHONPYCACHEPREFIX=str(self.tmp / "pycache"))  # child_env allows .pyc files
        for k in ("RUNBOOK_PATH", "RUNBOOK_INVENTORY", "RUNBOOK_ENV", "RUNBOOK_KEY_DIR"):
            env.pop(k, None)
        if audit_dir is not None:
            env["RUNBOOK_AUDIT_DIR"] = str(audit_dir)
        return env

    def _measure(self, cmd: list[str], env: dict, stdin=subprocess.DEVNULL):
        before_conn = self.srv.connections()
        s0 = _server_cpu(self.srv.pid)
        spawned = time.time()
        wall, code, out, err, cpu, rss = run_rusage(cmd, cwd=self.tmp, env=env, stdin=stdin)
        time.sleep(0.3)  # let sshd log the last logins and reap its handlers
        info = {"conns": self.srv.connections() - before_conn, "server_cpu": _server_cpu(self.srv.pid) - s0,
                "rss": rss, "spawned": spawned}
        return wall, code, out, err, cpu, info

    def runbook(self, book: str, n: int) -> Sample:
        """A fresh ``python -m runbook run``; every host's result checked in its audit log."""
        self.seq += 1
        audit_dir = self.audit_root / f"{book}-{self.seq}"
        cmd = runbook_cmd("run", str(self.rb[f"{book}-{n}"]), "--inventory", str(self.rb[f"inv-{n}"]))
        wall, code, out, err, cpu, info = self._measure(cmd, self.env(audit_dir))
        if code != 0:
            sys.stderr.write(out[-3000:] + err[-3000:])
            raise SystemExit(f"bench: runbook {book} on {n} hosts exited {code}")
        steps = DIAGNOSE if book == "five" else DIAGNOSE[:1]
        from runbook import audit

        recs = list(audit.read_records(audit_dir / audit.LOG_NAME))
        problem = verify_audit(recs, steps, names_for(n))
        if problem:
            raise SystemExit(f"bench: runbook {book} on {n} hosts: {problem} (audit log {audit_dir})")
        if info["conns"] != n:
            raise SystemExit(f"bench: runbook {book} on {n} hosts: sshd accepted {info['conns']} logins, not {n}")
        results = [r for r in recs if r["type"] == "step_result"]
        return Sample(wall, cpu, {"steps_s": sum(r["duration"] for r in results), **info})

    def floor(self, book: str, n: int) -> Sample:
        """The bare-paramiko process; every host's exit code and output checked."""
        steps = DIAGNOSE if book == "five" else DIAGNOSE[:1]
        names = names_for(n)
        cfg = {"names": names, "commands": [c for _, c, _ in steps], "address": self.srv.host, "port": self.srv.port,
               "user": self.srv.user, "key": str(self.srv.client_key_path), "known_hosts": str(self.srv.known_hosts_path)}
        with tempfile.TemporaryFile() as f:
            f.write(json.dumps(cfg).encode())
            f.seek(0)
            wall, code, out, err, cpu, info = self._measure([sys.executable, "-c", FLOOR_SRC], self.env(), stdin=f)
        try:
            got = json.loads(out) if code == 0 else None
        except ValueError:
            got = None
        problem = verify_floor(got, steps, names) if got is not None else f"exited {code}"
        if problem:
            sys.stderr.write(out[-2000:] + err[-3000:])
            raise SystemExit(f"bench: the paramiko floor ({book}, {n} hosts): {problem}")
        if info["conns"] != n:
            raise SystemExit(f"bench: the paramiko floor ({book}, {n} hosts): sshd accepted {info['conns']} logins")
        tl = json.loads(err.strip().splitlines()[-1])
        info["timeline"] = {"interpreter start + import paramiko": tl["imported"] - info["spawned"],
                            "connections (the last one ready)": tl["connected"] - tl["imported"],
                            "commands after the last connection": tl["done"] - tl["connected"],
                            "interpreter exit": info["spawned"] + wall - tl["done"]}
        return Sample(wall, cpu, info)

    def plain_ssh(self, kex: str | None = None) -> Sample:
        """N OpenSSH clients started at once (informational)."""
        opts = [*(["-o", f"KexAlgorithms={kex}"] if kex else []), "-F", "/dev/null", "-i", str(self.srv.client_key_path),
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.srv.known_hosts_path}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-p", str(self.srv.port)]
        cmd = ["ssh", *opts, self.srv.destination, "uptime"]
        before_conn = self.srv.connections()
        s0 = _server_cpu(self.srv.pid)
        c0 = _children_cpu()
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(self.n)]
        for p in procs:
            p.wait()
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - c0
        bad, last = 0, b""
        for p in procs:
            out, err = p.stdout.read(), p.stderr.read()
            p.stdout.close()
            p.stderr.close()
            if p.returncode != 0 or b"load average" not in out:
                bad, last = bad + 1, err
        if bad:
            raise SystemExit(f"bench: {bad}/{self.n} plain ssh runs failed: {last.decode(errors='replace')[-500:]}")
        time.sleep(0.3)
        return Sample(wall, cpu, {"conns": self.srv.connections() - before_conn,
                                  "server_cpu": _server_cpu(self.srv.pid) - s0, "rss": None})

    # --- ansible (informational, --with-ansible)

    def _ansible_env(self) -> dict:
        env = dict(os.environ)
        cp = tempfile.mkdtemp(prefix="cp", dir="/tmp")  # short: sockets paths are limited to 108 bytes
        env.update({
            "ANSIBLE_PIPELINING": "1", "ANSIBLE_HOST_KEY_CHECKING": "1", "ANSIBLE_FORKS": str(self.n),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": cp, "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
            "ANSIBLE_HOME": str(self.tmp / "ansible-home"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0", "ANSIBLE_GATHERING": "explicit", "ANSIBLE_CONFIG": str(self.an["cfg"]),
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
        })
        self._cp_dirs = getattr(self, "_cp_dirs", []) + [cp]
        return env

    def _ansible_run(self, cmd: list[str], check) -> Sample:
        before_conn = self.srv.connections()
        s0 = _server_cpu(self.srv.pid)
        c0 = _children_cpu()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=self._ansible_env(), cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        _reap_orphaned_ssh()  # ControlPersist masters: their CPU is counted too
        cpu = _children_cpu() - c0
        problem = check(p)
        if problem:
            sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
            raise SystemExit(f"bench: {' '.join(map(str, cmd[:4]))} … {problem}")
        time.sleep(0.3)
        return Sample(wall, cpu, {"conns": self.srv.connections() - before_conn,
                                  "server_cpu": _server_cpu(self.srv.pid) - s0, "rss": None})

    def ansible_adhoc(self) -> Sample:
        cmd = [str(self.ansible_bin / "ansible"), "all", "-i", str(self.an["inv"]), "-m", "command", "-a", "uptime",
               "-f", str(self.n)]

        def check(p):
            ok = p.stdout.count("| CHANGED | rc=0")
            return None if p.returncode == 0 and ok == self.n else f"exited {p.returncode}, {ok}/{self.n} hosts ok"

        return self._ansible_run(cmd, check)

    def ansible_playbook(self) -> Sample:
        cmd = [str(self.ansible_bin / "ansible-playbook"), "-i", str(self.an["inv"]), "-f", str(self.n), str(self.an["play"])]

        def check(p):
            ok = sum(1 for line in p.stdout.splitlines() if f"ok={len(DIAGNOSE)} " in line and "failed=0" in line
                     and "unreachable=0" in line)
            return None if p.returncode == 0 and ok == self.n else f"exited {p.returncode}, {ok}/{self.n} hosts ok"

        return self._ansible_run(cmd, check)

    def cleanup(self):
        for d in getattr(self, "_cp_dirs", []):
            shutil.rmtree(d, ignore_errors=True)


def verify_audit(recs: list[dict], steps: list, names: list[str]) -> str | None:
    """Whether runbook's audit log holds every host's result for every step (ok, exit 0, the expected output)
    and every host's step_process record; the problem found, else None."""
    results = [r for r in recs if r["type"] == "step_result"]
    if [r["step"] for r in results] != [s for s, _, _ in steps]:
        return f"step results {[r['step'] for r in results]}, expected {[s for s, _, _ in steps]}"
    for (sid, _, pattern), r in zip(steps, results):
        hosts = (r.get("data") or {}).get("hosts")
        if r["status"] != "ok" or not isinstance(hosts, dict):
            return f"step {sid}: status {r['status']}, per-host results {'missing' if hosts is None else 'truncated'}"
        if sorted(hosts) != names:
            return f"step {sid}: results for {len(hosts)} hosts, not the {len(names)}"
        for h, res in hosts.items():
            if res.get("status") != "ok" or res.get("exit_code") != 0 or not _check_text(pattern, res.get("stdout", "")):
                return f"step {sid} on {h}: {res}"
        announced = sorted(x for p in recs if p["type"] == "step_process" and p.get("step") == sid for x in p["hosts"])
        if announced != names:
            return f"step {sid}: step_process records for {len(announced)} hosts, not {len(names)}"
    return None


def verify_floor(got: dict, steps: list, names: list[str]) -> str | None:
    if sorted(got) != names:
        return f"results for {len(got)} hosts, not the {len(names)}"
    for h, outs in got.items():
        if len(outs) != len(steps):
            return f"{h}: {outs[-1] if outs else 'nothing'}"
        for (sid, _, pattern), (code, text, _err) in zip(steps, outs):
            if code != 0 or not _check_text(pattern, text):
                return f"{h}, {sid}: exit {code}, output {text!r}"
    return None


def _remote_python() -> str:
    """The interpreter Ansible runs its modules with on the 'remote' host (explicit: no discovery round trip)."""
    for cand in ("/usr/bin/python3", sys.executable):
        if os.access(cand, os.X_OK):
            return cand
    return sys.executable


def ensure_ansible() -> tuple[Path, str]:
    """The directory holding ``ansible`` and ``ansible-playbook`` for this interpreter; installs ansible-core if missing."""
    bindir = Path(sys.executable).parent

    def found():
        if (bindir / "ansible").exists() and (bindir / "ansible-playbook").exists():
            return bindir
        a = shutil.which("ansible")
        if a and shutil.which("ansible-playbook"):
            return Path(a).parent
        return None

    if found() is None:
        print("ansible not found: python3 -m pip install ansible-core (for this benchmark only; not a runbook dependency)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ansible-core"], check=True)
    where = found()
    if where is None:
        raise SystemExit("bench: ansible-core installed but `ansible` is not on PATH")
    version = subprocess.run([str(where / "ansible"), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return where, version



# ----------------------------------------------------------------------------- where the time goes


def breakdown_child(book: Path, inv: Path) -> str:
    """In this fresh process: ``runbook run BOOK`` in process, with the functions of the ssh step, the audit log,
    the redactor and the UI wrapped in timers (wall time, per call, per thread). Prints JSON."""
    import contextlib
    from collections import defaultdict

    t_start, abs_start = time.perf_counter(), time.time()
    calls: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def wrap(owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def timed(*a, **k):
            s = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                calls[label].append((s, time.perf_counter()))

        setattr(owner, attr, timed)

    import runbook.cli
    from runbook import audit, secrets, ui
    from runbook.steps import ssh

    t_imported = time.perf_counter()
    from runbook.steps import ssh_conn  # noqa: F401 - timed apart: the step imports it (paramiko) on the first connection

    t_paramiko = time.perf_counter()
    wrap(ssh, "run", "ssh step: run()")
    wrap(ssh, "action", "ssh step: action() (rendering)")
    wrap(ssh, "_open", "connect: TCP + handshake + auth (per host)")
    wrap(ssh, "_run_on", "command: session, exec, read (per host)")
    wrap(ssh, "_result", "result: per-host table")
    wrap(audit.AuditLog, "append", "audit: append, lock wait included")
    wrap(audit.AuditLog, "_append_locked", "audit: append, lock held")
    wrap(audit, "_sync", "audit: fdatasync")
    wrap(secrets.Redactor, "text", "redactor: text()")
    wrap(secrets.Redactor, "data", "redactor: data()")
    for m in ("step_started", "step_finished", "run_finished", "run_started", "output_sink"):
        if hasattr(ui.ConsoleUI, m):
            wrap(ui.ConsoleUI, m, f"ui: {m}")
    wrap(threading.Thread, "start", "threads: Thread.start")
    # the CLI's own work before the step (not the ssh step's): the runbook, its validation, the inventory
    from runbook import expr, inventory, spec, validate

    wrap(spec, "find", "cli: spec.find (YAML, schema, validation)")
    wrap(validate, "validate_runbook", "cli: validate_runbook")
    wrap(expr, "secret_misuse", "cli: expr.secret_misuse (in validation)")
    wrap(inventory, "resolve_inventory", "cli: inventory.resolve_inventory")
    wrap(ui.ConsoleUI, "__init__", "ui: ConsoleUI()")
    out = io.StringIO()
    c0 = time.process_time()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = runbook.cli.main(["run", str(book), "--inventory", str(inv)])
    t1 = time.perf_counter()
    c1 = time.process_time()
    rows = {}
    for label, xs in calls.items():
        spans = [e - s for s, e in xs]
        rows[label] = {"n": len(xs), "sum": sum(spans), "median": median(spans), "max": max(spans),
                       "first": min(s for s, _ in xs) - t0, "last": max(e for _, e in xs) - t0}
    return json.dumps({"code": code, "imports": t_imported - t_start, "paramiko_import": t_paramiko - t_imported,
                       "main": t1 - t0, "cpu": c1 - c0, "rows": rows, "abs_start": abs_start, "abs_end": time.time(),
                       "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def breakdown(bench: Bench, book: str, n: int, runs: int = 3) -> str:
    """The median over RUNS fresh processes of each timer, beside the process's wall time."""
    got = []
    for i in range(runs):
        env = bench.env(bench.audit_root / f"breakdown-{book}-{n}-{i}")
        spawned = time.time()
        wall, code, out, err, cpu, rss = run_rusage(
            [sys.executable, __file__, "--breakdown-child", str(bench.rb[f"{book}-{n}"]), str(bench.rb[f"inv-{n}"])],
            cwd=bench.tmp, env=env)
        if code != 0:
            return f"breakdown failed (exit {code}):\n{out[-2000:]}{err[-3000:]}"
        d = json.loads(out.splitlines()[-1])
        d["wall"], d["proc_cpu"] = wall, cpu
        d["startup"] = d["abs_start"] - spawned  # interpreter, site, this script's own imports
        d["teardown"] = spawned + wall - d["abs_end"]  # after main: printing this, interpreter exit
        got.append(d)
        time.sleep(0.3)

    def med(f):
        return median([f(d) for d in got])

    wall, main_s = med(lambda d: d["wall"]), med(lambda d: d["main"])
    lines = [f"{book}.yaml on {n} hosts, medians of {runs} fresh processes: wall {wall:.3f} s (process CPU "
             f"{med(lambda d: d['proc_cpu']):.3f} s, peak RSS {med(lambda d: d['rss']):.1f} MiB)",
             f"  {'interpreter start, site, the timer script':<48} {med(lambda d: d['startup']):7.3f} s",
             f"  {'import runbook.cli, audit, ui, ssh step':<48} {med(lambda d: d['imports']):7.3f} s",
             f"  {'import paramiko (the step does it lazily)':<48} {med(lambda d: d['paramiko_import']):7.3f} s",
             f"  {'runbook.cli.main(run …) in all':<48} {main_s:7.3f} s   (CPU of main {med(lambda d: d['cpu']):.3f} s)",
             f"  {'after main: interpreter exit':<48} {med(lambda d: d['teardown']):7.3f} s",
             f"  {'timer':<48} {'calls':>6} {'Σ wall':>8} {'median':>8} {'max':>8} {'first@':>8} {'last@':>8}  (s; @: since main)"]
    labels = sorted({k for d in got for k in d["rows"]}, key=lambda k: med(lambda d: d["rows"].get(k, {"first": 9e9})["first"]))
    for k in labels:
        def g(f, k=k):
            return med(lambda d: d["rows"][k][f] if k in d["rows"] else 0.0)
        lines.append(f"  {k:<48} {g('n'):6.0f} {g('sum'):8.3f} {g('median'):8.4f} {g('max'):8.3f} {g('first'):8.3f} {g('last'):8.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- profiling


def profile_child(book: Path, inv: Path) -> str:
    """In a fresh process: a live in-process run of BOOK, CPU-profiled in every thread (cProfile, thread_time)."""
    import contextlib

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profile(frame, event, arg):
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()  # replaces this trampoline for the new thread

    main_prof = cProfile.Profile(time.thread_time)
    out = io.StringIO()
    c0 = time.process_time()
    t0 = time.perf_counter()
    threading.setprofile(start_thread_profile)
    main_prof.enable()
    try:
        import runbook.cli  # as `python -m runbook` does: its imports are part of the cost

        with contextlib.redirect_stdout(out):
            code = runbook.cli.main(["run", str(book), "--inventory", str(inv)])
    finally:
        main_prof.disable()
        threading.setprofile(None)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # A profiler must stop in its own thread: wait for the connections' threads to end (the engine closed them).
    for t in threading.enumerate():
        if t is not threading.main_thread():
            t.join(10)
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    stats = pstats.Stats(main_prof)
    for p in profiles:
        stats.add(p)
    stats.strip_dirs()
    parts = []
    for key, n in (("tottime", 30), ("cumulative", 45)):
        s = io.StringIO()
        stats.stream = s
        stats.sort_stats(key).print_stats(n)
        text = s.getvalue()
        parts.append(f"top {n} by {'own' if key == 'tottime' else 'cumulative'} CPU time:\n" + text[text.find("   ncalls"):].rstrip())
    return (f"in-process `runbook run {book.name}` in a fresh process (exit {code}): wall {wall:.3f} s, process CPU "
            f"{cpu:.3f} s; {len(profiles) + 1} threads profiled (CPU time per thread, summed; the profiler itself "
            f"roughly doubles it){'; still alive: ' + ', '.join(alive) if alive else ''}\n\n" + "\n\n".join(parts))


def profile_in_process(bench: Bench, book: str, inv: str) -> str:
    env = bench.env(bench.audit_root / f"profile-{book}")
    p = subprocess.run([sys.executable, __file__, "--profile-child", str(bench.rb[book]), str(bench.rb[inv])],
                       env=env, cwd=bench.tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        return f"profile failed (exit {p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-3000:]}"
    return p.stdout


def py_spy(bench: Bench, book: str, inv: str) -> str | None:
    """A py-spy sampling of a fresh `runbook run`: who holds the GIL (no profiler overhead in the process)."""
    exe = shutil.which("py-spy")
    if not exe:
        return None
    out = bench.tmp / f"py-spy-{book}.txt"
    env = bench.env(bench.audit_root / f"pyspy-{book}")
    cmd = [exe, "record", "--format", "raw", "--rate", "500", "--gil", "--threads", "-o", str(out), "--",
           *runbook_cmd("run", str(bench.rb[book]), "--inventory", str(bench.rb[inv]))]
    p = subprocess.run(cmd, env=env, cwd=bench.tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0 or not out.exists():
        return f"py-spy failed (exit {p.returncode}): {p.stderr[-500:]}"
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def rows(d, k):
        return "\n".join(f"  {n / total * 100:5.1f}%  {f}" for f, n in sorted(d.items(), key=lambda kv: -kv[1])[:k])

    return (f"py-spy --gil of a fresh `runbook run {book}.yaml`: {total} samples of the thread holding the GIL "
            f"at 500 Hz (≈ {total / 500:.2f} s of GIL time)\n top 25 frames by own samples:\n{rows(own, 25)}\n"
            f" top 35 frames by inclusive samples:\n{rows(incl, 35)}")


# ----------------------------------------------------------------------------- main


def fmt(samples: list[Sample], ref: list[Sample] | None = None) -> str:
    walls = [s.wall for s in samples]
    rss = [s.info["rss"] for s in samples if s.info.get("rss") is not None]
    text = (f"wall {median(walls):6.3f} s (min {min(walls):.3f}, max {max(walls):.3f})  "
            f"CPU {median([s.cpu for s in samples]):6.3f} s  sshd CPU {median([s.info['server_cpu'] for s in samples]):6.3f} s"
            + (f"  peak RSS {max(rss):6.1f} MiB" if rss else "") + f"  logins {samples[-1].info['conns']}")
    if ref:  # the ratio of the medians; in brackets the median of the rounds' own ratios (same load, same round)
        text += (f"  = {median(walls) / median([s.wall for s in ref]):.2f}x the floor "
                 f"[per round {median([s.wall / r.wall for s, r in zip(samples, ref)]):.2f}x]")
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=50, help="host aliases of the one- and five-step variants (default 50)")
    ap.add_argument("--scale", default="100,200", help="further sizes of the one-step runbook (default 100,200; '' skips)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--with-ansible", action="store_true", help="also time ansible and ansible-playbook (slow; informational)")
    ap.add_argument("--no-openssh", action="store_true", help="skip the informational plain-OpenSSH rows")
    ap.add_argument("--breakdown", action="store_true", help="where the time goes, even when every target is met")
    ap.add_argument("--profile", action="store_true", help="cProfile (and py-spy) of an in-process run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (sshd log, inventories, audit logs)")
    ap.add_argument("--profile-child", nargs=2, metavar=("BOOK", "INV"), help=argparse.SUPPRESS)
    ap.add_argument("--breakdown-child", nargs=2, metavar=("BOOK", "INV"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.profile_child:
        print(profile_child(Path(a.profile_child[0]), Path(a.profile_child[1])))
        return 0
    if a.breakdown_child:
        print(breakdown_child(Path(a.breakdown_child[0]), Path(a.breakdown_child[1])))
        return 0

    from sshserver import start_sshd

    scale = [int(x) for x in a.scale.split(",") if x.strip()]
    sizes = [a.hosts, *[s for s in scale if s != a.hosts]]
    reaper = _become_subreaper()
    ansible_bin, ansible_version = ensure_ansible() if a.with_ansible else (None, "ansible not run (--with-ansible)")
    print(f"ssh_fanout: {machine()}; {subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}; "
          f"{ansible_version}; paramiko "
          + subprocess.run([sys.executable, "-c", "import paramiko; print(paramiko.__version__)"],
                           capture_output=True, text=True).stdout.strip())
    if a.with_ansible and not reaper:
        print("warning: could not become a child subreaper; ControlPersist masters' CPU is not counted")

    tmp = Path(tempfile.mkdtemp(prefix="rb-ssh-fanout-"))
    top = max(sizes)
    srv = start_sshd(tmp, max_startups=f"{top * 4}:30:{top * 8}", max_sessions=max(64, top * 2), log_level="VERBOSE")
    bench = Bench(tmp, srv, a.hosts, sizes, ansible_bin)
    ok_all = True
    n = a.hosts
    try:
        print(f"sshd {srv.user}@{srv.host}:{srv.port} ({tmp}; MaxStartups {top * 4}:30:{top * 8}); sizes {sizes}; "
              f"warm-up once, then {a.runs} rounds of every variant (interleaved), medians\n")
        variants = {("one", n, "runbook"): lambda: bench.runbook("one", n),
                    ("one", n, "floor"): lambda: bench.floor("one", n),
                    ("five", n, "runbook"): lambda: bench.runbook("five", n),
                    ("five", n, "floor"): lambda: bench.floor("five", n)}
        for s in sizes[1:]:
            variants[("one", s, "runbook")] = lambda s=s: bench.runbook("one", s)
            variants[("one", s, "floor")] = lambda s=s: bench.floor("one", s)
        if not a.no_openssh:
            variants[("one", n, "openssh")] = bench.plain_ssh
            variants[("one", n, "openssh x25519")] = lambda: bench.plain_ssh(LIKE_KEX)
        if ansible_bin:
            variants[("one", n, "ansible")] = bench.ansible_adhoc
            variants[("five", n, "ansible-playbook")] = bench.ansible_playbook
        res: dict[tuple, list[Sample]] = {k: [] for k in variants}
        for fn in variants.values():
            fn()  # warm-up: page cache, .pyc files, sshd's first fork
        for _ in range(a.runs):
            for k, fn in variants.items():
                res[k].append(fn())

        def wall(k):
            return median([s.wall for s in res[k]])

        print(f"1. `uptime` on {n} hosts (one ssh step, forks {n})")
        for k in [k for k in res if k[:2] == ("one", n)]:
            extra = f"  (ssh step {median([s.info['steps_s'] for s in res[k]]):.3f} s)" if k[2] == "runbook" else ""
            print(f"   {k[2]:<17} {fmt(res[k], res[('one', n, 'floor')] if k[2] != 'floor' else None)}{extra}")
        print(f"\n2. five diagnose steps on {n} hosts: " + "; ".join(c for _, c, _ in DIAGNOSE))
        for k in [k for k in res if k[:2] == ("five", n)]:
            extra = f"  (Σ ssh steps {median([s.info['steps_s'] for s in res[k]]):.3f} s)" if k[2] == "runbook" else ""
            print(f"   {k[2]:<17} {fmt(res[k], res[('five', n, 'floor')] if k[2] != 'floor' else None)}{extra}")
        r1 = wall(("one", n, "runbook")) / wall(("one", n, "floor"))
        r5 = wall(("five", n, "runbook")) / wall(("five", n, "floor"))

        def per_round(a_, b_):
            return median([x.wall / y.wall for x, y in zip(res[a_], res[b_])])
        t1, t5 = r1 <= TARGET_ONE, r5 <= TARGET_FIVE
        ok_all = t1 and t5
        if len(sizes) > 1:
            print(f"\n3. scale: `uptime` on {', '.join(map(str, sizes))} hosts (one step, forks = hosts)")
            print(f"   {'hosts':>5}  {'runbook':>8} {'×' + str(n):>6} {'floor':>8} {'×' + str(n):>6} {'rb/floor':>8}  {'CPU':>7} "
                  f"{'floor CPU':>9} {'sshd CPU':>8}  {'peak RSS':>9} {'floor RSS':>9}")
            for s in sizes:
                rb, fl = res[("one", s, "runbook")], res[("one", s, "floor")]
                print(f"   {s:>5}  {wall(('one', s, 'runbook')):7.3f}s {wall(('one', s, 'runbook')) / wall(('one', n, 'runbook')):5.2f}x "
                      f"{wall(('one', s, 'floor')):7.3f}s {wall(('one', s, 'floor')) / wall(('one', n, 'floor')):5.2f}x "
                      f"{wall(('one', s, 'runbook')) / wall(('one', s, 'floor')):7.2f}x  {median([x.cpu for x in rb]):6.3f}s "
                      f"{median([x.cpu for x in fl]):8.3f}s "
                      f"{median([x.info['server_cpu'] for x in rb]):7.3f}s  {max(x.info['rss'] for x in rb):7.1f}MiB "
                      f"{max(x.info['rss'] for x in fl):7.1f}MiB")
            big = max(sizes)
            rs = wall(("one", big, "runbook")) / wall(("one", n, "runbook"))
            rss = max(x.info["rss"] for x in res[("one", big, "runbook")])
            ts, tm = rs <= TARGET_SCALE, rss <= TARGET_RSS_MB
            ok_all = ok_all and ts and tm
        print()
        if a.breakdown or not ok_all:
            for book, size in [("one", n), *([("one", max(sizes))] if len(sizes) > 1 else []), ("five", n)]:
                fl = res[(book, size, "floor")]
                print(f"the floor, {book} on {size} hosts (medians of its {len(fl)} timed runs above): " + "; ".join(
                    f"{k} {median([s.info['timeline'][k] for s in fl]):.3f} s" for k in fl[0].info["timeline"]))
                print(breakdown(bench, book, size) + "\n")
        if a.profile:
            for book in ("one", "five"):
                print(f"\n===== profile: {book}-{n}.yaml =====")
                print(profile_in_process(bench, f"{book}-{n}", f"inv-{n}"))
                spy = py_spy(bench, f"{book}-{n}", f"inv-{n}")
                if spy:
                    print("\n" + spy)
            print()
        verdict(f"1 step on {n} hosts: runbook <= {TARGET_ONE}x the paramiko floor", t1,
                f"{wall(('one', n, 'runbook')):.3f} s vs {wall(('one', n, 'floor')):.3f} s = {r1:.2f}x; "
                f"per round {per_round(('one', n, 'runbook'), ('one', n, 'floor')):.2f}x")
        verdict(f"5 steps on {n} hosts: runbook <= {TARGET_FIVE}x the paramiko floor", t5,
                f"{wall(('five', n, 'runbook')):.3f} s vs {wall(('five', n, 'floor')):.3f} s = {r5:.2f}x; "
                f"per round {per_round(('five', n, 'runbook'), ('five', n, 'floor')):.2f}x")
        if len(sizes) > 1:
            verdict(f"1 step on {big} hosts <= {TARGET_SCALE}x the {n}-host time", ts,
                    f"{wall(('one', big, 'runbook')):.3f} s vs {wall(('one', n, 'runbook')):.3f} s = {rs:.2f}x; "
                    f"per round {per_round(('one', big, 'runbook'), ('one', n, 'runbook')):.2f}x")
            verdict(f"peak RSS of runbook on {big} hosts <= {TARGET_RSS_MB} MB", tm, f"{rss:.1f} MiB")
    finally:
        srv.stop()
        _reap_orphaned_ssh()
        bench.cleanup()
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
