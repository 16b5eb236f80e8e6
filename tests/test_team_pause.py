"""A team worker's run, in-process: nobody at a terminal, so the run pauses
(status "paused", resumable) when the diagnose stage is done and before a write
step, unless the runbook marks the step auto_approve; a person goes on with
resume.  The worker process itself, the broker and PostgreSQL are in
test_team_e2e.py."""

from __future__ import annotations

import pytest

from fakeui import FakeUI
from runbook import audit, report, session, spec
from runbook.commands.validate import check_files
from runbook.errors import RunbookError

BOOK = """\
name: paused
title: Paused
severity: {severity}
stages:
  diagnose:
    - id: look
      shell: "echo look >> {tmp}/ran; echo load=7"
      readonly: true
      outputs:
        load: {{regex: 'load=([0-9]+)', type: integer}}
{diagnose_more}
  mitigate:
    - id: restart
      shell: "echo restart >> {tmp}/ran"
      timeout: 5s
{auto}
    - id: scale
      shell: "echo scale >> {tmp}/ran"
      timeout: 5s
  verify:
    - id: check
      shell: "echo check >> {tmp}/ran"
      readonly: true
"""


def book(tmp_path, severity="SEV3", auto="", diagnose_more=""):
    p = tmp_path / "paused.yaml"
    p.write_text(BOOK.format(tmp=tmp_path, severity=severity, auto=auto, diagnose_more=diagnose_more))
    return p


def ran(tmp_path):
    f = tmp_path / "ran"
    return f.read_text().split() if f.exists() else []


def worker_start(path, **kw):
    req = session.RunRequest(runbook=spec.find(str(path), []), interactive=False, who="worker@test",
                             pause_before_writes=True, **kw)
    return session.start(req, FakeUI())


def records(audit_dir, run_id):
    return [r for r in audit.read_records(audit_dir / audit.LOG_NAME) if r.get("run") == run_id]


def test_worker_pauses_when_the_diagnosis_is_done_and_a_person_resumes(tmp_path, audit_dir):
    out = worker_start(book(tmp_path), pause_after="diagnose", run_id="R-team-1")
    assert out.run_id == "R-team-1"  # the ledger named it before it started
    assert (out.status, out.exit_code) == ("paused", 0)
    assert "runbook resume R-team-1" in out.message
    assert ran(tmp_path) == ["look"]  # nothing of mitigate ran
    recs = records(audit_dir, "R-team-1")
    assert [r["step"] for r in recs if r["type"] == "paused"] == ["restart"]
    assert audit.summarize(recs)["status"] == "paused"
    # the engineer goes on (approving writes): from the first mitigate step, each step once
    ui = FakeUI()
    back = session.resume(session.ResumeRequest(run_id="R-team-1", yes=True, who="alice"), ui)
    assert (back.status, back.exit_code) == ("completed", 0)
    # alice saw what the worker found before anything ran
    [found] = [n for n in ui.notices if n.startswith("so far")]
    assert "started by worker@test" in found and "look: ok — load=7" in found
    assert "paused before restart: the diagnose stage is done" in found
    assert ran(tmp_path) == ["look", "restart", "scale", "check"]
    assert "paused for a person" in report.report(audit_dir / audit.LOG_NAME, "R-team-1")


def test_worker_pauses_before_a_write_and_resume_starts_at_that_write(tmp_path, audit_dir):
    out = worker_start(book(tmp_path), pause_after="mitigate")
    assert out.status == "paused"
    assert "paused before step 'restart'" in out.message
    assert ran(tmp_path) == ["look"]
    recs = records(audit_dir, out.run_id)
    decision = next(r for r in recs if r["type"] == "decision")
    assert (decision["step"], decision["approved"], decision["how"], decision["choice"]) == ("restart", False, "worker", "pause")
    assert not audit.in_doubt(recs)
    back = session.resume(session.ResumeRequest(run_id=out.run_id, yes=True, who="alice"), FakeUI())
    assert back.status == "completed"
    assert ran(tmp_path) == ["look", "restart", "scale", "check"]


def test_auto_approve_lets_a_worker_run_that_write_only(tmp_path, audit_dir):
    out = worker_start(book(tmp_path, auto="      auto_approve: true"), pause_after="mitigate")
    assert out.status == "paused"
    assert ran(tmp_path) == ["look", "restart"]  # auto-approved; scale waits for a person
    recs = records(audit_dir, out.run_id)
    decisions = [(r["step"], r["approved"], r["how"]) for r in recs if r["type"] == "decision"]
    assert decisions == [("restart", True, "auto-approved"), ("scale", False, "worker")]
    assert "auto-approved by the runbook" in report.report(audit_dir / audit.LOG_NAME, out.run_id)


