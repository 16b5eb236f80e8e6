"""Shell completion: `runbook completion bash|zsh|fish` (shtab, from the real parser) and the fast
helper `runbook __complete` the scripts call on Tab.  The bash script is run in bash: sourced, then
its completion function called with COMP_WORDS/COMP_CWORD/COMP_LINE as bash sets them."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

BOOK = """\
name: {name}
title: T
params:
  service: {{type: string, default: api}}
  level: {{enum: [low, high]}}
  dry: {{type: boolean, default: false}}
stages:
  diagnose:
    - id: look
      shell: "true"
      readonly: true
    - id: done
      end: ok
"""


@pytest.fixture
def shell_env(tmp_path, main):
    """(env, run) for bash: `runbook` on PATH is this checkout; playbooks, an inventory folder and
    one recorded run in tmp_path."""
    pb = tmp_path / "playbooks"
    pb.mkdir()
    for name in ("high-errors", "high-latency", "disk-full"):
        (pb / f"{name}.yaml").write_text(BOOK.format(name=name))
    (tmp_path / "inventory").mkdir()
    for env in ("prod", "staging"):
        (tmp_path / "inventory" / f"{env}.yaml").write_text("hosts: {}\n")
    r = main("run", "disk-full")
    assert r.returncode == 0, r.stdout + r.stderr
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "runbook").write_text(f"#!/bin/sh\nexec {sys.executable} -m runbook \"$@\"\n")
    (bin_dir / "runbook").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = main("completion", "bash")
    assert r.returncode == 0, r.stderr
    (tmp_path / "runbook.bash").write_text(r.stdout)
    return env


def complete(tmp_path, env, line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end), splitting words as bash does
    (COMP_WORDBREAKS: "=" is a word of its own)."""
    probe = textwrap.dedent(r"""
        source runbook.bash
        complete -p runbook >&2
        COMP_LINE="$LINE"; COMP_POINT=${#COMP_LINE}
        words=$(printf '%s' "$COMP_LINE" | sed -e 's/=/ = /g')
        read -ra COMP_WORDS <<< "$words"
        [[ "$COMP_LINE" == *" " || "$COMP_LINE" == *"=" ]] && COMP_WORDS+=("")
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        COMPREPLY=()
        _runbook_complete runbook "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    """)
    r = subprocess.run(["bash", "-c", probe], cwd=tmp_path, env=dict(env, LINE=line), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "-F _runbook_complete runbook" in r.stderr  # complete -p: the function bash calls
    return [w for w in r.stdout.split("\n") if w]


def need(shell: str) -> None:
    """A shell the test runs in: scripts/test installs it; missing, the test fails (CI never skips)."""
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed: apt-get install {shell} (scripts/test does)")


def test_bash_completes_commands_runbooks_params_steps_envs_and_runs(tmp_path, shell_env, audit_dir):
    from runbook.cli import COMMANDS

    need("bash")
    c = lambda line: complete(tmp_path, shell_env, line)  # noqa: E731
    assert c("runbook ") == list(COMMANDS)  # subcommands; the hidden helper is not one
    assert c("runbook ru") == ["run"]
    assert c("runbook re") == ["resume", "report"]
    assert c("runbook audit s") == ["show"]
    assert c("runbook run hi") == ["high-errors", "high-latency"]
    assert c("runbook run ") == ["disk-full", "high-errors", "high-latency"]
    assert c("runbook show d") == ["disk-full"]
    assert c("runbook run hi --path playbooks -p x=1 -y ") == []  # one runbook name only
    assert c("runbook run high-errors --st") == ["--step", "--start-at", "--stage"]
    # parameters: names with "=" (no space after), then enum and boolean values
    assert c("runbook run high-errors -p ") == ["service=", "level=", "dry="]
    assert c("runbook run high-errors -p le") == ["level="]
    assert c("runbook run high-errors -p level=") == ["low", "high"]  # bash puts them after "="
    assert c("runbook run high-errors -p level=h") == ["high"]
    assert c("runbook run high-errors --param dry=") == ["true", "false"]
    assert c("runbook run -y high-errors -p service=x -p ") == ["service=", "level=", "dry="]
    assert c("runbook run nowhere -p ") == []
    assert c("runbook run high-errors --start-at ") == ["look", "done"]
    assert c("runbook run high-errors --stage ") == ["diagnose", "mitigate", "verify"]
    assert c("runbook run high-errors --env ") == ["prod", "staging"]
    assert c("runbook run high-errors -e s") == ["staging"]
    run_id = next(iter(complete(tmp_path, shell_env, "runbook resume ")))
    assert run_id.endswith(tuple("0123456789abcdef")) and len(run_id) > 16
    assert c("runbook report ") == [run_id]
    assert c("runbook audit show ") == [run_id]
    assert c(f"runbook resume {run_id[:8]}") == [run_id]


def test_the_helper_knows_every_option_that_takes_a_value():
    from runbook.cli import build_parser
    from runbook.complete import VALUE_OPTIONS

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for p in action.choices.values():
                    yield from walk(p)
            elif action.option_strings and action.nargs != 0:
                yield from action.option_strings

    assert set(walk(build_parser("*"))) == VALUE_OPTIONS


def test_helper_imports_nothing_heavy_and_errors_in_one_line(tmp_path, main):
    code = ("import sys\nfrom runbook.cli import main\nmain(['__complete', 'runbooks', '--', 'run'])\n"
            "print('MODULES', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('rich', 'yaml', 'jinja2', 'typing', 'dataclasses') or m.startswith('runbook.commands')))\n")
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "one.yaml").write_text("name: one\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.stdout.splitlines() == ["one", "MODULES []"], r.stdout + r.stderr
    r = main("__complete", "nonsense")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stdout == ""
    assert main("__complete", "params", "--", "run", "missing.yaml").stdout == ""  # Tab never shows a traceback


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_ask_the_helper(main, shell, tmp_path):
    r = main("completion", shell)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for kind in ("runbooks", "params", "steps", "envs", "runs"):
        assert f"__complete {kind}" in text
    assert "start-at" in text and "resume" in text
    exe = shutil.which(shell)
    if exe:  # the shell's own syntax check, where it is installed
        script = tmp_path / f"runbook.{shell}"
        script.write_text(text)
        check = subprocess.run([exe, "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_completion_needs_a_known_shell(main):
    r = main("completion", "tcsh")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_fish_completes_from_the_helper(tmp_path, shell_env, main):
    need("fish")
    (tmp_path / "runbook.fish").write_text(main("completion", "fish").stdout)

    def c(line: str) -> list[str]:
        r = subprocess.run(["fish", "-c", f"source runbook.fish; complete -C {line!r}"], cwd=tmp_path, env=shell_env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return [x.split("\t")[0] for x in r.stdout.splitlines()]

    assert c("runbook ru") == ["run"]
    assert c("runbook run hi") == ["high-errors", "high-latency"]
    assert c("runbook run high-errors -p le") == ["level=", "level=low", "level=high"]
    assert c("runbook run high-errors --start-at ") == ["look", "done"]  # -k: in the runbook's order
    assert c("runbook run high-errors --env ") == ["prod", "staging"]
    assert len(c("runbook audit show ")) == 1


def test_zsh_functions_ask_the_helper_with_the_words_before_the_cursor(tmp_path, shell_env, main):
    need("zsh")
    (tmp_path / "_runbook").write_text(main("completion", "zsh").stdout)

    def c(kind: str, *words: str) -> list[str]:
        script = ("compdef() { : }; source ./_runbook 2>/dev/null; "
                  "compadd() { while [[ $1 != -- ]]; do shift; done; shift; print -l -- \"$@\"; }; "
                  f"words=({' '.join(repr(w) for w in words)} ''); CURRENT=${{#words}}; _runbook_complete_{kind}")
        r = subprocess.run(["zsh", "-f", "-c", script], cwd=tmp_path, env=shell_env, capture_output=True, text=True,
                           timeout=30)
        return r.stdout.split()

    assert c("runbooks", "runbook", "run") == ["disk-full", "high-errors", "high-latency"]
    assert c("params", "runbook", "run", "high-errors", "-p") == ["service=", "level=", "level=low", "level=high",
                                                                  "dry=", "dry=true", "dry=false"]
    assert c("steps", "runbook", "run", "high-errors", "--start-at") == ["look", "done"]
    assert c("envs", "runbook", "run", "-e") == ["prod", "staging"]
