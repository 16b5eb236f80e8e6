"""Security by default: quoting, secrets, and hostile documents."""

from __future__ import annotations

import time

from conftest import book as rb  # write a runbook file
from runbook import audit


def test_template_inside_double_quotes_is_refused(write, main, tmp_path):
    pwned = tmp_path / "pwned"
    p = rb(write, """
  diagnose:
    - id: greet
      shell: 'echo "service: {{ params.svc }}"'
      readonly: true
""", head="params:\n  svc: {}\n")
    r = main("validate", p)
    assert r.returncode == 1 and "is inside double quotes" in r.stdout and "[RB106]" in r.stdout
    # even with the rule turned off, the engine refuses to render it
    write(".runbook.yaml", "rules: {RB106: off}\n")
    r = main("run", p, "-p", f"svc=$(touch {pwned})")
    assert r.returncode == 1 and "inside double quotes" in r.stdout + r.stderr
    assert not pwned.exists()


def test_heredoc_and_backticks_are_refused(write, main):
    p = rb(write, """
  diagnose:
    - id: doc
      shell: |
        cat <<EOF
        {{ params.svc }}
        EOF
      readonly: true
    - id: tick
      shell: "echo `echo {{ params.svc }}`"
      readonly: true
    - id: fine
      shell: "echo $(echo {{ params.svc }}) '%{literal}'"
      readonly: true
""", head="params:\n  svc: {default: x}\n")
    r = main("validate", p)
    assert "here-document" in r.stdout and "backticks" in r.stdout
    assert "step 'fine'" not in r.stdout


def test_a_secret_inside_a_filter_never_reaches_argv(write, main, tmp_path, audit_dir):
    p = rb(write, f"""
  diagnose:
    - id: leak
      shell: "cat /proc/$$/cmdline > {tmp_path / 'argv'}; echo {{{{ params.token | upper }}}} {{{{ 'Bearer ' ~ params.token }}}}"
      readonly: true
""", head="params:\n  token: {secret: true}\n")
    r = main("validate", p)
    assert r.returncode == 1 and "secret parameter 'token' is used inside an expression or filter" in r.stdout
    r = main("run", p, env={"RUNBOOK_PARAM_TOKEN": "hunter2"})  # run validates first
    assert r.returncode == 1 and "[RB105]" in r.stderr
    write(".runbook.yaml", "rules: {RB105: off}\n")  # and the engine refuses regardless
    r = main("run", p, env={"RUNBOOK_PARAM_TOKEN": "hunter2"})
    assert r.returncode == 1 and "a secret would appear in the command line" in r.stdout
    assert not (tmp_path / "argv").exists()
    assert "hunter2" not in r.stdout + r.stderr and b"hunter2" not in (audit_dir / "audit.jsonl").read_bytes().lower()


def test_secret_from_the_environment_and_name_collisions(write, main, tmp_path):
    out = tmp_path / "out"
    p = rb(write, f"""
  diagnose:
    - id: use
      shell: "printf '%s %s' {{{{ params.token }}}} {{{{ params.TOKEN }}}} > {out}"
      readonly: true
""", head="params:\n  token: {secret: true, required: true}\n  TOKEN: {secret: true, required: true}\n")
    r = main("run", p, "-p", "TOKEN=upper-one")
    assert r.returncode == 2  # a usage error and "missing required parameter 'token': set RUNBOOK_PARAM_TOKEN=VALUE" in r.stderr
    r = main("run", p, "-p", "token=lower-one", "-p", "TOKEN=upper-one")
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_text() == "lower-one upper-one"
    assert "warning: secret parameter 'token' was given with -p" in r.stderr
    assert "lower-one" not in r.stdout + r.stderr and "upper-one" not in r.stdout


def test_inventory_secret_goes_through_the_environment(write, main, tmp_path, audit_dir):
    out, argv = tmp_path / "out", tmp_path / "argv"
    inv = write("inv.yaml", "databases:\n  main: {host: 127.0.0.1, dbname: app, password: {env: DB_PW}}\n")
    p = rb(write, f"""
  diagnose:
    - id: use
      shell: "tr '\\\\0' ' ' < /proc/$$/cmdline > {argv}; printf %s {{{{ inventory.databases.main.password }}}} > {out}; echo pw={{{{ inventory.databases.main.password }}}}"
      readonly: true
""")
    r = main("run", p, "--inventory", inv, "--dry-run")  # no DB_PW needed to plan
    assert r.returncode == 0, r.stderr
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 1 and "environment variable DB_PW is not set" in r.stdout
    r = main("run", p, "--inventory", inv, env={"DB_PW": "realpw-123"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_text() == "realpw-123"
    assert "realpw-123" not in argv.read_text()
    assert "pw=***" in r.stdout and "realpw-123" not in r.stdout
    assert b"realpw-123" not in (audit_dir / "audit.jsonl").read_bytes()


def test_alias_bomb_is_refused_quickly(write, main):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    p = write("bomb.yaml", "\n".join(lines) + "\nname: bomb\ntitle: B\nstages: {}\n")
    started = time.monotonic()
    r = main("validate", p)
    assert r.returncode == 1 and "aliases expand the document by more than" in r.stdout
    assert time.monotonic() - started < 10


def test_retried_step_is_not_left_in_doubt(write, main, tmp_path, audit_dir):
    counter = tmp_path / "n"
    p = rb(write, f"""
  diagnose:
    - id: flaky
      shell: "n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; test $n -ge 2"
      readonly: true
      retries: 3
      retry_delay: 0.05s
""")
    assert main("run", p).returncode == 0
    (run,) = audit.list_runs(audit_dir / "audit.jsonl")
    assert run["in_doubt"] == [] and run["status"] not in ("in doubt", "in progress")


def test_secret_in_a_step_environment_is_allowed_and_reaches_the_process(write, main, tmp_path):
    out = tmp_path / "out"
    p = rb(write, f"""
  diagnose:
    - id: use
      shell:
        command: "printf %s \\"$PGPASSWORD\\" > {out}"
        env: {{PGPASSWORD: "{{{{ params.pw }}}}"}}
      readonly: true
""", head="params:\n  pw: {secret: true}\n")
    r = main("validate", p)
    assert r.returncode == 0, r.stdout
    r = main("run", p, env={"RUNBOOK_PARAM_PW": "pw-777"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_text() == "pw-777" and "pw-777" not in r.stdout


def test_templates_in_shell_arithmetic_are_refused(write, main, tmp_path):
    pwned = tmp_path / "pw"
    p = rb(write, """
  diagnose:
    - id: arith
      shell: "echo $(( {{ params.n }} + 1 ))"
      readonly: true
    - id: test
      shell: "[[ {{ params.n }} -eq 1 ]]; echo done"
      readonly: true
""", head="params:\n  n: {}\n")
    r = main("validate", p)
    assert r.returncode == 1 and "inside shell arithmetic" in r.stdout and "[[ … ]] test" in r.stdout
    write(".runbook.yaml", "rules: {RB106: off}\n")
    r = main("run", p, "-p", f"n=a[$(touch {pwned})]")
    assert r.returncode == 1 and not pwned.exists()
