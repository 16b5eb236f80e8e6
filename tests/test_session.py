"""The run lifecycle (runbook.session) in-process: a scripted operator
(tests/fakeui.py), a real audit log in a temp dir, real local commands.
A crash is simulated where the engine cannot see it coming (right after a
step's intent is durable), which leaves the log exactly as kill -9 does;
the real kill -9 tests are in test_crash.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from fakeui import Crash, FakeUI
from runbook import audit, procs, report, session, spec
from runbook.errors import RunbookError

MD = """\
name: md
title: MD
alerts: [Pool]
stages:
  diagnose:
    - id: look
      shell: "echo look >> {tmp}/ran"
      readonly: true
  mitigate:
    - id: count
      shell: "echo n=9; echo count >> {tmp}/ran"
      timeout: 5s
      outputs:
        n: {{regex: 'n=(\\d+)', type: integer}}
    - id: decide
      choose:
        - when: "steps.count.outputs.n > 5"
          goto: many
        - default: few
    - id: many
      shell: "echo many >> {tmp}/ran"
      timeout: 5s
      next: check
    - id: few
      shell: "echo few >> {tmp}/ran"
      timeout: 5s
  verify:
    - id: check
      shell: "echo check >> {tmp}/ran"
      readonly: true
"""


@pytest.fixture
def md(tmp_path):
    p = tmp_path / "md.yaml"
    p.write_text(MD.format(tmp=tmp_path))
    return p


def records(audit_dir, run_id=None):
    recs = list(audit.read_records(audit_dir / audit.LOG_NAME))
    return [r for r in recs if run_id is None or r.get("run") == run_id]


def ran(tmp_path):
    f = tmp_path / "ran"
    return f.read_text().split() if f.exists() else []


def start(path, ui=None, **kw):
    return session.start(session.RunRequest(runbook=spec.find(str(path), []), **kw), ui or FakeUI())


def resume(run_id, ui=None, **kw):
    return session.resume(session.ResumeRequest(run_id=run_id, **kw), ui or FakeUI())


def crash(path, step, audit_dir, **kw):
    """A run whose process dies right after ``step``'s intent is durable; its run id."""
    with pytest.raises(Crash):
        start(path, FakeUI(crash_at=step), yes=True, **kw)
    return records(audit_dir)[-1]["run"]


def alert(fp="fp1", starts="2026-12-05T03:00:00Z"):
    from runbook.alert import Alert

    return Alert(name="Pool", status="firing", labels={"alertname": "Pool"}, annotations={}, starts_at=starts,
                 fingerprint=fp)


# --- a run's life --------------------------------------------------------------------------------


def test_a_live_run_and_a_plan(md, tmp_path, audit_dir):
    ui = FakeUI()
    out = start(md, ui, yes=False, interactive=True)
    assert (out.status, out.exit_code) == ("completed", 0)
    assert ran(tmp_path) == ["look", "count", "many", "check"]
    assert ui.names("confirm") == ["count", "many"]  # writes ask; reads and the branch do not
    recs = records(audit_dir, out.run_id)
    assert recs[0]["type"] == "run_started" and recs[-1]["type"] == "run_finished"
    intent = next(r for r in recs if r["type"] == "step_intent")
    assert intent["runner"]["pid"] == os.getpid() and intent["runner"]["host"]  # what runs the work
    plan = start(md, dry_run=True)
    assert plan.status == "planned" and [e.step.id for e in plan.plan] == ["look", "count", "decide", "many", "few", "check"]
    assert ran(tmp_path) == ["look", "count", "many", "check"]  # the plan ran nothing


def test_without_an_operator_a_write_stops_the_run_and_resume_goes_on(md, tmp_path, audit_dir):
    out = start(md)  # not interactive, no --yes
    assert out.exit_code == 3 and ran(tmp_path) == ["look"]
    out = resume(out.run_id, yes=True)
    assert out.exit_code == 0 and ran(tmp_path) == ["look", "count", "many", "check"]
    assert audit.verify(audit_dir / audit.LOG_NAME).ok


# --- 2: one run per alert survives a crash -------------------------------------------------------


