"""The command line as a new user meets it: help, list, show, graph, schema, dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("kubernetes", "fabric", "invoke", "paramiko", "psycopg", "psycopg2", "celery", "kombu", "redis", "starlette", "uvicorn")


def test_help_both_ways(cli):
    r = cli("--help")
    assert r.returncode == 0 and "runbook" in r.stdout and "validate" in r.stdout
    r2 = subprocess.run(["runbook", "--help"], capture_output=True, text=True,
                        env=dict(os.environ, COLUMNS="200")) if _installed() else r
    assert r2.returncode == 0 and r2.stdout == r.stdout


def _installed() -> bool:
    from shutil import which

    return which("runbook") is not None


@pytest.mark.parametrize("args", [["--help"], ["list", "--path", str(ROOT / "playbooks")], ["validate", str(ROOT / "playbooks")]])
def test_fast_paths_import_no_heavy_client(args, tmp_path):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['runbook', *{args!r}]\n"
        "from runbook.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
        "print('HEAVY', bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def test_help_without_the_command_modules_is_the_same_help(capsys):
    """`runbook --help` builds its command list from cli.COMMANDS, not from the modules: it must say
    exactly what the full parser says, and every module must register the line listed there."""
    from runbook import cli

    assert cli.build_parser(None).format_help() == cli.build_parser("*").format_help()
    full = cli.build_parser("*")
    sub = next(a for a in full._actions if a.dest == "command")
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert helps == cli.COMMANDS
    for name in cli.COMMANDS:  # one command's parser keeps the others' lines, and its own options
        one = cli.build_parser(name)
        assert one.format_help() == full.format_help()
        with pytest.raises(SystemExit) as done:
            one.parse_args([name, "--help"])  # its own parser, not the placeholder (which has no --help)
        assert done.value.code == 0, name


def test_help_imports_only_argparse_and_the_command_modules(tmp_path):
    """`runbook --help` is the start-up path at 3am (bench/cli_startup.py times it): besides what the
    interpreter has already, only argparse (and what its help formatter needs) and runbook's
    cheap command modules load; typing, dataclasses, re-heavy helpers and every library wait."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from runbook.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('NEW', sorted(set(sys.modules) - before))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    new = eval(r.stdout.split("NEW", 1)[1])  # noqa: S307 - our own printed list
    allowed = {"argparse", "gettext", "locale", "_locale", "shutil", "bz2", "_bz2", "lzma", "_lzma", "_compression",
               "zlib", "textwrap", "gc", "runbook", "runbook.cli"}
    assert [m for m in new if m not in allowed and m != "runbook.commands.common"] == []  # no command module either
    assert not [m for m in new if m.split(".")[0] in ("boto3", "botocore", "kubernetes", "psycopg", "fabric")]


def test_list_from_path_env_and_default(cli, write, tmp_path):
    r = cli("list", "--path", ROOT / "playbooks")
    assert r.returncode == 0
    assert "service-unavailable" in r.stdout and "SEV1" in r.stdout and "ServiceDown" in r.stdout
    write("mine/x.yaml", "name: mine\ntitle: My runbook\nseverity: SEV3\nalerts: [Mine]\nstages:\n  diagnose:\n    - id: a\n      shell: 'true'\n      readonly: true\n")
    r = cli("list", env={"RUNBOOK_PATH": str(tmp_path / "mine")})
    assert "mine" in r.stdout and "My runbook" in r.stdout and "service-unavailable" not in r.stdout
    write("playbooks/y.yaml", "name: local-one\ntitle: Local\nstages:\n  diagnose:\n    - id: a\n      shell: 'true'\n      readonly: true\n")
    r = cli("list", "--format", "json")
    assert [x["name"] for x in json.loads(r.stdout)] == ["local-one"]
    r = cli("list", "--path", tmp_path / "nowhere")
    assert r.returncode == 2 and "no runbooks found" in r.stderr


def test_show(cli):
    r = cli("show", "service-unavailable", "--path", ROOT / "playbooks")
    assert r.returncode == 0, r.stderr
    for text in ("Parameters", "service", "string", "Diagnose", "Mitigate", "Verify", "liveness", "restart", "write"):
        assert text in r.stdout
    r = cli("show", "service-unavailble", "--path", ROOT / "playbooks")
    assert r.returncode == 2  # a usage error and "did you mean 'service-unavailable'" in r.stderr


