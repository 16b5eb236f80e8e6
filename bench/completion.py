"""Benchmark: Tab completion of runbook names, as a ratio to the bare interpreter.

    python bench/completion.py [--runs 15]

What bash runs on `runbook run <Tab>` is `runbook __complete runbooks -- run`
(runbook/complete.py: no parser, no command module, no YAML): measured over 50
generated playbooks (bench/gen_playbooks.py), interleaved with `python -c pass`
(one process of each per round, after one untimed warm-up of each), and the same
for parameter names after `-p` (one YAML file read) and, once, the whole bash
completion function (bash sourcing the script and calling it).

Targets: runbook names **<= 2x the floor** and under 100 ms; parameter names
under 100 ms.  Exit 0 when met, 1 when not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, median, ms, runbook_cmd, time_cmd, verdict  # noqa: E402

RATIO = 2.0
LIMIT = 0.100
FILES = 50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    print(f"completion: {machine()}")
    from gen_playbooks import generate

    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "playbooks"
        generate(pb, count=FILES, seed=1)
        env = child_env(RUNBOOK_PATH=str(pb))
        first = sorted(pb.glob("*.yaml"))[0].stem
        floor = [sys.executable, "-c", "pass"]
        names = runbook_cmd("__complete", "runbooks", "--", "run")
        params = runbook_cmd("__complete", "params", "--", "run", first, "-p")
        for cmd in (floor, names, params):
            time_cmd(cmd, env=env)
        _, p = time_cmd(names, env=env)
        if len(p.stdout.split()) != FILES:
            raise SystemExit(f"bench: {len(p.stdout.split())} runbook names, not {FILES}:\n{p.stdout}{p.stderr}")
        base, got, pars = [], [], []
        for _ in range(a.runs):
            base.append(time_cmd(floor, env=env)[0])
            got.append(time_cmd(names, env=env)[0])
            pars.append(time_cmd(params, env=env)[0])
        bash_time = None
        if shutil.which("bash"):
            script = Path(tmp) / "runbook.bash"
            script.write_text(time_cmd(runbook_cmd("completion", "bash"), env=env)[1].stdout)
            shim = Path(tmp) / "bin"
            shim.mkdir()
            (shim / "runbook").write_text(f"#!/bin/sh\nexec {sys.executable} -m runbook \"$@\"\n")
            (shim / "runbook").chmod(0o755)
            probe = (f"source {script}; COMP_LINE='runbook run '; COMP_POINT=${{#COMP_LINE}}; "
                     "COMP_WORDS=(runbook run ''); COMP_CWORD=2; _runbook_complete runbook '' run; echo ${#COMPREPLY[@]}")
            benv = dict(env, PATH=f"{shim}{os.pathsep}{env['PATH']}")
            bash_time, p = time_cmd(["bash", "-c", probe], env=benv)
            if p.stdout.strip() != str(FILES):
                raise SystemExit(f"bench: bash completed {p.stdout.strip()} names, not {FILES}: {p.stderr}")
    f, n, pr = median(base), median(got), median(pars)
    print(f"python -c pass                          median {ms(f)} (min {ms(min(base))}, {a.runs} runs)  <- the floor")
    print(f"runbook names ({FILES} playbooks)         median {ms(n)} (min {ms(min(got))}, max {ms(max(got))})  "
          f"= {n / f:.2f}x the floor")
    print(f"parameter names after -p                median {ms(pr)}  = {pr / f:.2f}x the floor")
    if bash_time is not None:
        print(f"bash: source the script + complete names  {ms(bash_time)} (once)")
    print()
    ok_names, ok_params = n / f <= RATIO and n < LIMIT, pr < LIMIT
    verdict(f"runbook names over {FILES} playbooks <= {RATIO:g}x python -c pass and < 100 ms", ok_names,
            f"{n / f:.2f}x: {ms(n)} vs {ms(f)}")
    verdict("parameter names < 100 ms", ok_params, ms(pr))
    return 0 if ok_names and ok_params else 1


if __name__ == "__main__":
    sys.exit(main())
