"""Write tests/data/report_runs.jsonl: three recorded runs for the `runbook report` snapshots.

    python3 tests/data/make_report_log.py     # then: UPDATE_SNAPSHOTS=1 pytest tests/test_report.py

The records go through the real RunJournal (so secrets are redacted by the real
Redactor) and the real AuditLog (so the hash chain is real); only the clock is
fixed, so that the file is the same every time.  The calls follow the engine's
order: decision, intent, retry events, result.  The runs:

* 20261126T143502Z-a1b2c3: from an alert (startsAt 14:31:10), a retried read step,
  a choose step, a write step that fails (its output holds a secret, a pipe,
  backticks, a fence and a terminal escape) and whose on_failure goes to another
  write step, polling verification, an escalation_due event, resolved;
* 20261126T160000Z-d4e5f6: no alert; the operator declines a write step: refused;
* 20261126T170000Z-0a0b0c: a host_key_added event, then a write step whose intent
  has no result and no run_finished (the process died): in doubt.

Committed as generated: regenerate only when the record format changes on purpose.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runbook.audit import AuditLog, RunJournal  # noqa: E402
from runbook.secrets import Redactor  # noqa: E402

OUT = Path(__file__).resolve().parent / "report_runs.jsonl"
SECRET = "hunter2-Sup3rSecret"  # must never appear in the log or a report


class FixedClockLog(AuditLog):
    """The real log, with the time of each record set by the caller."""

    now = "1970-01-01T00:00:00.000000Z"

    def append(self, record):
        return super().append({**record, "ts": self.now})


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        with FixedClockLog(tmp) as log:
            _alert_run(log)
            _declined_run(log)
            _in_doubt_run(log)
        shutil.copyfile(log.path, OUT)
    finally:
        shutil.rmtree(tmp)
    print(f"wrote {OUT}")


def _at(log: FixedClockLog, day_time: str) -> None:
    log.now = f"2026-11-26T{day_time}Z"


QUERY = ("curl -fsS 'http://prometheus:9090/api/v1/query?query=sum(rate(http_errors{job=\"api\"}[5m]))' "
         "| jq -r '.data.result[0].value[1]'")


def _alert_run(log: FixedClockLog) -> None:
    j = RunJournal(log, "20261126T143502Z-a1b2c3", Redactor([SECRET]))
    _at(log, "14:35:02.100000")
    j.run_started(runbook="high-error-rate", path="playbooks/high-error-rate.yaml",
                  sha256="5b0c2f1d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c",
                  git_commit="9638e5e1f2a3b4c5d6e7f8091a2b3c4d5e6f7a8b", params={"namespace": "production",
                  "service": "api", "token": "***"}, dry_run=False, server_dry_run=None, who="alice",
                  host="oncall-1", argv=["run", "--alert", "alert.json", "-e", "production"],
                  inventory="inventory/production.yaml",
                  alert={"name": "HighErrorRate", "status": "firing",
                         "labels": {"alertname": "HighErrorRate", "job": "api", "severity": "page",
                                    "team": "payments|core"},
                         "startsAt": "2026-11-26T14:31:10.123456789Z", "fingerprint": "3f9a1c0d2e4b5a69",
                         "generatorURL": "http://prometheus:9090/graph?g0.expr=sum(rate(http_errors[5m]))>0.01&g0.tab=1"})
    _at(log, "14:35:02.400000")
    j.step_intent(step="error-rate", kind="shell", stage="diagnose", effect="read", targets=["localhost"],
                  rendered=QUERY)
    _at(log, "14:35:03.100000")
    j.step_result(step="error-rate", status="ok", exit_code=0, duration=0.612, output="0.072\n",
                  outputs={"ratio": 0.072}, attempts=1)
    _at(log, "14:35:03.200000")
    j.step_intent(step="db-connections", kind="shell", stage="diagnose", effect="read", targets=["localhost"],
                  rendered="psql -Atc 'SELECT count(*) FROM pg_stat_activity'")
    _at(log, "14:35:04.300000")
    j.event("retry", step="db-connections", attempt=1, status="failed", error="exit code 2")
    _at(log, "14:35:06.400000")
    j.step_result(step="db-connections", status="ok", exit_code=0, duration=3.104, output="142\n",
                  outputs={"n": 142}, attempts=2)
    _at(log, "14:35:06.500000")
    j.step_intent(step="decide", kind="choose", stage="diagnose", effect="read", targets=[],
                  rendered="steps.db-connections.outputs.n > 400 → scale; default → restart")
    _at(log, "14:35:06.501000")
    j.step_result(step="decide", status="ok", exit_code=None, duration=0.0004, output="restart", attempts=1,
                  data={"branch": "default", "why": "no condition held (steps.db-connections.outputs.n = 152)",
                        "goto": "restart"})
    _at(log, "14:36:10.000000")
    j.event("escalation_due", to="database-oncall", after=300, elapsed=300)
    _at(log, "14:36:40.000000")
    j.decision(step="restart", approved=True, by="alice", how="prompt")
    _at(log, "14:36:40.050000")
    j.step_intent(step="restart", kind="shell", stage="mitigate", effect="write", targets=["localhost"],
                  rendered='kubectl --token "${RUNBOOK_SECRET_TOKEN}" rollout restart deployment/api -n production '
                           "| tee /tmp/restart-`date +%s`.log")
    _at(log, "14:38:41.000000")
    output = "".join(f"waiting for rollout: {i} of 3 updated replicas are available...\n" for i in range(1, 9))
    output += ("\x1b[31merror:\x1b[0m unable to connect: Unauthorized (token " + SECRET + " rejected)\n"
               "hint: | check the *token* in `kubectl config view`\n"
               "```\n"
               "exit status 1\n")
    j.step_result(step="restart", status="failed", exit_code=1, duration=120.95, output=output,
                  error="exit code 1", attempts=1)
    _at(log, "14:38:42.000000")
    j.decision(step="scale", approved=True, by="alice", how="prompt")
    _at(log, "14:38:42.100000")
    j.step_intent(step="scale", kind="shell", stage="mitigate", effect="write", targets=["localhost"],
                  rendered="kubectl scale deployment/api -n production --replicas=5")
    _at(log, "14:38:44.000000")
    j.step_result(step="scale", status="ok", exit_code=0, duration=1.9, output="deployment.apps/api scaled\n",
                  attempts=1)
    _at(log, "14:38:44.200000")
    j.step_intent(step="error-rate-ok", kind="shell", stage="verify", effect="read", targets=["localhost"],
                  rendered=QUERY)
    _at(log, "14:41:14.500000")
    j.step_result(step="error-rate-ok", status="ok", exit_code=0, duration=150.3, output="0.004\n",
                  outputs={"ratio": 0.004}, attempts=6)
    _at(log, "14:41:14.600000")
    j.step_intent(step="resolved", kind="end", stage="verify", effect="read", targets=[],
                  rendered="end: resolved — error rate back under 1%")
    _at(log, "14:41:14.600500")
    j.step_result(step="resolved", status="ok", exit_code=None, duration=0.00001, output="error rate back under 1%",
                  attempts=1, data={"message": "error rate back under 1%", "end": "resolved"})
    _at(log, "14:41:14.700000")
    j.run_finished(status="resolved", exit_code=0)


def _declined_run(log: FixedClockLog) -> None:
    j = RunJournal(log, "20261126T160000Z-d4e5f6", Redactor())
    _at(log, "16:00:00.000000")
    j.run_started(runbook="disk-full", path="playbooks/disk-full.yaml",
                  sha256="0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9", git_commit=None,
                  params={"host": "db-2", "threshold": 90}, dry_run=False, server_dry_run=None, who="bob",
                  host="laptop-bob", argv=["run", "disk-full", "-p", "host=db-2"], inventory=None, alert=None)
    _at(log, "16:00:00.500000")
    j.step_intent(step="usage", kind="ssh", stage="diagnose", effect="read", targets=["db-2"],
                  rendered="df -h /var/lib/postgresql | awk 'NR==2 {print $5}'")
    _at(log, "16:00:01.700000")
    j.step_result(step="usage", status="ok", exit_code=0, duration=1.2, output="97%\n", outputs={"pct": 97},
                  attempts=1)
    _at(log, "16:00:30.000000")
    j.step_intent(step="clean-or-grow", kind="ask", stage="diagnose", effect="read", targets=["operator"],
                  rendered="Delete old WAL files, or grow the volume?")
    _at(log, "16:00:41.000000")
    j.step_result(step="clean-or-grow", status="ok", exit_code=None, duration=11.0, output="clean",
                  outputs={"answer": "clean"}, attempts=1)
    _at(log, "16:01:10.000000")
    j.decision(step="drain-wal", approved=False, by="bob", how="prompt", choice="abort")
    _at(log, "16:01:10.200000")
    j.run_finished(status="refused", exit_code=3)


def _in_doubt_run(log: FixedClockLog) -> None:
    j = RunJournal(log, "20261126T170000Z-0a0b0c", Redactor())
    _at(log, "17:00:00.000000")
    j.run_started(runbook="db-failover", path="/srv/runbooks/db-failover.yaml",
                  sha256="f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f", git_commit=None,
                  params={"cluster": "pg-main"}, dry_run=False, server_dry_run=None, who="carol via sudo from carol",
                  host="bastion-1", argv=["run", "db-failover", "-p", "cluster=pg-main", "--yes"],
                  inventory="inventory/production.yaml", alert=None)
    _at(log, "17:00:01.000000")
    j.step_intent(step="replication-lag", kind="sql", stage="diagnose", effect="read", targets=["pg-main-replica"],
                  rendered={"database": "pg-main-replica",
                            "query": "SELECT now() - pg_last_xact_replay_timestamp() AS lag", "args": {}})
    _at(log, "17:00:01.400000")
    j.step_result(step="replication-lag", status="ok", exit_code=None, duration=0.4, output="lag\n0.8\n",
                  outputs={"lag": 0.8}, attempts=1)
    _at(log, "17:00:02.000000")
    j.event("host_key_added", host="pg-main-2", address="10.0.0.12", key_type="ssh-ed25519",
            fingerprint="SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8")
    _at(log, "17:00:02.500000")
    j.decision(step="promote", approved=True, by="carol via sudo from carol", how="--yes")
    _at(log, "17:00:02.600000")
    j.step_intent(step="promote", kind="ssh", stage="mitigate", effect="write", targets=["pg-main-2"],
                  rendered="sudo -n pg_ctlcluster 16 main promote")
    # no result and no run_finished: the process died here


if __name__ == "__main__":
    main()
