"""`runbook report`: the incident timeline of a run, in Markdown.

Snapshots: tests/snapshots/report_<name>.md are the reports of the runs recorded in
tests/data/report_runs.jsonl, compared byte for byte.  After an intended change of
the report, regenerate them and review the diff:

    UPDATE_SNAPSHOTS=1 python -m pytest -q tests/test_report.py

The recorded log itself is made by tests/data/make_report_log.py (through the real
RunJournal and AuditLog, with a fixed clock); regenerate it only when the record
format changes on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from conftest import book
from runbook import audit, report
from runbook.secrets import Redactor

HERE = Path(__file__).resolve().parent
LOG = HERE / "data" / "report_runs.jsonl"
SNAPSHOTS = HERE / "snapshots"
SECRET = "hunter2-Sup3rSecret"  # the secret of the recorded alert run (see make_report_log.py)

RUNS = {
    "alert": "20261126T143502Z-a1b2c3",
    "declined": "20261126T160000Z-d4e5f6",
    "in_doubt": "20261126T170000Z-0a0b0c",
}


def _meta(started: dict) -> dict:
    # In real use the title and severity come from the runbook file when its sha256
    # still matches (tested end to end below); the recorded paths do not exist here.
    if started.get("runbook") == "high-error-rate":
        return {"title": "High API error rate (>1%) | *prod*", "severity": "SEV2"}
    return {}


def _render(name: str) -> str:
    return report.report(LOG, RUNS[name], meta=_meta)


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


# --- snapshots of the recorded runs ----------------------------------------------------


def test_recorded_log_verifies_and_holds_no_secret() -> None:
    assert audit.verify(LOG).ok
    assert SECRET not in LOG.read_text()
    assert "***" in LOG.read_text()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_snapshot(name: str) -> None:
    got = _render(name)
    snap = SNAPSHOTS / f"report_{name}.md"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.write_text(got, encoding="utf-8")
    assert snap.exists(), f"no snapshot {snap}: run with UPDATE_SNAPSHOTS=1 to create it"
    want = snap.read_text(encoding="utf-8")
    assert got == want, f"the report differs from {snap.name}; if intended: UPDATE_SNAPSHOTS=1 pytest {__file__}"


def test_alert_run_is_timed_from_the_alert() -> None:
    md = _render("alert")
    assert "Offsets are from the alert's `startsAt` (2026-11-26 14:31:10 UTC)" in md
    assert "- **T+00:00:00** (14:31:10) — alert `HighErrorRate` fired" in md
    # the run started 3m51s after the alert fired (14:35:02.1 - 14:31:10.12)
    assert "- **T+00:03:51** (14:35:02) — run started by alice on `oncall-1`" in md
    assert "| Alert fingerprint | `3f9a1c0d2e4b5a69` |" in md
    assert "| Alert fired at | 2026-11-26 14:31:10 UTC |" in md
    assert "| Alert to end of run | 10m 04s |" in md
    assert "**T+00:03:54** (14:35:04) — step `db-connections` attempt 1 failed: exit code 2; retrying" in md
    assert "step `db-connections` **ok** in 3.10s, after 2 attempts, exit code 0; outputs: `n` = `142`" in md
    assert "event `escalation_due`: after: `300`; elapsed: `300`; to: `database-oncall`" in md


def test_failed_step_with_on_failure() -> None:
    md = _render("alert")
    assert "step `restart` **approved** by alice (`prompt`: at the prompt)" in md
    assert "step `restart` **failed** in 2m 00s, exit code 1; the run went on to `scale`" in md
    assert "last 10 lines of the output (634 bytes in all):" in md
    assert "- [ ] `restart` ended **failed** (exit code 1); the run went on to `scale`." in md
    resolution = md.split("## Resolution")[1].split("## Action items")[0]
    assert "- `restart` **failed**, approved by alice (`prompt`)" in resolution
    assert "- `scale` **ok**, approved by alice (`prompt`): `kubectl scale deployment/api -n production --replicas=5`" in resolution
    assert "Outcome: **resolved** (exit 0)." in resolution


def test_declined_write_step() -> None:
    md = _render("declined")
    assert "Offsets are from the start of the run (it did not come from an alert)" in md
    assert "- **T+00:01:10** (16:01:10) — step `drain-wal` **declined** by bob (`prompt`: at the prompt); it did not run" in md
    assert "- **T+00:01:10** (16:01:10) — **run refused** (exit 3)" in md
    assert "- [ ] `drain-wal` was declined by bob (`prompt`) and did not run" in md


def test_step_in_doubt() -> None:
    md = _render("in_doubt")
    assert "| Outcome | **in doubt** |" in md
    assert "| Steps in doubt | `promote`: started, no result recorded — may or may not have run |" in md
    assert "  - **In doubt:** no result was recorded for `promote`: it may or may not have run." in md
    assert "**end of the log**: no record of the run finishing" in md
    assert "- [ ] `promote` is in doubt" in md
    assert audit.summarize(audit.run_records(LOG, RUNS["in_doubt"]))["in_doubt"] == ["promote"]


def test_secrets_stay_masked() -> None:
    for name in RUNS:
        assert SECRET not in _render(name)
    md = _render("alert")
    assert "`token=***`" in md
    assert "Unauthorized (token *** rejected)" in md


def test_markdown_stays_well_formed() -> None:
    """Pipes, backticks, fences and terminal escapes in values do not break the document."""
    md = _render("alert")
    tokens = _markdown().parse(md)
    # the summary table: every row has exactly two cells
    cells, rows = 0, 0
    for t in tokens:
        if t.type == "tr_open":
            rows, cells = rows + 1, 0
        elif t.type in ("td_open", "th_open"):
            cells += 1
        elif t.type == "tr_close":
            assert cells == 2
    assert rows > 15
    spans = [c.content for t in tokens if t.type == "inline" for c in t.children or [] if c.type == "code_inline"]
    assert "team=payments|core" in spans  # a pipe inside a table cell
    assert ('kubectl --token "${RUNBOOK_SECRET_TOKEN}" rollout restart deployment/api -n production '
            "| tee /tmp/restart-`date +%s`.log") in spans  # backticks in a command
    fences = [t.content for t in tokens if t.type == "fence"]
    assert len(fences) == 1
    assert fences[0].splitlines()[-2:] == ["```", "exit status 1"]  # a fence line in the output stays inside
    assert "\x1b" not in md and "\\x1b[31merror:" in fences[0]
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]
    assert headings == ["Summary", "Timeline", "Impact", "Root cause", "Resolution", "Action items", "Lessons learned"]
    title = next(tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1")
    assert title == r"Incident report: High API error rate (\>1%) \| \*prod\*"
    html = _markdown().render(md)
    assert "High API error rate (&gt;1%) | *prod*</h1>" in html


@pytest.mark.parametrize(
    ("value", "shown"),
    [("a|b", "a|b"), ("x `y` z", "x `y` z"), ("``", "``"), ("`a", "`a"), ("", '""'), ("two\nlines", "two ⏎ lines")],
)
def test_code_spans_round_trip(value: str, shown: str) -> None:
    cell = f"| k | {report._cell(report.code(value))} |"
    for md in (f"x {report.code(value)} y", f"| h | h |\n|---|---|\n{cell}\n"):
        tokens = _markdown().parse(md)
        spans = [c.content for t in tokens if t.type == "inline" for c in t.children or [] if c.type == "code_inline"]
        assert spans == ([] if value == "" else [shown])


def test_text_is_escaped() -> None:
    md = "x " + report.text("*bold* _it_ [link](http://x) <b>tag</b> a|b `c` #1 ~~s~~ &amp; \\") + " y"
    html = _markdown().render(md)
    assert html == "<p>x *bold* _it_ [link](http://x) &lt;b&gt;tag&lt;/b&gt; a|b `c` #1 ~~s~~ &amp;amp; \\ y</p>\n"


# --- records the engine may write now or later ------------------------------------------


def _write_log(directory: Path, run_id: str, records: list[tuple[str, dict]], secret: str | None = None) -> Path:
    with audit.AuditLog(directory) as log:
        j = audit.RunJournal(log, run_id, Redactor([secret] if secret else []))
        for kind, fields in records:
            if kind == "run_started":
                j.run_started(**fields)
            else:
                j.event(kind, **fields)
    return directory / audit.LOG_NAME


STARTED = dict(runbook="t", path="t.yaml", sha256="0" * 64, git_commit=None, params={}, dry_run=False,
               who="dana", host="h", argv=["run", "t"])


def test_unknown_record_types_and_guided_decisions(tmp_path: Path) -> None:
    path = _write_log(tmp_path, "R-guided", [
        ("run_started", STARTED),
        ("resumed", {"from_run": "R-earlier"}),
        ("decision", {"step": "a", "approved": True, "by": "dana", "how": "mark-done"}),
        ("step_intent", {"step": "b", "kind": "shell", "stage": "mitigate", "effect": "write", "targets": ["x"],
                         "rendered": "multi\nline `cmd`", "attempt": 1}),
        ("step_result", {"step": "b", "status": "failed", "exit_code": 2, "duration": 0.5, "error": "boom",
                         "output_excerpt": "", "attempt": 1, "data": {"big": "x" * 10_000}}),
        ("decision", {"step": "b", "approved": True, "by": "dana", "how": "retry"}),
        ("step_intent", {"step": "b", "kind": "shell", "stage": "mitigate", "effect": "write", "targets": ["x"],
                         "rendered": "multi\nline `cmd`", "attempt": 1}),
        ("step_result", {"step": "b", "status": "interrupted", "exit_code": None, "duration": 1.0, "attempt": 1,
                         "error": "interrupted (Ctrl-C); the step was stopped"}),
        ("decision", {"step": "b", "approved": False, "by": "dana", "how": "abort"}),
        ("decision", {"step": "c", "approved": False, "by": "dana", "how": "step-mode", "choice": "skip"}),
        ("step_result", {"step": "c", "status": "skipped", "exit_code": None, "duration": 0.0,
                         "error": "skipped by the operator"}),
        ("escalation_due", {"to": "team-lead", "after": 900, "elapsed": 901}),
        ("interrupted", {"step": "b"}),
        ("weird", {"nested": {"a": [1, 2, {"b": "|`"}]}, "n": None}),
        ("run_finished", {"status": "aborted", "exit_code": 1}),
    ])
    md = report.report(path, "R-guided", meta=lambda s: {})
    assert "**run resumed** by ? on `?`; from\\_run: `R-earlier`" in md
    assert "step `a` was in doubt: **marked done** by dana on resume" in md
    assert "  ```\n  multi\n  line `cmd`\n  ```" in md
    assert "data" not in md.split("## Timeline")[1].split("## Impact")[0].replace("date", "")
    assert "after step `b` failed, dana chose **retry**" in md  # a choice after a failure, not an approval
    assert "after step `b` interrupted, dana chose **abort**" in md
    assert "step `c` **skipped** by dana (`step-mode`); it did not run" in md
    assert "step `c` **skipped** in 0.00s: skipped by the operator" in md
    assert "event `escalation_due`: after: `900`; elapsed: `901`; to: `team-lead`" in md
    assert "**run interrupted** (Ctrl-C or SIGTERM) during step `b`" in md
    assert 'event `weird`: nested: `{"a": [1, 2, {"b": "|`"}]}`' not in md  # the fence grows past the backtick
    assert 'event `weird`: nested: ``{"a": [1, 2, {"b": "|`"}]}``' in md
    assert "**aborted by the operator** (exit 1)" in md
    items = md.split("## Action items")[1].split("## Lessons")[0]
    assert "- [ ] `b` ended **failed** (boom); then dana chose **retry**" in items
    assert "- [ ] `b` ended **interrupted** (interrupted (Ctrl-C); the step was stopped); then dana chose **abort**" in items
    assert "- [ ] `c` was skipped (skipped by the operator), skipped by dana (`step-mode`)" in items
    assert items.count("- [ ]") == 3


def test_odd_records_do_not_crash(tmp_path: Path) -> None:
    path = _write_log(tmp_path, "R-odd", [
        ("step_result", {"step": "early", "status": "failed", "duration": "n/a", "attempts": "x"}),
        ("step_intent", {"step": 7, "rendered": None, "targets": "not a list"}),
        ("decision", {"approved": True}),
        ("run_started", {**STARTED, "params": "not a dict",
                         "alert": {"name": "A", "startsAt": "not a time", "labels": None}}),
        ("run_finished", {"status": None, "exit_code": None}),
    ])
    md = report.report(path, "R-odd", meta=lambda s: {})
    assert "Offsets are from the start of the run (the alert has no usable `startsAt`)" in md
    assert "| Alert fired at | unknown (`not a time`) |" in md
    assert "step `early` **failed** in n/a" in md


def test_run_ids(tmp_path: Path) -> None:
    path = _write_log(tmp_path, "20260101T000000Z-aaaaaa", [("run_started", STARTED)])
    _write_log(tmp_path, "20260101T000000Z-bbbbbb", [("run_started", {**STARTED, "runbook": "second"})])
    assert "runbook `second`" in report.report(path, "last", meta=lambda s: {})
    assert "runbook `t`" in report.report(path, "20260101T000000Z-a", meta=lambda s: {})
    with pytest.raises(audit.RunbookError, match="ambiguous"):
        report.report(path, "2026", meta=lambda s: {})
    with pytest.raises(audit.RunbookError, match="no run 'zzz'"):
        report.report(path, "zzz", meta=lambda s: {})
    with pytest.raises(audit.RunbookError, match="no runs recorded"):
        report.report(tmp_path / "none.jsonl", "last", meta=lambda s: {})


# --- end to end through the CLI ------------------------------------------------------------


STEPS = """\
  diagnose:
    - id: look
      shell: "echo ratio=0.07"
      readonly: true
      outputs:
        ratio: {regex: 'ratio=([0-9.]+)', type: number}
  mitigate:
    - id: restart
      shell: "echo restarting {{ params.service }} | tr a-z A-Z; exit 3"
      timeout: 10s
      on_failure: scale
    - id: scale
      shell: "echo scaled to 5; echo token $RUNBOOK_SECRET_TOKEN"
      timeout: 10s
  verify:
    - id: healthy
      shell: "true"
      readonly: true
    - id: done
      end: "healthy again"
