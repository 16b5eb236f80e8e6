"""Text from outside (alert labels, command output, step outputs, errors, SQL rows)
never reaches the terminal raw: every control character is shown (ESC as ``\\x1b``),
on a plain output, in guided mode, in ``runbook audit show``, in the Markdown report
and in GitHub annotations (issue 16)."""

from __future__ import annotations

import json

from conftest import book

from runbook import report

FAKE = "\x1b[2J\x1b[31mFAKE: all clear"  # clear the screen, then a red fake status
SHOWN = "\\x1b[2J\\x1b[31mFAKE: all clear"

# A shell step prints the escape (and a CR), an output captures it, a choose step
# branches because of it, and the run ends with a failed step: its stderr too.
BOOK = r"""
  diagnose:
    - id: look
      shell: |
        printf 'prod\033[2J\033[31mFAKE: all clear\nsecond\tline\rover\n'
      readonly: true
      outputs:
        seen: {regex: 'prod(.*)'}
    - id: fail
      shell: |
        printf 'err\033[2J\033[31mFAKE: all clear\n' >&2; exit 3
      readonly: true
      on_failure: continue
"""
HEAD = "params_from_labels: {service: job}\nparams:\n  service: {type: string}\n"


def _alert(tmp_path, label: str):
    doc = {
        "version": "4", "status": "firing", "receiver": "runbook",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "Esc" + label, "job": "api" + label},
            "annotations": {"runbook": "t", "summary": label},
            "startsAt": "2026-11-26T03:02:11.123Z", "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "f00d",
        }],
    }
    p = tmp_path / "alert.json"
    p.write_text(json.dumps(doc))
    return p