def test_graph_mermaid_and_dot(cli):
    r = cli("graph", "service-unavailable", "--path", ROOT / "playbooks")
    assert r.returncode == 0 and r.stdout.startswith("flowchart TD")
    assert "subgraph diagnose" in r.stdout and "-.->|\"on failure\"|" in r.stdout
    r = cli("graph", "service-unavailable", "--path", ROOT / "playbooks", "--format", "dot")
    assert r.stdout.startswith('digraph "service-unavailable"') and '"healthy" -> "escalate" [label="on failure", style="dashed"];' in r.stdout
    dot = subprocess.run(["which", "dot"], capture_output=True)
    if dot.returncode == 0:  # where Graphviz is installed, it must accept our output
        assert subprocess.run(["dot", "-Tsvg"], input=r.stdout, capture_output=True, text=True).returncode == 0


def test_schema_is_json_schema_that_accepts_the_shipped_playbooks(cli):
    import jsonschema
    import yaml

    r = cli("schema")
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for f in (ROOT / "playbooks").glob("*.yaml"):
        errors = list(v.iter_errors(yaml.safe_load(f.read_text())))
        assert errors == [], (f, errors[0].message if errors else None)
    assert list(v.iter_errors({"name": "x", "title": "y", "stages": {"diagnose": [{"id": "a", "shel": "x"}]}}))


def test_dry_run_prints_the_exact_plan_and_runs_nothing(cli, write, tmp_path):
    marker = tmp_path / "touched"
    p = write("p.yaml", f"""
        name: p
        title: P
        params:
          service: {{type: string, required: true}}
        stages:
          diagnose:
            - id: look
              shell: "ls {{{{ params.service }}}}; touch {marker}"
              readonly: true
            - id: decide
              choose:
                - when: "steps.look.exit_code == 0"
                  goto: fix
                - default: give-up
          mitigate:
            - id: fix
              shell: "echo fixing {{{{ steps.look.stdout }}}}; touch {marker}"
              timeout: 10s
          verify:
            - id: check
              shell: "true"
              readonly: true
              next: ok
            - id: give-up
              end: {{status: escalated, message: "page someone"}}
            - id: ok
              end: done
    """)
    r = cli("run", p, "--dry-run", "-p", "service=my app; rm -rf /")
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert "$ ls 'my app; rm -rf /'; touch " in r.stdout
    assert "when steps.look.exit_code == 0 → fix" in r.stdout or "when steps.look.exit_code == 0" in r.stdout
    assert "echo fixing <steps.look.stdout>" in r.stdout
    assert "write" in r.stdout and "give-up" in r.stdout
    j = json.loads(cli("run", p, "--dry-run", "--format", "json", "-p", "service=api").stdout)
    assert [s["id"] for s in j["steps"]] == ["look", "decide", "fix", "check", "give-up", "ok"]
    fix = j["steps"][2]
    assert fix["effect"] == "write" and fix["stage"] == "mitigate" and fix["targets"] == ["localhost"] and fix["timeout"] == 10
    assert {"when": "when steps.look.exit_code == 0", "step": "fix"} in j["steps"][1]["next"]
    r = cli("run", p, "--dry-run")
    assert r.returncode == 2  # a usage error and r.stderr.strip() == "runbook: error: missing required parameter 'service': pass -p service=VALUE"


