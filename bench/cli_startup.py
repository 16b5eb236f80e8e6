"""Benchmark: cold start of the `runbook` command.

    python bench/cli_startup.py [--runs 15] [--no-hyperfine]

* ``runbook --help``: median wall time of N fresh ``python -m runbook --help``
  processes (after one untimed warm-up run, so ``.pyc`` files exist and the
  file cache is warm, as for a user's second invocation).  Target < 150 ms.
* the bare interpreter (``python -c pass``) for comparison: the floor no
  change in runbook can go below.
* ``python -X importtime -m runbook --help``: the modules that cost most.
* ``runbook list`` and ``runbook validate playbooks``, once each (informational).
* hyperfine, when installed, as a second opinion (optional).

Exit 0 when the target is met, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, child_env, machine, median, ms, runbook_cmd, time_cmd, verdict  # noqa: E402

TARGET_MS = 150.0
_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def importtime(args: list[str], runs: int = 5) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, depth) from the run with the median total."""
    samples = []
    for _ in range(runs):
        p = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, env=child_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rows = []
        for line in p.stderr.splitlines():
            m = _LINE.match(line)
            if m:
                rows.append((m.group(4), int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2))
        samples.append(rows)
    samples.sort(key=lambda rows: sum(r[1] for r in rows))
    return samples[len(samples) // 2]


def summarize_imports(rows) -> None:
    total = sum(r[1] for r in rows)
    print(f"\nimport time (python -X importtime, median of 5): {len(rows)} modules, {total / 1000:.1f} ms of imports")
    by_top: dict[str, int] = defaultdict(int)
    for name, self_us, _cum, _d in rows:
        by_top[name.split(".")[0]] += self_us
    print("  by top-level package (self time summed):")
    for name, us in sorted(by_top.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {us / 1000:7.1f} ms  {name}")
    print("  top offenders by cumulative time (top-level imports only, i.e. depth 0):")
    for name, _s, cum, _d in sorted((r for r in rows if r[3] == 0), key=lambda r: -r[2])[:10]:
        print(f"    {cum / 1000:7.1f} ms  {name}")
    ours = [r for r in rows if r[0] == "runbook" or r[0].startswith("runbook.")]
    print(f"  runbook's own modules: {', '.join(sorted(r[0] for r in ours))}")
    heavy = [r[0] for r in rows if r[0].split(".")[0] in ("rich", "jinja2", "yaml", "markupsafe")]
    print(f"  heavy third-party modules imported by --help: {', '.join(sorted(set(m.split('.')[0] for m in heavy))) or 'none'}")


def hyperfine(runs: int) -> float | None:
    exe = shutil.which("hyperfine")
    if not exe:
        print("\nhyperfine: not installed (optional; skipped)")
        return None
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "h.json"
        cmd = " ".join([sys.executable, "-m", "runbook", "--help"])
        p = subprocess.run([exe, "--warmup", "2", "--runs", str(runs), "--export-json", str(out), cmd],
                           cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            print(f"\nhyperfine failed: {p.stderr.strip()[:300]}")
            return None
        r = json.loads(out.read_text())["results"][0]
        print(f"\nhyperfine: runbook --help mean {ms(r['mean'])} ± {ms(r['stddev'])}, median {ms(r['median'])}")
        return r["median"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--no-hyperfine", action="store_true")
    a = ap.parse_args()
    print(f"cli_startup: {machine()}")

    time_cmd(runbook_cmd("--help"))  # warm-up: .pyc files, page cache
    base = [time_cmd([sys.executable, "-c", "pass"])[0] for _ in range(a.runs)]
    helps = [time_cmd(runbook_cmd("--help"))[0] for _ in range(a.runs)]
    med = median(helps)
    print(f"python -c pass        median {ms(median(base))} (min {ms(min(base))}, {a.runs} runs)  <- interpreter floor")
    print(f"runbook --help        median {ms(med)} (min {ms(min(helps))}, max {ms(max(helps))}, {a.runs} runs)")
    print(f"                      runbook's own share ≈ {ms(med - median(base))}")

    t_list, _ = time_cmd(runbook_cmd("list"))
    t_val, p = time_cmd(runbook_cmd("validate", "playbooks"))
    n = len(list((REPO / "playbooks").glob("*.y*ml")))
    print(f"runbook list          {ms(t_list)} (once)")
    print(f"runbook validate playbooks  {ms(t_val)} (once, {n} files: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''})")

    summarize_imports(importtime(["-m", "runbook", "--help"]))
    if not a.no_hyperfine:
        hyperfine(a.runs)

    print()
    verdict(f"runbook --help < {TARGET_MS:.0f} ms", med * 1000 < TARGET_MS, f"median {ms(med)}")
    return 0 if med * 1000 < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
