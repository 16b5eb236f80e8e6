"""Benchmark: the ``ssh`` step fanned out to many hosts, against Ansible and plain OpenSSH.

    python bench/ssh_fanout.py [--hosts 50] [--runs 3] [--profile] [--keep]

One throwaway OpenSSH server is started on 127.0.0.1 with ``tests/sshserver.py``
(``start_sshd``: its own host key, client key and known_hosts; MaxStartups and
MaxSessions raised).  The inventory names it HOSTS times (``web-00`` …), so every
client opens HOSTS separate SSH connections, as it would to HOSTS machines.
Measured side by side, in the same run, each variant once untimed (warm-up) and
then RUNS times (medians reported), as wall time and as the client's CPU seconds
(user + sys of the client's whole process tree: ``getrusage(RUSAGE_CHILDREN)``
deltas around it; this process is made a child subreaper so that Ansible's
ControlPersist masters, which detach, are reaped — and counted — here too):

1. ``uptime`` on the HOSTS hosts:
   * ``python -m runbook run`` (fresh process) of a one-step runbook, ``forks: HOSTS``;
   * ``ansible all -i INV -m command -a uptime -f HOSTS`` (pipelining, host key
     checking against the same known_hosts, the same private key; each alias gets
     its own ControlPath, else Ansible's default — a hash of host, port and user —
     would make the 50 aliases share one master connection);
   * HOSTS plain ``ssh -F /dev/null … uptime`` processes started at once and
     waited for: the floor;
   * informational: the same floor with ``-o KexAlgorithms=curve25519-sha256@libssh.org``,
     the key exchange paramiko negotiates with this sshd (OpenSSH >= 9.0 picks the
     post-quantum hybrid sntrup761x25519 with itself, ~50 ms of client CPU more
     per connection; paramiko lacks it, and its mlkem768x25519 needs OpenSSH >= 9.9).

   Targets: runbook faster than ansible, and within 1.3x of the floor.

2. A five-step diagnose (uptime; df -h /; free -m; cat /proc/loadavg;
   ls /tmp | head) on the same hosts: a five-step runbook vs the equivalent
   five-task playbook (forks HOSTS, pipelining, Ansible's default ControlPersist,
   ``gather_facts: false``, the interpreter given, so no discovery round trip).
   Target: runbook at least 3x faster than ansible.

Also printed: the server's CPU (the sshd listener's own and reaped children's
time from /proc: handlers, login shells, commands, Ansible's remote Python) —
on this one machine it competes with the client for the same cores — and the
logins the server accepted per run (HOSTS for every variant: one connection per
alias, reused by later steps/tasks).

Ansible (``ansible-core``) is *not* a dependency of runbook: when it is missing
this script installs it with ``python3 -m pip install ansible-core``.

The audit log goes to a temporary folder (RUNBOOK_AUDIT_DIR); ``python -m runbook``
may write .pyc files (as on a user's machine) but under that folder
(PYTHONPYCACHEPREFIX), not in the checkout; the sshd is stopped at the end.
With --profile, or when a target is missed, a fresh process runs the runbook
in process under cProfile (every thread, CPU time per thread; the profiler
inflates Python-level calls 2-3x) and, when py-spy is installed, under
``py-spy record --gil``.  Exit 0 when every target is met.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import io
import json
import os
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ and tests/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, child_env, machine, median, runbook_cmd, verdict  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))

TARGET_FLOOR_RATIO = 1.3
TARGET_DIAGNOSE_SPEEDUP = 3.0
DIAGNOSE = [  # (step id, command)
    ("uptime", "uptime"),
    ("disk", "df -h /"),
    ("memory", "free -m"),
    ("load", "cat /proc/loadavg"),
    ("tmp", "ls /tmp | head"),
]
PR_SET_CHILD_SUBREAPER = 36
# OpenSSH >= 9.0 negotiates the post-quantum hybrid sntrup761x25519-sha512 with itself (~50 ms of client CPU
# per connection here); paramiko has no sntrup761 and falls back to curve25519 with an OpenSSH < 9.9 server
# (its mlkem768x25519-sha256 needs 9.9+). The informational "x25519" floor pins OpenSSH to paramiko's choice.
LIKE_KEX = "curve25519-sha256@libssh.org"


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


# ----------------------------------------------------------------------------- files


def write_runbook_files(d: Path, srv, names: list[str]) -> dict[str, Path]:
    hosts = {n: {"address": srv.host, "port": srv.port, "user": srv.user} for n in names}
    inv = {"ssh": {"known_hosts": str(srv.known_hosts_path), "identity_file": str(srv.client_key_path),
                   "connect_timeout": 30},
           "hosts": hosts, "groups": {"web": {"hosts": names}}}
    (d / "inv.yaml").write_text(json.dumps(inv, indent=1))
    n = len(names)
    one = ("name: ssh-fanout-one\ntitle: uptime everywhere\nstages:\n  diagnose:\n"
           f"    - id: uptime\n      ssh: {{hosts: web, command: uptime, forks: {n}}}\n      readonly: true\n")
    (d / "one.yaml").write_text(one)
    five = ["name: ssh-fanout-diagnose", "title: five-step diagnose", "stages:", "  diagnose:"]
    for sid, cmd in DIAGNOSE:
        five += [f"    - id: {sid}", f"      ssh: {{hosts: web, command: {json.dumps(cmd)}, forks: {n}}}",
                 "      readonly: true"]
    (d / "five.yaml").write_text("\n".join(five) + "\n")
    return {"inv": d / "inv.yaml", "one": d / "one.yaml", "five": d / "five.yaml"}


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
    def __init__(self, tmp: Path, srv, n: int, ansible_bin: Path | None):
        self.tmp, self.srv, self.n = tmp, srv, n
        self.names = [f"web-{i:02d}" for i in range(n)]
        self.rb = write_runbook_files(tmp, srv, self.names)
        self.ansible_bin = ansible_bin
        self.an = write_ansible_files(tmp, srv, self.names, _remote_python()) if ansible_bin else None
        self.audit_root = tmp / "audit"
        self.seq = 0

    def runbook_env(self, audit_dir: Path) -> dict:
        """`python -m runbook`'s environment: the audit log in AUDIT_DIR, .pyc files allowed (as on a user's machine)
        but written under the temporary folder rather than into the checkout."""
        env = child_env(RUNBOOK_AUDIT_DIR=str(audit_dir), PYTHONPYCACHEPREFIX=str(self.tmp / "pycache"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for k in ("RUNBOOK_PATH", "RUNBOOK_INVENTORY", "RUNBOOK_ENV"):
            env.pop(k, None)
        return env

    def _run(self, cmd: list[str], env: dict, check) -> tuple[float, float, subprocess.CompletedProcess, dict]:
        before_conn = self.srv.connections()
        s0 = _server_cpu(self.srv.pid)
        c0 = _children_cpu()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        _reap_orphaned_ssh()
        cpu = _children_cpu() - c0
        problem = check(p)
        if problem:
            sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
            raise SystemExit(f"bench: {' '.join(map(str, cmd[:4]))} … {problem}")
        time.sleep(0.3)  # let sshd log the last logins and reap its handlers
        return wall, cpu, p, {"conns": self.srv.connections() - before_conn, "server_cpu": _server_cpu(self.srv.pid) - s0}

    def runbook(self, book: str) -> Sample:
        self.seq += 1
        audit_dir = self.audit_root / f"{book}-{self.seq}"
        env = self.runbook_env(audit_dir)
        cmd = runbook_cmd("run", str(self.rb[book]), "--inventory", str(self.rb["inv"]))
        wall, cpu, p, info = self._run(cmd, env, lambda p: None if p.returncode == 0 else f"exited {p.returncode}")
        from runbook import audit

        recs = list(audit.read_records(audit_dir / audit.LOG_NAME))
        results = [r for r in recs if r["type"] == "step_result"]
        steps = len(DIAGNOSE) if book == "five" else 1
        if len(results) != steps or any(r["status"] != "ok" for r in results):
            raise SystemExit(f"bench: runbook {book}: unexpected step results {results}")
        return Sample(wall, cpu, {"steps_s": sum(r["duration"] for r in results), **info})

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

    def ansible_adhoc(self) -> Sample:
        cmd = [str(self.ansible_bin / "ansible"), "all", "-i", str(self.an["inv"]), "-m", "command", "-a", "uptime",
               "-f", str(self.n)]

        def check(p):
            ok = p.stdout.count("| CHANGED | rc=0")
            return None if p.returncode == 0 and ok == self.n else f"exited {p.returncode}, {ok}/{self.n} hosts ok"

        wall, cpu, p, info = self._run(cmd, self._ansible_env(), check)
        return Sample(wall, cpu, info)

    def ansible_playbook(self) -> Sample:
        cmd = [str(self.ansible_bin / "ansible-playbook"), "-i", str(self.an["inv"]), "-f", str(self.n), str(self.an["play"])]

        def check(p):
            ok = sum(1 for line in p.stdout.splitlines() if f"ok={len(DIAGNOSE)} " in line and "failed=0" in line
                     and "unreachable=0" in line)
            return None if p.returncode == 0 and ok == self.n else f"exited {p.returncode}, {ok}/{self.n} hosts ok"

        wall, cpu, p, info = self._run(cmd, self._ansible_env(), check)
        return Sample(wall, cpu, info)

    def plain_ssh(self, kex: str | None = None) -> Sample:
        opts = [*(["-o", f"KexAlgorithms={kex}"] if kex else []), "-F", "/dev/null", "-i", str(self.srv.client_key_path), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.srv.known_hosts_path}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(self.srv.port)]
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
        bad = 0
        for p in procs:
            out = p.stdout.read()
            err = p.stderr.read()
            p.stdout.close()
            p.stderr.close()
            if p.returncode != 0 or b"load average" not in out:
                bad += 1
                last = err
        if bad:
            raise SystemExit(f"bench: {bad}/{self.n} plain ssh runs failed: {last.decode(errors='replace')[-500:]}")
        time.sleep(0.3)
        return Sample(wall, cpu, {"conns": self.srv.connections() - before_conn, "server_cpu": _server_cpu(self.srv.pid) - s0})

    def cleanup(self):
        for d in getattr(self, "_cp_dirs", []):
            shutil.rmtree(d, ignore_errors=True)


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


def profile_in_process(bench: Bench, book: str) -> str:
    env = bench.runbook_env(bench.audit_root / f"profile-{book}")
    p = subprocess.run([sys.executable, __file__, "--profile-child", str(bench.rb[book]), str(bench.rb["inv"])],
                       env=env, cwd=bench.tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        return f"profile failed (exit {p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-3000:]}"
    return p.stdout


def py_spy(bench: Bench, book: str) -> str | None:
    """A py-spy sampling of a fresh `runbook run`: who holds the GIL (no profiler overhead in the process)."""
    exe = shutil.which("py-spy")
    if not exe:
        return None
    out = bench.tmp / f"py-spy-{book}.txt"
    env = bench.runbook_env(bench.audit_root / f"pyspy-{book}")
    cmd = [exe, "record", "--format", "raw", "--rate", "500", "--gil", "--threads", "-o", str(out), "--",
           *runbook_cmd("run", str(bench.rb[book]), "--inventory", str(bench.rb["inv"]))]
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


def fmt(samples: list[Sample]) -> str:
    walls = [s.wall for s in samples]
    return (f"wall {median(walls):6.3f} s (min {min(walls):.3f}, max {max(walls):.3f})  "
            f"client CPU {median([s.cpu for s in samples]):6.3f} s  server CPU {median([s.info['server_cpu'] for s in samples]):6.3f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile an in-process runbook run even when targets are met")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (sshd log, inventories, audit logs)")
    ap.add_argument("--profile-child", nargs=2, metavar=("BOOK", "INV"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.profile_child:
        print(profile_child(Path(a.profile_child[0]), Path(a.profile_child[1])))
        return 0

    from sshserver import start_sshd

    reaper = _become_subreaper()
    ansible_bin, ansible_version = ensure_ansible()
    print(f"ssh_fanout: {machine()}; {subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}; "
          f"{ansible_version}; paramiko/fabric: "
          + subprocess.run([sys.executable, "-c", "import paramiko, fabric; print(paramiko.__version__, fabric.__version__)"],
                           capture_output=True, text=True).stdout.strip())
    if not reaper:
        print("warning: could not become a child subreaper; ControlPersist masters' CPU is not counted")

    tmp = Path(tempfile.mkdtemp(prefix="rb-ssh-fanout-"))
    srv = start_sshd(tmp, max_startups=f"{a.hosts * 4}:30:{a.hosts * 8}", max_sessions=max(64, a.hosts * 2),
                     log_level="VERBOSE")
    bench = Bench(tmp, srv, a.hosts, ansible_bin)
    ok_all = True
    try:
        print(f"sshd {srv.user}@{srv.host}:{srv.port} ({tmp}); {a.hosts} inventory aliases; "
              f"warm-up once, then {a.runs} runs per variant (interleaved), medians\n")
        variants1 = {"runbook": lambda: bench.runbook("one"), "ansible": bench.ansible_adhoc, "ssh floor": bench.plain_ssh,
                     # informational: the key exchange paramiko negotiates with this sshd (see --help)
                     "ssh floor, x25519": lambda: bench.plain_ssh(LIKE_KEX)}
        variants2 = {"runbook": lambda: bench.runbook("five"), "ansible-playbook": bench.ansible_playbook}
        res1: dict[str, list[Sample]] = {k: [] for k in variants1}
        res2: dict[str, list[Sample]] = {k: [] for k in variants2}
        for fn in [*variants1.values(), *variants2.values()]:
            fn()  # warm-up: page cache, .pyc files, sshd's first fork
        for _ in range(a.runs):
            for k, fn in variants1.items():
                res1[k].append(fn())
            for k, fn in variants2.items():
                res2[k].append(fn())

        print(f"1. `uptime` on {a.hosts} hosts (forks {a.hosts})")
        for k, ss in res1.items():
            extra = ""
            if k == "runbook":
                extra = f"  (ssh step itself {median([s.info['steps_s'] for s in ss]):.3f} s)"
            print(f"   {k:<17} {fmt(ss)}  logins/run {ss[-1].info['conns']}{extra}")
        rb1, an1, fl1, fx1 = (median([s.wall for s in res1[k]]) for k in ("runbook", "ansible", "ssh floor", "ssh floor, x25519"))
        print(f"\n2. five-step diagnose on {a.hosts} hosts: " + "; ".join(c for _, c in DIAGNOSE))
        for k, ss in res2.items():
            extra = ""
            if k == "runbook":
                extra = f"  (Σ ssh steps {median([s.info['steps_s'] for s in ss]):.3f} s)"
            print(f"   {k:<17} {fmt(ss)}  logins/run {ss[-1].info['conns']}{extra}")
        rb2, an2 = (median([s.wall for s in res2[k]]) for k in ("runbook", "ansible-playbook"))
        rbc1, anc1, flc1, fxc1 = (median([s.cpu for s in res1[k]]) for k in ("runbook", "ansible", "ssh floor", "ssh floor, x25519"))
        rbc2, anc2 = (median([s.cpu for s in res2[k]]) for k in ("runbook", "ansible-playbook"))
        print(f"\nratios: 1-step runbook/ansible wall {rb1 / an1:.2f}x (CPU {rbc1 / anc1:.2f}x), runbook/floor wall "
              f"{rb1 / fl1:.2f}x (CPU {rbc1 / flc1:.2f}x), runbook/x25519 floor wall {rb1 / fx1:.2f}x "
              f"(CPU {rbc1 / fxc1:.2f}x); diagnose ansible/runbook wall {an2 / rb2:.2f}x "
              f"(CPU {anc2 / rbc2:.2f}x)\n")

        t1 = rb1 < an1
        t2 = rb1 <= TARGET_FLOOR_RATIO * fl1
        t3 = an2 >= TARGET_DIAGNOSE_SPEEDUP * rb2
        ok_all = t1 and t2 and t3
        if a.profile or not ok_all:
            for book in ("one", "five"):
                print(f"\n===== profile: {book}.yaml =====")
                print(profile_in_process(bench, book))
                spy = py_spy(bench, book)
                if spy:
                    print("\n" + spy)
            print()
        verdict(f"1 step on {a.hosts} hosts: runbook faster than ansible", t1, f"{rb1:.3f} s vs {an1:.3f} s")
        verdict(f"1 step on {a.hosts} hosts: runbook within {TARGET_FLOOR_RATIO}x of plain ssh", t2,
                f"{rb1:.3f} s vs {fl1:.3f} s = {rb1 / fl1:.2f}x")
        verdict(f"5-step diagnose: runbook >= {TARGET_DIAGNOSE_SPEEDUP:g}x faster than ansible-playbook", t3,
                f"{rb2:.3f} s vs {an2:.3f} s = {an2 / rb2:.2f}x")
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