def _no_raw(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\x9b" not in text, repr(text)


def test_visible():
    from runbook.ui import visible

    assert visible(FAKE) == SHOWN
    assert visible("a\r\nb\tc\rd\x00\x7f\x9b\x85") == "a\nb\tc\\rd\\x00\\x7f\\x9b\\x85"
    assert visible("x\ny\tz", one_line=True) == "x\\ny\\tz"


def test_alert_line_label_and_output_shown_escaped(main, write, tmp_path):
    """The plain (no terminal) output of `runbook run --alert`: the alert line, the
    parameter from a label, streamed stdout, stderr, outputs and errors."""
    book(write, BOOK, head=HEAD, name="playbooks/t.yaml")
    r = main("run", "--alert", _alert(tmp_path, FAKE + "\nrunbook: all clear"))
    _no_raw(r.stdout)
    _no_raw(r.stderr)
    # the alert line: one line, the label's newline shown too
    line = next(x for x in r.stderr.splitlines() if x.startswith("alert "))
    assert f"alert Esc{SHOWN}\\nrunbook: all clear (f00d" in line
    assert "→ runbook t" in line
    assert not any(x.startswith("runbook: all clear") for x in r.stderr.splitlines() + r.stdout.splitlines())
    assert f"service=api{SHOWN}\\nrunbook: all clear" in r.stdout  # a one-line parameter
    assert f"| prod{SHOWN}" in r.stdout  # streamed output: its newline and tab kept, CR shown
    assert "| second" in r.stdout and "line\\rover" in r.stdout  # (rich expands the tab)
    assert f"| err{SHOWN}" in r.stdout  # stderr
    assert f"seen={SHOWN}" in r.stdout  # a step output


def test_error_branch_and_excerpt_shown_escaped(capsys):
    """Errors in results, branch reasons, excerpts and the run's message (ConsoleUI, plain)."""
    from types import SimpleNamespace

    from runbook.engine import StepResult
    from runbook.ui import ConsoleUI

    ui = ConsoleUI()
    ui.fancy = False
    from runbook.steps import base

    mod = SimpleNamespace(SHOW_OUTPUT="tail", SHOW_LINES=12, output_sections=base.output_sections)
    step = SimpleNamespace(id="q", kind="sql", effect="read", stage="diagnose", module=mod)
    res = StepResult("failed", stdout=f"id | note\n1  | {FAKE}\n", stderr="",
                     error=f"ERROR: relation {FAKE}\n does not exist")
    ui.step_finished(step, res)
    ui.branch(step, f"steps.q.outputs.x == '{FAKE}'", "next")
    ui.run_finished("failed", 1, f"step q failed: {FAKE}")
    ui.notice(f"API error: {FAKE}")
    out, err = capsys.readouterr()
    _no_raw(out + err)
    assert f"ERROR: relation {SHOWN}" in out
    assert f"1  | {SHOWN}" in out
    assert f"because steps.q.outputs.x == '{SHOWN}'" in out
    assert f"step q failed: {SHOWN}" in out
    assert f"runbook: API error: {SHOWN}" in err


def test_audit_show_and_list_escape(main, write, tmp_path, audit_dir):
    book(write, BOOK, head=HEAD, name="playbooks/t.yaml")
    main("run", "--alert", _alert(tmp_path, FAKE))
    run_id = next(r["run"] for r in map(json.loads, (audit_dir / "audit.jsonl").read_text().splitlines()) if r.get("type") == "run_started")
    r = main("audit", "show", run_id)
    assert r.returncode == 0, r.stderr
    _no_raw(r.stdout)
    assert "\\x1b[2J" in r.stdout
    r = main("audit", "list")
    assert r.returncode == 0, r.stderr
    _no_raw(r.stdout)


def test_report_escapes_label_output_and_sql_row(main, write, tmp_path, audit_dir):
    book(write, BOOK, head=HEAD, name="playbooks/t.yaml")
    main("run", "--alert", _alert(tmp_path, FAKE + "\nx"))
    run_id = next(r["run"] for r in map(json.loads, (audit_dir / "audit.jsonl").read_text().splitlines()) if r.get("type") == "run_started")
    r = main("report", run_id)
    assert r.returncode == 0, r.stderr
    _no_raw(r.stdout)
    assert "\\x1b\\[2J" in r.stdout or "\\x1b[2J" in r.stdout
    # the helpers: an SQL row (a block) and a label (code and text), C1 controls too
    row = "\n".join(report.block(f" id | note\n  1 | {FAKE}\x9b"))
    _no_raw(row)
    assert f"  1 | {SHOWN}\\x9b" in row
    _no_raw(report.code(f"job={FAKE}\n"))
    _no_raw(report.text(FAKE))


def test_github_annotation_properties_escaped(main, write, tmp_path):
    bad = write("we,ird:name%.yaml", "name: t\ntitle: T\nstages: 3\n")
    r = main("validate", "--format", "github", bad)
    assert r.returncode == 1
    line = r.stdout.strip().splitlines()[0]
    assert line.startswith("::error file=")
    props, _, msg = line[2:].partition("::")
    file = props.split(" ", 1)[1].split(",line=")[0]
    assert file.endswith("we%2Cird%3Aname%25.yaml"), file
    assert file.startswith("file=") and ":" not in file[5:] and "," not in file[5:]
    assert "\n" not in line


def test_github_annotation_message_escaped():
    from runbook.commands.validate import _gh_data, _gh_property

    assert _gh_data(f"50% a\r\nb {FAKE}") == f"50%25 a%0D%0Ab {SHOWN}"
    assert _gh_property("a:b,c%d\ne") == "a%3Ab%2Cc%25d%0Ae"


def test_guided_mode_shows_escapes(write, tmp_path):
    """On a terminal (rich console, guided mode): the alert line, the label's parameter
    and the streamed output arrive with ESC shown, not sent."""
    import pexpect
    from test_guided import finish, spawn

    book(write, BOOK.split("    - id: fail")[0], head=HEAD, name="playbooks/t.yaml")
    child = spawn(["run", "--alert", _alert(tmp_path, FAKE + "\nrunbook: all clear")], tmp_path)
    child.expect(pexpect.EOF)
    screen = child.before
    assert finish(child) == 0, screen
    assert "\x1b" not in screen, repr(screen)  # TERM=dumb: rich sends none of its own either
    assert f"alert Esc{SHOWN}\\nrunbook: all clear (f00d" in screen
    assert f"│ prod{SHOWN}" in screen  # the guided card's bar: rich drew it
    assert f"seen={SHOWN}" in screen


def test_an_error_quoting_a_label_is_shown_escaped(main, tmp_path):
    import json as _json

    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "x.yaml").write_text("name: x\ntitle: X\nalerts: [Other]\nstages:\n  diagnose:\n    - id: a\n      wait: 0s\n")
    (tmp_path / "a.json").write_text(_json.dumps({"alerts": [{"status": "firing", "labels": {"alertname": "X\x1b[2Jfake"}}]}))
    r = main("run", "--alert", tmp_path / "a.json")
    assert r.returncode != 0 and "\x1b" not in r.stderr and "\\x1b[2Jfake" in r.stderr