def test_dry_run_fails_on_a_template_that_cannot_render(cli, write):
    p = write("p.yaml", """
        name: p
        title: P
        params:
          n: {type: integer, default: 1}
        stages:
          diagnose:
            - id: look
              shell: "echo {{ params.n.nope }}"
              readonly: true
    """)
    r = cli("run", p, "--dry-run")
    assert r.returncode == 1
    assert "p.yaml:7:7: step 'look'" in r.stderr and "nope" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_shipped_playbooks_dry_run(cli, tmp_path):
    r = cli("run", "service-unavailable", "--dry-run", "-p", "service=api", "--path", ROOT / "playbooks")
    assert r.returncode == 1 and "no inventory was given (use --env NAME" in r.stderr  # its URL comes from the inventory
    r = cli("run", "service-unavailable", "--dry-run", "-p", "service=api", "-p", "base_url=http://127.0.0.1:8080",
            "--path", ROOT / "playbooks")
    assert r.returncode == 1 and "a k8s step needs an inventory with a cluster" in r.stderr
    r = cli("run", "service-unavailable", "--dry-run", "-p", "service=api", "-p", "base_url=http://127.0.0.1:8080",
            "--path", ROOT / "playbooks", "--inventory", ROOT / "inventory" / "local.yaml")
    assert r.returncode == 0, r.stderr
    r = cli("run", "service-unavailable", "--dry-run", "-p", "service=api", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "rollout restart deployment/api -n production" in r.stdout
    r = cli("run", "high-error-rate", "--dry-run", "-p", "service=api", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "rollout undo deployment/api -n production" in r.stdout
    assert "PATCH /apis/apps/v1/namespaces/production/deployments/api" in r.stdout  # the exact API call, not kubectl


def test_unknown_runbook_and_bad_file(cli, write, tmp_path):
    r = cli("run", "nope", "--path", ROOT / "playbooks", "--dry-run")
    assert r.returncode == 2  # a usage error and "no runbook named 'nope'" in r.stderr
    p = write("bad.yaml", "name: bad\ntitle: [x\n")
    r = cli("run", p, "--dry-run")
    assert r.returncode == 1 and f"{p}:" in r.stderr and "Traceback" not in r.stderr
    r = cli("nonsense")
    assert r.returncode == 2


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_every_shipped_playbook_dry_runs_against_every_shipped_environment(cli, env):
    """Each shipped playbook plans with its example_params against each shipped inventory (as CI runs it)."""
    books = sorted((ROOT / "playbooks").glob("*.yaml"))
    assert len(books) >= 4
    r = cli("validate", "playbooks", "--dry-run", "--env", env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(books)} files checked" in r.stderr
    for book in books:  # and through `run --dry-run`, as a person would try it
        import yaml

        example = yaml.safe_load(book.read_text()).get("example_params") or {}
        args = [a for k, v in example.items() for a in ("-p", f"{k}={v}")]
        r = cli("run", book.stem, "--dry-run", "--env", env, *args, cwd=ROOT)
        assert r.returncode == 0, (book.name, env, r.stderr)
        assert f"inventory/{env}.yaml" in r.stdout


def test_validate_dry_run_plans_each_runbook_with_its_example_params(cli, write, tmp_path):
    inv = write("inv.yaml", "hosts:\n  web1: {address: 127.0.0.1}\n")
    ok = write("books/ok.yaml", """\
        name: ok
        title: OK
        example_params: {host: web1}
        params:
          host: {type: string, required: true}
        stages:
          diagnose:
            - id: look
              ssh: {hosts: "{{ params.host }}", command: uptime}
              readonly: true
        """)
    r = cli("validate", ok, "--dry-run", "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    # what only a dry-run finds: the example names a host the inventory does not have
    ok.write_text(ok.read_text().replace("{host: web1}", "{host: web9}"))
    r = cli("validate", ok, "--dry-run", "--inventory", inv)
    assert r.returncode == 1
    assert f"{ok}:9:" in r.stdout and "dry-run:" in r.stdout and "web9" in r.stdout, r.stdout
    # no example for a required parameter: say where to add one
    ok.write_text(ok.read_text().replace("example_params: {host: web9}\n", ""))
    r = cli("validate", ok, "--dry-run", "--inventory", inv)
    assert r.returncode == 1 and "missing required parameter 'host'" in r.stdout and "example_params" in r.stdout
    # example_params must name declared, non-secret parameters
    ok.write_text(ok.read_text().replace("params:\n", "example_params: {hots: web1}\nparams:\n", 1))
    r = cli("validate", ok)
    assert r.returncode == 1 and "example_params names parameter 'hots'" in r.stdout and "did you mean 'host'" in r.stdout


def test_validate_dry_run_with_a_required_secret(cli, write):
    book = write("books/s.yaml", """\
        name: s
        title: S
        params:
          token: {type: string, secret: true, required: true}
        stages:
          diagnose:
            - id: call
              shell: "curl -H {{ params.token }} http://127.0.0.1:1/"
              readonly: true
        """)
    r = cli("validate", book, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr  # a stand-in: secrets never sit in example_params
    r = cli("validate", book, "--dry-run", env={"RUNBOOK_PARAM_TOKEN": "from-the-env"})
    assert r.returncode == 0 and "from-the-env" not in r.stdout + r.stderr
