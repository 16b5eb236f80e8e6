"""Team mode end to end, with real parts only: `runbook serve` and `runbook worker`
processes, a real Redis broker, a real PostgreSQL holding the ledger and the
audit store, Alertmanager's real payload shape; the engineer's `runbook resume`
from another process.  Faults: a burst of duplicate webhooks, a worker killed
with SIGKILL in the middle of a diagnosis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from labservers import free_port

BOOK = """\
name: diag
title: Diagnose {{{{ params.service }}}}
severity: SEV3
alerts: [DiagAlert]
params:
  service: {{type: string, required: true, pattern: '^[a-z0-9-]+$'}}
params_from_labels:
  service: service
stages:
  diagnose:
    - id: look
      shell: "{slow}echo seen {{{{ params.service }}}}; echo ms=12"
      readonly: true
      outputs:
        ms: {{regex: 'ms=([0-9]+)', type: integer}}
  mitigate:
    - id: fix
      shell: "echo fixed {{{{ params.service }}}} >> {marker}"
      timeout: 10s
  verify:
    - id: check
      shell: "echo ok"
      readonly: true
"""


def payload(fp: str, service: str = "api", starts: str = "2026-12-05T03:00:00Z") -> dict:
    return {
        "version": "4", "groupKey": '{}:{alertname="DiagAlert"}', "status": "firing", "receiver": "runbook",
        "groupLabels": {"alertname": "DiagAlert"}, "commonLabels": {"alertname": "DiagAlert"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093", "truncatedAlerts": 0,
        "alerts": [{
            "status": "firing", "labels": {"alertname": "DiagAlert", "service": service},
            "annotations": {"summary": "errors"}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example/graph", "fingerprint": fp,
        }],
    }


class Team:
    def __init__(self, tmp: Path, url: str, broker: str):
        self.tmp, self.url = tmp, url
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.env = {**os.environ, "RUNBOOK_AUDIT_URL": url,
                    "RUNBOOK_BROKER_URL": broker,
                    "RUNBOOK_PATH": str(tmp / "playbooks"), "RUNBOOK_WEBHOOK_TOKEN": "hook-token",
                    "RUNBOOK_READ_TOKEN": "read-token", "RUNBOOK_SWEEP_SECONDS": "1",
                    "RUNBOOK_VISIBILITY_TIMEOUT": "300", "PYTHONUNBUFFERED": "1"}
        self.env.pop("RUNBOOK_AUDIT_DIR", None)

    def book(self, slow: str = "") -> None:
        (self.tmp / "playbooks").mkdir(exist_ok=True)
        (self.tmp / "playbooks" / "diag.yaml").write_text(BOOK.format(slow=slow, marker=self.tmp / "fixed"))

    def _spawn(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        p = subprocess.Popen([sys.executable, "-m", "runbook", *args], env=self.env, cwd=self.tmp, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def serve(self) -> None:
        self._spawn("serve", "--host", "127.0.0.1", "--port", str(self.port), name="serve")
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("serve did not start:\n" + self.log("serve")) from None
                time.sleep(0.1)

    def worker(self, concurrency: int = 2) -> subprocess.Popen:
        n = len(self.workers)
        p = self._spawn("worker", "--concurrency", str(concurrency), name=f"worker{n}")
        self.workers.append(p)
        deadline = time.monotonic() + 40
        while "ready" not in self.log(f"worker{n}"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("worker did not start:\n" + self.log(f"worker{n}"))
            time.sleep(0.1)
        return p

    def log(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def post(self, doc: dict) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/alertmanager", data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Bearer hook-token"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {"body": exc.read().decode(errors="replace")}

    def store(self):
        from runbook.store import open_store

        return open_store(url=self.url)

    def wait_runs(self, count: int, status: str = "paused", timeout: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout
        runs: list[dict] = []
        while time.monotonic() < deadline:
            runs = self.store().list_runs()
            if len([r for r in runs if r["status"] == status]) >= count:
                return runs
            time.sleep(0.3)
        raise AssertionError(f"{count} runs {status} expected; got {[(r['run'], r['status']) for r in runs]}\n"
                             + "\n".join(self.log(f"worker{i}")[-3000:] for i in range(len(self.workers))))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runbook", *args], env=self.env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def team(tmp_path, pg, pg_db, redis_broker):
    redis_broker.cli("FLUSHALL")
    t = Team(tmp_path, pg.url(pg_db), f"redis://127.0.0.1:{redis_broker.port}/0")
    t.book()
    yield t
    t.stop()


@pytest.fixture
def rabbit_team(tmp_path, pg, pg_db, rabbitmq_url):
    """The same, with RabbitMQ as the broker (tests/labservers.py: the machine's, else one of the
    tests' own); a queue of this test's own, deleted at the end."""
    import uuid

    t = Team(tmp_path, pg.url(pg_db), rabbitmq_url)
    t.env["RUNBOOK_QUEUE"] = f"runbook-test-{uuid.uuid4().hex[:8]}"
    t.book()
    yield t
    t.stop()
    from kombu import Connection

    with Connection(rabbitmq_url) as conn:
        conn.default_channel.queue_delete(t.env["RUNBOOK_QUEUE"])


def test_rabbitmq_as_the_broker(rabbit_team):
    rabbit_team.serve()
    rabbit_team.worker()
    code, body = rabbit_team.post(payload("fp-rabbit"))
    assert code == 200, body
    [run] = rabbit_team.wait_runs(1)
    recs = records(rabbit_team, run["run"])
    assert [r["type"] for r in recs].count("run_started") == 1
    assert [r["step"] for r in recs if r["type"] == "paused"] == ["fix"]


def records(team: Team, run_id: str) -> list[dict]:
    return team.store().run_records(run_id)


def test_alert_is_diagnosed_by_a_worker_and_finished_by_a_person_from_another_process(team, web):
    team.env["RUNBOOK_NOTIFY_URL"] = f"{web.url}/hook/incidents"
    team.env["RUNBOOK_PAGE_URL"] = f"http://127.0.0.1:{team.port}"
    team.serve()
    team.worker()
    code, body = team.post(payload("fp-one"))
    assert code == 200, body
    [run] = team.wait_runs(1)
    recs = records(team, run["run"])
    started = recs[0]
    assert started["type"] == "run_started" and started["who"].startswith("worker@")
    assert started["params"] == {"service": "api"}
    look = next(r for r in recs if r["type"] == "step_result" and r["step"] == "look")
    assert look["outputs"] == {"ms": 12}
    assert not (team.tmp / "fixed").exists()  # paused before the write: nobody approved it
    assert [r["step"] for r in recs if r["type"] == "paused"] == ["fix"]
    # #incidents heard it when the diagnosis was done: the alert, the runbook, what it found, how to go on
    deadline = time.monotonic() + 10
    while not web.hooks and time.monotonic() < deadline:
        time.sleep(0.1)
    [message] = [h["payload"]["text"] for h in web.hooks]
    for part in ("DiagAlert", "fp-one", "runbook *diag*", "look.ms = 12", f"runbook resume {run['run']}",
                 f"http://127.0.0.1:{team.port}/runs/{run['run']}"):
        assert part in message, message

    # the on-call engineer, on another machine: sees the diagnosis, approves the writes
    shown = team.cli("audit", "show", run["run"])
    assert shown.returncode == 0 and "ms" in shown.stdout, shown.stderr
    # ... where the worker's runbook folder is not: the runbook of the same name in --path
    laptop = team.tmp / "laptop-checkout"
    (team.tmp / "playbooks").rename(laptop)
    lost = team.cli("resume", run["run"], "--yes")
    assert lost.returncode == 1 and "not on this machine" in lost.stderr and "--path" in lost.stderr, lost.stderr
    done = team.cli("resume", run["run"], "--yes", "--path", str(laptop))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (team.tmp / "fixed").read_text() == "fixed api\n"  # once
    assert team.store().run_records(run["run"])[-1]["status"] == "completed"
    verified = team.cli("audit", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok:"), verified.stdout + verified.stderr
    # the anchor, kept outside the database, is what proves the seals
    exported = team.cli("audit", "anchor", "-o", str(team.tmp / "anchor.pub"))
    assert exported.returncode == 0, exported.stderr
    assert team.cli("audit", "verify", "--key", str(team.tmp / "anchor.pub")).returncode == 0
    timeline = team.cli("report", run["run"])
    assert timeline.returncode == 0 and "run paused for a person" in timeline.stdout, timeline.stderr
    listed = json.loads(team.cli("audit", "list", "--format", "json").stdout)
    assert [(r["run"], r["status"]) for r in listed] == [(run["run"], "completed")]


def test_a_burst_of_duplicate_webhooks_gives_exactly_one_run_per_alert(team):
    team.serve()
    team.worker()
    team.worker()
    fps = [f"fp-{i:03d}" for i in range(100)]
    codes: list[int] = []
    refused: list[dict] = []
    lock = threading.Lock()

    def send(chunk: list[str]) -> None:
        for fp in chunk:
            code, body = team.post(payload(fp, service=f"svc-{fp[3:]}"))
            with lock:
                codes.append(code)
                if code != 200:
                    refused.append(body)

    posts = [fp for fp in fps for _ in range(2)]
    threads = [threading.Thread(target=send, args=(posts[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 200, refused[:3]
    runs = team.wait_runs(100, timeout=180)
    time.sleep(2)  # any duplicate job would have started a second run by now
    runs = team.store().list_runs()
    assert len(runs) == 100 and {r["status"] for r in runs} == {"paused"}
    started = [r for r in team.store().records() if r.get("type") == "run_started"]
    assert len(started) == 100
    assert sorted(r["alert"]["fingerprint"] for r in started) == fps  # none lost, none twice
    assert team.cli("audit", "verify").returncode == 0


def test_a_worker_killed_mid_diagnosis_leaves_one_run_that_another_worker_finishes(team):
    team.book(slow="sleep 4; ")
    team.serve()
    victim = team.worker(concurrency=1)
    code, _ = team.post(payload("fp-kill"))
    assert code == 200
    deadline = time.monotonic() + 60
    run_id = None
    while time.monotonic() < deadline:
        intents = [r for r in team.store().records() if r.get("type") == "step_intent" and r.get("step") == "look"]
        if intents:
            run_id = intents[0]["run"]
            break
        time.sleep(0.1)
    assert run_id, team.log("worker0")
    os.killpg(victim.pid, signal.SIGKILL)  # the whole worker: main process and its pool
    victim.wait()
    assert team.store().list_runs()[0]["status"] == "in progress"
    team.worker()  # its sweep finds the run cut short and nobody holding it
    [run] = team.wait_runs(1, timeout=60)
    assert run["run"] == run_id
    recs = records(team, run_id)
    assert [r["type"] for r in recs].count("run_started") == 1  # recorded once
    assert [r.get("who", "").split("@")[0] for r in recs if r["type"] == "resumed"] == ["worker"]
    looks = [r for r in recs if r["type"] == "step_result" and r["step"] == "look"]
    assert looks[-1]["status"] == "ok" and looks[-1]["outputs"] == {"ms": 12}  # the read ran again, to the end
    assert not (team.tmp / "fixed").exists()
    assert team.cli("audit", "verify").returncode == 0


def test_an_incident_whose_job_never_reached_the_broker_is_queued_by_a_worker_sweep(team):
    """The server died between committing the incident and queueing its job, and Alertmanager
    gave up: the workers' sweep queues it (once, under the webhook's row lock)."""
    from runbook import alert
    from runbook.team import ledger

    doc = payload("fp-lost")
    [firing], _ = alert.alerts_of(doc)
    conn = ledger.connect(team.url)
    inc, new = ledger.record_firing(conn, "diag", firing, doc, "test")
    assert new and inc.enqueued is None
    conn.execute("UPDATE runbook_incidents SET received = now() - interval '5 minutes' WHERE id = %s", (inc.id,))
    team.worker()
    [run] = team.wait_runs(1, timeout=60)
    assert run["run"] == inc.run_id
    assert ledger.get(conn, inc.id).enqueued is not None
    conn.close()


def test_an_incident_whose_job_the_broker_lost_is_queued_again_by_a_worker_sweep(team):
    """Queued long ago (the ledger says so) but never started, and no job on the broker (a
    Redis restarted without persistence): the sweep queues it again."""
    from runbook import alert
    from runbook.team import ledger

    doc = payload("fp-dropped")
    [firing], _ = alert.alerts_of(doc)
    conn = ledger.connect(team.url)
    inc, _ = ledger.record_firing(conn, "diag", firing, doc, "test")
    conn.execute("UPDATE runbook_incidents SET enqueued = now() - interval '20 minutes' WHERE id = %s", (inc.id,))
    team.worker()
    [run] = team.wait_runs(1, timeout=60)
    assert run["run"] == inc.run_id
    conn.close()


# --- faults found by the adversarial review -------------------------------------------------------

AUTO_BOOK = """\
name: diag
title: Diagnose and restart
severity: SEV3
alerts: [DiagAlert]
stages:
  diagnose:
    - id: look
      shell: "echo look-start >> {marker}; sleep 6; echo look-end >> {marker}"
      readonly: true
  mitigate:
    - id: restart
      shell: "echo WRITE-RAN >> {marker}"
      timeout: 10s
      auto_approve: true
  verify:
    - id: check
      shell: "true"
      readonly: true