def test_after_a_crash_a_new_run_for_the_alert_is_refused_until_resumed(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir, alert=alert())
    with pytest.raises(RunbookError) as e:
        start(md, yes=True, alert=alert())
    assert e.value.exit_code == 3
    assert f"run {rid}" in str(e.value) and f"runbook resume {rid}" in str(e.value) and "count" in str(e.value)
    assert ran(tmp_path) == ["look"]
    # another alert (another fingerprint) is not held up
    assert start(md, yes=True, alert=alert("fp2")).exit_code == 0
    # --force starts one anyway, and says so in its log
    ui = FakeUI()
    out = start(md, ui, yes=True, alert=alert(), force=True)
    assert out.exit_code == 0
    forced = [r for r in records(audit_dir, out.run_id) if r["type"] == "forced"]
    assert forced and rid in forced[0]["warning"] and any("--force" in n for n in ui.notices)


def test_a_refused_run_does_not_hide_the_unfinished_one(md, audit_dir):
    rid = crash(md, "count", audit_dir, alert=alert())
    for _ in range(2):  # the refused runs finish ("refused") without a step: the crashed one still counts
        with pytest.raises(RunbookError, match=rid):
            start(md, yes=True, alert=alert())


def test_resume_of_the_crashed_alert_run_then_new_runs_start(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir, alert=alert())
    assert resume(rid, yes=True, rerun=True).exit_code == 0
    assert start(md, yes=True, alert=alert()).exit_code == 0


