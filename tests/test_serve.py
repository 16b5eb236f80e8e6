"""`runbook serve`'s webhook, for real: the server in its own process on a free
127.0.0.1 port, a fresh PostgreSQL database for the alert ledger (pg_db), and its
own redis-server as the broker (tests/labservers.RedisLab), whose queue is
counted with LLEN instead of running a worker."""

from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT
from labservers import free_port
from runbook import audit

TOKEN = "webhook-s3cret-token"
QUEUE = "runbook-test"
PAYLOAD = json.loads((ROOT / "tests" / "data" / "alertmanager-pod-oom-killed.json").read_text())

RUNBOOK = """\
name: oom
title: Pod OOM-killed
alerts: [PodOOMKilled]
params:
  pod: {type: string, default: x}
params_from_labels:
  pod: pod
stages:
  diagnose:
    - id: look
      shell: "echo looking"
      readonly: true
"""


@pytest.fixture(scope="module")
def broker(redis_broker):
    return redis_broker


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, db_url: str, audit_dir: Path, log: Path):
        self.port, self.proc, self.db_url, self.audit_dir, self.log = port, proc, db_url, audit_dir, log

    def post(self, body, token: str | None = TOKEN, headers=None, path="/alertmanager") -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=data, headers=h)
            r = conn.getresponse()
            text = r.read()
        finally:
            conn.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, {"text": text.decode(errors="replace")}

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_server(tmp_path, db_url: str, broker_url: str, extra_env=None) -> Server:
    books = tmp_path / "books"
    books.mkdir(exist_ok=True)
    (books / "oom.yaml").write_text(RUNBOOK)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RUNBOOK_WEBHOOK_TOKEN": TOKEN, "RUNBOOK_AUDIT_URL": db_url, "RUNBOOK_BROKER_URL": broker_url,
           "RUNBOOK_QUEUE": QUEUE, **(extra_env or {})}
    log = tmp_path / f"serve-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "serve", "--port", str(port), "--path", str(books)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    srv = Server(port, proc, db_url, Path(env["RUNBOOK_AUDIT_DIR"]), log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"runbook serve exited {proc.returncode}: {srv.stderr()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                c.close()
                return srv
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"runbook serve did not answer /healthz: {srv.stderr()}")


def stop_server(srv: Server) -> int:
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(15)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(5)
            raise AssertionError("runbook serve did not stop on SIGTERM")
    return srv.proc.returncode


@pytest.fixture
def server(tmp_path, pg, pg_db, broker):
    broker.cli("FLUSHALL")
    srv = start_server(tmp_path, pg.url(pg_db), f"redis://127.0.0.1:{broker.port}/0")
    try:
        yield srv
    finally:
        code = stop_server(srv)
        assert code == 0, srv.stderr()  # SIGTERM is a clean stop


def jobs(broker) -> list[dict]:
    """The messages waiting on the queue (kombu's JSON envelope)."""
    n = int(broker.cli("LLEN", QUEUE) or 0)
    if not n:
        return []
    raw = broker.cli("--no-raw", "LRANGE", QUEUE, "0", "-1")
    out = []
    for line in raw.splitlines():
        line = line.split(") ", 1)[1] if ") " in line[:8] else line
        out.append(json.loads(json.loads(line)))
    assert len(out) == n
    return out


def job_ids(broker) -> list[str]:
    return [j["headers"]["id"] for j in jobs(broker)]


