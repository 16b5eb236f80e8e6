"""Benchmark: start-up of the `runbook` command, as ratios to the bare interpreter.

    python bench/cli_startup.py [--runs 15] [--no-hyperfine]

Measured in the same run, interleaved (one round = one process of each variant,
so drift on a shared machine hits them alike), after one untimed warm-up of each
(``.pyc`` files exist, the page cache is warm, as for a user's second command):

* ``python -c pass``: the floor no change in runbook can go below (the same
  interpreter and site-packages as runbook's own processes);
* ``runbook --help``: target **<= 1.7x the floor**;
* ``runbook list`` over 50 generated playbooks (bench/gen_playbooks.py), with a
  warm catalog cache (runbook.catalog: keyed by path, size and mtime): target
  **<= 3x the floor**; the same with the cache emptied before every run (every
  file read and checked) is printed beside it;
* ``python -X importtime -m runbook --help``: the modules that cost most;
* ``runbook validate playbooks`` once (informational); hyperfine, when
  installed, as a second opinion (optional).

Exit 0 when both targets are met, 1 when not.
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

HELP_RATIO = 1.7
LIST_RATIO = 3.0
LIST_FILES = 50
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
    from gen_playbooks import generate

    with tempfile.TemporaryDirectory() as tmp:
        pb, cache = Path(tmp) / "playbooks", Path(tmp) / "cache"
        generate(pb, count=LIST_FILES, seed=1)
        env = child_env(RUNBOOK_CACHE_DIR=str(cache))
        floor = [sys.executable, "-c", "pass"]
        helpcmd, listcmd = runbook_cmd("--help"), runbook_cmd("list", "--path", str(pb))
        for cmd in (floor, helpcmd, listcmd):  # warm-up; the list fills the cache
            time_cmd(cmd, env=env)
        _, p = time_cmd(listcmd, env=env)
        shown = len(p.stdout.splitlines()) - 1
        if shown != LIST_FILES:
            raise SystemExit(f"bench: runbook list showed {shown} runbooks, not {LIST_FILES}:\n{p.stdout}{p.stderr}")
        base, helps, lists, colds = [], [], [], []
        for _ in range(a.runs):
            base.append(time_cmd(floor, env=env)[0])
            helps.append(time_cmd(helpcmd, env=env)[0])
            lists.append(time_cmd(listcmd, env=env)[0])
            shutil.rmtree(cache, ignore_errors=True)
            colds.append(time_cmd(listcmd, env=env)[0])
            time_cmd(listcmd, env=env)  # warm the cache again for the next round
    f, h, li, co = median(base), median(helps), median(lists), median(colds)
    print(f"python -c pass            median {ms(f)} (min {ms(min(base))}, {a.runs} runs)  <- the floor")
    print(f"runbook --help            median {ms(h)} (min {ms(min(helps))}, max {ms(max(helps))})  = {h / f:.2f}x the floor")
    print(f"runbook list, {LIST_FILES} files   median {ms(li)} (warm catalog cache)  = {li / f:.2f}x the floor")
    print(f"runbook list, {LIST_FILES} files   median {ms(co)} (cold: every file read and checked)  = {co / f:.2f}x the floor")

    t_val, p = time_cmd(runbook_cmd("validate", "playbooks"))
    n = len(list((REPO / "playbooks").glob("*.y*ml")))
    print(f"runbook validate playbooks  {ms(t_val)} (once, {n} files: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''})")

    summarize_imports(importtime(["-m", "runbook", "--help"]))
    if not a.no_hyperfine:
        hyperfine(a.runs)

    print()
    ok_help, ok_list = h / f <= HELP_RATIO, li / f <= LIST_RATIO
    verdict(f"runbook --help <= {HELP_RATIO}x python -c pass", ok_help, f"{h / f:.2f}x: {ms(h)} vs {ms(f)}")
    verdict(f"runbook list ({LIST_FILES} playbooks) <= {LIST_RATIO:g}x python -c pass", ok_list, f"{li / f:.2f}x: {ms(li)} vs {ms(f)}")
    return 0 if ok_help and ok_list else 1


if __name__ == "__main__":
    sys.exit(main())
