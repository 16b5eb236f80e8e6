"""Benchmark: how many runbooks per second `runbook validate` checks.

    python bench/validate_throughput.py [--count 1000] [--runs 3] [--keep DIR] [--profile]

Generates COUNT varied, valid runbooks (bench/gen_playbooks.py: 6–20 steps
over the three stages, parameters, templates reading parameters and earlier
steps' outputs, choose branches, retries, until with timeouts, bounded loops,
shell/manual/ask/wait/choose/end) into a temporary folder, then times:

* end to end: ``python -m runbook validate DIR`` in a fresh process (process
  start and imports included), median of RUNS; it must exit 0 with every file
  valid, so the benchmark measures the real path.  **Target >= 500/s.**
* in process: ``runbook.commands.validate.check_files(files)``: the first
  pass in this process (template caches empty) and the best of RUNS further
  passes (template compile caches warm), for reference.

With --profile (or when the target is missed) a cProfile of one in-process
pass with cleared caches shows where the time goes.  Exit 0 when the target
is met, 1 when not.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, ms, runbook_cmd, time_cmd, verdict  # noqa: E402
from gen_playbooks import generate  # noqa: E402

TARGET = 500.0  # playbooks per second, end to end


def clear_caches() -> None:
    from runbook import expr

    for name in ("_compile_template", "_compile_expr"):
        fn = getattr(expr, name, None)
        if fn is not None and hasattr(fn, "cache_clear"):
            fn.cache_clear()


def breakdown(files) -> None:
    """Where one in-process pass spends its time, without profiler overhead.

    Wraps (in this benchmark process only) the YAML loader, the whole file
    load, the template analysis and the garbage collector with timers.
    """
    import gc

    from runbook import expr, spec
    from runbook.commands.validate import check_files

    clear_caches()
    t = {"yaml": 0.0, "load": 0.0, "refs": 0.0, "gc": 0.0}
    n = {"refs": 0, "gc": 0}
    srcs: set = set()

    def timed(key, fn, count=None):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                t[key] += time.perf_counter() - t0
                if count:
                    n[count] += 1
                    srcs.add(args)
        return wrapper

    gc_start = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            t["gc"] += time.perf_counter() - gc_start[0]
            n["gc"] += 1

    saved = {(spec, "load"): spec.load, (spec, "load_text"): spec.load_text, (expr, "references"): expr.references}
    spec.load = timed("yaml", spec.load)
    spec.load_text = timed("load", spec.load_text)
    expr.references = timed("refs", expr.references, "refs")
    gc.callbacks.append(on_gc)
    try:
        t0 = time.perf_counter()
        check_files(files)
        total = time.perf_counter() - t0
    finally:
        gc.callbacks.remove(on_gc)
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    rows = [
        ("YAML parse + located tree (yamlload.load)", t["yaml"]),
        ("schema check + model (rest of spec.load_text)", t["load"] - t["yaml"]),
        (f"template analysis (expr.references, {n['refs']} calls, {len(srcs)} distinct)", t["refs"]),
        ("rest of validate_runbook, file reads, sorting", total - t["load"] - t["refs"]),
    ]
    print(f"\nwhere one in-process pass goes ({len(files)} files, {ms(total)}, no profiler):")
    for label, sec in rows:
        print(f"  {sec * 1000:8.1f} ms  {sec / total * 100:5.1f}%  {label}")
    print(f"  (garbage collector: {t['gc'] * 1000:.1f} ms, {t['gc'] / total * 100:.1f}% in {n['gc']} collections, spread over the rows above)")


def profile_pass(files, top: int = 25) -> None:
    from runbook.commands.validate import check_files

    clear_caches()
    prof = cProfile.Profile()
    prof.enable()
    check_files(files)
    prof.disable()
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(top)
        text = s.getvalue()
        body = text[text.find("   ncalls"):]
        print(f"\ncProfile of one in-process pass over {len(files)} files (caches cleared), top {top} by {title}:")
        print(body.rstrip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it (default: a temporary folder)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one in-process pass")
    a = ap.parse_args()
    print(f"validate_throughput: {machine()}")

    tmp = None
    if a.keep:
        d = Path(a.keep)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="runbook-bench-")
        d = Path(tmp.name)
    try:
        t0 = time.perf_counter()
        files = generate(d, a.count, a.seed)
        size = sum(f.stat().st_size for f in files)
        steps = sum(f.read_text().count("- id: ") for f in files)
        print(f"generated {len(files)} runbooks ({steps} steps, {size / 1024:.0f} KiB) in {d} in {ms(time.perf_counter() - t0)}")

        # --- end to end (fresh process each run) ---------------------------
        time_cmd(runbook_cmd("validate", str(d)))  # warm-up: .pyc, page cache; also checks exit 0
        e2e = []
        for _ in range(a.runs):
            dt, p = time_cmd(runbook_cmd("validate", str(d)), check=0)
            e2e.append(dt)
        summary = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "?"
        if summary != f"{len(files)} files checked: all valid":
            print(f"unexpected validate output: {summary!r}")
            return 1
        e2e_med = median(e2e)
        rate = len(files) / e2e_med
        print(f"\nend to end  `runbook validate DIR`: median {ms(e2e_med)} over {a.runs} runs "
              f"-> {rate:.0f} playbooks/s ({ms(e2e_med / len(files))} per playbook); exit 0, {summary!r}")

        # --- in process -----------------------------------------------------
        t0 = time.perf_counter()
        from runbook import spec
        from runbook.commands.validate import check_files
        import runbook.validate  # noqa: F401
        import jinja2.sandbox  # noqa: F401 - what the first template compile would import
        import yaml  # noqa: F401
        t_import = time.perf_counter() - t0
        files_found = spec.runbook_files([d])
        assert len(files_found) == len(files)

        t0 = time.perf_counter()
        results = check_files(files_found)
        first = time.perf_counter() - t0
        problems = [p for _, ps in results for p in ps]
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            print(f"generated runbooks are not valid: {len(errors)} errors, e.g. {errors[0].format()}")
            return 1
        warm = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            check_files(files_found)
            warm.append(time.perf_counter() - t0)
        print(f"in process  check_files(): imports {ms(t_import)}; first pass {ms(first)} -> {len(files) / first:.0f} playbooks/s; "
              f"warm caches best {ms(min(warm))} -> {len(files) / min(warm):.0f} playbooks/s "
              f"({len(problems)} problems, {len(errors)} errors)")

        ok = rate >= TARGET
        if a.profile or not ok:
            breakdown(files_found)
            profile_pass(files_found)
        print()
        verdict(f"validate >= {TARGET:.0f} playbooks/s (end to end)", ok, f"{rate:.0f}/s; in-process first pass {len(files) / first:.0f}/s")
        return 0 if ok else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