def test_a_question_for_a_person_pauses_instead_of_failing(tmp_path, audit_dir):
    more = "    - id: which\n      ask: {prompt: 'Which region?', choices: [eu, us]}\n"
    out = worker_start(book(tmp_path, diagnose_more=more), pause_after="diagnose")
    assert out.status == "paused"
    assert "paused at step 'which' for a person" in out.message
    back = session.resume(session.ResumeRequest(run_id=out.run_id, yes=True, answers={"which": "eu"}, who="bob"),
                          FakeUI())
    assert back.status == "completed"
    assert ran(tmp_path) == ["look", "restart", "scale", "check"]


def test_a_worker_resume_of_a_paused_run_pauses_again_at_the_next_write(tmp_path, audit_dir):
    out = worker_start(book(tmp_path, auto="      auto_approve: true"), pause_after="mitigate")
    again = session.resume(session.ResumeRequest(run_id=out.run_id, interactive=False, who="worker@test",
                                                 pause_after="mitigate", pause_before_writes=True), FakeUI())
    assert again.status == "paused"
    assert ran(tmp_path) == ["look", "restart"]  # scale still waits: no write runs twice, none without a person


@pytest.mark.parametrize("severity, flagged", [("SEV1", True), ("SEV2", True), ("SEV3", False)])
def test_validate_warns_of_auto_approve_in_severe_runbooks(tmp_path, severity, flagged):
    path = book(tmp_path, severity=severity, auto="      auto_approve: true")
    problems = check_files([path])[0][1]
    rb109 = [p for p in problems if p.rule == "RB109"]
    assert bool(rb109) is flagged
    if flagged:
        assert rb109[0].severity == "warning" and rb109[0].line == 16
        assert "--allow-auto-approve" in rb109[0].message


def test_validate_strict_refuses_auto_approve_in_sev1_unless_allowed(tmp_path, main):
    path = book(tmp_path, severity="SEV1", auto="      auto_approve: true")
    r = main("validate", "--strict", str(path))
    assert r.returncode == 1 and "RB109" in r.stdout + r.stderr
    r = main("validate", "--strict", "--allow-auto-approve", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def alert_of(fp="fp-1", starts="2026-12-05T03:00:00Z"):
    from runbook import alert

    doc = {"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "Paused"}, "annotations": {},
                                       "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fp}]}
    [firing], _ = alert.alerts_of(doc)
    return firing


def test_a_laptop_run_for_an_incident_whose_worker_run_is_paused_is_refused(tmp_path, audit_dir):
    paused = worker_start(book(tmp_path), pause_after="diagnose", alert=alert_of())
    assert paused.status == "paused"
    with pytest.raises(RunbookError) as refused:
        session.start(session.RunRequest(runbook=spec.find(str(book(tmp_path)), []), alert=alert_of(), yes=True),
                      FakeUI())
    assert refused.value.exit_code == 3
    assert f"go on with it: runbook resume {paused.run_id}" in str(refused.value)
    assert ran(tmp_path) == ["look"]  # nothing of it ran beside the paused run
    # a new incident of the same alert (a new startsAt) is not that run's
    again = session.start(session.RunRequest(runbook=spec.find(str(book(tmp_path)), []), yes=True,
                                             alert=alert_of(starts="2026-12-06T03:00:00Z")), FakeUI())
    assert again.status == "completed"


def test_an_auto_approve_write_pauses_once_the_alert_resolved(tmp_path, audit_dir):
    asked = []

    def auto_ok(step):
        asked.append(step.id)
        return False  # the worker's ledger says: resolved

    out = worker_start(book(tmp_path, auto="      auto_approve: true"), pause_after="mitigate", auto_ok=auto_ok)
    assert out.status == "paused" and asked == ["restart"]
    assert ran(tmp_path) == ["look"]


def test_a_run_that_lost_its_lock_stops_before_its_next_step_and_writes_no_end(tmp_path, audit_dir):
    """Its PostgreSQL session ended (a restart): another process may own the run now."""
    from runbook.errors import LockLost

    lost = []

    def fence():
        if (tmp_path / "ran").exists():  # after the first step: the lock is gone
            lost.append(True)
            raise LockLost("lost the lock run-x on postgresql://db (its session no longer holds it)")

    out = worker_start(book(tmp_path), pause_after="mitigate", fence=fence)
    assert out.status == "lock lost" and out.exit_code == 3
    assert "stopped before step 'restart'" in out.message
    assert ran(tmp_path) == ["look"]
    recs = records(audit_dir, out.run_id)
    assert [r["type"] for r in recs][-1] == "lock_lost"
    assert audit.summarize(recs)["status"] == "in progress"  # no end: whoever goes on with it writes it