"""
HEAD = """\
params:
  service: {type: string, default: api}
  token: {type: string, secret: true}
"""


def _live_run(main, write, tmp_path: Path) -> str:
    book(write, STEPS, head=HEAD)
    r = main("run", "t.yaml", "--yes", env={"RUNBOOK_PARAM_TOKEN": "tok-SECRET-42"})
    assert r.returncode == 0, r.stderr
    runs = audit.list_runs(Path(os.environ["RUNBOOK_AUDIT_DIR"]) / audit.LOG_NAME)
    assert len(runs) == 1
    return runs[0]["run"]


def test_cli_report_of_a_live_run(main, write, tmp_path: Path) -> None:
    run_id = _live_run(main, write, tmp_path)
    r = main("report", "last")
    assert r.returncode == 0, r.stderr
    md = r.stdout
    assert md.startswith("# Incident report: T\n\nRun `" + run_id + "`")  # the title, from the unchanged file
    assert main("report", run_id[:12]).stdout == md
    lines = md.splitlines()

    def line(fragment: str) -> str:
        found = [x for x in lines if fragment in x]
        assert found, fragment
        return found[0]

    assert "Offsets are from the start of the run (it did not come from an alert)" in md
    assert re.match(r"- \*\*T\+00:00:00\*\* \(\d\d:\d\d:\d\d\) — run started by .+: `runbook run t.yaml --yes`$",
                    line("run started"))
    assert line("step `look` started").endswith("— diagnose · step `look` started (shell, read) on `localhost`: `echo ratio=0.07`")
    assert re.search(r"step `look` \*\*ok\*\* in \d\.\d\ds, exit code 0; outputs: `ratio` = `0.07`$", line("step `look` **ok**"))
    assert line("step `restart` **approved**").endswith("step `restart` **approved** by " + line("run started").split("run started by ")[1].split(" on ")[0] + " (`--yes`: on the command line)")
    assert line("step `restart` started").endswith("mitigate · step `restart` started (shell, write) on `localhost`: `echo restarting api | tr a-z A-Z; exit 3`")
    assert re.search(r"step `restart` \*\*failed\*\* in \d\.\d\ds, exit code 3; the run went on to `scale`$", line("step `restart` **failed**"))
    assert "  RESTARTING API" in lines
    assert line("step `done` **ok**").endswith(": healthy again")
    assert line("**run resolved**").endswith("**run resolved** (exit 0)")
    assert "| Parameters | `service=api`, `token=***` |" in lines
    assert "| Outcome | **resolved** (exit 0) |" in lines
    assert "- [ ] `restart` ended **failed** (exit code 3); the run went on to `scale`." in md
    assert "- `scale` **ok**, approved by" in md
    for section in ("## Summary", "## Timeline", "## Impact", "## Root cause", "## Resolution", "## Action items",
                    "## Lessons learned"):
        assert section in lines
    assert "tok-SECRET-42" not in md
    assert "Warning" not in md

    out = tmp_path / "pm.md"
    r = main("report", run_id, "-o", out)
    assert r.returncode == 0 and r.stdout == ""
    assert out.read_text() == md
    assert "report written to" in r.stderr


def test_cli_unknown_and_ambiguous_ids(main, write, tmp_path: Path) -> None:
    r = main("report", "last")
    assert r.returncode == 1
    assert r.stderr.startswith("runbook: error: no runs recorded in ") and r.stderr.count("\n") == 1
    _live_run(main, write, tmp_path)
    r = main("report", "nope")
    assert r.returncode == 2 and r.stdout == ""  # a usage error
    assert r.stderr.startswith("runbook: error: no run 'nope' in the audit log") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr
    assert main("run", "t.yaml", "--dry-run").returncode == 0
    r = main("report", "20")
    assert r.returncode == 2 and "ambiguous" in r.stderr and r.stderr.count("\n") == 1
    r = main("report")
    assert r.returncode == 2 and "RUN_ID" in r.stderr


def test_cli_tampered_log_is_refused_or_reported_with_a_warning(main, write, tmp_path: Path) -> None:
    run_id = _live_run(main, write, tmp_path)
    path = Path(os.environ["RUNBOOK_AUDIT_DIR"]) / audit.LOG_NAME
    lines = path.read_text().splitlines(keepends=True)
    number = next(i for i, x in enumerate(lines) if '"step":"restart"' in x and '"step_result"' in x)
    record = json.loads(lines[number])
    record["status"] = "ok"  # someone hides the failure
    lines[number] = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    path.write_text("".join(lines))
    assert main("audit", "verify").returncode == 1
    r = main("report", "last")  # a report would rest on a changed record: refused, naming the place
    assert r.returncode == 1 and r.stdout == "" and f"line {number + 1}" in r.stderr and "--force" in r.stderr
    r = main("report", "last", "--force")
    assert r.returncode == 0, r.stderr
    warning = r.stdout.splitlines()[4]
    assert warning.startswith(f"> **Warning: the audit log does not verify** at `{path}:{number + 1}` (a record of this run): "
                              "record was modified (hash mismatch).")
    assert "## Timeline" in r.stdout and run_id in r.stdout


def test_report_copied_log_elsewhere_with_dir(main, tmp_path: Path) -> None:
    d = tmp_path / "copy"
    d.mkdir()
    shutil.copyfile(LOG, d / audit.LOG_NAME)
    r = main("report", "--dir", d, "20261126T17")
    assert r.returncode == 0, r.stderr
    assert "may or may not have run" in r.stdout


def test_title_from_the_recorded_source_or_the_unchanged_file(tmp_path: Path) -> None:
    import hashlib

    text = "name: t\ntitle: 'Disk | full'\nseverity: SEV2\nstages: {}\n"
    f = tmp_path / "t.yaml"
    f.write_text(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    want = {"title": "Disk | full", "severity": "SEV2"}
    assert report.runbook_meta({"source": text, "path": "/nonexistent.yaml", "sha256": "x"}) == want
    assert report.runbook_meta({"path": str(f), "sha256": sha}) == want
    assert report.runbook_meta({"path": str(f), "sha256": "0" * 64}) == {}  # changed since: not trusted
    assert report.runbook_meta({"source": "a: [unclosed"}) == {}
    assert report.runbook_meta({}) == {}


def test_cli_report_of_a_run_from_an_alert(main, write, tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    write("books/t.yaml", "name: t\ntitle: T\nalerts: [HighErrorRate]\nparams_from_labels: {service: job}\n"
          "params:\n  service: {type: string}\nstages:\n" + STEPS)
    fired = datetime.now(timezone.utc) - timedelta(minutes=2)
    payload = {"version": "4", "status": "firing", "alerts": [{
        "status": "firing", "labels": {"alertname": "HighErrorRate", "job": "api"}, "annotations": {},
        "startsAt": fired.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "f1f2f3", "generatorURL": "http://prometheus/graph?g0.expr=x|y"}]}
    write("alert.json", json.dumps(payload))
    r = main("run", "--alert", "alert.json", "--path", "books", "--yes")
    assert r.returncode == 0, r.stderr
    md = main("report", "last").stdout
    assert f"Offsets are from the alert's `startsAt` ({fired:%Y-%m-%d %H:%M:%S} UTC)" in md
    assert f"- **T+00:00:00** ({fired:%H:%M:%S}) — alert `HighErrorRate` fired" in md
    assert re.search(r"^- \*\*T\+00:0[23]:\d\d\*\* \(\d\d:\d\d:\d\d\) — run started by ", md, re.M)
    assert "| Alert labels | `alertname=HighErrorRate`, `job=api` |" in md
    assert "| Alert fingerprint | `f1f2f3` |" in md
    assert "| Alert source | `http://prometheus/graph?g0.expr=x\\|y` |" in md
    assert re.search(r"^\| Started \| .* UTC \(T\+00:0[23]:\d\d\) \|$", md, re.M)


def test_a_torn_last_line_is_a_crash_not_tampering(main, write, tmp_path: Path) -> None:
    run_id = _live_run(main, write, tmp_path)
    path = Path(os.environ["RUNBOOK_AUDIT_DIR"]) / audit.LOG_NAME
    with open(path, "ab") as f:
        f.write(b'{"type":"step_in')  # a crash in the middle of a write
    r = main("report", run_id)
    assert r.returncode == 0, r.stderr
    assert "torn write" in r.stdout and "does not verify" not in r.stdout and "modified" not in r.stdout.split("## Summary")[0]


def test_the_report_does_not_call_a_refused_run_that_received_a_resolution_a_crash(main, write, tmp_path: Path) -> None:
    """The alert_resolved record that `run --alert` (another process) writes after the run's
    run_finished is not the run's last record: the resume after it follows a clean stop."""
    from test_alert import ENDS, FIX, payload, records, resolved

    audit_dir = Path(os.environ["RUNBOOK_AUDIT_DIR"])
    write("playbooks/fix.yaml", FIX.replace("{tmp}", str(tmp_path)))
    (tmp_path / "go").touch()
    assert main("run", "--alert", payload(tmp_path)).returncode == 3  # refused cleanly: run_finished is recorded
    run_id = [x for x in records(audit_dir) if x["type"] == "run_started"][0]["run"]
    assert main("run", "--alert", payload(tmp_path, resolved(), "r.json")).returncode == 0
    assert main("resume", run_id, "--yes").returncode == 0
    r = main("report", run_id)
    assert r.returncode == 0, r.stderr
    assert "the run stopped without finishing" not in r.stdout, r.stdout  # nothing crashed
    assert re.search(rf"— alert `HighErrorRate` resolved at {re.escape(ENDS)} \(`c3b0e1f2a4d5e6f7`\); "
                     r"recorded by \S+ on `[^`]+`$", r.stdout, re.M), r.stdout
    assert "event `alert_resolved`" not in r.stdout