def raw_post(port: int, chunks: list[bytes], headers: dict) -> bytes:
    """A POST sent by hand (the body in pieces, possibly never finished); the server's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", "Authorization": f"Bearer {TOKEN}",
                                                       "Content-Type": "application/json", **headers}.items())
        s.sendall(f"POST /alertmanager HTTP/1.1\r\n{head}\r\n".encode())
        for c in chunks:
            s.sendall(c)
        answer = b""
        while True:
            got = s.recv(65536)
            if not got:
                return answer
            answer += got
            if b"\r\n\r\n" in answer:
                return answer


def rows(pg, db, sql, *args):
    with pg.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def alert_payload(fingerprint="9a3e1c7d5b2f4e60", starts="2026-12-05T14:31:52.409Z", status="firing",
                  ends="0001-01-01T00:00:00Z", pod="api-7c9d8f6b5-q4x2m"):
    doc = copy.deepcopy(PAYLOAD)
    a = doc["alerts"][0]
    a.update(fingerprint=fingerprint, startsAt=starts, status=status, endsAt=ends)
    a["labels"]["pod"] = pod
    doc["status"] = status
    return doc


# --------------------------------------------------------------------------- tests


def test_refusals_record_nothing(server, broker, pg, pg_db):
    assert server.post(PAYLOAD, token=None)[0] == 401
    assert server.post(PAYLOAD, token="wrong")[0] == 401
    assert server.post(PAYLOAD, headers={"Authorization": f"Basic {TOKEN}"}, token=None)[0] == 401
    code, answer = server.post(b"{not json", token=TOKEN)
    assert code == 400 and "not JSON" in answer["error"]
    code, answer = server.post({"hello": "world"})
    assert code == 400 and "no 'alerts' list" in answer["error"]
    code, answer = server.post({"version": "4", "alerts": []})
    assert code == 400 and "empty" in answer["error"]
    code, answer = server.post({"version": "4", "alerts": [{"labels": ["not", "a", "mapping"]}]})
    assert code == 400 and "labels" in answer["error"]
    # larger than 1 MB: refused by its declared length before it is sent, and, when it declares
    # none (chunked), as it arrives: the client stops sending right after the limit and reads the answer
    assert raw_post(server.port, [], {"Content-Length": str(2 * 1024 * 1024)}).startswith(b"HTTP/1.1 413")
    chunk = b"x" * 65536
    body = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (1024 * 1024 // len(chunk) + 1)
    assert raw_post(server.port, body, {"Transfer-Encoding": "chunked"}).startswith(b"HTTP/1.1 413")
    # and just below the limit, it is read (and refused as a payload)
    small = json.dumps({"pad": "x" * (1024 * 1024 - 100)}).encode()
    assert server.post(small)[0] == 400
    assert job_ids(broker) == []
    assert rows(pg, pg_db, "SELECT count(*) FROM runbook_incidents") == [(0,)]
    assert rows(pg, pg_db, "SELECT count(*) FROM runbook_webhooks") == [(0,)]


def test_a_real_payload_is_one_incident_and_one_job_however_often_it_comes(server, broker, pg, pg_db):
    code, answer = server.post(PAYLOAD)
    assert code == 200, answer
    [item] = answer["alerts"]
    assert item["outcome"] == "new incident" and item["queued"] is True and item["runbook"] == "oom"
    run_id = item["run_id"]
    assert job_ids(broker) == [run_id]
    [job] = jobs(broker)
    assert job["headers"]["task"] == "runbook.diagnose"
    [(inc_id, fp, starts, doc, webhooks, enqueued)] = rows(
        pg, pg_db, "SELECT id, fingerprint, starts_at, doc, webhooks, enqueued FROM runbook_incidents")
    assert (fp, starts, webhooks) == ("9a3e1c7d5b2f4e60", "2026-12-05T14:31:52.409Z", 1) and enqueued is not None
    assert doc["groupKey"] == PAYLOAD["groupKey"] and doc["alerts"] == PAYLOAD["alerts"]

    code, answer = server.post(PAYLOAD)  # the group's next update, or the other HA peer
    assert code == 200 and answer["alerts"][0]["outcome"] == "duplicate" and answer["alerts"][0]["run_id"] == run_id
    assert job_ids(broker) == [run_id]
    assert rows(pg, pg_db, "SELECT webhooks FROM runbook_incidents") == [(2,)]
    assert [r[0] for r in rows(pg, pg_db, "SELECT outcome FROM runbook_webhooks ORDER BY id")] == [
        "new incident", "same incident (fingerprint, startsAt): webhook 2"]

    # the same alert firing again later is a new incident
    code, answer = server.post(alert_payload(starts="2026-12-05T18:02:00Z"))
    assert code == 200 and answer["alerts"][0]["outcome"] == "new incident"
    assert answer["alerts"][0]["run_id"] != run_id
    assert len(job_ids(broker)) == 2
    assert rows(pg, pg_db, "SELECT count(*) FROM runbook_incidents") == [(2,)]


def test_an_alert_no_runbook_answers_is_recorded_and_the_others_still_go(server, broker, pg, pg_db):
    doc = alert_payload()
    other = copy.deepcopy(doc["alerts"][0])
    other["labels"]["alertname"] = "NobodyAnswers"
    other["fingerprint"] = "ffff000011112222"
    doc["alerts"].append(other)
    code, answer = server.post(doc)
    assert code == 200, answer
    assert [a["outcome"] for a in answer["alerts"]] == ["new incident", "no runbook"]
    assert "no runbook answers alert NobodyAnswers" in answer["alerts"][1]["detail"]
    assert len(job_ids(broker)) == 1
    [(outcome,)] = rows(pg, pg_db, "SELECT outcome FROM runbook_webhooks WHERE fingerprint = 'ffff000011112222'")
    assert outcome.startswith("no runbook: no runbook answers alert NobodyAnswers")
    # the incident's doc holds its own alert only
    [(doc_kept,)] = rows(pg, pg_db, "SELECT doc FROM runbook_incidents")
    assert [a["fingerprint"] for a in doc_kept["alerts"]] == ["9a3e1c7d5b2f4e60"]


def test_a_burst_of_200_webhooks_is_100_incidents_and_100_jobs(server, broker, pg, pg_db):
    docs = [alert_payload(fingerprint=f"{i:016x}", pod=f"pod-{i}") for i in range(100)] * 2

    def send(doc):
        return server.post(doc)

    with ThreadPoolExecutor(max_workers=24) as ex:
        answers = list(ex.map(send, docs))
    assert all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
    outcomes = [a["alerts"][0]["outcome"] for _, a in answers]
    assert outcomes.count("new incident") == 100 and outcomes.count("duplicate") == 100
    queued = [a["alerts"][0]["queued"] for _, a in answers]
    assert queued.count(True) == 100 and queued.count("before") == 100  # each sent once, under the row lock
    ids = job_ids(broker)
    assert len(ids) == 100 and len(set(ids)) == 100
    assert set(ids) == {r[0] for r in rows(pg, pg_db, "SELECT run_id FROM runbook_incidents")}
    assert rows(pg, pg_db, "SELECT count(*), min(webhooks), max(webhooks), count(enqueued) FROM runbook_incidents") == [
        (100, 2, 2, 100)]
    assert rows(pg, pg_db, "SELECT count(*) FROM runbook_webhooks") == [(200,)]


def test_broker_down_is_503_and_the_retry_queues_it_once(server, broker, pg, pg_db):
    broker.crash()
    try:
        code, answer = server.post(PAYLOAD)
    finally:
        broker.start()
    assert code == 503, answer
    assert "broker" in answer["error"] and "did not take the job" in answer["error"]
    [(run_id, enqueued)] = rows(pg, pg_db, "SELECT run_id, enqueued FROM runbook_incidents")
    assert enqueued is None  # in the ledger, not yet queued: nothing lost
    assert job_ids(broker) == []
    code, answer = server.post(PAYLOAD)  # Alertmanager retries the 5xx
    assert code == 200, answer
    assert answer["alerts"][0]["outcome"] == "duplicate" and answer["alerts"][0]["queued"] is True
    assert job_ids(broker) == [run_id]
    code, answer = server.post(PAYLOAD)
    assert code == 200 and answer["alerts"][0]["queued"] == "before"
    assert job_ids(broker) == [run_id]
    assert rows(pg, pg_db, "SELECT webhooks, enqueued IS NOT NULL FROM runbook_incidents") == [(3, True)]


def test_a_resolved_alert_is_recorded(server, broker, pg, pg_db):
    code, answer = server.post(PAYLOAD)
    assert code == 200
    ends = "2026-12-05T15:02:10.000Z"
    resolved = alert_payload(status="resolved", ends=ends)
    code, answer = server.post(resolved)
    assert code == 200, answer
    [item] = answer["alerts"]
    assert item["outcome"] == "resolved" and item["incident"] is not None
    assert rows(pg, pg_db, "SELECT resolved_at FROM runbook_incidents") == [(ends,)]
    assert job_ids(broker) and len(job_ids(broker)) == 1  # a resolution queues nothing
    # in the audit, once (Alertmanager repeats resolutions too)
    assert server.post(resolved)[1]["alerts"][0]["detail"] == "already recorded"
    found = [r for r in audit_records(server) if r.get("type") == "alert_resolved"]
    assert len(found) == 1 and found[0]["fingerprint"] == "9a3e1c7d5b2f4e60" and found[0]["who"] == "runbook serve"
    assert found[0]["endsAt"] == ends
    outcomes = [r[0] for r in rows(pg, pg_db, "SELECT outcome FROM runbook_webhooks ORDER BY id")]
    assert outcomes[0] == "new incident" and outcomes[1].startswith("resolved: ")
    assert outcomes[2] == "resolved: already recorded"


def test_a_firing_retry_after_the_resolution_queues_nothing(server, broker, pg, pg_db):
    broker.crash()  # the first delivery is not queued
    try:
        assert server.post(PAYLOAD)[0] == 503
    finally:
        broker.start()
    assert server.post(alert_payload(status="resolved", ends="2026-12-05T15:02:10Z"))[0] == 200
    code, answer = server.post(PAYLOAD)  # Alertmanager's retry of the firing webhook, late
    assert code == 200 and answer["alerts"][0]["queued"] is False
    assert "nothing to diagnose" in answer["alerts"][0]["detail"]
    assert job_ids(broker) == []


def audit_records(server) -> list[dict]:
    """What session.record_resolved wrote: the shared store (RUNBOOK_AUDIT_URL), never the file log."""
    from runbook.store import open_store

    assert not list(audit.read_records(server.audit_dir / audit.LOG_NAME))
    return list(open_store(url=server.db_url).records())


def test_postgresql_unreachable_is_503(tmp_path, broker):
    broker.cli("FLUSHALL")
    srv = start_server(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
                       f"redis://127.0.0.1:{broker.port}/0")
    try:
        code, answer = srv.post(PAYLOAD)
        assert code == 503, answer
        assert "cannot reach the alert ledger" in answer["error"]
        assert job_ids(broker) == []
        assert srv.post(PAYLOAD, token="nope")[0] == 401
    finally:
        assert stop_server(srv) == 0


def test_it_refuses_to_start_without_its_database_or_token(cli, tmp_path):
    r = cli("serve", env={"RUNBOOK_WEBHOOK_TOKEN": "t", "RUNBOOK_AUDIT_URL": "", "RUNBOOK_BROKER_URL": "redis://x"})
    assert r.returncode == 2 and "RUNBOOK_AUDIT_URL=postgresql://" in r.stderr and len(r.stderr.splitlines()) == 1
    r = cli("serve", env={"RUNBOOK_WEBHOOK_TOKEN": "", "RUNBOOK_AUDIT_URL": "postgresql://u:pw@h/db",
                          "RUNBOOK_BROKER_URL": "redis://x"})
    assert r.returncode == 2 and "RUNBOOK_WEBHOOK_TOKEN" in r.stderr
    (tmp_path / "empty").write_text("")
    r = cli("serve", "--token-file", tmp_path / "empty",
            env={"RUNBOOK_AUDIT_URL": "postgresql://u:pw@h/db", "RUNBOOK_BROKER_URL": "redis://x"})
    assert r.returncode == 2 and "is empty" in r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("serve", "--port", port, "--path", tmp_path,
                env={"RUNBOOK_WEBHOOK_TOKEN": "t", "RUNBOOK_BROKER_URL": "redis://127.0.0.1:1/0",
                     "RUNBOOK_AUDIT_URL": f"postgresql://u:pw@127.0.0.1:{free_port()}/db"})
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr.splitlines()[-1]


def test_its_runbook_index_chooses_as_run_alert_does(tmp_path):
    """The server keeps an index of the runbook path instead of loading every runbook per
    alert: it must choose exactly as runbook run --alert (alert.choose_runbook) does."""
    from runbook.alert import Alert, choose_runbook
    from runbook.errors import RunbookError
    from runbook.team.serve import Config, Webhook

    books = tmp_path / "books"
    books.mkdir()
    for p in (ROOT / "playbooks").glob("*.yaml"):
        (books / p.name).write_text(p.read_text())
    hook = Webhook(Config(webhook_token="t", read_token=None, audit_url=None, broker_url=None, paths=[books]), None)
    from runbook import spec

    names = {n for f in spec.runbook_files([books]) for n in (spec.load_text(f.read_text(), str(f))[0].alerts)}
    cases = [Alert(name=n, status="firing", labels={"alertname": n}, annotations={}, starts_at=None, fingerprint="f")
             for n in sorted(names) + ["NobodyAnswers"]]
    cases.append(Alert(name="X", status="firing", labels={}, annotations={"runbook": "nope"}, starts_at=None,
                       fingerprint="f"))
    cases.append(Alert(name="X", status="firing", labels={}, fingerprint="f", starts_at=None,
                       annotations={"runbook_url": "https://wiki/runbooks/pod-oom-killed.md"}))

    def outcome(fn, a):
        try:
            return fn(a)
        except RunbookError as exc:
            return type(exc).__name__, str(exc)

    assert len(cases) > 5
    for a in cases:
        assert outcome(hook.choose, a) == outcome(lambda x: choose_runbook([x], [books]), a), a.name
    # a runbook added later is found without a restart
    (books / "new.yaml").write_text(RUNBOOK.replace("name: oom", "name: newer").replace("PodOOMKilled", "Newer"))
    a = Alert(name="Newer", status="firing", labels={}, annotations={}, starts_at=None, fingerprint="f")
    assert hook.choose(a)[0] == "newer"


def test_rabbitmq_as_the_broker(tmp_path, pg, pg_db, rabbitmq_url):
    import uuid

    from kombu import Connection

    queue = f"rbtest-{uuid.uuid4().hex[:10]}"
    srv = start_server(tmp_path, pg.url(pg_db), rabbitmq_url, {"RUNBOOK_QUEUE": queue})
    try:
        assert srv.post(PAYLOAD)[0] == 200
        code, answer = srv.post(PAYLOAD)
        assert code == 200 and answer["alerts"][0]["outcome"] == "duplicate"
        with Connection(rabbitmq_url, connect_timeout=5) as conn:
            assert conn.channel().queue_declare(queue, passive=True).message_count == 1
    finally:
        code = stop_server(srv)
        with Connection(rabbitmq_url, connect_timeout=5) as conn:
            try:
                conn.channel().queue_delete(queue)
            except Exception:  # noqa: BLE001 - never declared: nothing to delete
                pass
    assert code == 0


def test_the_ledger_api(pg, pg_db, pg_password):
    from runbook.alert import alerts_of
    from runbook.errors import RunbookError
    from runbook.team import ledger

    conn = ledger.connect(pg.url(pg_db))
    try:
        ledger.ensure(conn)
        ledger.ensure(conn)  # once is enough, twice is harmless
        [a], _ = alerts_of(PAYLOAD)
        inc, new = ledger.record_firing(conn, "oom", a, PAYLOAD, "10.1.1.1:5")
        assert new and inc.webhooks == 1 and inc.enqueued is None and inc.starts_at == a.starts_at
        assert inc.run_id and inc.doc["alerts"][0]["fingerprint"] == a.fingerprint and inc.resolved_at is None
        again, new = ledger.record_firing(conn, "oom", a, PAYLOAD, "10.1.1.2:5")
        assert not new and again.id == inc.id and again.run_id == inc.run_id and again.webhooks == 2
        other, new = ledger.record_firing(conn, "another-runbook", a, PAYLOAD, "p")  # another runbook: another incident
        assert new and other.id != inc.id
        assert [i.id for i in ledger.unqueued(conn)] == [inc.id, other.id]
        ledger.mark_enqueued(conn, inc.id)
        assert [i.id for i in ledger.unqueued(conn)] == [other.id]
        assert ledger.get(conn, inc.id).enqueued is not None and ledger.get(conn, 10**9) is None
        assert ledger.by_run(conn, inc.run_id).id == inc.id and ledger.by_run(conn, "nope") is None
        assert [i.id for i in ledger.incidents(conn)] == [other.id, inc.id]
        assert [i.id for i in ledger.incidents(conn, limit=1)] == [other.id]
        ledger.record_webhook(conn, "p", a, "firing", "no runbook: test")
        hooks = ledger.webhooks(conn, inc.id)
        assert [(h["peer"], h["outcome"]) for h in hooks] == [
            ("10.1.1.1:5", "new incident"), ("10.1.1.2:5", "same incident (fingerprint, startsAt): webhook 2")]
        # committed: another connection sees it all
        with pg.connect(pg_db) as c2:
            assert c2.execute("SELECT count(*) FROM runbook_webhooks").fetchone() == (4,)
    finally:
        conn.close()
    # one line, the password never shown
    with pytest.raises(RunbookError) as err:
        ledger.connect(pg_password.url(password="hunter2-wrong"))
    assert "hunter2" not in str(err.value) and "***" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RunbookError) as err:
        ledger.connect(f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x")
    assert "hunter2" not in str(err.value) and "cannot reach the alert ledger" in str(err.value)


def test_postgresql_restarted_under_it(tmp_path, broker):
    """Down: 503 and nothing queued; back: the connections it kept are not used stale, the retry is taken."""
    from pgserver import _run, create_database, start_throwaway

    broker.cli("FLUSHALL")
    db_server = start_throwaway(trust=True)
    srv = None
    try:
        srv = start_server(tmp_path, db_server.url(create_database(db_server)), f"redis://127.0.0.1:{broker.port}/0")
        assert srv.post(PAYLOAD)[0] == 200

        def pg_ctl(*args):
            r = _run(db_server.bindir / "pg_ctl", *args, "-D", db_server.data_dir, "-w", "-t", "20",
                     run_as=db_server.run_as, cwd=db_server.base_dir, timeout=30)
            assert r.returncode == 0, r.stdout + r.stderr

        later = alert_payload(starts="2026-12-05T19:00:00Z")
        pg_ctl("stop", "-m", "fast")
        code, answer = srv.post(later)
        assert code == 503 and "alert ledger" in answer["error"], answer
        assert len(job_ids(broker)) == 1
        pg_ctl("start", "-l", db_server.log_file)
        time.sleep(1)  # the idle connections it kept are now older than its check's threshold (IDLE_CHECK)
        code, answer = srv.post(later)
        assert code == 200 and answer["alerts"][0]["outcome"] == "new incident", answer
        assert len(job_ids(broker)) == 2
    finally:
        if srv is not None:
            assert stop_server(srv) == 0
        db_server.stop()
