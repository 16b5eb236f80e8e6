"""Generate varied, *valid* runbooks for the benchmarks.

    python bench/gen_playbooks.py DIR [--count 1000] [--seed 1]

Each runbook has 6–20 steps over diagnose → mitigate → verify, typed
parameters (with a secret one), templates that read parameters and earlier
steps' outputs, ``choose`` branches, retries, ``until`` polling with timeouts,
a bounded loop now and then, and every local kind (shell, manual, ask, wait,
choose, end).  The output is deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SERVICES = ("api", "billing", "search", "checkout", "auth", "worker", "gateway", "ledger", "mailer", "cdn-edge")
WORDS = ("cache", "queue", "pool", "disk", "dns", "tls", "lag", "heap", "socket", "shard", "replica", "quota")
ALERTS = ("HighErrorRate", "HighLatency", "DiskFull", "PodCrashLooping", "QueueBacklog", "CertExpiring", "ReplicaLag")


def q(s: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(s)


def ref(step_id: str) -> str:
    """``steps.x`` or ``steps["x-y"]`` for ids that are not identifiers."""
    return f"steps.{step_id}" if step_id.isidentifier() else f'steps["{step_id}"]'


class Gen:
    def __init__(self, rnd: random.Random, n: int):
        self.r = rnd
        self.n = n
        self.used: set[str] = set()
        self.numeric: list[str] = []  # shell steps with an integer output `n`
        self.ratios: list[str] = []  # verify checks with a number output `ratio`
        self.asks: list[tuple[str, list[str]]] = []
        self.any_steps: list[str] = []

    def new_id(self, base: str) -> str:
        sep = self.r.choice(("-", "_"))
        i = 0
        while True:
            cand = base if i == 0 else f"{base}{sep}{i}"
            if cand not in self.used:
                self.used.add(cand)
                return cand
            i += 1

    # --- pieces ---------------------------------------------------------

    def shell_cmd(self) -> str:
        r = self.r
        parts = [
            "curl -fsS --max-time 5 {{ params.base_url }}/health/" + r.choice(WORDS),
            "kubectl get pods -n {{ params.namespace }} -l app={{ params.service }} --no-headers | wc -l",
            "echo {{ params.service }} {{ params.replicas }} | tr a-z A-Z",
            "printf '%s\\n' {{ params.namespace }} {{ run.id }}",
            "grep -c ERROR /var/log/{{ params.service }}.log || true",
            "psql -h {{ params.db_host }} -Atc 'SELECT 1'",
        ]
        cmd = r.choice(parts)
        if self.numeric and r.random() < 0.5:
            cmd += " && echo {{ " + ref(r.choice(self.numeric)) + ".outputs.n }}"
        if self.ratios and r.random() < 0.5:
            cmd += " && echo {{ " + ref(r.choice(self.ratios)) + ".outputs.ratio }}"
        if self.any_steps and r.random() < 0.3:
            cmd += " && echo {{ " + ref(r.choice(self.any_steps)) + ".status }}"
        if r.random() < 0.15:
            cmd += " --token-env {{ params.token }}"  # a secret: passed by environment
        return cmd

    def condition(self) -> str:
        r = self.r
        opts = ["params.replicas > 2", "params.threshold < 0.5", "params.dry", 'params.namespace == "production"']
        if self.numeric:
            opts.append(f"{ref(r.choice(self.numeric))}.outputs.n > {r.randint(1, 200)}")
        if self.asks:
            sid, choices = r.choice(self.asks)
            opts.append(f'{ref(sid)}.answer == "{r.choice(choices)}"')
        if self.any_steps:
            opts.append(f"{ref(r.choice(self.any_steps))}.ok")
        return r.choice(opts)

    def diag_step(self) -> list[str]:
        r = self.r
        kind = r.choices(("shell", "shell-out", "shell-until", "shell-retry", "wait", "ask", "manual"),
                         weights=(2, 3, 1, 1, 1, 1, 1))[0]
        sid = self.new_id(r.choice(WORDS) + r.choice(("", "-check", "_probe", "-stats")))
        y = [f"- id: {sid}"]
        if r.random() < 0.6:
            y.append(f"  title: {q('Check the ' + r.choice(WORDS) + ' of {{ params.service }}')}")
        if kind.startswith("shell"):
            y.append(f"  shell: {q(self.shell_cmd())}")
            y.append("  readonly: true")
            y.append(f"  timeout: {r.choice(('10s', '30s', '1m', '90s'))}")
            if kind == "shell-out":
                rx = r.choice(("^(\\\\d+)", "count=(\\\\d+)", "(\\\\d+)$"))
                y.append("  outputs:")
                y.append(f"    n: {{regex: \"{rx}\", type: integer}}")
                if r.random() < 0.4:
                    y.append("    doc: {json: \"data.result.0\", type: json}")
            if kind == "shell-until":
                y.append(f"  until: {q(r.choice(('exit_code == 0', 'ok', 'stdout | length > 0', 'attempts > 3')))}")
                y.append(f"  every: {r.choice(('5s', '10s', '15s'))}")
            if kind == "shell-retry":
                y.append(f"  retries: {r.randint(1, 5)}")
                y.append(f"  retry_delay: {r.choice(('1s', '2s', '5s'))}")
            y.append("  on_failure: continue")
            if kind == "shell-out":
                self.numeric.append(sid)
        elif kind == "wait":
            if r.random() < 0.5:
                y.append(f"  wait: {r.choice(('5s', '10s', 30, '1m'))}")
            else:
                y.append(f"  wait: {{duration: {r.choice(('5s', '20s'))}, reason: {q('let {{ params.service }} settle')}}}")
        elif kind == "ask":
            choices = r.sample(("yes", "no", "unsure", "bad-deploy", "pool", "external", "restart"), r.randint(2, 4))
            y.append("  ask:")
            y.append(f"    prompt: {q('What about {{ params.service }} in {{ params.namespace }}?')}")
            y.append(f"    choices: [{', '.join(q(c) for c in choices)}]")
            if r.random() < 0.5:
                y.append(f"    default: {q(choices[0])}")
            self.asks.append((sid, choices))
        else:
            y.append(f"  manual: {q('Open the dashboard of {{ params.service }} and look at the ' + r.choice(WORDS) + ' panel.')}")
        self.any_steps.append(sid)
        return y

    def mitigate_action(self, sid: str, verify_first: str) -> list[str]:
        r = self.r
        kind = r.choice(("shell-write", "shell-write", "manual", "wait", "shell-read"))
        y = [f"- id: {sid}"]
        if kind == "shell-write":
            y.append(f"  title: {q('Fix ' + r.choice(WORDS) + ' on {{ params.service }}')}")
            y.append(f"  shell: {q(r.choice(('kubectl rollout restart -n {{ params.namespace }} deployment/{{ params.service }}', 'kubectl scale -n {{ params.namespace }} deployment/{{ params.service }} --replicas={{ params.replicas }}', 'systemctl restart {{ params.service }}')))}")
            y.append(f"  timeout: {r.choice(('1m', '2m', '5m'))}")
            if r.random() < 0.3:
                y.append(f"  retries: {r.randint(1, 3)}")
        elif kind == "shell-read":
            y.append(f"  shell: {q(self.shell_cmd())}")
            y.append("  readonly: true")
            y.append("  timeout: 20s")
        elif kind == "manual":
            if r.random() < 0.5:
                y.append(f"  manual: {q('Drain traffic from {{ params.service }}, then confirm.')}")
            else:
                y.append("  manual:")
                y.append(f"    instructions: {q('Revert the last deploy of {{ params.service }}')}")
                y.append(f"    confirm: {q('Reverted?')}")
                y.append("  readonly: false")
        else:
            y.append(f"  wait: {r.choice(('10s', '30s'))}")
        y.append(f"  next: {verify_first}")
        return y

    # --- a runbook --------------------------------------------------------

    def runbook(self, index: int) -> str:
        r = self.r
        n = self.n
        n_diag = r.randint(2, max(2, min(8, n - 4)))
        rest = n - n_diag
        with_mitigate = rest >= 4 and r.random() < 0.9
        n_mit = r.randint(1, min(7, rest - 2)) if with_mitigate else 0
        n_ver = rest - n_mit  # >= 2: at least one check and one end
        svc = r.choice(SERVICES)
        name = f"bench-{index:04d}-{svc}"

        out = [f"# generated by bench/gen_playbooks.py (runbook {index})",
               f"name: {name}",
               f"title: {q(f'Bench runbook {index}: {svc} ' + r.choice(WORDS) + ' trouble')}",
               f"severity: SEV{r.randint(1, 5)}",
               f"alerts: [{', '.join(r.sample(ALERTS, r.randint(1, 3)))}]",
               f"owner: team-{r.choice(('sre', 'backend', 'data'))}",
               f"tags: [{svc}, bench]",
               "env: [KUBECONFIG]",
               "params:",
               f"  service: {{type: string, default: {svc}, pattern: '^[a-z0-9][a-z0-9-]*$', description: \"the service\"}}",
               f"  namespace: {{type: string, default: production, enum: [production, staging, dev{index}]}}",
               f"  replicas: {{type: integer, default: {r.randint(1, 9)}}}",
               f"  threshold: {{type: number, default: {r.choice((0.01, 0.05, 0.1))}}}",
               f"  dry: {{type: boolean, default: {r.choice(('true', 'false'))}}}",
               "  base_url: {type: string, default: \"http://127.0.0.1:8080\", pattern: '^https?://'}",
               "  db_host: {type: string, default: \"127.0.0.1\"}",
               "  token: {type: string, secret: true, default: \"s3cr3t\"}",
               "stages:",
               "  diagnose:"]
        diag = []
        for _ in range(n_diag):
            diag += self.diag_step()
        out += ["    " + line for line in diag]

        verify_first = self.new_id("verify")
        escalate_id = self.new_id("escalate")
        resolved_id = self.new_id("resolved")

        if n_mit:
            mit: list[str] = []
            actions = [self.new_id(r.choice(("restart", "scale", "rollback", "flush", "drain"))) for _ in range(max(1, n_mit - 1))]
            if n_mit >= 2:  # a choose that branches to every action
                cid = self.new_id("decide")
                mit.append(f"- id: {cid}")
                mit.append("  choose:")
                for a in actions[:-1] if r.random() < 0.7 else actions:
                    mit.append(f"    - when: {q(self.condition())}")
                    mit.append(f"      goto: {a}")
                if len(mit) == 2 or mit[-1].strip() != f"goto: {actions[-1]}":
                    mit.append(f"    - default: {actions[-1]}")
                self.any_steps.append(cid)
            for a in actions:
                mit += self.mitigate_action(a, verify_first)
            out.append("  mitigate:")
            out += ["    " + line for line in mit]

        # verify: checks, then the two ends
        ver: list[str] = []
        n_checks = max(1, n_ver - 2)
        check_ids = [verify_first] + [self.new_id(r.choice(("recheck", "slo", "probe"))) for _ in range(n_checks - 1)]
        loop_to = actions[0] if n_mit and n_checks > 1 and r.random() < 0.25 else None
        for i, cid in enumerate(check_ids):
            ver.append(f"- id: {cid}")
            kind = r.choice(("until", "until", "plain", "wait")) if i else "until"
            if kind == "wait":
                ver.append(f"  wait: {r.choice(('5s', '15s'))}")
                continue
            ver.append(f"  shell: {q(self.shell_cmd())}")
            ver.append("  readonly: true")
            ver.append("  outputs:")
            ver.append("    ratio: {regex: \"([0-9.]+)\", type: number}")
            if kind == "until":
                ver.append(f"  until: {q(r.choice(('outputs.ratio < params.threshold', 'exit_code == 0', 'ok and outputs.ratio < 1')))}")
                ver.append(f"  every: {r.choice(('10s', '30s'))}")
                ver.append(f"  timeout: {r.choice(('5m', '10m'))}")
            else:
                ver.append("  timeout: 30s")
            if i == 0 and loop_to:  # a bounded loop back into mitigate
                ver.append(f"  on_failure: {loop_to}")
                ver.append("  max_visits: 3")
            else:
                ver.append(f"  on_failure: {escalate_id}")
            self.ratios.append(cid)
        ver.append(f"- id: {resolved_id}")
        ver.append(f"  end: {q('{{ params.service }} is healthy again (ratio {{ ' + ref(check_ids[0]) + '.outputs.ratio }}).')}")
        if any(line == f"  on_failure: {escalate_id}" for line in ver):
            ver.append(f"- id: {escalate_id}")
            ver.append("  end:")
            ver.append("    status: escalated")
            ver.append(f"    message: {q('Page the owner of {{ params.service }}.')}")
        out.append("  verify:")
        out += ["    " + line for line in ver]
        return "\n".join(out) + "\n"


def step_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.lstrip().startswith("- id: "))


def generate(directory: str | Path, count: int = 1000, seed: int = 1) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    files = []
    for i in range(count):
        while True:
            n = rnd.randint(6, 20)
            text = Gen(rnd, n).runbook(i)
            if 6 <= step_count(text) <= 20:
                break
        p = d / f"bench-{i:04d}.yaml"
        p.write_text(text)
        files.append(p)
    return files


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    fs = generate(a.dir, a.count, a.seed)
    print(f"{len(fs)} runbooks in {a.dir}")
    sys.exit(0)