def test_a_crash_before_a_resolution_is_still_a_crash(tmp_path: Path) -> None:
    path = _write_log(tmp_path, "R-crash", [
        ("run_started", STARTED),
        ("step_intent", {"step": "w", "kind": "shell", "stage": "mitigate", "effect": "write", "targets": [],
                         "rendered": "restart", "attempt": 1}),
        # killed here; then the alert resolves (recorded by run --alert), and someone resumes
        ("alert_resolved", {"alertname": "A", "fingerprint": "f1", "endsAt": "2026-11-26T03:41:07Z", "who": "pat",
                            "host": "h2", "labels": {"alertname": "A"}, "startsAt": "2026-11-26T03:00:00Z"}),
        ("resumed", {"who": "dana", "host": "h"}),
        ("run_finished", {"status": "resolved", "exit_code": 0}),
    ])
    md = report.report(path, "R-crash", meta=lambda s: {})
    timeline = md.split("## Timeline")[1].split("## Impact")[0]
    assert "— alert `A` resolved at 2026-11-26T03:41:07Z (`f1`); recorded by pat on `h2`\n" in timeline
    crash = [line for line in timeline.splitlines() if "the run stopped without finishing" in line]
    assert len(crash) == 1 and crash[0].endswith(
        "**the run stopped without finishing**: the record before the alert resolution above is its last before "
        "anyone came back to it (its process was killed, crashed, or lost its machine); `w` may or may not have run"), crash
