"""Benchmark: what the live engine costs per step, on top of the steps themselves.

    python bench/engine_overhead.py [--steps 1000] [--audit-dir DIR] [--profile]

Runs a STEPS-step runbook of no-op local steps live, in process, through
``runbook.engine.Engine(...).run()`` with a real ``AuditLog`` in a temporary
folder (every record synced to disk and sealed, as in production: an Ed25519
signature per record, a new key per run, the signed ``audit.head`` replaced after
every append) and a UI object whose methods do nothing.  Two variants, each in its own fresh process:

* ``shell``: ``shell: "true"`` steps marked ``readonly: true`` (each spawns bash);
* ``wait0``: ``wait: 0s`` steps, which spawn no process: the engine's own cost.

Overhead per step = (wall time of ``run()`` − Σ the steps' own durations, as
recorded by the engine in ``engine.steps_ctx[id]["duration"]``) / STEPS.
**Target < 2 ms per step** (checked on both variants).  Also reported: the
peak RSS of each process (``resource.getrusage``), and, as a diagnostic only,
the same run with the audit log's disk sync replaced by a no-op inside this
benchmark process, which shows how much of the overhead is fsync (the head's
rename and the signatures stay).

With --profile (or when the target is missed) a cProfile of the wait0 run
shows where the time goes.  Exit 0 when the target is met, 1 when not.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, child_env, machine, verdict  # noqa: E402

TARGET_MS = 2.0


class NoopUI:
    """Every method the engine (and the step kinds) may call on a UI, doing nothing."""

    def run_started(self, rb, run_id, params_shown):
        pass

    def step_started(self, step, action):
        pass

    def confirm(self, step, action):
        return True

    def manual(self, step, action):
        return True

    def ask(self, step, prompt, choices, default):
        return default if default is not None else (list(choices)[0] if choices else "")

    def polling(self, step, result, attempt, observed=None):
        pass

    def retrying(self, step, result, attempt, delay):
        pass

    def step_finished(self, step, result):
        pass

    def run_finished(self, status, code, message):
        pass


def runbook_text(n: int, variant: str) -> str:
    """N no-op steps spread over diagnose / mitigate / verify."""
    body = '  shell: "true"\n  readonly: true\n' if variant == "shell" else "  wait: 0s\n"
    cut = (n // 3, 2 * n // 3)
    lines = ["name: engine-overhead", f'title: "{n} no-op steps ({variant})"', "stages:"]
    for i in range(n):
        if i == 0:
            lines.append("  diagnose:")
        elif i == cut[0]:
            lines.append("  mitigate:")
        elif i == cut[1]:
            lines.append("  verify:")
        lines.append(f"    - id: s{i:05d}")
        lines += ["    " + b for b in body.rstrip("\n").split("\n")]
    return "\n".join(lines) + "\n"


def one_run(n: int, variant: str, audit_dir: str | None, nosync: bool, profile: bool) -> dict:
    """Load, then run the runbook live once in this process; the figures as a dict."""
    from runbook import audit, spec
    from runbook.engine import Engine, Options
    from runbook.secrets import Redactor
    from runbook.validate import validate_runbook

    if nosync:
        audit._sync = lambda fd: None  # diagnostic only: what the run costs without fsync
    rb, problems = spec.load_text(runbook_text(n, variant), f"<engine-overhead-{variant}>")
    if rb is None:
        raise SystemExit("bench: the generated runbook does not load: " + "; ".join(p.format() for p in problems))
    errors = [p for p in validate_runbook(rb).problems if p.severity == "error"]
    if errors:
        raise SystemExit("bench: the generated runbook is not valid: " + errors[0].format())
    assert len(rb.steps) == n

    with tempfile.TemporaryDirectory(prefix="runbook-bench-audit-", dir=audit_dir) as d:
        os.environ["RUNBOOK_KEY_DIR"] = str(Path(d) / "keys")  # never the keys of a real log
        log = audit.AuditLog(d)
        redactor = Redactor()
        run_id = audit.new_run_id()
        journal = audit.RunJournal(log, run_id, redactor)
        journal.run_started(runbook=rb.name, path=rb.path, sha256=rb.sha256, git_commit=None, params={},
                            dry_run=False, who="bench", host="bench")
        engine = Engine(rb, {}, ui=NoopUI(), journal=journal, options=Options(yes=True, interactive=False, who="bench"),
                        run_id=run_id, redactor=redactor)
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        _status, code, _message = engine.run()
        wall = time.perf_counter() - t0
        if prof:
            prof.disable()
        log.close()
        records = sum(1 for _ in open(Path(d) / audit.LOG_NAME, "rb"))
        log_bytes = (Path(d) / audit.LOG_NAME).stat().st_size
        df = subprocess.run(["df", "--output=fstype", d], capture_output=True, text=True).stdout.split()
        fstype = df[-1] if len(df) > 1 else "?"
        check = audit.verify(Path(d) / audit.LOG_NAME)

    if code != 0:
        raise SystemExit(f"bench: the run exited {code}")
    durations = [engine.steps_ctx[s.id]["duration"] for s in rb.steps]
    steps_sum = sum(durations)
    out = {
        "variant": variant, "steps": n, "nosync": nosync, "wall_s": wall, "steps_sum_s": steps_sum,
        "overhead_ms_per_step": (wall - steps_sum) / n * 1000, "step_mean_ms": steps_sum / n * 1000,
        "wall_ms_per_step": wall / n * 1000, "records": records, "log_bytes": log_bytes, "audit_fs": fstype,
        "chain_ok": check.ok, "verify_status": check.status, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if prof:
        parts = []
        for key in ("tottime", "cumulative"):
            s = io.StringIO()
            pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(22)
            text = s.getvalue()
            parts.append(f"top 22 by {key}:\n" + text[text.find("   ncalls"):].rstrip())
        out["profile"] = "\n\n".join(parts)
    return out


def child(n: int, variant: str, audit_dir: str | None, nosync: bool = False, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--steps", str(n)]
    if audit_dir:
        cmd += ["--audit-dir", audit_dir]
    if nosync:
        cmd.append("--nosync")
    if profile:
        cmd.append("--profile")
    p = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"bench: the {variant} run failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--audit-dir", metavar="DIR", help="create the temporary audit folder under DIR (default: the system temp dir)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the wait0 run")
    ap.add_argument("--no-diagnostic", action="store_true", help="skip the run without fsync")
    ap.add_argument("--child", choices=("shell", "wait0"), help=argparse.SUPPRESS)
    ap.add_argument("--nosync", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        print(json.dumps(one_run(a.steps, a.child, a.audit_dir, a.nosync, a.profile)))
        return 0

    print(f"engine_overhead: {machine()}")
    res = {v: child(a.steps, v, a.audit_dir) for v in ("shell", "wait0")}
    print(f"{a.steps} steps per run; audit log on {res['shell']['audit_fs']} "
          f"({res['shell']['records']} records, {res['shell']['log_bytes'] / 1024:.0f} KiB, "
          f"verify: {res['shell']['verify_status']})")
    for v, r in res.items():
        label = 'shell: "true"' if v == "shell" else "wait: 0s    "
        print(f"  {label}  wall {r['wall_s'] * 1000:8.1f} ms  Σ step durations {r['steps_sum_s'] * 1000:8.1f} ms  "
              f"-> engine overhead {r['overhead_ms_per_step']:.3f} ms/step (step itself {r['step_mean_ms']:.3f} ms, "
              f"total {r['wall_ms_per_step']:.3f} ms/step); peak RSS {r['peak_rss_mb']:.1f} MiB")
    if not a.no_diagnostic:
        ns = child(a.steps, "wait0", a.audit_dir, nosync=True)
        sync_ms = res["wait0"]["overhead_ms_per_step"] - ns["overhead_ms_per_step"]
        print(f"  diagnostic: wait: 0s without fsync {ns['overhead_ms_per_step']:.3f} ms/step "
              f"-> disk sync ≈ {sync_ms:.3f} ms/step ({sync_ms / 2:.3f} ms per record, 2 records per step)")

    worst = max(r["overhead_ms_per_step"] for r in res.values())
    ok = worst < TARGET_MS
    if a.profile or not ok:
        print("\ncProfile of the wait: 0s run:\n" + child(a.steps, "wait0", a.audit_dir, profile=True)["profile"])
    print()
    verdict(f"engine overhead < {TARGET_MS:g} ms/step", ok,
            f"shell {res['shell']['overhead_ms_per_step']:.3f} ms/step, wait0 {res['wait0']['overhead_ms_per_step']:.3f} ms/step")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