def test_resume_refuses_to_rerun_a_step_whose_process_still_runs(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        with audit.AuditLog(audit_dir) as log:  # what the shell step records once its command runs
            audit.RunJournal(log, rid, audit.Redactor()).event(
                "step_process", step="count", **{k: v for k, v in procs.identity(orphan.pid).items()})
        with pytest.raises(RunbookError) as e:
            resume(rid, yes=True, rerun=True)
        assert e.value.exit_code == 3 and str(orphan.pid) in str(e.value) and "still running" in str(e.value)
        refused = [r for r in records(audit_dir, rid) if r["type"] == "resume_refused"]
        assert refused and str(orphan.pid) in refused[-1]["reason"]
        assert ran(tmp_path) == ["look"]
    finally:
        orphan.kill()
        orphan.wait()
    assert resume(rid, yes=True, rerun=True).exit_code == 0  # gone: now it may run again
    assert ran(tmp_path) == ["look", "count", "many", "check"]


# --- 3: marking done a step whose outputs are read later -------------------------------------------


def test_mark_done_asks_for_the_outputs_later_steps_read(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    with pytest.raises(RunbookError) as e:  # no terminal, no --output: refused with the hint, nothing run
        resume(rid, yes=True, mark_done=True)
    assert e.value.exit_code == 3 and "--output count.n=VALUE" in str(e.value)
    assert ran(tmp_path) == ["look"]
    assert records(audit_dir, rid)[-1]["type"] == "resume_refused"
    out = resume(rid, yes=True, mark_done=True, outputs={"count.n": "2"})
    assert out.exit_code == 0, out.message
    assert ran(tmp_path) == ["look", "few", "check"]  # the branch read the given value; count did not run again
    marked = [r for r in records(audit_dir, rid) if r["type"] == "step_result" and r.get("marked_done_by")]
    assert marked[0]["outputs"] == {"n": 2} and marked[0]["observed"] is False


def test_mark_done_in_a_terminal_asks_the_operator(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    ui = FakeUI(in_doubt="mark-done", outputs={"count.n": "12"})
    assert resume(rid, ui, yes=True, interactive=True).exit_code == 0
    assert ui.names("in_doubt") == ["count"] and ui.names("output_value") == ["count.n"]
    assert ran(tmp_path) == ["look", "many", "check"]


def test_a_bad_output_value_is_one_line(md, audit_dir):
    rid = crash(md, "count", audit_dir)
    with pytest.raises(RunbookError, match="count.n: invalid literal|count.n: .*integer"):
        resume(rid, yes=True, mark_done=True, outputs={"count.n": "many"})


def test_mark_done_is_refused_when_later_steps_read_what_only_running_gives(tmp_path, audit_dir):
    p = tmp_path / "so.yaml"
    p.write_text(MD.format(tmp=tmp_path).replace('when: "steps.count.outputs.n > 5"', 'when: "\'9\' in steps.count.stdout"'))
    rid = crash(p, "count", audit_dir)
    with pytest.raises(RunbookError, match="stdout.*--rerun"):
        resume(rid, yes=True, mark_done=True)


# --- 4: read steps are never in doubt ---------------------------------------------------------------


def test_a_read_step_cut_short_by_a_crash_runs_again_without_asking(md, tmp_path, audit_dir):
    rid = crash(md, "look", audit_dir)
    assert audit.summarize(records(audit_dir, rid))["in_doubt"] == []
    ui = FakeUI()
    assert resume(rid, ui, yes=True).exit_code == 0  # no --rerun, no --mark-done, no question
    assert ui.names("in_doubt") == [] and ran(tmp_path) == ["look", "count", "many", "check"]


def test_a_write_step_cut_short_is_in_doubt_and_the_operator_decides(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    assert audit.summarize(records(audit_dir, rid))["in_doubt"] == ["count"]
    with pytest.raises(RunbookError, match="in doubt.*--mark-done or --rerun"):
        resume(rid, yes=True)
    ui = FakeUI(in_doubt="abort")
    with pytest.raises(RunbookError, match="still in doubt"):
        resume(rid, ui, yes=True, interactive=True)
    assert ran(tmp_path) == ["look"]
    types = [r["type"] for r in records(audit_dir, rid)]
    assert types[-2:] == ["resume_refused", "resume_declined"] and "resumed" not in types


# --- 5: the report of a crashed and resumed run -------------------------------------------------------


def test_report_shows_the_crash_the_resume_in_order_and_the_marked_step(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    with pytest.raises(RunbookError):
        resume(rid, yes=True)  # refused: in doubt
    assert resume(rid, yes=True, mark_done=True, outputs={"count.n": "7"}).exit_code == 0
    text = report.report(audit_dir / audit.LOG_NAME, rid)
    timeline = text.split("## Timeline")[1].split("## Impact")[0]
    order = [timeline.index(s) for s in ("step `count` started", "**the run stopped without finishing**",
                                         "**resume refused**", "**run resumed**", "was in doubt: **marked done**",
                                         "**marked done by", "step `many` started")]
    assert order == sorted(order), timeline
    assert "`count` may or may not have run" in timeline
    line = next(x for x in text.split("## Resolution")[1].splitlines() if x.startswith("- `count`"))
    assert "**in doubt, marked done by" in line and "(not observed)" in line and "**ok**" not in line
    items = text.split("## Action items")[1]
    assert "`count` was in doubt" in items and "marked done by" in items
    assert "no step failed" not in items


def test_report_of_a_rerun_in_doubt_step_has_an_action_item(md, audit_dir):
    rid = crash(md, "count", audit_dir)
    assert resume(rid, yes=True, rerun=True).exit_code == 0
    items = report.report(audit_dir / audit.LOG_NAME, rid).split("## Action items")[1]
    assert "`count` was in doubt" in items and "run again" in items


# --- 6: SIGTERM is recorded as such ------------------------------------------------------------------


def test_sigterm_stops_the_run_and_is_recorded_as_sigterm(tmp_path, audit_dir):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\ntitle: T\nstages:\n  diagnose:\n    - id: slow\n      shell: sleep 20\n      readonly: true\n")

    def term(step):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()

    t0 = time.monotonic()
    ui = FakeUI(on_step=term)
    out = start(p, ui, interactive=True)  # even with a person there: SIGTERM means stop
    assert time.monotonic() - t0 < 10
    assert (out.status, out.exit_code) == ("interrupted", 130) and "SIGTERM" in out.message
    assert ui.names("after_failure") == []
    recs = records(audit_dir, out.run_id)
    assert [r.get("signal") for r in recs if r["type"] in ("interrupted", "run_finished")] == ["SIGTERM", "SIGTERM"]
    res = next(r for r in recs if r["type"] == "step_result")
    assert "SIGTERM" in res["error"] and "Ctrl-C" not in res["error"]
    text = report.report(audit_dir / audit.LOG_NAME, out.run_id)
    assert "interrupted (SIGTERM)" in text and "Ctrl-C" not in text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the host's again


def test_resume_of_a_finished_run_says_so(md, audit_dir):
    out = start(md, yes=True)
    again = resume(out.run_id)
    assert again.exit_code == 0 and "already finished: completed" in again.note


def test_resume_of_an_unknown_or_dry_run(md, audit_dir):
    with pytest.raises(RunbookError, match="no run"):
        resume("nope")
    plan = start(md, dry_run=True)
    with pytest.raises(RunbookError, match="was a dry-run"):
        resume(plan.run_id)


def test_the_runbook_changed_is_refused_and_recorded(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    md.write_text(md.read_text().replace("echo n=9", "echo n=8"))
    ui = FakeUI()
    with pytest.raises(RunbookError, match="changed since"):
        resume(rid, ui, yes=True, rerun=True)
    assert any("-      shell: \"echo n=9" in n for n in ui.notices)
    assert records(audit_dir, rid)[-1]["type"] == "resume_refused"
    assert resume(rid, yes=True, rerun=True, force=True).exit_code == 0
    assert ran(tmp_path) == ["look", "count", "many", "check"]


def test_the_journal_is_valid_json_lines(md, audit_dir):
    start(md, yes=True)
    for line in (audit_dir / audit.LOG_NAME).read_text().splitlines():
        json.loads(line)


# --- where a resumed run goes on (moved from the pty tests; each case from a review) ---------------

ONF = """\
name: onf
title: O
alerts: [X]
stages:
  diagnose:
    - id: look
      shell: "echo look >> {tmp}/ran; false"
      readonly: true
      on_failure: continue
    - id: branch
      choose:
        - when: "steps.look.exit_code == 1"
          goto: fix
        - default: check
  mitigate:
    - id: fix
      shell: "echo fix >> {tmp}/ran"
      timeout: 5s
  verify:
    - id: check
      shell: "echo check >> {tmp}/ran"
      readonly: true
"""


@pytest.fixture
def onf(tmp_path):
    p = tmp_path / "onf.yaml"
    p.write_text(ONF.format(tmp=tmp_path))
    return p


def test_resume_of_an_alert_run_takes_its_locks_and_keeps_the_options(onf, tmp_path, audit_dir):
    rid = crash(onf, "branch", audit_dir, alert=alert(), server_dry_run=True)
    ui = FakeUI()
    out = resume(rid, ui, yes=True)
    assert out.exit_code == 0, out.message  # not refused by its own locks or its own unfinished state
    assert ("step_finished", "fix", "skipped") in ui.calls  # still a server dry-run: the shell write was skipped
    assert out.status == "rehearsed" and ran(tmp_path) == ["look"]  # and verify is not run after it
    assert start(onf, yes=True, alert=alert()).exit_code == 0  # the alert is free again


def test_resume_keeps_the_stage(onf, tmp_path, audit_dir):
    out = start(onf, stage="diagnose")
    assert out.exit_code == 0
    assert "already finished: completed" in resume(out.run_id, yes=True).note
    assert ran(tmp_path) == ["look"]


def test_resume_after_a_declined_step_does_not_rerun_a_failure_already_handled(onf, tmp_path, audit_dir):
    out = start(onf)  # no operator: stops before the write step
    assert out.exit_code == 3
    assert resume(out.run_id, yes=True).exit_code == 0
    assert ran(tmp_path) == ["look", "fix", "check"]


def test_resume_follows_the_recorded_branch(onf, tmp_path, audit_dir):
    rid = crash(onf, "fix", audit_dir)
    (tmp_path / "ran").write_text("")  # a re-evaluated branch would now see another world
    assert resume(rid, yes=True, rerun=True).exit_code == 0
    intents = [r["step"] for r in records(audit_dir, rid) if r["type"] == "step_intent"]
    assert intents == ["look", "branch", "fix", "fix", "check"]  # fix ran again; no jump to check


def test_an_interrupted_write_step_is_in_doubt_on_resume(tmp_path, audit_dir):
    p = tmp_path / "w.yaml"
    p.write_text(f"""\
name: w
title: W
stages:
  mitigate:
    - id: scale
      shell: "echo scale >> {tmp_path}/ran; sleep 30"
      timeout: 1m
  verify:
    - id: check
      shell: "true"
      readonly: true
""")

    def term(step):
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()

    out = start(p, FakeUI(on_step=term), yes=True)  # stopped cleanly: the result says interrupted
    assert out.exit_code == 130
    with pytest.raises(RunbookError, match="step 'scale'.*in doubt"):
        resume(out.run_id, yes=True)
    assert resume(out.run_id, yes=True, mark_done=True).exit_code == 0
    assert ran(tmp_path) == ["scale"]


def test_resume_of_a_crlf_runbook_is_not_a_change(tmp_path, audit_dir):
    p = tmp_path / "crlf.yaml"
    p.write_bytes(ONF.format(tmp=tmp_path).replace("\n", "\r\n").encode())
    out = start(p, yes=True)
    assert "already finished" in resume(out.run_id).note


def test_resume_refuses_a_log_that_does_not_verify_unless_forced(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    path = audit_dir / audit.LOG_NAME
    lines = path.read_text().splitlines(keepends=True)
    i = next(n for n, x in enumerate(lines) if '"step":"look"' in x and '"step_result"' in x)
    lines[i] = lines[i].replace('"status":"ok"', '"status":"failed"')  # someone rewrites what diagnose saw
    path.write_text("".join(lines))
    with pytest.raises(RunbookError, match=f"does not verify: line {i + 1}.*--force"):
        resume(rid, yes=True, rerun=True)
    assert ran(tmp_path) == ["look"]
    ui = FakeUI()
    assert resume(rid, ui, yes=True, rerun=True, force=True).exit_code == 0
    forced = [r for r in records(audit_dir, rid) if r["type"] == "forced"]
    assert forced and "does not verify" in forced[0]["warning"] and any("--force" in n for n in ui.notices)


# --- from a review: each way a resume could go wrong --------------------------------------------------


def test_a_resumed_run_that_crashes_again_still_holds_its_alert(md, tmp_path, audit_dir):
    out = start(md, alert=alert())  # no operator: refused before the first write
    assert out.exit_code == 3
    with pytest.raises(Crash):
        resume(out.run_id, FakeUI(crash_at="count"), yes=True)
    assert audit.summarize(records(audit_dir, out.run_id))["finished"] is None  # open again since it resumed
    with pytest.raises(RunbookError, match=f"runbook resume {out.run_id}"):
        start(md, yes=True, alert=alert())
    assert ran(tmp_path) == ["look"]


def test_a_step_this_machine_cannot_check_needs_force_to_settle(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    with audit.AuditLog(audit_dir) as log:  # as if it had run on a machine that is gone
        audit.RunJournal(log, rid, audit.Redactor()).event(
            "step_process", step="count", **{**procs.identity(os.getpid()), "host": "lost-laptop"})
    with pytest.raises(RunbookError, match="cannot tell.*lost-laptop.*--force"):
        resume(rid, yes=True, rerun=True)
    ui = FakeUI()
    assert resume(rid, ui, yes=True, rerun=True, force=True).exit_code == 0
    assert any(r["type"] == "forced" and r.get("step") == "count" for r in records(audit_dir, rid))


def test_a_step_in_doubt_that_left_the_runbook_is_refused_before_anything_is_written(md, audit_dir):
    rid = crash(md, "count", audit_dir)
    md.write_text(md.read_text().replace("id: count", "id: count2").replace("steps.count.", "steps.count2."))
    with pytest.raises(RunbookError, match="no longer has it"):
        resume(rid, yes=True, mark_done=True, force=True)
    types = [r["type"] for r in records(audit_dir, rid)]
    assert "resumed" not in types and "decision" not in types[types.index("forced"):]
    assert audit.summarize(records(audit_dir, rid))["in_doubt"] == ["count"]


def test_outputs_given_by_hand_take_their_type_and_all_missing_ones_are_named(tmp_path, audit_dir):
    p = tmp_path / "typed.yaml"
    p.write_text(MD.format(tmp=tmp_path).replace(
        "        n: {regex: 'n=(\\d+)', type: integer}\n",
        "        n: {regex: 'n=(\\d+)', type: integer}\n        obj: {json: '', type: json}\n").replace(
        'when: "steps.count.outputs.n > 5"', 'when: "steps.count.outputs.n > 5 and steps.count.outputs.obj.a == 7"'))
    rid = crash(p, "count", audit_dir)
    with pytest.raises(RunbookError, match="outputs 'n', 'obj'.*--output count.n=VALUE --output count.obj=VALUE"):
        resume(rid, yes=True, mark_done=True)
    with pytest.raises(RunbookError, match="count.n: .*integer"):
        resume(rid, yes=True, mark_done=True, outputs={"count.n": "many", "count.obj": "{}"})
    assert records(audit_dir, rid)[-1]["type"] == "resume_refused"
    out = resume(rid, yes=True, mark_done=True, outputs={"count.n": "9", "count.obj": '{"a": 7}'})
    assert out.exit_code == 0, out.message
    assert ran(tmp_path) == ["look", "many", "check"]


def test_max_visits_counts_a_settled_step_once(tmp_path, audit_dir):
    p = tmp_path / "loop.yaml"
    p.write_text(f"""\
name: loop
title: L
stages:
  mitigate:
    - id: fix
      shell: "echo fix >> {tmp_path}/ran"
      timeout: 5s
      max_visits: 2
      on_failure: check
    - id: again
      choose:
        - when: "true"
          goto: fix
  verify:
    - id: check
      shell: "true"
      readonly: true
""")
    rid = crash(p, "fix", audit_dir)
    resume(rid, yes=True, rerun=True)
    # the crashed visit counts (it may have run); the rerun on the operator's word does not; then one more visit
    assert len([r for r in records(audit_dir, rid) if r["type"] == "step_intent" and r["step"] == "fix"]) == 3
    assert ran(tmp_path) == ["fix", "fix"]


def test_resume_while_the_run_is_held_elsewhere_is_refused_and_recorded(md, audit_dir):
    from runbook.alert import RunLock

    rid = crash(md, "count", audit_dir)
    holder = RunLock(audit_dir, f"run-{rid}", "x")
    holder.acquire(rid, "someone", "t0")
    try:
        with pytest.raises(RunbookError) as e:
            resume(rid, yes=True, rerun=True)
        assert e.value.exit_code == 3 and "still going" in str(e.value) and "--force" not in str(e.value)
        assert records(audit_dir, rid)[-1]["type"] == "resume_refused"
    finally:
        holder.release()


def test_rerun_without_an_approval_is_refused_before_the_doubt_is_settled(md, tmp_path, audit_dir):
    rid = crash(md, "count", audit_dir)
    with pytest.raises(RunbookError, match="--yes"):
        resume(rid, rerun=True)  # no --yes, no terminal
    assert audit.summarize(records(audit_dir, rid))["in_doubt"] == ["count"]
    assert "resumed" not in [r["type"] for r in records(audit_dir, rid)]


def test_a_signal_before_the_first_step_finishes_the_run_as_interrupted(md, tmp_path, audit_dir):
    from runbook.engine import Interrupt

    class Hangup(FakeUI):
        def run_started(self, *a, **kw):
            raise Interrupt("SIGHUP")

    out = start(md, Hangup(), yes=True)
    assert (out.status, out.exit_code) == ("interrupted", 130) and ran(tmp_path) == []
    last = records(audit_dir, out.run_id)[-1]
    assert (last["type"], last["signal"]) == ("run_finished", "SIGHUP")


def test_a_server_dry_run_rehearsal_ends_before_verify_and_says_what_was_accepted(onf, tmp_path, audit_dir):
    p = tmp_path / "until.yaml"
    p.write_text(ONF.format(tmp=tmp_path).replace(
        '      shell: "echo check >> {tmp}/ran"\n'.format(tmp=tmp_path),
        '      shell: "echo check >> {tmp}/ran; false"\n      until: "exit_code == 0"\n      every: 1s\n      timeout: 5m\n'
        .format(tmp=tmp_path)))
    t0 = time.monotonic()
    ui = FakeUI()
    out = start(p, ui, yes=True, server_dry_run=True)
    assert time.monotonic() - t0 < 5  # the verify poll (5 minutes) is not waited for
    assert (out.status, out.exit_code) == ("rehearsed", 0), out.message
    assert "did not send 1 write step (fix)" in out.message and "verify stage was not run" in out.message
    assert ran(tmp_path) == ["look"]  # the shell write was not sent, the verify check not run
    skipped = [r for r in records(audit_dir, out.run_id) if r["type"] == "step_result" and r["step"] == "check"]
    assert skipped and "not verifiable in a server dry-run" in skipped[0]["error"]
    assert "already finished: rehearsed" in resume(out.run_id).note
    assert "rehearsed (--server-dry-run" in report.report(audit_dir / audit.LOG_NAME, out.run_id)


def test_a_dry_run_as_typed_plans_with_the_runbooks_example_params(audit_dir, monkeypatch):
    """The first command users are told to type: `runbook run high-error-rate --dry-run`."""
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    rb = spec.find("high-error-rate", [ROOT / "playbooks"])
    ui = FakeUI()
    plan = session.start(session.RunRequest(runbook=rb, dry_run=True), ui)
    assert plan.status == "planned" and plan.params_shown["service"] == rb.example_params["service"]
    assert any("example_params for service=" in n for n in ui.notices)
    assert plan.examples == ["service"]  # the plan's header marks it (example)
    mine = session.start(session.RunRequest(runbook=rb, params={"service": "web"}, dry_run=True), FakeUI())
    assert mine.params_shown["service"] == "web" and mine.examples == []  # given values win
    with pytest.raises(RunbookError, match="missing required parameter 'service'") as err:
        session.start(session.RunRequest(runbook=rb), FakeUI())  # a live run never guesses
    assert err.value.exit_code == 2  # a usage error, not "a step failed"


def test_usage_errors_exit_2_and_say_so_in_one_line(main):
    """Missing, unknown or invalid parameters, an unknown runbook or environment, bad flags: exit 2."""
    from conftest import ROOT

    pb = str(ROOT / "playbooks")
    for args, said in [
        (("run", "high-error-rate", "--path", pb), "missing required parameter 'service'"),
        (("run", "high-error-rate", "--path", pb, "--dry-run", "-p", "nope=1"), "has no parameter 'nope'"),
        (("run", "high-error-rate", "--path", pb, "--dry-run", "-p", "service=Bad Name"), "parameter 'service'"),
        (("run", "no-such-runbook", "--path", pb), "no runbook named 'no-such-runbook'"),
        (("run", "high-error-rate", "--path", pb, "--dry-run", "--env", "nowhere"), "unknown environment 'nowhere'"),
        (("run", "high-error-rate", "--path", pb, "--dry-run", "--start-at", "nope"), "--start-at nope"),
        (("run", "high-error-rate", "--no-such-flag"), "unrecognized arguments"),
        (("list", "--path", "/no/such/folder"), "no runbooks found"),
    ]:
        r = main(*args, cwd=ROOT)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert said in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_a_remote_deadline_that_cannot_be_read_is_said_not_a_crash():
    lines = procs.running_lines([{"type": "step_process", "step": "s", "hosts": ["a"], "deadline": "x"}])
    assert lines == ["step s: its remote command on a may still be running (its deadline 'x' cannot be read)"]


def test_an_unknown_run_id_is_a_usage_error(main):
    """resume, report and audit show of a run the log does not have: exit 2, one line."""
    from conftest import ROOT

    main("run", str(ROOT / "playbooks" / "high-error-rate.yaml"), "--dry-run")  # a log exists
    for args in (("resume", "20990101T000000Z-nope00"), ("report", "20990101T000000Z-nope00"),
                 ("audit", "show", "20990101T000000Z-nope00")):
        r = main(*args)
        assert r.returncode == 2 and "no run '20990101T000000Z-nope00'" in r.stderr, (args, r.returncode, r.stderr)