"""


def test_a_postgresql_restart_mid_run_never_lets_two_workers_run_the_write(tmp_path, redis_broker):
    """The restart ends every session, the advisory locks with them; the sweep hands the run to
    another worker: the first one must notice its lost lock and stop, so the auto_approve write
    runs once."""
    import pgserver

    redis_broker.cli("FLUSHALL")
    srv = pgserver.start_throwaway()
    team = Team(tmp_path, srv.url(), f"redis://127.0.0.1:{redis_broker.port}/0")
    marker = tmp_path / "marker"
    try:
        (tmp_path / "playbooks").mkdir()
        (tmp_path / "playbooks" / "diag.yaml").write_text(AUTO_BOOK.format(marker=marker))
        team.env["RUNBOOK_WORKER_THROUGH"] = "mitigate"
        team.serve()
        team.worker(concurrency=1)
        team.worker(concurrency=1)
        assert team.post(payload("fp-restart"))[0] == 200
        deadline = time.monotonic() + 30
        while "look-start" not in (marker.read_text() if marker.exists() else ""):
            assert time.monotonic() < deadline, team.log("worker0") + team.log("worker1")
            time.sleep(0.1)
        res = pgserver._run(srv.bindir / "pg_ctl", "restart", "-D", srv.data_dir, "-l", srv.log_file, "-w",
                            "-t", "30", "-m", "fast", run_as=srv.run_as, cwd=srv.base_dir, timeout=40)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 60
        while True:
            runs = team.store().list_runs()
            if runs and runs[0]["status"] in ("completed", "paused") and runs[0]["finished"]:
                break
            assert time.monotonic() < deadline, (runs, marker.read_text(), team.log("worker0"), team.log("worker1"))
            time.sleep(0.3)
        # whoever else was going on with it (the sweep handed it over) has had time to finish too
        time.sleep(10)
        runs = team.store().list_runs()
        assert marker.read_text().count("WRITE-RAN") == 1, marker.read_text()
        recs = team.store().run_records(runs[0]["run"])
        assert [r["type"] for r in recs].count("run_started") == 1
        assert [r["type"] for r in recs].count("run_finished") == 1
        assert team.cli("audit", "verify").returncode == 0
    finally:
        team.stop()
        srv.stop()


def test_a_run_refused_before_it_started_is_shown_not_left_waiting(team):
    (team.tmp / "playbooks" / "diag.yaml").write_text(
        BOOK.format(slow="", marker=team.tmp / "fixed").replace("pattern: '^[a-z0-9-]+$'", "pattern: '^[0-9]+$'"))
    team.serve()
    team.worker()
    assert team.post(payload("fp-refused"))[0] == 200  # service=api does not match the pattern
    from runbook.team import ledger

    conn = ledger.connect(team.url)
    deadline = time.monotonic() + 30
    while not (inc := ledger.incidents(conn)[0]).refused:
        assert time.monotonic() < deadline, team.log("worker0")
        time.sleep(0.2)
    conn.close()
    assert "service" in inc.refused
    page = urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{team.port}/", headers={"Authorization": "Bearer read-token"}), timeout=5).read().decode()
    assert "the worker could not start it" in page and "waiting for a worker" not in page


def test_an_alert_firing_again_during_its_diagnosis_waits_for_it_then_gets_its_own_run(team):
    team.book(slow="sleep 3; ")
    team.serve()
    team.worker()
    assert team.post(payload("fp-again", starts="2026-12-05T03:00:00Z"))[0] == 200
    deadline = time.monotonic() + 30
    while not any(r.get("type") == "step_intent" for r in team.store().records()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert team.post(payload("fp-again", starts="2026-12-05T03:30:00Z"))[0] == 200  # a new incident
    runs = team.wait_runs(2, timeout=90)
    assert len(runs) == 2 and {r["status"] for r in runs} == {"paused"}


def test_odd_payloads_get_a_clear_answer(team):
    team.serve()
    doc = payload("fp-nul", service="api\u0000x")  # valid JSON, a NUL PostgreSQL's text cannot hold
    code, body = team.post(doc)
    assert code == 200, body
    big = json.dumps(payload("fp-big")).replace('"version": "4"', '"version": "4", "n": ' + "9" * 5000)
    req = urllib.request.Request(f"http://127.0.0.1:{team.port}/alertmanager", data=big.encode(), method="POST",
                                 headers={"Authorization": "Bearer hook-token"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400
    # a runbook file that does not load may be the one that answers: Alertmanager must retry, not drop
    (team.tmp / "playbooks" / "broken.yaml").write_text("name: broken\ntitle: [\n")
    unknown = payload("fp-unknown")
    unknown["alerts"][0]["labels"]["alertname"] = "NobodyAnswers"
    code, body = team.post(unknown)
    assert code == 503 and "broken.yaml" in json.dumps(body), body
    (team.tmp / "playbooks" / "broken.yaml").unlink()
    assert team.post(unknown)[0] == 200  # now it is a plain "no runbook"
